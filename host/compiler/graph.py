"""ONNX import: a static-shaped, constant-folded graph with BatchNormalization folded into Conv."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from mvu.host.compiler.ir import TABLE_OP, Graph, Node
from mvu.host.compiler.onnx_file import ModelImportError, cause, input_shape, read_onnx
from mvu.host.compiler.qdq_tables import fuse_qdq_tables
from mvu.host.compiler.rewrites import fold_pads, fuse_gates, fuse_gelu

__all__ = ["Node", "Graph", "ModelImportError", "drop_unused", "import_model", "import_onnx", "refusal",
           "SUPPORTED_OPS", "PREQUANTIZED_OPS"]

SUPPORTED_OPS = frozenset({
    "Conv", "Relu", "Clip", "Add", "Sum", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm", "MatMul",
    "Flatten", "Reshape", "Concat", "Softmax", "BatchNormalization", "Identity", "Dropout", "Mul", "Pad",
    "Transpose", "LayerNormalization", "LpNormalization", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "LeakyRelu", "Swish",
    *("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearGlobalAveragePool",
      "QGemm", "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu"),
})
#: Operators of models that arrive already quantized (com.microsoft contributes all but the first three).
PREQUANTIZED_OPS = frozenset({"QuantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd",
                              "QLinearGlobalAveragePool", "QGemm", "QLinearAveragePool", "QLinearConcat",
                              "QLinearSigmoid", "QLinearLeakyRelu"})
#: What the import takes: the operators models may use, and the tables QDQ regions become (qdq_tables).
_TAKEN = SUPPORTED_OPS | {TABLE_OP}


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _label(source: str | Path | onnx.ModelProto, name: str | None = None) -> str:
    """What messages call a model: ``name``, else the file's path, else the graph's name."""
    if name:
        return name
    return (source.graph.name or "model") if isinstance(source, onnx.ModelProto) else str(source)


def import_onnx(source: str | Path | onnx.ModelProto, *, name: str | None = None) -> Graph:
    """Read, check (:func:`~mvu.host.compiler.onnx_file.read_onnx`) and simplify an ONNX image classifier."""
    label = _label(source, name)
    return import_model(*read_onnx(source, label), label)


def import_model(model: onnx.ModelProto, digest: str, label: str) -> Graph:
    """The graph of a model :func:`~mvu.host.compiler.onnx_file.read_onnx` checked: shapes inferred, constants
    folded, BatchNormalization folded into Conv; every operator it cannot take named in one error."""
    nodes = [Node(n.op_type, n.name or f"{n.op_type}_{i}", list(n.input), list(n.output), _attributes(n))
             for i, n in enumerate(model.graph.node)]
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    fuse_qdq_tables(nodes, constants, list(model.opset_import), model.ir_version)
    fuse_gelu(nodes, constants)
    fuse_gates(nodes)
    nodes = _used(nodes, model.graph.output[0].name)
    computable = _constant_outputs(nodes, set(constants))
    _refuse(label, [node for node in nodes if node.op not in _TAKEN and not set(node.outputs) <= computable])
    contrib = any(n.domain not in ("", "ai.onnx") for n in model.graph.node)
    try:
        model = shape_inference.infer_shapes(model, strict_mode=not contrib)
    except Exception as error:
        raise ModelImportError(f"{label}: shape inference failed ({cause(error)})") from None
    value = next(i for i in model.graph.input if i.name not in constants)
    shape = input_shape(model)
    shapes = {value.name: shape}
    for info in list(model.graph.value_info) + list(model.graph.output):
        dims = info.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = tuple(d.dim_value for d in dims)
    if contrib or _ceil_mode_pool(nodes):  # ONNX's shape inference stops at contributed operators, and keeps a
        # ceil_mode pool's last window where it starts in the padding (onnxruntime drops it): ask onnxruntime
        shapes.update(_shapes_from_onnxruntime(model, value.name, list(shape), label))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    graph = Graph(name=label, input=value.name, input_shape=shape, output=model.graph.output[0].name, nodes=nodes,
                  constants=constants, shapes=shapes, source_sha256=digest, opset=opset)
    _fold_constants(graph)
    _refuse(label, [node for node in graph.nodes if node.op not in _TAKEN], ", on values computed from the input")
    _drop_identities(graph)
    _fold_batch_norm(graph)
    fold_pads(graph)
    drop_unused(graph)
    return graph


def _constant_outputs(nodes: list[Node], known: set[str]) -> set[str]:
    """Tensors that constant folding computes: ``known`` ones, and what Constant, Shape or nodes reading only
    such tensors make."""
    known = set(known)
    for node in nodes:
        if node.op in ("Constant", "Shape") or all(i == "" or i in known for i in node.inputs):
            known.update(node.outputs)
    return known


def _describe_nodes(nodes: list[Node]) -> str:
    """Nodes by op type, in order of appearance: ``Erf (2 nodes: 'a', 'b'), Mul (node 'm')``."""
    groups: dict[str, list[str]] = {}
    for node in nodes:
        groups.setdefault(node.op, []).append(repr(node.name))
    return ", ".join(f"{op} (node {names[0]})" if len(names) == 1 else f"{op} ({len(names)} nodes: {', '.join(names)})"
                     for op, names in groups.items())


def refusal(label: str, what: str, problems: list[tuple[Node, str]]) -> ModelImportError:
    """One error for every refused node, grouped by reason: ``label: what 3 nodes: Erf (2 nodes: 'a', 'b'):
    why; Mul (node 'm'): why``."""
    by_reason: dict[str, list[Node]] = {}
    for node, why in problems:
        by_reason.setdefault(why, []).append(node)
    count = f"{len(problems)} node{'s' if len(problems) > 1 else ''}"
    return ModelImportError(f"{label}: {what} {count}: "
                            + "; ".join(f"{_describe_nodes(nodes)}: {why}" for why, nodes in by_reason.items()))


def _refuse(label: str, nodes: list[Node], where: str = "") -> None:
    """Refuse every node of an operator mvu does not support, at once."""
    if nodes:
        why = (f"mvu does not support {'these operators' if len(nodes) > 1 else 'this operator'}{where}; it takes "
               f"{', '.join(sorted(SUPPORTED_OPS))}")
        raise refusal(label, "cannot import", [(node, why) for node in nodes])


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
        raise ModelImportError(f"{label}: onnxruntime could not run the model to find its shapes ({cause(error)})") from None
    return {o.name: tuple(v.shape) for o, v in zip(session.get_outputs(), values)}


def _ceil_mode_pool(nodes: list[Node]) -> bool:
    return any(node.op in ("MaxPool", "AveragePool") and node.attrs.get("ceil_mode", 0) for node in nodes)


def _used(nodes: list[Node], output: str) -> list[Node]:
    """``nodes`` less those none of whose outputs is read, directly or not, by another or is ``output``."""
    while True:
        used = {i for node in nodes for i in node.inputs} | {output}
        kept = [node for node in nodes if any(o in used for o in node.outputs)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept


def drop_unused(graph: Graph) -> None:
    """Remove nodes none of whose outputs is used (e.g. what only fed folded shape arithmetic)."""
    graph.nodes = _used(graph.nodes, graph.output)


#: Left unevaluated though their inputs are constants: a QDQ model's quantized weights stay quantized.
_KEPT = frozenset({"QuantizeLinear", "DequantizeLinear"})


def _fold_constants(graph: Graph) -> None:
    """Evaluate every node whose inputs are all known, with ONNX's reference evaluator; a node it cannot
    evaluate stays (and is refused by name if mvu does not take its operator)."""
    from onnx.reference import ReferenceEvaluator

    kept = []
    for node in graph.nodes:
        known = all(i == "" or i in graph.constants for i in node.inputs)
        if node.op == "Shape" and node.inputs[0] in graph.shapes:
            graph.constants[node.outputs[0]] = np.array(graph.shapes[node.inputs[0]], dtype=np.int64)
            continue
        if node.op not in _KEPT and (node.op == "Constant" or known):
            proto = onnx.helper.make_node(node.op, node.inputs, node.outputs, **node.attrs)
            single = onnx.helper.make_model(
                onnx.helper.make_graph([proto], "fold", [onnx.helper.make_empty_tensor_value_info(i)
                                                          for i in node.inputs if i],
                                       [onnx.helper.make_empty_tensor_value_info(o) for o in node.outputs]),
                opset_imports=[onnx.helper.make_opsetid("", graph.opset)])
            try:
                values = ReferenceEvaluator(single).run(None, {i: graph.constants[i] for i in node.inputs if i})
            except Exception:  # an operator the evaluator lacks, or bad inputs: the node stays
                kept.append(node)
                continue
            graph.constants.update((output, np.asarray(value)) for output, value in zip(node.outputs, values))
        else:
            kept.append(node)
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


def _fold_batch_norm(graph: Graph) -> None:
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
