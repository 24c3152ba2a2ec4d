"""The serving commands of the `mvu` command line: serve, score, keys, bench serving."""

from __future__ import annotations

import argparse
from typing import Callable

__all__ = ["add_serving_commands"]


def _serve(args: argparse.Namespace) -> int:
    from mvu.host.serving.server import main_serve

    return main_serve(args)


def _score(args: argparse.Namespace) -> int:
    from mvu.host.tools.score import main_score

    return main_score(args)


def _keys(args: argparse.Namespace) -> int:
    from mvu.host.serving.api_keys import main_keys

    return main_keys(args)


def _bench_serving(args: argparse.Namespace) -> int:
    from mvu.host.tools.load_generator import main_bench_serving

    return main_bench_serving(args)


def add_serving_commands(commands, bench_kinds, backend_options: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``serve``, ``score``, ``keys`` and ``bench serving`` on the top-level parsers; ``backend_options``
    makes the command line's ``--backend`` group (for serve, the board's port is --board-port: --port is HTTP's)."""
    from mvu.host.executors import BACKENDS

    serve = commands.add_parser("serve", parents=[backend_options("reference", port_option="--board-port")],
                                help="serve model packages over HTTP (KServe v2, TF Serving) and gRPC")
    serve.add_argument("models", nargs="*", metavar="[NAME[@VERSION]=]MODEL.mvu",
                       help="packages to serve; the name defaults to the package's, the version to 1")
    serve.add_argument("--model-repository", metavar="DIR",
                       help="also serve DIR/NAME/VERSION/model.mvu (Triton's layout); the repository API loads and "
                            "unloads its models while serving")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="HTTP port (0: any free port)")
    serve.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (0: any free port, -1: no gRPC)")
    serve.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS and gRPC over TLS")
    serve.add_argument("--tls-key", help="PEM private key of --tls-cert")
    serve.add_argument("--keys", help="API key file (see `mvu keys`); re-read when it changes")
    serve.add_argument("--open-health", action="store_true", help="health checks need no key")
    serve.add_argument("--open-metrics", action="store_true", help="/metrics needs no key")
    serve.add_argument("--allow-insecure-keys", action="store_true",
                       help="accept API keys over plain HTTP on a non-loopback address")
    serve.add_argument("--max-batch-size", type=int, default=8)
    serve.add_argument("--max-queue-delay-ms", type=float, default=0.0,
                       help="how long a batch waits to fill (default 0: whatever is queued runs together)")
    serve.add_argument("--max-queue-size", type=int, default=64, help="queued images per model before 503")
    serve.add_argument("--timeout", type=float, default=60.0, help="per-request limit in seconds")
    serve.add_argument("--max-request-bytes", type=int, default=64 << 20, help="larger bodies get 413")
    serve.add_argument("--body-timeout", type=float, default=30.0,
                       help="seconds a request body may take to arrive (slower ones get 408), and an answer to be "
                            "read")
    serve.add_argument("--header-timeout", type=float, default=10.0,
                       help="seconds for a request line and headers to arrive; slower ones get 408")
    serve.add_argument("--max-image-pixels", type=int, default=40_000_000,
                       help="larger images get 400 before they are decoded (decompression bombs)")
    serve.add_argument("--reuse-port", action="store_true",
                       help="share the HTTP and gRPC ports with other `mvu serve` processes (replicas): the kernel "
                            "spreads connections over them")
    serve.add_argument("--admin-port", type=int,
                       help="also answer HTTP on this port of its own (0: any free one; the ready file names it), "
                            "so that one replica of several can be reached, e.g. to load a model")
    serve.add_argument("--features", action="store_true",
                       help="also serve each model's featurizer stage output as an output named 'features' (FP32 "
                            "[N, features]), for heads of your own")
    serve.add_argument("--access-log", choices=("json", "off"), default="json")
    serve.add_argument("--ready-file", help="write the bound ports here as JSON once serving and the models loaded")
    serve.set_defaults(handler=_serve)

    score = commands.add_parser("score", help="classify images with a running `mvu serve`")
    score.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    score.add_argument("images", nargs="+")
    score.add_argument("--model", help="model name (default: the server's only model)")
    score.add_argument("--version", help="model version (default: the newest)")
    score.add_argument("--key", help="API key (default: $MVU_API_KEY)")
    score.add_argument("--cacert", help="PEM CA certificate to trust (self-signed servers)")
    score.add_argument("--top", type=int, default=5)
    score.add_argument("--timeout", type=float, default=60.0)
    score.add_argument("--retries", type=int, default=3)
    score.add_argument("--json", action="store_true")
    score.set_defaults(handler=_score)

    keys = commands.add_parser("keys", help="create or regenerate API keys (stored hashed)")
    keys.add_argument("action", choices=("create", "regenerate", "show"))
    keys.add_argument("file", help="the key file that `mvu serve --keys` reads")
    keys.add_argument("which", nargs="?", choices=("primary", "secondary"), help="the key to regenerate")
    keys.set_defaults(handler=_keys)

    bench = bench_kinds.add_parser("serving", help="latency and throughput of `mvu serve` (and Triton) under load")
    bench.add_argument("package", help="the .mvu package to serve")
    bench.add_argument("--image", help="the JPEG to score (default: a demo photo)")
    bench.add_argument("--backend", choices=BACKENDS, default="reference")
    bench.add_argument("--clients", default="1,4,16", help="comma-separated concurrency levels")
    bench.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    bench.add_argument("--triton", action="store_true", help="also serve the model with nvidia-pytriton")
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--output", help="also write the JSON report to this file")
    bench.set_defaults(handler=_bench_serving)
