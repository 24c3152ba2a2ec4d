"""Accuracy of a package on a labelled image folder, and its agreement with fp32 onnxruntime."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.model.package import ModelPackage
from mvu.host.runtime.classify import Classifier

__all__ = ["evaluate", "read_labelled_images"]


def read_labelled_images(folder: str | Path, labels_csv: str | Path) -> list[tuple[Path, int]]:
    """``(image path, class index)`` from a CSV with columns ``filename`` and ``class_index``."""
    folder = Path(folder)
    try:
        with open(labels_csv, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise FileNotFoundError(f"{labels_csv}: {error.strerror}") from None
    if not rows or not {"filename", "class_index"} <= set(rows[0]):
        raise FileNotFoundError(f"{labels_csv}: needs columns filename and class_index")
    return [(folder / row["filename"], int(row["class_index"])) for row in rows]


def _local_top5(package: ModelPackage, backend: str, config: HardwareConfig | None, paths: list[Path],
                progress: bool, executor) -> list[list[int]]:
    classifier = Classifier(package, backend, config, executor=executor)
    top5 = []
    for index, path in enumerate(paths):
        top5.append([entry["class"] for entry in classifier.classify(path, top=5).top])
        if progress:
            print(f"\revaluating {index + 1}/{len(paths)}", end="", file=sys.stderr)
    if progress:
        print(file=sys.stderr)
    return top5


def evaluate(package: ModelPackage, images: str | Path, labels_csv: str | Path, *, backend: str = "numpy",
             onnx_model: str | Path | None = None, limit: int | None = None,
             config: HardwareConfig | None = None, progress: bool = True, cluster: str | None = None,
             package_path: str | Path | None = None, executor=None) -> dict:
    """Top-1/top-5 of the package; with ``onnx_model``, the same for fp32 onnxruntime and top-1 agreement.
    With ``cluster`` (a Dask scheduler's address) the images are classified there, from ``package_path``
    (the file ``package`` was read from); ``executor`` runs the backend locally (default: a new one)."""
    from mvu.host.runtime.preprocess import PreprocessRecipe, preprocess

    samples = read_labelled_images(images, labels_csv)[:limit]
    paths = [path for path, _ in samples]
    if cluster is None:
        top5 = _local_top5(package, backend, config, paths, progress, executor)
    else:
        from mvu.host.tools.cluster import classify_on_cluster

        predictions = classify_on_cluster(cluster, package_path, paths, backend=backend,
                                          config=config.to_dict() if config else None, progress=progress)
        top5 = [[entry["class"] for entry in prediction["top"]] for prediction in predictions]
    recipe = PreprocessRecipe.from_dict(package.preprocessing)
    session = None
    if onnx_model is not None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    hits = {"top1": 0, "top5": 0, "fp32_top1": 0, "fp32_top5": 0, "agree": 0}
    for (path, label), ours in zip(samples, top5):
        hits["top1"] += ours[0] == label
        hits["top5"] += label in ours
        if session is not None:
            logits = session.run(None, {session.get_inputs()[0].name: preprocess(path, recipe)})[0].reshape(-1)
            theirs = list(np.argsort(-logits, kind="stable")[:5])
            hits["fp32_top1"] += theirs[0] == label
            hits["fp32_top5"] += label in theirs
            hits["agree"] += theirs[0] == ours[0]
    n = max(len(samples), 1)
    report = {"images": len(samples), "backend": backend, "top1": hits["top1"] / n, "top5": hits["top5"] / n}
    if session is not None:
        report["fp32"] = {"top1": hits["fp32_top1"] / n, "top5": hits["fp32_top5"] / n}
        report["agreement_top1"] = hits["agree"] / n
    return report
