"""The supervisor of one service: runs its `mvu serve`, reports the server's state in the workspace, and
restarts it when it exits, waiting longer after each quick failure.

Run as ``python -m mvu.host.control.supervisor WORKSPACE SERVICE [LOCK_FD]`` (``mvu services create`` does,
handing over the service's lock held on LOCK_FD); SIGTERM stops the server and then the supervisor.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mvu.host.control.services import ServiceManager, lock_path
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


def serve_command(manager: ServiceManager, name: str) -> list[str]:
    """The `mvu serve` command line of service ``name``: its models from the service's repository folder."""
    service = manager.get(name)
    folder = manager.folder(name)
    tls = ["--tls-cert", service.tls_cert, "--tls-key", service.tls_key] if service.tls_cert else []
    return [sys.executable, "-m", "mvu.host.tools.cli", "serve", "--model-repository", str(folder / "repository"),
            "--host", service.host, "--port", str(service.port), "--grpc-port", str(service.grpc_port),
            "--backend", service.backend, "--keys", str(folder / "keys.json"), "--ready-file",
            str(folder / "ready.json"), *tls]


def _run_once(manager: ServiceManager, name: str, stopping: list[bool]) -> tuple[bool, float]:
    """Runs the server until it exits or a stop is asked for; returns whether it became ready, and how long
    it ran."""
    folder = manager.folder(name)
    ready = folder / "ready.json"
    ready.unlink(missing_ok=True)
    started = time.monotonic()
    with open(folder / "server.log", "ab") as log:
        server = subprocess.Popen(serve_command(manager, name), stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    manager.set(name, state="starting", server_pid=server.pid, detail="")
    became_ready = False
    while server.poll() is None:
        if stopping[0] or manager.find(name) is None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
            break
        if not became_ready and ready.exists():
            became_ready = True
            manager.set(name, state="healthy", detail="")
        time.sleep(_POLL_SECONDS)
    return became_ready, time.monotonic() - started


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
    if manager.find(name) is None:
        return
    manager.set(name, supervisor_pid=os.getpid())
    failures = 0
    while not stopping[0] and manager.find(name) is not None:
        became_ready, ran = _run_once(manager, name, stopping)
        if stopping[0] or manager.find(name) is None:
            break
        failures = 0 if became_ready and ran >= _STABLE_SECONDS else failures + 1
        if not became_ready and failures >= FAILURES_BEFORE_GIVING_UP:
            manager.set(name, state="failed", server_pid=None,
                           detail=f"the server exited {failures} times before it was ready; see its log")
            return
        wait = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS)) - 1] if failures else 0
        restarts = manager.find(name).restarts + 1
        manager.set(name, state="restarting", server_pid=None, restarts=restarts,
                       detail=f"the server exited; restart {restarts} in {wait} s")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not stopping[0]:
            time.sleep(_POLL_SECONDS)
    if manager.find(name) is not None:
        manager.set(name, state="stopped", server_pid=None, detail="stopped")


if __name__ == "__main__":
    supervise(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)
