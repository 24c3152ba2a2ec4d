"""Services: registered model versions served by a supervised `mvu serve`, with a primary and a secondary
key and optional TLS. Each service has a folder in the workspace (key files, logs) and a record in its
database; a supervisor process (:mod:`mvu.host.control.supervisor`) runs the server and restarts it."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mvu.host.control.registry import ModelRegistry, ModelVersion, check_name, parse_reference, utc_now
from mvu.host.control.workspace import Workspace, WorkspaceError
from mvu.host.executors import BACKENDS
from mvu.host.serving.api_keys import SLOTS, create_key_file, regenerate_key

__all__ = ["Service", "ServiceManager", "LIVE_STATES", "MAX_REPLICAS", "replica_files"]

#: States in which a supervisor should be running.
LIVE_STATES = ("creating", "starting", "healthy", "restarting")
_STOP_SECONDS = 15.0
_SECRETS = "secrets.json"
#: The most server processes one service may run on its machine.
MAX_REPLICAS = 16


@dataclass(frozen=True)
class Service:
    """A service's record."""

    name: str
    host: str
    port: int
    grpc_port: int
    backend: str
    tls_cert: str | None
    tls_key: str | None
    state: str
    detail: str
    supervisor_pid: int | None
    server_pid: int | None
    restarts: int
    created_at: str
    updated_at: str
    replicas: int = 1  # server processes sharing the ports
    models: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://{self.host}:{self.port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def to_dict(self) -> dict:
        return {**asdict(self), "endpoint": self.endpoint, "grpc_endpoint": self.grpc_endpoint}


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def replica_files(folder: Path, replica: int) -> tuple[Path, Path]:
    """A replica's ready file (its ports and pid, written by `mvu serve` once it serves) and its log."""
    suffix = f"-{replica}" if replica else ""
    return folder / f"ready{suffix}.json", folder / f"server{suffix}.log"


def lock_path(folder: Path) -> Path:
    """The file a service's supervisor holds locked while it runs: at most one runs per service."""
    return folder / "supervisor.lock"


