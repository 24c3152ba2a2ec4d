"""The supervisor of one service: runs its `mvu serve` replicas, reports the service's state in the workspace,
and restarts a replica when it exits, waiting longer after each quick failure.

Run as ``python -m mvu.host.control.supervisor WORKSPACE SERVICE [LOCK_FD]`` (``mvu services create`` does,
handing over the service's lock held on LOCK_FD); SIGTERM stops the servers and then the supervisor.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mvu.host.control.services import ServiceManager, lock_path, replica_files
from mvu.host.control.workspace import Workspace

__all__ = ["supervise", "serve_command", "BACKOFF_SECONDS", "FAILURES_BEFORE_GIVING_UP"]

#: Waits before restarting after consecutive failures: 1, 2, 4, ... seconds, at most 30.
BACKOFF_SECONDS = tuple(min(2 ** n, 30) for n in range(8))
#: A server that exits this many times in a row without ever becoming ready is not started again.
FAILURES_BEFORE_GIVING_UP = 5
#: A server that served this long before exiting starts again without waiting.
_STABLE_SECONDS = 60.0
_POLL_SECONDS = 0.05


def _die_with_parent() -> None:
    """In the server's process before it runs: on Linux, have the kernel send it SIGTERM when the supervisor
    dies, however it dies, so no server outlives its supervisor."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def serve_command(manager: ServiceManager, name: str, replica: int = 0) -> list[str]:
    """The `mvu serve` command line of one replica of service ``name``: its models from the service's
    repository folder, a port of its own (``--admin-port``), and the shared ports with ``--reuse-port`` when the
    service has several replicas."""
    service = manager.get(name)
    folder = manager.folder(name)
    ready, _ = replica_files(folder, replica)
    tls = ["--tls-cert", service.tls_cert, "--tls-key", service.tls_key] if service.tls_cert else []
    shared = ["--reuse-port"] if service.replicas > 1 else []
    return [sys.executable, "-m", "mvu.host.tools.cli", "serve", "--model-repository", str(folder / "repository"),
            "--host", service.host, "--port", str(service.port), "--grpc-port", str(service.grpc_port),
            "--admin-port", "0", *shared, "--backend", service.backend, "--keys", str(folder / "keys.json"),
            "--ready-file", str(ready), *tls]


@dataclass
class _Replica:
    """One server process of the service, and its restart bookkeeping."""

    index: int
    process: subprocess.Popen | None = None
    started: float = 0.0
    ready: bool = False
    failures: int = 0  # exits in a row without a stable run
    start_at: float = 0.0  # monotonic time of its next start

    def start(self, manager: ServiceManager, name: str) -> None:
        ready, log_path = replica_files(manager.folder(name), self.index)
        ready.unlink(missing_ok=True)
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(serve_command(manager, name, self.index), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self.started, self.ready = time.monotonic(), False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _state(replicas: list[_Replica]) -> tuple[str, str]:
    """The service's state and detail from its replicas'."""
    ready = sum(replica.ready for replica in replicas)
    if ready == len(replicas):
        return "healthy", "" if len(replicas) == 1 else f"{ready} of {len(replicas)} replicas serving"
    waiting = [replica for replica in replicas if replica.process is None]
    if waiting:
        wait = max(0, round(min(replica.start_at for replica in waiting) - time.monotonic()))
        return "restarting", f"the server exited; restart in {wait} s ({ready} of {len(replicas)} replicas serving)"
    return "starting", "" if len(replicas) == 1 else f"{ready} of {len(replicas)} replicas serving"


def _step(manager: ServiceManager, name: str, replicas: list[_Replica]) -> str | None:
    """One look at every replica: start those due, note those ready, schedule restarts of those that exited
    (waiting longer after each quick failure). Returns why the service failed, if it did."""
    now = time.monotonic()
    for replica in replicas:
        if replica.process is None:
            if now >= replica.start_at:
                replica.start(manager, name)
            continue
        if replica.process.poll() is None:
            if not replica.ready and replica_files(manager.folder(name), replica.index)[0].exists():
                replica.ready = True
            continue
        ran = now - replica.started
        replica.failures = 0 if replica.ready and ran >= _STABLE_SECONDS else replica.failures + 1
        if not replica.ready and replica.failures >= FAILURES_BEFORE_GIVING_UP:
            return f"the server exited {replica.failures} times before it was ready; see its log"
        wait = BACKOFF_SECONDS[min(replica.failures, len(BACKOFF_SECONDS)) - 1] if replica.failures else 0
        replica.process, replica.ready, replica.start_at = None, False, now + wait
        # The count and the state change in one write: a reader that sees the restart never sees the old server.
        state, detail = _state(replicas)
        manager.set(name, restarts=manager.find(name).restarts + 1, state=state, detail=detail,
                    server_pid=replicas[0].process.pid if replicas[0].process else None)
    return None


def supervise(workspace: Path, name: str, lock_fd: int | None = None) -> None:
    manager = ServiceManager(Workspace(workspace))
    stopping = [False]
    signal.signal(signal.SIGTERM, lambda *_: stopping.__setitem__(0, True))
    if lock_fd is None:  # started by hand: take the service's lock, or leave it to the supervisor that has it
        lock = open(lock_path(manager.folder(name)), "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
    # else: the lock came with the inherited descriptor and stays held until this process ends
    service = manager.find(name)
    if service is None:
        return
    manager.set(name, supervisor_pid=os.getpid())
    replicas = [_Replica(index) for index in range(service.replicas)]
    reported = None
    try:
        while not stopping[0] and manager.find(name) is not None:
            failed = _step(manager, name, replicas)
            if failed:
                for replica in replicas:
                    replica.stop()
                manager.set(name, state="failed", server_pid=None, detail=failed)
                return
            report = (*_state(replicas), replicas[0].process.pid if replicas[0].process else None)
            if report != reported and not stopping[0]:
                state, detail, server_pid = reported = report
                manager.set(name, state=state, detail=detail, server_pid=server_pid)
            time.sleep(_POLL_SECONDS)
    finally:
        for replica in replicas:
            replica.stop()
    if manager.find(name) is not None:
        manager.set(name, state="stopped", server_pid=None, detail="stopped")


if __name__ == "__main__":
    supervise(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
