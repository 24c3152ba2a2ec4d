"""The model package (.mvu): one zip file with a JSON manifest and the quantized arrays."""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.model.quantized import Layer, QuantizedModel, QuantParams
from mvu.host.model.stages import Stage, model_stages, stages_from_manifest

__all__ = ["FORMAT_VERSION", "PackageError", "ModelPackage", "save_package", "load_package"]

FORMAT_VERSION = 1


class PackageError(ValueError):
    """A package that cannot be used: unreadable, of another format, or for other hardware."""


class ModelPackage:
    """A compiled model with what is needed to serve it: preprocessing, labels, hardware configuration, and
    its stages (preprocessing -> featurizer -> head; see :mod:`mvu.host.model.stages`)."""

    def __init__(self, name: str, model: QuantizedModel, config: HardwareConfig, *, preprocessing: dict,
                 labels: list[str], source_sha256: str, report: list[dict] | None = None,
                 stages: list[Stage] | None = None, detection: dict | None = None):
        self.name, self.model, self.config = name, model, config
        #: a detector's head tensors and post-processing (``boxes``, ``scores`` and a
        #: :class:`~mvu.host.runtime.detection.DetectionConfig` dictionary); None for a classifier
        self.detection = detection
        self.preprocessing, self.labels, self.source_sha256 = preprocessing, labels, source_sha256
        self.report = report if report is not None else model.report
        self.stages = stages if stages is not None else model_stages(model)

    @property
    def task(self) -> str:
        """"classification" or "detection"."""
        return "classification" if self.detection is None else "detection"


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def save_package(package: ModelPackage, path: str | Path) -> Path:
    """Write atomically: a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    model = package.model
    arrays = {f"{i}/{name}": array for i, layer in enumerate(model.layers) for name, array in layer.arrays.items()}
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": package.name,
        "task": package.task,
        "source_sha256": package.source_sha256,
        "hardware_config": package.config.to_dict(),
        "hardware_fingerprint": package.config.fingerprint,
        "input": {"name": model.input, "shape": list(model.input_shape), "quantization": asdict(model.input_q)},
        "output": model.output,
        "preprocessing": package.preprocessing,
        "labels": package.labels,
        "stages": [stage.to_dict() for stage in package.stages],
        **({"detection": package.detection} if package.detection is not None else {}),
        "tensor_quantization": {k: asdict(v) for k, v in model.tensor_q.items()},
        "shapes": {k: list(v) for k, v in model.shapes.items() if v is not None},
        "layers": [{"kind": l.kind, "name": l.name, "inputs": l.inputs, "output": l.output,
                    "placement": l.placement, "attrs": _jsonable(l.attrs), "macs": l.macs,
                    "out_quantization": asdict(l.out_q) if l.out_q else None,
                    "arrays": sorted(l.arrays)} for l in model.layers],
        "report": _jsonable(package.report),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("manifest.json", json.dumps(manifest, indent=1))
            archive.writestr("arrays.npz", buffer.getvalue())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_package(path: str | Path, config: HardwareConfig | None = None) -> ModelPackage:
    """Read and validate a package; with ``config``, refuse one compiled for other hardware."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("manifest.json"))
            arrays = np.load(io.BytesIO(archive.read("arrays.npz")), allow_pickle=False)
            arrays = {key: arrays[key] for key in arrays.files}
    except FileNotFoundError:
        raise PackageError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, ValueError, OSError) as error:
        raise PackageError(f"{path}: not an mvu model package ({error})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise PackageError(f"{path}: package format {version}, this mvu reads format {FORMAT_VERSION}")
    try:
        built_for = HardwareConfig.from_dict(manifest["hardware_config"])
    except (KeyError, TypeError, ValueError) as error:
        raise PackageError(f"{path}: bad hardware configuration in the manifest ({error})") from None
    if config is not None and built_for != config:
        raise PackageError(f"{path}: compiled for {built_for.describe()}, but this accelerator is "
                           f"{config.describe()}; recompile the model for it")
    layers = []
    for index, entry in enumerate(manifest["layers"]):
        attrs = dict(entry["attrs"])
        if "clamp" in attrs:
            attrs["clamp"] = tuple(attrs["clamp"])
        out_q = QuantParams(**entry["out_quantization"]) if entry["out_quantization"] else None
        layers.append(Layer(entry["kind"], entry["name"], entry["inputs"], entry["output"], entry["placement"],
                            attrs, {name: arrays[f"{index}/{name}"] for name in entry["arrays"]}, out_q,
                            entry["macs"]))
    model = QuantizedModel(
        input=manifest["input"]["name"], input_shape=tuple(manifest["input"]["shape"]),
        input_q=QuantParams(**manifest["input"]["quantization"]), output=manifest["output"], layers=layers,
        tensor_q={k: QuantParams(**v) for k, v in manifest["tensor_quantization"].items()},
        shapes={k: tuple(v) for k, v in manifest["shapes"].items()}, report=manifest["report"])
    try:
        stages = stages_from_manifest(model, manifest.get("stages"))
    except (ValueError, TypeError, AttributeError) as error:
        raise PackageError(f"{path}: bad stages in the manifest ({error})") from None
    task = manifest.get("task", "classification")
    if task not in ("classification", "detection") or (task == "detection") != ("detection" in manifest):
        raise PackageError(f"{path}: task {task!r} with{'out' if 'detection' not in manifest else ''} a detection "
                           f"entry; mvu packages are classifiers, or detectors with their detection entry")
    return ModelPackage(manifest["name"], model, built_for, preprocessing=manifest["preprocessing"],
                        labels=manifest["labels"], source_sha256=manifest["source_sha256"], stages=stages,
                        detection=manifest.get("detection"))
