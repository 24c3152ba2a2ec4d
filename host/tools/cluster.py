"""Classifying many images on a Dask cluster: the package goes to every worker once, each worker keeps
one classifier per (package, backend, configuration) — so an RTL model is built or loaded once per
worker — and images travel as their encoded bytes in small chunks. Results come back in input order;
chunks of a worker that dies are run again elsewhere (Dask reschedules them)."""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

__all__ = ["classify_on_cluster", "cluster_threads", "CHUNK"]

#: Images per task: small enough to spread a data set over every worker, large enough to amortise a task.
CHUNK = 4
_CLASSIFIERS: dict[tuple, object] = {}  # per worker process


def _classifier(package_bytes: bytes, backend: str, config: dict | None):
    """This worker's classifier of the package, made on first use."""
    from mvu.hdl.contract.config import HardwareConfig
    from mvu.host.model.package import load_package
    from mvu.host.runtime.classify import Classifier

    key = (hashlib.sha256(package_bytes).hexdigest(), backend, repr(sorted((config or {}).items())))
    if key not in _CLASSIFIERS:
        hardware = HardwareConfig.from_dict(config) if config else None
        with tempfile.NamedTemporaryFile(suffix=".mvu") as handle:
            handle.write(package_bytes)
            handle.flush()
            package = load_package(handle.name, hardware)
        _CLASSIFIERS[key] = Classifier(package, backend, hardware)
    return _CLASSIFIERS[key]


def _classify_chunk(package_bytes: bytes, backend: str, config: dict | None, images: list[tuple[str, bytes]],
                    top: int, digest: bool = False) -> list[dict]:
    """Predictions of a chunk; with ``digest`` each also carries ``logits_sha256``, the SHA-256 of its logits'
    bytes, so that runs on different backends can be compared bit for bit without shipping the logits."""
    classifier = _classifier(package_bytes, backend, config)
    predictions = []
    for name, data in images:
        prediction = classifier.classify(data, top=top, name=name).to_dict()
        if digest:
            prediction["logits_sha256"] = hashlib.sha256(classifier.runner.last_output.tobytes()).hexdigest()
        predictions.append(prediction)
    return predictions


def classify_on_cluster(address: str, package_path: str | Path, sources: list[str | Path], *, backend: str,
                        config: dict | None = None, top: int = 5, progress: bool = True,
                        digest: bool = False) -> list[dict]:
    """Each source's prediction (:meth:`Prediction.to_dict`, with ``logits_sha256`` if ``digest``), in order,
    computed on the cluster at ``address`` (``tcp://HOST:8786``, or a ``distributed.Client``'s scheduler
    address)."""
    from distributed import Client, as_completed

    try:
        client = Client(address, timeout=30)
    except (OSError, TimeoutError) as error:
        raise ConnectionError(f"no Dask scheduler answers at {address} ({error})") from None
    with client:
        package = client.scatter(Path(package_path).read_bytes(), broadcast=True)
        chunks = [sources[start:start + CHUNK] for start in range(0, len(sources), CHUNK)]
        # Bounded in flight: a data set's images are read as their chunks are sent, not all at once.
        window = 4 * max(1, sum(client.nthreads().values()))
        results: list[list[dict] | None] = [None] * len(chunks)
        order: dict[str, int] = {}
        running = as_completed()

        def send(index: int) -> None:
            images = [(str(path), Path(path).read_bytes()) for path in chunks[index]]
            future = client.submit(_classify_chunk, package, backend, config, images, top, digest, pure=False)
            order[future.key] = index
            running.add(future)

        for index in range(min(window, len(chunks))):
            send(index)
        sent, done = min(window, len(chunks)), 0
        for future in running:
            chunk = results[order.pop(future.key)] = future.result()
            done += len(chunk)
            if sent < len(chunks):
                send(sent)
                sent += 1
            if progress:
                print(f"\r{backend} on {address}: {done}/{len(sources)} images", end="", file=sys.stderr)
        if progress:
            print(file=sys.stderr)
    return [prediction for chunk in results for prediction in chunk]


def cluster_threads(address: str) -> int:
    """How many worker threads the cluster at ``address`` has now."""
    from distributed import Client

    try:
        with Client(address, timeout=30) as client:
            return sum(client.nthreads().values())
    except (OSError, TimeoutError) as error:
        raise ConnectionError(f"no Dask scheduler answers at {address} ({error})") from None
