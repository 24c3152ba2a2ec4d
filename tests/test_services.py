"""Services: create from registered models, score with the keys, restart after a crash, rotate keys,
dependency order on deletion, and no process left behind."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from mvu.host.control.registry import ModelRegistry
from mvu.host.control.services import LIVE_STATES, ServiceManager, _alive
from mvu.host.control.workspace import Workspace, WorkspaceError
from mvu.host.tools.cli import main


@pytest.fixture
def manager(tmp_path, toy_package_path):
    manager = ServiceManager(Workspace(tmp_path / "ws"))
    manager.registry.register(toy_package_path, "toy")
    yield manager
    for service in manager.list():  # no server outlives its test
        manager.delete(service.name)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 120, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


def _score(service, key: str) -> int:
    request = urllib.request.Request(f"{service.endpoint}/score/toy", data=_jpeg(),
                                     headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _until(condition, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_a_service_serves_restarts_and_rotates_keys(manager):
    service, keys = manager.create("svc", ["toy"])
    assert service.state == "healthy" and service.models == ["toy:1"]
    assert _score(service, keys["primary"]) == 200 and _score(service, keys["secondary"]) == 200
    assert _score(service, "mvu_wrong") == 401
    # found again by another process's view of the workspace
    again = ServiceManager(Workspace(manager.workspace.path))
    assert [s.name for s in again.list()] == ["svc"] and again.keys("svc") == keys
    # the server crashes: the supervisor starts it again on the same endpoint
    os.kill(service.server_pid, signal.SIGKILL)
    assert _until(lambda: manager.get("svc").restarts == 1)
    restarted = manager.wait_for_deployment("svc", 60)
    assert restarted.server_pid != service.server_pid and restarted.endpoint == service.endpoint
    assert _score(restarted, keys["primary"]) == 200
    # a new primary key: the old one stops working, the secondary goes on
    primary = manager.regenerate_key("svc", "primary")
    assert _until(lambda: _score(restarted, keys["primary"]) == 401)
    assert _score(restarted, primary) == 200 and _score(restarted, keys["secondary"]) == 200
    assert manager.keys("svc") == {"primary": primary, "secondary": keys["secondary"]}


def test_models_in_use_are_deleted_after_their_service(manager):
    service, _ = manager.create("svc", ["toy:1"])
    with pytest.raises(WorkspaceError, match="model toy:1 is used by service 'svc': delete the service first"):
        manager.registry.delete("toy", 1)
    manager.delete("svc")
    assert not _alive(service.supervisor_pid, "supervisor") and not _alive(service.server_pid, "serve")
    assert manager.list() == [] and not manager.folder("svc").exists()
    ModelRegistry(manager.workspace).delete("toy", 1)
    assert manager.registry.collect_garbage() == [] and manager.workspace.store.contents() == set()


def test_a_dead_supervisor_takes_its_server_along_and_is_started_again(manager):
    service, keys = manager.create("svc", ["toy"])
    os.kill(service.supervisor_pid, signal.SIGKILL)
    assert _until(lambda: not _alive(service.server_pid, "serve"))
    assert not manager.supervised("svc")
    seen = manager.get("svc")  # any look at the service brings its supervisor back
    assert seen.state == "restarting" and "its supervisor was gone" in seen.detail
    again = manager.wait_for_deployment("svc", 60)
    assert again.supervisor_pid != service.supervisor_pid and _score(again, keys["primary"]) == 200


def _supervisors(workspace) -> set[str]:
    """The services whose supervisor processes run in ``workspace`` (from their command lines)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            words = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "mvu.host.control.supervisor" in words and str(workspace) in words:
            found.add(words[words.index(str(workspace)) + 1])  # ... supervisor WORKSPACE NAME [LOCK_FD]
    return found


_CREATE = """
import sys
from mvu.host.control.services import ServiceManager
from mvu.host.control.workspace import Workspace
print("ready", flush=True)
ServiceManager(Workspace(sys.argv[1])).create(sys.argv[2], ["toy"])
"""


def test_kill_9_during_create_leaves_records_and_processes_matched(manager):
    rng = random.Random(11)
    for attempt in range(20):
        name = f"svc{attempt}"
        creating = subprocess.Popen([sys.executable, "-c", _CREATE, str(manager.workspace.path), name],
                                    stdout=subprocess.PIPE, text=True)
        assert creating.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.8))
        creating.kill()
        creating.wait()
        services = manager.list()  # reconciles: a live record gets a supervisor if it lost it
        live = {s.name for s in services if s.state in LIVE_STATES}
        assert _until(lambda: _supervisors(manager.workspace.path) == live), (live, _supervisors(manager.workspace.path))
        for service in services:
            manager.delete(service.name)
        assert _until(lambda: not _supervisors(manager.workspace.path))
        assert manager.list() == []


@pytest.mark.parametrize("arguments, message", [
    (["--model", "nope"], "model 'nope' is not registered"),
    (["--model", "toy", "--model", "toy:1"], "each model once"),
    (["--model", "toy", "--tls-cert", "cert.pem"], "TLS needs both a certificate"),
    (["--model", "toy", "--tls-cert", "cert.pem", "--tls-key", "key.pem"], "cert.pem: no such file"),
])
def test_bad_services_are_refused_before_anything_starts(manager, arguments, message):
    with pytest.raises(SystemExit, match=message):
        main(["services", "create", "svc", *arguments, "--workspace", str(manager.workspace.path)])
    assert manager.list() == []


