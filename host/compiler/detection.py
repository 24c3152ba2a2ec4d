"""Compiling an SSD detector: its two head outputs joined into the one output the compiler takes.

A detection model (the ``ssd-vgg16`` recipe, or an ONNX export of the same structure) has two outputs, box
regressions [N, P, 4] and class logits [N, P, classes] with class 0 the background, P its prior count
(:class:`~mvu.host.runtime.detection.PriorConfig`: 8732 for SSD300). The compiler takes one output, so a
Concat on the last axis joins them into ``detections`` [N, P, 4 + classes]; the runtime reads the two joined
tensors, each in its own quantization (:class:`~mvu.host.runtime.detect.Detector`), and the package records
their names with its post-processing (``task: "detection"`` in the manifest).
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from mvu.hdl.contract.config import HardwareConfig
from mvu.host.compiler.compile import compile_model
from mvu.host.compiler.onnx_file import ModelImportError
from mvu.host.model.package import ModelPackage
from mvu.host.runtime.detection import DetectionConfig

__all__ = ["JOINED_OUTPUT", "compile_detector", "is_detector"]

JOINED_OUTPUT = "detections"


def is_detector(source: str | Path | onnx.ModelProto) -> bool:
    """Whether ``source`` (a model or its file) has two outputs, as a detector (boxes and scores) does; False for
    a file that does not read as ONNX (the compiler then says why)."""
    if not isinstance(source, onnx.ModelProto):
        try:
            source = onnx.load(str(source), load_external_data=False)
        except Exception:  # unreadable: the classifier path reports it
            return False
    return len(source.graph.output) == 2


def _dims(value: onnx.ValueInfoProto) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]


def _heads(model: onnx.ModelProto, config: DetectionConfig, where: str) -> tuple[str, str, int]:
    """The boxes output, the scores output and the number of classes, or an error naming what is expected."""
    boxes, scores = model.graph.output
    b, s = _dims(boxes), _dims(scores)
    priors = config.priors.count
    expected = (f"mvu takes one output (a classifier's) or a detector's two: box regressions [N, {priors}, 4] "
                f"then class logits [N, {priors}, classes >= 2] (background first), one row per prior box of SSD300")
    if len(b) != 3 or len(s) != 3 or b[1:] != [priors, 4] or s[1] != priors or s[2] is None or s[2] < 2:
        raise ModelImportError(f"{where}: it has 2 outputs ('{boxes.name}', '{scores.name}'); {expected}; they are "
                               f"'{boxes.name}' {b} and '{scores.name}' {s}")
    return boxes.name, scores.name, s[2]


def _joined(model: onnx.ModelProto, boxes: str, scores: str, classes: int) -> onnx.ModelProto:
    joined = onnx.ModelProto()
    joined.CopyFrom(model)
    joined.graph.node.append(helper.make_node("Concat", [boxes, scores], [JOINED_OUTPUT], name=JOINED_OUTPUT, axis=2))
    del joined.graph.output[:]
    joined.graph.output.append(helper.make_tensor_value_info(JOINED_OUTPUT, TensorProto.FLOAT,
                                                             [1, None, 4 + classes]))
    return joined


def compile_detector(source: str | Path | onnx.ModelProto, *, config: HardwareConfig, preprocessing: dict | None,
                     labels: list[str] | None, calibration: list[Path] | None = None, name: str | None = None,
                     progress: bool = True, detection: DetectionConfig = DetectionConfig()) -> ModelPackage:
    """Compile a detector (see the module's docstring); ``labels`` None names the classes ``class 1`` .. (or
    COCO's when there are 81)."""
    from mvu.models.ssd import COCO_LABELS

    where = str(source) if not isinstance(source, onnx.ModelProto) else name or "model"
    model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source))
    boxes, scores, classes = _heads(model, detection, where)
    if labels is None:
        labels = COCO_LABELS if classes == len(COCO_LABELS) else ["background"] + [f"class {i}" for i in
                                                                                      range(1, classes)]
    if len(labels) != classes:
        raise ModelImportError(f"{where}: {len(labels)} labels for {classes} classes (the background included)")
    package = compile_model(_joined(model, boxes, scores, classes), config=config, preprocessing=preprocessing, labels=[], calibration=calibration,
                            name=name, progress=progress)
    join = next(layer for layer in package.model.layers if layer.output == package.model.output)
    package.labels = list(labels)
    package.detection = {"boxes": join.inputs[0], "scores": join.inputs[1], **detection.to_dict()}
    return package
