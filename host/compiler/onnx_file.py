"""Reading an ONNX file, and what is checked before any work: that it is a readable model with its weights, at a
supported opset, with one float32 NCHW RGB image input of static size and one output. A float16 model is
converted to float32, which the compiler quantizes from. Every refusal is a :class:`ModelImportError` naming the
file and, at once, every problem found."""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx import TensorProto, numpy_helper, shape_inference

__all__ = ["MIN_OPSET", "MAX_OPSET", "ModelImportError", "cause", "input_shape", "read_onnx"]

MIN_OPSET, MAX_OPSET = 9, 21


class ModelImportError(ValueError):
    """A model the compiler cannot take; the message (one line) names the file and the cause."""


def cause(error: Exception) -> str:
    """A library's exception as one line: its type and its message's lines joined."""
    return f"{type(error).__name__}: " + "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def read_onnx(source: str | Path | onnx.ModelProto, label: str) -> tuple[onnx.ModelProto, str]:
    """The checked model (a copy of ``source`` when it is one; batch size 1; float16 made float32) and the
    sha256 of the model as given."""
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
    else:
        model = _load(Path(source), label)
    digest = hashlib.sha256(model.SerializeToString()).hexdigest()
    _check_opset(model, label)
    _to_float32(model)
    _check_signature(model, label)
    return model, digest


def input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    """The image input's shape in a model :func:`read_onnx` checked."""
    constants = {init.name for init in model.graph.initializer}
    value = next(i for i in model.graph.input if i.name not in constants)
    return tuple(d.dim_value for d in value.type.tensor_type.shape.dim)


def _load(path: Path, label: str) -> onnx.ModelProto:
    if not path.exists():
        raise ModelImportError(f"{label}: no such file")
    if path.is_dir():
        raise ModelImportError(f"{label}: is a directory, not an ONNX file")
    if path.stat().st_size == 0:
        raise ModelImportError(f"{label}: the file is empty (0 bytes), not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises several kinds for corrupt files
        raise ModelImportError(f"{label}: not a readable ONNX model: the file is truncated or is not ONNX "
                               f"({cause(error)})") from None
    if not model.graph.node or not model.opset_import:
        raise ModelImportError(f"{label}: not an ONNX model: it has no {'graph' if not model.graph.node else 'opset'}"
                               f" (a truncated or foreign file?)")
    _load_external_data(model, path, label)
    return model


def _load_external_data(model: onnx.ModelProto, path: Path, label: str) -> None:
    """Weights kept in files beside the model, refused by name when any is missing."""
    locations = {entry.value for tensor in model.graph.initializer if tensor.data_location == TensorProto.EXTERNAL
                 for entry in tensor.external_data if entry.key == "location"}
    if not locations:
        return
    missing = sorted(location for location in locations if not (path.parent / location).is_file())
    if missing:
        raise ModelImportError(f"{label}: its weights are stored outside the model, in {', '.join(map(repr, missing))}"
                               f", which {'is' if len(missing) == 1 else 'are'} missing from {path.parent}: copy "
                               f"{'it' if len(missing) == 1 else 'them'} beside the model")
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as error:
        raise ModelImportError(f"{label}: cannot read its external weights ({cause(error)})") from None


def _check_opset(model: onnx.ModelProto, label: str) -> None:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelImportError(f"{label}: declares no ai.onnx opset; mvu takes opsets {MIN_OPSET}..{MAX_OPSET}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelImportError(f"{label}: opset {opset} is outside the supported {MIN_OPSET}..{MAX_OPSET}")


def _float16_tensor(tensor: TensorProto) -> bool:
    return tensor.data_type == TensorProto.FLOAT16


def _as_float32(tensor: TensorProto) -> TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype("float32"), tensor.name)


def _to_float32(model: onnx.ModelProto) -> None:
    """A float16 model computed in float32: weights, constants and declared types widened; a Cast between the
    two float types (as float16 exports with float32 inputs have) becomes an Identity."""
    graph = model.graph
    values = [*graph.input, *graph.output, *graph.value_info]
    if not (any(_float16_tensor(t) for t in graph.initializer)
            or any(v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in values)):
        return
    try:
        inferred = shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type
                 for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    except Exception:  # the checks after this one name what is wrong with such a model
        types = {}
    types.update({t.name: t.data_type for t in graph.initializer})
    floats = (TensorProto.FLOAT16, TensorProto.FLOAT)
    for index, tensor in enumerate(graph.initializer):
        if _float16_tensor(tensor):
            graph.initializer[index].CopyFrom(_as_float32(tensor))
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and _float16_tensor(attribute.t):
                attribute.t.CopyFrom(_as_float32(attribute.t))
        cast_to = next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None
        if cast_to in floats and types.get(node.input[0], TensorProto.FLOAT16) in floats:
            node.op_type = "Identity"
            del node.attribute[:]
    for value in values:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.FLOAT


def _shape_text(dims) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims) + "]"


def _check_signature(model: onnx.ModelProto, label: str) -> None:
    """One image input, float32 NCHW with 3 channels and a static size (the batch becomes 1), and one output."""
    constants = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in constants]
    outputs = list(model.graph.output)
    problems = []
    if len(inputs) != 1:
        problems.append(f"it has {len(inputs)} inputs ({', '.join(repr(i.name) for i in inputs)}); mvu takes "
                        f"one image input")
    if len(outputs) != 1:
        problems.append(f"it has {len(outputs)} outputs ({', '.join(repr(o.name) for o in outputs)}); mvu takes "
                        f"one output, the class scores")
    if len(inputs) == 1:
        problems += _input_problems(inputs[0])
    if problems:
        raise ModelImportError(f"{label}: " + "; ".join(problems))
    batch = inputs[0].type.tensor_type.shape.dim[0]
    batch.Clear()
    batch.dim_value = 1


def _input_problems(value: onnx.ValueInfoProto) -> list[str]:
    tensor = value.type.tensor_type
    dims = tensor.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    text = f"input '{value.name}' {_shape_text(dims)}"
    problems = []
    if tensor.elem_type != TensorProto.FLOAT:
        problems.append(f"input '{value.name}' is {TensorProto.DataType.Name(tensor.elem_type).lower()}; mvu feeds "
                        f"float32 images (pixels normalized by the preprocessing)")
    if len(shape) != 4:
        return problems + [f"{text} is not an image batch; mvu takes NCHW inputs [N, 3, H, W]"]
    if shape[3] == 3 and shape[1] != 3:
        return problems + [f"{text} is channels-last (NHWC); mvu takes NCHW [N, 3, H, W]: export the model "
                           f"channels-first"]
    if shape[1] is not None and shape[1] != 3:
        problems.append(f"{text} has {shape[1]} channel{'s' if shape[1] != 1 else ''}; mvu's preprocessing makes "
                        f"RGB images, 3 channels")
    if None in shape[1:] or 0 in shape[1:]:
        problems.append(f"{text} has a dynamic size; the compiler needs static channels and spatial dimensions "
                        f"(export the model at its input size)")
    return problems