def test_the_services_commands(manager, capsys):
    ws = ["--workspace", str(manager.workspace.path)]
    assert main(["services", "create", "svc", "--model", "toy", *ws]) == 0
    created = capsys.readouterr().out
    assert "svc  healthy" in created and "primary key" in created and "secondary key" in created
    assert main(["services", "list", *ws]) == 0
    assert capsys.readouterr().out.split()[:2] == ["svc", "healthy"]
    assert main(["services", "regenerate-key", "svc", "secondary", *ws]) == 0
    assert capsys.readouterr().out.strip() == manager.keys("svc")["secondary"]
    assert main(["services", "logs", "svc", *ws]) == 0
    assert "[server.log]" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="service 'other' does not exist"):
        main(["services", "show", "other", *ws])
    assert main(["services", "delete", "svc", *ws]) == 0


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_rolling_update_under_load_fails_no_request(manager, toy_package_path, tmp_path, capsys, replicas):
    import zipfile

    second = tmp_path / "toy-2.mvu"  # the same model, other bytes: a new version
    with zipfile.ZipFile(toy_package_path) as source, zipfile.ZipFile(second, "w", zipfile.ZIP_STORED) as target:
        for item in source.infolist():
            target.writestr(item.filename, source.read(item.filename))
    manager.registry.register(second, "toy")
    service, keys = manager.create("svc", ["toy:1"], replicas=replicas)
    answers, failures, stop = [], [], threading.Event()

    def client():
        while not stop.is_set():
            request = urllib.request.Request(f"{service.endpoint}/score/toy", data=_jpeg(),
                                             headers={"Authorization": f"Bearer {keys['primary']}"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    answers.append((time.monotonic(), json.loads(response.read())["model_version"]))
            except (urllib.error.URLError, OSError) as error:
                failures.append(repr(error))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    _until(lambda: len(answers) >= 10)
    before = time.monotonic()
    assert main(["services", "update", "svc", "--model", "toy:2", "--workspace", str(manager.workspace.path)]) == 0
    updated = time.monotonic()
    _until(lambda: sum(at > updated for at, _ in answers) >= 10)
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == [] and len(answers) > 20
    assert {str(version) for at, version in answers if at < before} == {"1"}
    assert all(str(version) == "2" for at, version in answers if at > updated)
    assert manager.get("svc").models == ["toy:2"] and "toy:2" in capsys.readouterr().out
    manager.registry.delete("toy", 1)  # no longer in use
    with pytest.raises(WorkspaceError, match="used by service 'svc'"):
        manager.registry.delete("toy", 2)


def _score_or_reset(service, key: str) -> int | str:
    try:
        return _score(service, key)
    except ConnectionResetError:
        return "reset"


def _exited(pid: int) -> bool:
    """Whether ``pid`` is gone or a zombie: past closing its files (an empty command line comes before that)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def test_replicas_share_the_ports_and_one_that_dies_is_started_again(manager):
    service, keys = manager.create("svc", ["toy"], replicas=2)
    assert (service.replicas, service.state) == (2, "healthy") and "2 of 2 replicas" in service.detail
    replicas = manager.running_replicas("svc")
    assert [r["replica"] for r in replicas] == [0, 1] and len({r["pid"] for r in replicas}) == 2
    assert {r["http_port"] for r in replicas} == {service.port} and {r["grpc_port"] for r in replicas} == \
        {service.grpc_port} and len({r["admin_port"] for r in replicas}) == 2
    assert [_score(service, keys["primary"]) for _ in range(40)] == [200] * 40  # a new connection each
    folder = manager.folder("svc")
    assert all((folder / log).read_text().count("/score/toy") > 0 for log in ("server.log", "server-1.log"))
    os.kill(replicas[1]["pid"], signal.SIGKILL)
    assert _until(lambda: _exited(replicas[1]["pid"]))  # its sockets closed (a connection racing them is reset)
    # The other replica serves. A connection whose SYN raced the killed replica's socket may be reset (measured:
    # at most one of ten, right after the kill; none in 180 requests of a script that waited the same way).
    answers = [_score_or_reset(service, keys["primary"]) for _ in range(10)]
    assert answers.count(200) >= 9 and set(answers) <= {200, "reset"}, answers

    def replaced():
        running = manager.running_replicas("svc")
        return (len(running) == 2 and running[1]["pid"] != replicas[1]["pid"]
                and manager.get("svc").state == "healthy")

    assert _until(replaced, 60)
    again = manager.running_replicas("svc")
    assert again[0]["pid"] == replicas[0]["pid"] and again[1]["pid"] != replicas[1]["pid"]
    assert manager.get("svc").restarts == 1
    manager.delete("svc")
    assert not any(_alive(r["pid"], "serve") for r in again)


def test_replicas_are_bounded(manager):
    with pytest.raises(WorkspaceError, match="--replicas must be between 1 and 16, not 0"):
        manager.create("svc", ["toy"], replicas=0)
