"""`mvu serve`: load packages, then serve HTTP (uvicorn) and gRPC (grpc.aio) on one event loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from mvu.host.serving.api_keys import ApiKeys, KeyFileError
from mvu.host.serving.backend import ServingBackend
from mvu.host.serving.http_app import HttpSettings, create_http_app
from mvu.host.serving.http_connection import ConnectionLimits, connection_protocol
from mvu.host.serving.repository import ModelRepository, ModelSpec
from mvu.host.serving.served_model import ServingLimits

__all__ = ["ServerOptions", "main_serve", "run_server"]

log = logging.getLogger("mvu.host.serving")


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 8001  # -1: no gRPC
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keys: ApiKeys | None = None
    open_health: bool = False
    open_metrics: bool = False
    max_request_bytes: int = 64 << 20
    ready_file: Path | None = None
    body_timeout: float = 30.0
    header_timeout: float = 10.0
    reuse_port: bool = False  # replicas share the HTTP and gRPC ports; the kernel spreads connections over them
    admin_port: int | None = None  # this process's own HTTP port too (0: any free one), e.g. for repository loads


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Accepted connections inherit this: without it Nagle's algorithm holds a response's body behind its
    # headers until the client's delayed ACK, 40 ms on every kept-alive request.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise SystemExit(f"mvu serve: cannot listen on {host}:{port}: {error.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: :func:`run_server` stops HTTP and gRPC together."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def run_server(repository: ModelRepository, options: ServerOptions) -> None:
    """Serve until SIGINT or SIGTERM."""
    settings = HttpSettings(options.keys, options.open_health, options.open_metrics, options.max_request_bytes,
                            options.body_timeout)
    tls = {"ssl_certfile": str(options.tls_cert), "ssl_keyfile": str(options.tls_key)} if options.tls_cert else {}
    connection = connection_protocol(ConnectionLimits(options.header_timeout, options.body_timeout),
                                     repository.metrics)
    # An idle TLS client that never answers close_notify would hold the shutdown for 30 s: give up after 2.
    config = uvicorn.Config(create_http_app(repository, settings), log_level="warning", access_log=False,
                            lifespan="off", loop="uvloop", http=connection, timeout_graceful_shutdown=2,
                            server_header=False, **tls)
    http = _UvicornServer(config)
    if options.reuse_port:  # a replica joins the shared ports only once it can answer, else it takes connections
        while not all(model.ready or model.scheduler.failed for model in repository):  # it could only refuse
            await asyncio.sleep(0.01)
    sock = _listen(options.host, options.port, options.reuse_port)
    http_port = sock.getsockname()[1]
    sockets = [sock]
    if options.admin_port is not None:
        sockets.append(_listen(options.host, options.admin_port))
    grpc_server, grpc_port = None, None
    if options.grpc_port >= 0:
        from mvu.host.serving.grpc_server import GrpcSettings, create_grpc_server

        try:
            grpc_server, grpc_port = create_grpc_server(repository, GrpcSettings(
                host=options.host, port=options.grpc_port, tls_cert=options.tls_cert, tls_key=options.tls_key,
                keys=options.keys, open_health=options.open_health, max_message_bytes=options.max_request_bytes,
                reuse_port=options.reuse_port))
        except OSError as error:
            for listening in sockets:
                listening.close()
            raise SystemExit(f"mvu serve: {error}") from None
        await grpc_server.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, lambda: setattr(http, "should_exit", True))
    serving = asyncio.create_task(http.serve(sockets=sockets))
    while not http.started and not serving.done():
        await asyncio.sleep(0.01)
    scheme = "https" if options.tls_cert else "http"
    # The ready file also waits for the models to load (or fail): a watcher may then send requests at once.
    while http.started and options.ready_file and not serving.done() and not all(
            model.ready or model.scheduler.failed for model in repository):
        await asyncio.sleep(0.01)
    if http.started:
        log.info("HTTP on %s://%s:%d%s", scheme, options.host, http_port,
                 f", gRPC on {options.host}:{grpc_port}" if grpc_port else "")
        if options.ready_file:  # written whole, then renamed: a watcher never reads half of it
            partial = options.ready_file.with_name(options.ready_file.name + ".partial")
            partial.write_text(json.dumps({"http_port": http_port, "grpc_port": grpc_port, "pid": os.getpid(),
                                           "admin_port": sockets[-1].getsockname()[1] if len(sockets) > 1 else None}))
            partial.replace(options.ready_file)
    try:
        await serving
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace=2)
        repository.close()


def _configure_logging(access: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mvu serve: %(levelname)s %(message)s"))
    serving = logging.getLogger("mvu.host.serving")
    serving.addHandler(handler)
    serving.setLevel(logging.INFO)
    access_log = logging.getLogger("mvu.access")
    access_log.propagate = False
    if access == "json":
        out = logging.StreamHandler(sys.stdout)
        out.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(out)
        access_log.setLevel(logging.INFO)
    else:
        access_log.setLevel(logging.WARNING)


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    """Check the security settings: TLS files, key file, keys over plain HTTP."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("mvu serve: --tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key):
        if path and not Path(path).is_file():
            raise SystemExit(f"mvu serve: {path}: no such file")
    try:
        keys = ApiKeys(args.keys) if args.keys else None
    except KeyFileError as error:
        raise SystemExit(f"mvu serve: {error}") from None
    if keys and not args.tls_cert:
        if _is_loopback(args.host):
            log.warning("API keys are accepted over plain HTTP on %s: in clear text, readable by whoever can watch "
                        "this machine's loopback; give --tls-cert/--tls-key to encrypt them", args.host)
        elif not args.allow_insecure_keys:
            raise SystemExit(f"mvu serve: API keys over plain HTTP on {args.host} would travel in clear text; "
                             "give --tls-cert/--tls-key, or --allow-insecure-keys if a proxy terminates TLS")
        else:
            log.warning("API keys are accepted over plain HTTP on %s: anyone on the network can read them",
                        args.host)
    return ServerOptions(args.host, args.port, args.grpc_port, Path(args.tls_cert) if args.tls_cert else None,
                         Path(args.tls_key) if args.tls_key else None, keys, args.open_health, args.open_metrics,
                         args.max_request_bytes, Path(args.ready_file) if args.ready_file else None,
                         args.body_timeout, args.header_timeout, args.reuse_port, args.admin_port)


