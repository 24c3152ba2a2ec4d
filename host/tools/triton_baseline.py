"""The same model package served by NVIDIA PyTriton: the baseline of `mvu bench serving --triton`.

Run as a process of its own (so that its Python does not share a GIL with the load
generator, as `mvu serve` does not)::

    python -m mvu.host.tools.triton_baseline MODEL.mvu --backend reference --ready-file ports.json

It binds one model, named as the package, with input ``images`` (BYTES, shape
[N, 1]: Triton's dynamic batcher needs a per-request batch dimension, so each
image is a row) and outputs ``scores`` (FP32 [N, classes], softmax
probabilities) and ``executor_ms`` (FP32 [N, 1]: the milliseconds the Python
callable spent on the batch: decoding, preprocessing and the model), on Triton's
HTTP and gRPC ports (free ports on 127.0.0.1), with dynamic batching like
`mvu serve`'s defaults. Once serving it writes ``{"http_port", "grpc_port",
"model_name", "load_s", "triton_start_s", "access_token"}`` to the ready file
(the token opens PyTriton's guarded endpoints such as statistics: header
``triton-access-token``); SIGTERM or SIGINT stops it.

Environment notes (found while bringing it up on CPU):

* nvidia-pytriton (0.7) pins ``numpy<2`` and, through ``tritonclient~=2.50``,
  ``protobuf<7``; the project's ``grpcio-tools`` wants protobuf 7. Install it in a
  virtual environment of its own and name that Python with ``$MVU_TRITON_PYTHON``
  (the load generator runs this module with it; default: the current Python).
* The wheel ships its own ``tritonserver`` (CPU works: no GPU or CUDA driver is
  needed) and Python-backend stubs linked against ``libpython3.X.so.1.0``. When
  the Python running PyTriton is a shared build that the dynamic linker would not
  find first (pyenv), the stub loads the system's libpython of another patch
  release against this Python's standard library and model loading fails with
  ``'_thread.RLock' object has no attribute '_recursion_count'``;
  :func:`prefer_own_libpython` puts this Python's LIBDIR first on
  ``LD_LIBRARY_PATH`` to avoid that.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["ALL_CLASSES", "free_port", "make_infer_callable", "main", "prefer_own_libpython", "serve", "triton_python"]

#: ``top`` large enough for :meth:`Classifier.classify` to return every class.
ALL_CLASSES = 1 << 30


def triton_python() -> str:
    """The Python to run PyTriton with: ``$MVU_TRITON_PYTHON`` or this one."""
    return os.environ.get("MVU_TRITON_PYTHON") or sys.executable


def prefer_own_libpython() -> None:
    """Put this Python's shared-library folder first on LD_LIBRARY_PATH (inherited by tritonserver's stubs)."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or ""
    if not libdir or not (Path(libdir) / soname).exists():
        return
    current = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if libdir not in current:
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *current])


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now (Triton cannot bind port 0 and report it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _all_scores(classifier: Any, data: bytes) -> np.ndarray:
    prediction = classifier.classify(data, top=ALL_CLASSES)
    scores = np.zeros(len(prediction.top), np.float32)
    for entry in prediction.top:
        scores[entry["class"]] = entry["score"]
    return scores


def make_infer_callable(classifier: Any) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """``images`` [N, 1] of encoded images -> ``scores`` [N, classes] and ``executor_ms`` [N, 1].

    ``classifier``: a :class:`mvu.host.runtime.classify.Classifier`; each image goes through
    ``classify`` (decode, preprocess, model), one after another.
    """

    def infer(images: np.ndarray) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        rows = [_all_scores(classifier, bytes(item)) for item in images.reshape(len(images), -1)[:, 0]]
        scores = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)
        spent = (time.perf_counter() - started) * 1e3
        return {"scores": scores, "executor_ms": np.full((len(rows), 1), spent, np.float32)}

    return infer


def serve(package_path: str | Path, backend: str, ready_file: str | Path | None, *, host: str = "127.0.0.1",
          max_batch_size: int = 8, max_queue_delay_ms: float = 2.0, stop: threading.Event | None = None) -> int:
    """Serve the package until ``stop`` is set (or SIGTERM/SIGINT when run as a program)."""
    prefer_own_libpython()
    started = time.perf_counter()
    from mvu.host.model.package import load_package
    from mvu.host.runtime.classify import Classifier

    package = load_package(package_path)
    classifier = Classifier(package, backend)
    loaded = time.perf_counter()

    from pytriton.decorators import batch
    from pytriton.exceptions import PyTritonBadParameterError
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    infer = make_infer_callable(classifier)

    @batch
    def infer_func(images: np.ndarray) -> dict[str, np.ndarray]:
        try:
            return infer(images)
        except ValueError as error:  # mvu.host.runtime.preprocess.ImageDecodeError is a ValueError
            raise PyTritonBadParameterError(str(error)) from None

    http_port, grpc_port = free_port(host), free_port(host)
    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host, grpc_port=grpc_port,
                          allow_metrics=False, log_verbose=0)
    # PyTriton guards statistics (and other admin endpoints) with a token; the load generator reads statistics
    token = secrets.token_urlsafe(24)
    triton = Triton(config=config, security_config=TritonSecurityConfig(access_token=token))
    try:
        triton.bind(package.name, infer_func,
                    inputs=[Tensor(name="images", dtype=np.object_, shape=(1,))],
                    outputs=[Tensor(name="scores", dtype=np.float32, shape=(-1,)),
                             Tensor(name="executor_ms", dtype=np.float32, shape=(1,))],
                    config=ModelConfig(max_batch_size=max_batch_size, batcher=DynamicBatcher(
                        max_queue_delay_microseconds=int(max_queue_delay_ms * 1000))),
                    strict=False)
        triton.run()
        running = time.perf_counter()
        info = {"http_port": http_port, "grpc_port": grpc_port, "model_name": package.name,
                "load_s": loaded - started, "triton_start_s": running - loaded, "access_token": token}
        if ready_file:
            temporary = Path(f"{ready_file}.tmp")
            temporary.write_text(json.dumps(info))
            temporary.replace(ready_file)
        print(json.dumps({k: v for k, v in info.items() if k != "access_token"}), flush=True)
        stop = stop or threading.Event()
        stop.wait()
    finally:
        triton.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    from mvu.host.executors import BACKENDS

    parser = argparse.ArgumentParser(prog="python -m mvu.host.tools.triton_baseline", description=__doc__.split("\n")[0])
    parser.add_argument("package")
    parser.add_argument("--backend", choices=BACKENDS, default="reference")
    parser.add_argument("--ready-file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return serve(args.package, args.backend, args.ready_file, host=args.host, max_batch_size=args.max_batch_size,
                 max_queue_delay_ms=args.max_queue_delay_ms, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
