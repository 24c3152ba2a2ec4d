"""ONNX import: a static-shaped, constant-folded graph with BatchNormalization folded into Conv."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

__all__ = ["Node", "Graph", "ModelImportError", "import_onnx", "SUPPORTED_OPS", "PREQUANTIZED_OPS"]

MIN_OPSET, MAX_OPSET = 9, 21

SUPPORTED_OPS = frozenset({
    "Conv", "Relu", "Clip", "Add", "Sum", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm", "MatMul",
    "Flatten", "Reshape", "Concat", "Softmax", "BatchNormalization", "Identity", "Dropout", "Mul",
    *("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearGlobalAveragePool",
      "QGemm"),
})
#: Operators of models that arrive already quantized (com.microsoft contributes the last three).
PREQUANTIZED_OPS = frozenset({"QuantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd",
                              "QLinearGlobalAveragePool", "QGemm"})


class ModelImportError(ValueError):
    """A model the compiler cannot take; the message names the file and the cause."""


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)


@dataclass
class Graph:
    """Nodes in topological order; ``constants`` holds every initializer and folded value."""

    name: str
    input: str
    input_shape: tuple[int, ...]
    output: str
    nodes: list[Node]
    constants: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    source_sha256: str
    opset: int = 17

    def consumers(self, tensor: str) -> list[Node]:
        return [node for node in self.nodes if tensor in node.inputs]


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def import_onnx(source: str | Path | onnx.ModelProto, *, name: str | None = None) -> Graph:
    """Load, check and simplify an ONNX image classifier with one image input and one output."""
    label = name or (str(source) if not isinstance(source, onnx.ModelProto) else "<model>")
    try:
        model = source if isinstance(source, onnx.ModelProto) else onnx.load(str(source))
    except FileNotFoundError:
        raise ModelImportError(f"{label}: no such file") from None
    except Exception as error:  # protobuf raises several kinds for corrupt files
        raise ModelImportError(f"{label}: not a readable ONNX model ({type(error).__name__}: {error})") from None
    digest = hashlib.sha256(model.SerializeToString()).hexdigest()
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ModelImportError(f"{label}: opset {opset} is outside the supported {MIN_OPSET}..{MAX_OPSET}")

    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in constants]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ModelImportError(f"{label}: expected one input and one output, found {len(inputs)} and "
                           f"{len(model.graph.output)}")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(shape) != 4:
        raise ModelImportError(f"{label}: input '{inputs[0].name}' must be NCHW, has shape {shape}")
    if None in shape[1:] or 0 in shape[1:]:
        raise ModelImportError(f"{label}: input '{inputs[0].name}' has a dynamic size {shape}; "
                           f"the compiler needs static channels and spatial dimensions")
    shape[0] = 1  # batch 1
    _fix_input_shape(model, inputs[0].name, shape)
    contrib = any(n.domain not in ("", "ai.onnx") for n in model.graph.node)
    try:
        model = shape_inference.infer_shapes(model, strict_mode=not contrib)
    except Exception as error:
        raise ModelImportError(f"{label}: shape inference failed: {error}") from None

    nodes = [Node(n.op_type, n.name or f"{n.op_type}_{i}", list(n.input), list(n.output), _attributes(n))
             for i, n in enumerate(model.graph.node)]
    for node in nodes:
        if node.op not in SUPPORTED_OPS and not _foldable(node):
            raise ModelImportError(f"{label}: unsupported operator {node.op} (node '{node.name}')")
    shapes = {inputs[0].name: tuple(shape)}
    for value in list(model.graph.value_info) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    if contrib:  # ONNX's shape inference stops at contributed operators: ask onnxruntime
        shapes.update(_shapes_from_onnxruntime(model, inputs[0].name, shape, label))
    graph = Graph(name=model.graph.name or label, input=inputs[0].name, input_shape=tuple(shape),
                  output=model.graph.output[0].name, nodes=nodes, constants=constants, shapes=shapes,
                  source_sha256=digest, opset=opset)
    _fold_constants(graph, model)
    _drop_identities(graph)
    _fold_batch_norm(graph, label)
    _drop_unused(graph)
    return graph


def _shapes_from_onnxruntime(model: onnx.ModelProto, input_name: str, shape: list[int], label: str) -> dict:
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for out in node.output:
            if out and out not in known:
                probe.graph.output.append(onnx.ValueInfoProto(name=out))
                known.add(out)
    try:
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        values = session.run(None, {input_name: np.zeros(shape, np.float32)})
    except Exception as error:
        raise ModelImportError(f"{label}: onnxruntime could not run the model to find its shapes: {error}") from None
    return {o.name: tuple(v.shape) for o, v in zip(session.get_outputs(), values)}


def _drop_unused(graph: Graph) -> None:
    """Remove nodes none of whose outputs is used (e.g. what only fed folded shape arithmetic)."""
    while True:
        used = {i for node in graph.nodes for i in node.inputs} | {graph.output}
        kept = [node for node in graph.nodes if any(o in used for o in node.outputs)]
        if len(kept) == len(graph.nodes):
            return
        graph.nodes = kept


def _fix_input_shape(model: onnx.ModelProto, name: str, shape: list[int]) -> None:
    for value in model.graph.input:
        if value.name == name:
            for dim, size in zip(value.type.tensor_type.shape.dim, shape):
                dim.Clear()
                dim.dim_value = size


def _foldable(node: Node) -> bool:
    """Shape arithmetic (Shape, Gather, Unsqueeze, ...) that constant folding will remove."""
    return node.op in {"Shape", "Gather", "Unsqueeze", "Squeeze", "Cast", "Constant", "ConstantOfShape",
                       "Slice", "Mul", "Div", "Sub", "Concat"}


def _fold_constants(graph: Graph, model: onnx.ModelProto) -> None:
    """Evaluate every node whose inputs are all known, with ONNX's reference evaluator."""
    from onnx.reference import ReferenceEvaluator

    kept = []
    for node in graph.nodes:
        known = all(i == "" or i in graph.constants for i in node.inputs)
        shape_only = node.op == "Shape" and node.inputs[0] in graph.shapes
        if node.op == "Constant" or known or shape_only:
            if shape_only:
                graph.constants[node.outputs[0]] = np.array(graph.shapes[node.inputs[0]], dtype=np.int64)
                continue
            proto = onnx.helper.make_node(node.op, node.inputs, node.outputs, **node.attrs)
            single = onnx.helper.make_model(
                onnx.helper.make_graph([proto], "fold", [onnx.helper.make_empty_tensor_value_info(i)
                                                          for i in node.inputs if i],
                                       [onnx.helper.make_empty_tensor_value_info(o) for o in node.outputs]),
                opset_imports=[onnx.helper.make_opsetid("", graph.opset)])
            evaluator = ReferenceEvaluator(single)
            feeds = {i: graph.constants[i] for i in node.inputs if i}
            for output, value in zip(node.outputs, evaluator.run(None, feeds)):
                graph.constants[output] = np.asarray(value)
        else:
            kept.append(node)
    for node in kept:
        if node.op not in SUPPORTED_OPS:
            raise ModelImportError(f"{graph.name}: operator {node.op} (node '{node.name}') depends on the "
                               f"input and is not supported")
    graph.nodes = kept