def _alive(pid: int | None, marker: str) -> bool:
    """Whether ``pid`` runs and (where /proc tells) is the process whose command line holds ``marker``."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True


class ServiceManager:
    """The services of one workspace."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.registry = ModelRegistry(workspace)

    def folder(self, name: str) -> Path:
        return self.workspace.path / "services" / name

    # Creating ------------------------------------------------------------------------------------

    def create(self, name: str, models: list[str], *, host: str = "127.0.0.1", port: int | None = None,
               grpc_port: int | None = None, backend: str = "reference", tls_cert: str | None = None,
               tls_key: str | None = None, replicas: int = 1,
               timeout: float = 300.0) -> tuple[Service, dict[str, str]]:
        """Starts a service of ``models`` (``NAME`` or ``NAME:VERSION`` each) on ``replicas`` server processes
        that share its ports, waits until every one serves, and returns it with its keys in clear."""
        check_name(name)
        if not 1 <= replicas <= MAX_REPLICAS:
            raise WorkspaceError(f"--replicas must be between 1 and {MAX_REPLICAS}, not {replicas}")
        if not models:
            raise WorkspaceError(f"service {name!r}: name at least one model (--model NAME[:VERSION])")
        if backend not in BACKENDS:
            raise WorkspaceError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if bool(tls_cert) != bool(tls_key):
            raise WorkspaceError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
        for path in filter(None, (tls_cert, tls_key)):
            if not Path(path).is_file():
                raise WorkspaceError(f"{path}: no such file")
        versions = [self.registry.get(*parse_reference(reference)) for reference in models]
        if len({v.name for v in versions}) != len(versions):
            raise WorkspaceError(f"service {name!r}: each model once (got {', '.join(models)})")
        if self.find(name):
            raise WorkspaceError(f"service {name!r} already exists; delete it first (mvu services delete {name})")
        folder = self.folder(name)
        shutil.rmtree(folder, ignore_errors=True)  # left by a create that crashed before its record
        folder.mkdir(parents=True)
        for version in versions:
            self._link(name, version)
        keys = create_key_file(folder / "keys.json")
        self._write_secrets(name, keys)
        now = utc_now()
        tls = [str(Path(p).resolve()) if p else None for p in (tls_cert, tls_key)]
        with self.workspace.transaction() as db:
            db.execute("INSERT INTO services (name, host, port, grpc_port, backend, tls_cert, tls_key, state, "
                       "created_at, updated_at, replicas) VALUES (?, ?, ?, ?, ?, ?, ?, 'creating', ?, ?, ?)",
                       (name, host, port or _free_port(host), grpc_port or _free_port(host), backend, *tls,
                        now, now, replicas))
            db.executemany("INSERT INTO service_models VALUES (?, ?, ?)",
                           [(name, v.name, v.version) for v in versions])
        self._start_supervisor(name)
        return self.wait_for_deployment(name, timeout), keys

    def _start_supervisor(self, name: str) -> bool:
        """Starts a supervisor unless one runs; returns whether it did. The service's lock is taken here and
        handed to the supervisor, so it is never free while a supervisor starts or runs."""
        with open(lock_path(self.folder(name)), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            with open(self.folder(name) / "supervisor.log", "ab") as log:
                subprocess.Popen([sys.executable, "-m", "mvu.host.control.supervisor", str(self.workspace.path),
                                  name, str(lock.fileno())], pass_fds=(lock.fileno(),), stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return True  # closing this copy leaves the lock with the supervisor

    def supervised(self, name: str) -> bool:
        """Whether a supervisor of ``name`` runs (holds its lock)."""
        try:
            with open(lock_path(self.folder(name)), "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(lock, fcntl.LOCK_UN)
                return False
        except FileNotFoundError:
            return False

    def wait_for_deployment(self, name: str, timeout: float = 300.0) -> Service:
        """Waits until the service is healthy; raises with its log's tail if it fails or takes too long."""
        deadline = time.monotonic() + timeout
        while (service := self.get(name)).state != "healthy":
            if service.state in ("failed", "stopped") or time.monotonic() > deadline:
                why = service.detail if service.state in ("failed", "stopped") else f"not healthy after {timeout:g} s"
                raise WorkspaceError(f"service {name!r} is {service.state}: {why}\n--- last lines of its log ---\n"
                                     f"{self.logs(name, 15)}")
            time.sleep(0.1)
        return service

    def _link(self, name: str, version: ModelVersion) -> None:
        """Puts ``version``'s stored package into the service's repository folder (Triton's layout,
        ``NAME/VERSION/model.mvu``), whole or not at all."""
        target = self.folder(name) / "repository" / version.name / str(version.version)
        staged = target.with_name(f".{target.name}.staged")
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        (staged / "model.mvu").symlink_to(self.registry.package_path(version))
        staged.rename(target)

    def running_replicas(self, name: str) -> list[dict]:
        """What each serving replica's ready file says: ``replica``, ``pid``, ``http_port``, ``grpc_port`` and
        ``admin_port`` (the replica's own HTTP port); replicas that are (re)starting are left out."""
        service, found = self.find(name), []
        for replica in range(service.replicas if service else 0):
            ready, _ = replica_files(self.folder(name), replica)
            try:
                found.append({"replica": replica, **json.loads(ready.read_text())})
            except (OSError, ValueError):
                continue
        return found

    def _load(self, service: Service, model: str) -> None:
        """Asks every serving replica of the service to (re)load ``model`` from its repository folder, each on
        its own port, and waits for their answers; a replica that is starting reads the folder as it starts."""
        keys = self.keys(service.name)
        context = None
        if service.tls_cert:  # the control plane's own call on this machine's server
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        scheme = "https" if service.tls_cert else "http"
        for replica in self.running_replicas(service.name):
            address = f"{scheme}://{service.host}:{replica['admin_port']}"
            request = urllib.request.Request(f"{address}/v2/repository/models/{model}/load", data=b"{}",
                                             headers={"Authorization": f"Bearer {keys['primary']}",
                                                      "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=600, context=context) as answer:
                    answer.read()
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")[:500]
                raise WorkspaceError(f"service {service.name!r} could not load {model}: {detail}") from None
            except OSError as error:
                raise WorkspaceError(f"service {service.name!r}, replica {replica['replica']}, did not answer at "
                                     f"{address} ({error})") from None

    def update(self, name: str, models: list[str]) -> Service:
        """Moves the service to other versions of its models (``NAME:VERSION`` or ``NAME`` for the newest),
        one model at a time and without a failed request: the new version is loaded and warmed up beside the
        old one, takes the requests that name no version, and the old one is unloaded once its requests in
        flight are answered."""
        service = self.wait_for_deployment(name, 60)
        served = dict(reference.split(":") for reference in service.models)
        for reference in models:
            new = self.registry.get(*parse_reference(reference))
            if new.name not in served:
                raise WorkspaceError(f"service {name!r} serves {', '.join(service.models)}, not {new.name}; "
                                     "create another service for it")
            if int(served[new.name]) == new.version:
                continue
            self._link(name, new)
            self._load(service, new.name)
            with self.workspace.transaction() as db:  # from here on the old version is free to delete
                db.execute("UPDATE service_models SET version = ? WHERE service = ? AND name = ?",
                           (new.version, name, new.name))
            shutil.rmtree(self.folder(name) / "repository" / new.name / served[new.name])
            self._load(service, new.name)
            served[new.name] = str(new.version)
        return self.get(name)

    # Reading -------------------------------------------------------------------------------------

    def get(self, name: str) -> Service:
        """The service's record, reconciled with its processes: a service that should run but has no
        supervisor (killed, or the machine restarted) gets one again."""
        service = self.find(name)
        if service is None:
            known = ", ".join(s.name for s in self._all()) or "none"
            raise WorkspaceError(f"service {name!r} does not exist in {self.workspace.path} (services: {known})")
        if service.state in LIVE_STATES and not self.supervised(name):
            if not (self.folder(name) / "keys.json").is_file():
                return self.set(name, state="failed", detail="its folder is gone; delete and create it again")
            if self._start_supervisor(name):
                return self.set(name, state="restarting", restarts=service.restarts + 1,
                                   detail="its supervisor was gone; started again")
        return service

    def list(self) -> list[Service]:
        return [self.get(service.name) for service in self._all()]

    def keys(self, name: str) -> dict[str, str]:
        self.get(name)
        return json.loads((self.folder(name) / _SECRETS).read_text())

    def regenerate_key(self, name: str, slot: str) -> str:
        """A new ``primary`` or ``secondary`` key; the old one stops working within a second."""
        if slot not in SLOTS:
            raise WorkspaceError(f"no key {slot!r}; the keys are {' and '.join(SLOTS)}")
        keys = self.keys(name)
        keys[slot] = regenerate_key(self.folder(name) / "keys.json", slot)
        self._write_secrets(name, keys)
        return keys[slot]

    def logs(self, name: str, lines: int = 50) -> str:
        """The last ``lines`` lines of each replica's server log and of the supervisor's log."""
        folder, text = self.folder(name), []
        service = self.find(name)
        replicas = service.replicas if service else 1
        for path in [replica_files(folder, replica)[1] for replica in range(replicas)] + [folder / "supervisor.log"]:
            if path.is_file():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                text += [f"[{path.name}] {line}" for line in tail]
        return "\n".join(text)

    # Changing ------------------------------------------------------------------------------------

    def set(self, name: str, **fields) -> Service:
        """Sets fields of the record (the supervisor reports its state through this)."""
        fields["updated_at"] = utc_now()
        with self.workspace.transaction() as db:
            db.execute(f"UPDATE services SET {', '.join(f'{key} = ?' for key in fields)} WHERE name = ?",
                       (*fields.values(), name))
        return self.find(name)

    def delete(self, name: str) -> Service:
        """Stops the service's processes, then removes its record and folder."""
        service = self.find(name) or self.get(name)
        replica_pids = [replica.get("pid") for replica in self.running_replicas(name)]
        with self.workspace.transaction() as db:  # first: a supervisor without its record stops by itself
            db.execute("DELETE FROM services WHERE name = ?", (name,))
        marker = f"supervisor {self.workspace.path} {name}"
        if _alive(service.supervisor_pid, marker):
            os.kill(service.supervisor_pid, signal.SIGTERM)  # it stops the server first
        deadline = time.monotonic() + _STOP_SECONDS
        while self.supervised(name) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in (service.supervisor_pid, service.server_pid, *replica_pids):
            if _alive(pid, name):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.folder(name), ignore_errors=True)
        return service

    # Records -------------------------------------------------------------------------------------

    def _write_secrets(self, name: str, keys: dict[str, str]) -> None:
        path = self.folder(name) / _SECRETS
        partial = path.with_name(path.name + ".partial")
        partial.touch(mode=0o600)
        partial.write_text(json.dumps(keys))
        partial.replace(path)

    def find(self, name: str) -> Service | None:
        """The record of ``name`` as stored, or None."""
        found = self._select("WHERE name = ?", (name,))
        return found[0] if found else None

    def _all(self) -> list[Service]:
        return self._select("", ())

    def _select(self, where: str, parameters: tuple) -> list[Service]:
        connection = self.workspace.connect()
        try:
            rows = connection.execute(f"SELECT * FROM services {where} ORDER BY name", parameters).fetchall()
            models: dict[str, list[str]] = {}
            for row in connection.execute("SELECT * FROM service_models ORDER BY name"):
                models.setdefault(row["service"], []).append(f"{row['name']}:{row['version']}")
        finally:
            connection.close()
        return [Service(**dict(row), models=models.get(row["name"], [])) for row in rows]