def main_serve(args: argparse.Namespace) -> int:
    _configure_logging(args.access_log)
    for name in ("max_batch_size", "max_queue_size", "max_request_bytes", "max_image_pixels"):
        if getattr(args, name) < 1:
            raise SystemExit(f"mvu serve: --{name.replace('_', '-')} must be at least 1")
    if min(args.timeout, args.body_timeout, args.header_timeout) <= 0 or args.max_queue_delay_ms < 0:
        raise SystemExit("mvu serve: --timeout, --body-timeout and --header-timeout must be positive and "
                         "--max-queue-delay-ms not negative")
    options = options_from_args(args)
    repository = ModelRepository(_backend(args), ServingLimits(args.max_batch_size, args.max_queue_delay_ms / 1e3,
                                                               args.max_queue_size, args.timeout,
                                                               args.max_image_pixels, args.features),
                                 folder=_model_repository(args))
    try:
        models = [repository.add(ModelSpec.parse(text)) for text in args.models]
        models += repository.add_folder() if repository.folder else []
    except (ValueError, FileNotFoundError) as error:  # PackageError is a ValueError
        repository.close()
        raise SystemExit(f"mvu serve: {error}") from None
    for model in models:
        log.info("model %s version %s on the %s backend", model.name, model.version, args.backend)
    asyncio.run(run_server(repository, options))
    return 0


def _backend(args: argparse.Namespace) -> ServingBackend:
    """``--backend`` with where a board is (``--board-port``, ``--baud``)."""
    if args.backend == "board" and not args.board_port:
        raise SystemExit("mvu serve: --backend board needs --board-port, the board's serial port (e.g. "
                         "/dev/ttyUSB0); --port is the HTTP port")
    return ServingBackend(args.backend, {"port": args.board_port, "baud": args.baud})


def _model_repository(args: argparse.Namespace) -> Path | None:
    if args.model_repository is None:
        if not args.models:
            raise SystemExit("mvu serve: give model packages, --model-repository DIR, or both")
        return None
    folder = Path(args.model_repository)
    if not folder.is_dir():
        raise SystemExit(f"mvu serve: --model-repository {folder}: no such folder")
    return folder