def _rename(graph: Graph, old: str, new: str) -> None:
    for node in graph.nodes:
        node.inputs = [new if i == old else i for i in node.inputs]
    if graph.output == old:
        graph.output = new


def _drop_identities(graph: Graph) -> None:
    kept = []
    for node in graph.nodes:
        if node.op in ("Identity", "Dropout"):
            out = node.outputs[0]
            if out == graph.output:  # keep the graph's output name: rename the producer instead
                for other in kept:
                    other.outputs = [out if o == node.inputs[0] else o for o in other.outputs]
                _rename(graph, node.inputs[0], out)
                graph.shapes.setdefault(out, graph.shapes.get(node.inputs[0]))
            else:
                _rename(graph, out, node.inputs[0])
            continue
        kept.append(node)
    graph.nodes = kept


def _fold_batch_norm(graph: Graph, label: str) -> None:
    """Conv followed by BatchNormalization becomes one Conv with adjusted weights and bias."""
    producers = {out: node for node in graph.nodes for out in node.outputs}
    removed = set()
    for node in graph.nodes:
        if node.op != "BatchNormalization":
            continue
        conv = producers.get(node.inputs[0])
        if conv is None or conv.op != "Conv" or len(graph.consumers(conv.outputs[0])) != 1:
            continue  # not foldable: it stays, and runs as a per-channel affine step on the host
        gamma, beta, mean, var = (graph.constants[name].astype(np.float64) for name in node.inputs[1:5])
        scale = gamma / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
        weight = graph.constants[conv.inputs[1]].astype(np.float64)
        bias = graph.constants[conv.inputs[2]].astype(np.float64) if len(conv.inputs) > 2 and conv.inputs[2] \
            else np.zeros(weight.shape[0])
        w_name, b_name = f"{conv.name}_folded_w", f"{conv.name}_folded_b"
        graph.constants[w_name] = (weight * scale[:, None, None, None]).astype(np.float32)
        graph.constants[b_name] = ((bias - mean) * scale + beta).astype(np.float32)
        conv.inputs = [conv.inputs[0], w_name, b_name]
        conv.outputs = [node.outputs[0]]
        removed.add(id(node))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
