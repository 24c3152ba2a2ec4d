"""QDQ models: float operators between DequantizeLinear and QuantizeLinear nodes, onnxruntime's default
static-quantization format. :func:`fold_qdq` rewrites each such pattern into the QOperator op that
onnxruntime's graph optimizer fuses it into, with the pattern's own scales and zero points, so that
:func:`~mvu.host.compiler.prequantized.from_qlinear_graph` imports it and computes what onnxruntime computes.

:data:`RULES` maps each float operator to its rewrite: Conv -> QLinearConv, Gemm -> com.microsoft QGemm,
MatMul -> QLinearMatMul, Add -> QLinearAdd, GlobalAveragePool -> QLinearGlobalAveragePool, AveragePool ->
QLinearAveragePool, Concat -> QLinearConcat, Sigmoid and LeakyRelu -> com.microsoft QLinearSigmoid and
QLinearLeakyRelu (tables), LayerNormalization -> a normalization on the host; other elementwise ops between a DequantizeLinear and a QuantizeLinear arrive as
tables already (:mod:`~mvu.host.compiler.qdq_tables`). MaxPool, Reshape and Flatten run on the codes, and Relu or Clip
becomes a Clip of the codes. Where a QuantizeLinear has other parameters than the DequantizeLinear before it
(around a MaxPool, a Relu, a Concat input, or back to back), onnxruntime requantizes in float32; a depthwise
1x1 QLinearConv does the same (:func:`_requantize`). Weights stored as float with a QuantizeLinear are
quantized here, as onnxruntime would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from mvu.host.compiler.graph import Graph, Node, drop_unused, refusal
from mvu.host.compiler.ir import LAYER_NORM_OP, TABLE_OP

__all__ = ["RULES", "fold_qdq", "is_qdq"]

_CODES = (np.uint8, np.int8)  # activation codes onnxruntime fuses and mvu runs


class _Refused(Exception):
    """A node that cannot be rewritten; the message says why, in the model's terms."""


@dataclass(frozen=True)
class _Quantized:
    """A quantized tensor as a DequantizeLinear reads it: the codes, scale and zero point tensors."""

    codes: str
    scale: str
    zero: str
    axis: int


class _Rewrite:
    """One pass of :func:`fold_qdq`: the DequantizeLinear nodes by output, the QuantizeLinear nodes absorbed."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.dequantized = {node.outputs[0]: node for node in graph.nodes if node.op == "DequantizeLinear"}
        self.absorbed: set[int] = set()

    def constant(self, name: str, value: np.ndarray) -> str:
        self.graph.constants[name] = np.asarray(value)
        return name

    def operand(self, node: Node, index: int) -> _Quantized:
        """Input ``index`` of ``node`` as the DequantizeLinear that makes it."""
        name = node.inputs[index]
        dq = self.dequantized.get(name)
        if dq is None:
            raise _Refused(f"its input '{name}' is float, not the output of a DequantizeLinear")
        if dq.attrs.get("block_size", 0):
            raise _Refused(f"'{name}' is block-quantized (DequantizeLinear '{dq.name}'), which mvu does not take")
        return _Quantized(dq.inputs[0], dq.inputs[1], dq.inputs[2], dq.attrs.get("axis", 1))

    def activation(self, node: Node, index: int) -> _Quantized:
        """An activation input: per-tensor scale and zero point, 8-bit codes."""
        q = self.operand(node, index)
        scale, zero = self.graph.constants[q.scale], self.graph.constants[q.zero]
        if scale.size != 1 or zero.size != 1:
            raise _Refused(f"its input '{node.inputs[index]}' is quantized per channel; mvu takes per-tensor "
                           f"activations")
        if zero.dtype not in _CODES:
            raise _Refused(f"its input '{node.inputs[index]}' has {zero.dtype} codes; mvu takes uint8 or int8 "
                           f"activations")
        return q

    def weight(self, node: Node, index: int, axis: int) -> _Quantized:
        """Constant int8 weights, per tensor or per channel along ``axis`` (the output channels)."""
        q = self.operand(node, index)
        codes = self.graph.constants.get(q.codes)
        if codes is None or codes.dtype != np.int8 or np.any(self.graph.constants[q.zero] != 0):
            kind = "computed" if codes is None else f"{codes.dtype} with zero point {self.graph.constants[q.zero]}"
            raise _Refused(f"its weight '{node.inputs[index]}' is {kind}; mvu takes constant int8 weights, "
                           f"symmetric (zero point 0)")
        scale = self.graph.constants[q.scale]
        if scale.size > 1 and q.axis % codes.ndim != axis % codes.ndim:
            raise _Refused(f"its weight '{node.inputs[index]}' has scales along axis {q.axis}; mvu takes one "
                           f"scale per output channel (axis {axis})")
        return q

    def bias(self, node: Node, index: int, x: _Quantized, w: _Quantized) -> str:
        """Constant int32 bias codes in accumulator units (``x_scale * w_scale``), rescaled if stored in others."""
        q = self.operand(node, index)
        codes = self.graph.constants.get(q.codes)
        if codes is None or codes.dtype != np.int32 or np.any(self.graph.constants[q.zero] != 0):
            raise _Refused(f"its bias '{node.inputs[index]}' is not constant int32 codes with zero point 0")
        units = np.float32(self.graph.constants[x.scale]) * self.graph.constants[w.scale].astype(np.float32)
        scale = self.graph.constants[q.scale].astype(np.float32)
        if np.allclose(scale, units, rtol=1e-6, atol=0):
            return q.codes  # as onnxruntime's fused kernels read it
        rescaled = np.round(codes * (scale.astype(np.float64) / units.astype(np.float64)))
        return self.constant(f"{q.codes}_rescaled", np.clip(rescaled, -2 ** 31, 2 ** 31 - 1).astype(np.int32))

    def result(self, node: Node) -> Node:
        """The QuantizeLinear that is the only reader of ``node``'s output; it is absorbed into the rewrite."""
        output = node.outputs[0]
        readers = self.graph.consumers(output)
        if output == self.graph.output or len(readers) != 1 or readers[0].op != "QuantizeLinear":
            raise _Refused(f"its output '{output}' is float (read by something other than one QuantizeLinear); "
                           f"mvu takes quantized outputs")
        q = readers[0]
        if q.attrs.get("block_size", 0) or q.attrs.get("output_dtype", 0) not in (0, 2, 3):  # 2, 3: uint8, int8
            raise _Refused(f"QuantizeLinear '{q.name}' writes other than 8-bit per-tensor codes")
        self.absorbed.add(id(q))
        return q

    def float_constant(self, node: Node, index: int) -> str:
        """Input ``index`` of ``node`` as the name of a float constant (dequantized if a DequantizeLinear of
        constant codes makes it); "" where the node leaves it out."""
        name = node.inputs[index] if len(node.inputs) > index else ""
        if not name or name in self.graph.constants:
            return name
        q = self.operand(node, index)
        if q.codes not in self.graph.constants:
            raise _Refused(f"its input '{name}' is computed; mvu takes a constant there")
        constants = self.graph.constants
        return self.constant(f"{name}_float", _dequantize(constants[q.codes], constants[q.scale], constants[q.zero],
                                                          q.axis))

    def same_quantization(self, x: _Quantized, q: Node) -> bool:
        constants = self.graph.constants
        return bool(np.array_equal(constants[x.scale], constants[q.inputs[1]])
                    and np.array_equal(constants[x.zero], constants[q.inputs[2]])
                    and constants[x.zero].dtype == constants[q.inputs[2]].dtype)


def _conv(r: _Rewrite, node: Node) -> list[Node]:
    x, w, y = r.activation(node, 0), r.weight(node, 1, 0), r.result(node)
    bias = [r.bias(node, 2, x, w)] if len(node.inputs) > 2 and node.inputs[2] else []
    return [Node("QLinearConv", node.name, [x.codes, x.scale, x.zero, w.codes, w.scale, w.zero, *y.inputs[1:3],
                                            *bias], y.outputs, dict(node.attrs))]


def _gemm(r: _Rewrite, node: Node) -> list[Node]:
    if node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0:
        raise _Refused("it has transA or alpha other than 1")
    if len(node.inputs) > 2 and node.inputs[2] and node.attrs.get("beta", 1.0) != 1.0:
        raise _Refused("it scales its bias (beta other than 1)")
    x, w, y = r.activation(node, 0), r.weight(node, 1, 0 if node.attrs.get("transB", 0) else 1), r.result(node)
    bias = r.bias(node, 2, x, w) if len(node.inputs) > 2 and node.inputs[2] else ""
    return [Node("QGemm", node.name, [x.codes, x.scale, x.zero, w.codes, w.scale, w.zero, bias, *y.inputs[1:3]],
                 y.outputs, {"transB": node.attrs.get("transB", 0)})]


def _matmul(r: _Rewrite, node: Node) -> list[Node]:
    x, w, y = r.activation(node, 0), r.weight(node, 1, 1), r.result(node)
    return [Node("QLinearMatMul", node.name, [x.codes, x.scale, x.zero, w.codes, w.scale, w.zero, *y.inputs[1:3]],
                 y.outputs)]


def _add(r: _Rewrite, node: Node) -> list[Node]:
    a, b, y = r.activation(node, 0), r.activation(node, 1), r.result(node)
    return [Node("QLinearAdd", node.name, [a.codes, a.scale, a.zero, b.codes, b.scale, b.zero, *y.inputs[1:3]],
                 y.outputs)]


def _global_average_pool(r: _Rewrite, node: Node) -> list[Node]:
    x, y = r.activation(node, 0), r.result(node)
    return [Node("QLinearGlobalAveragePool", node.name, [x.codes, x.scale, x.zero, *y.inputs[1:3]], y.outputs,
                 {"channels_last": 0})]


def _average_pool(r: _Rewrite, node: Node) -> list[Node]:
    x, y = r.activation(node, 0), r.result(node)
    return [Node("QLinearAveragePool", node.name, [x.codes, x.scale, x.zero, *y.inputs[1:3]], y.outputs,
                 dict(node.attrs))]


def _concat(r: _Rewrite, node: Node) -> list[Node]:
    """QLinearConcat; an input quantized otherwise than the output is first requantized (:func:`_requantize`),
    as onnxruntime's lookup tables do, where it is an image tensor."""
    parts = [r.activation(node, index) for index in range(len(node.inputs))]
    y = r.result(node)
    nodes, inputs = [], []
    for index, x in enumerate(parts):
        if not r.same_quantization(x, y) and len(r.graph.shapes.get(x.codes, ())) == 4:
            nodes.append(_requantize(r, x, y, f"{node.name}_input{index}"))
            x = _Quantized(nodes[-1].outputs[0], y.inputs[1], y.inputs[2], 1)
        inputs += [x.codes, x.scale, x.zero]
    return [*nodes, Node("QLinearConcat", node.name, [*y.inputs[1:3], *inputs], y.outputs, dict(node.attrs))]


def _table(r: _Rewrite, node: Node) -> list[Node]:
    """Sigmoid, LeakyRelu: com.microsoft QLinearSigmoid, QLinearLeakyRelu, tables of the input codes."""
    x, y = r.activation(node, 0), r.result(node)
    return [Node(f"QLinear{node.op}", node.name, [x.codes, x.scale, x.zero, *y.inputs[1:3]], y.outputs,
                 dict(node.attrs))]


def _layer_norm(r: _Rewrite, node: Node) -> list[Node]:
    """LayerNormalization: onnxruntime has no quantized kernel for it (it dequantizes, normalizes in float and
    quantizes); mvu normalizes on the host in float (:data:`~mvu.host.compiler.ir.LAYER_NORM_OP`), its scale and
    bias dequantized where they are quantized."""
    x, y = r.activation(node, 0), r.result(node)
    terms = [r.float_constant(node, index) for index in (1, 2)]
    return [Node(LAYER_NORM_OP, node.name, [x.codes, x.scale, x.zero, *terms, *y.inputs[1:3]], y.outputs,
                 dict(node.attrs))]


def _on_codes(r: _Rewrite, node: Node) -> list[Node]:
    """MaxPool, Reshape, Flatten, Transpose: the same op on the codes, requantized (:func:`_requantize`) where the
    QuantizeLinear after it has another scale or zero point than its input: after a MaxPool (onnxruntime's
    float MaxPool commutes with the monotonic requantization), before a Reshape or Flatten (on the image)."""
    if len(node.outputs) > 1 and any(r.graph.consumers(o) for o in node.outputs[1:]):
        raise _Refused("its indices output is used")
    x, y = r.activation(node, 0), r.result(node)
    if r.same_quantization(x, y):
        return [Node(node.op, node.name, [x.codes, *node.inputs[1:]], y.outputs, dict(node.attrs))]
    if node.op == "MaxPool":
        pooled = f"{node.name}_codes"
        r.graph.shapes[pooled] = r.graph.shapes[y.outputs[0]]
        return [Node(node.op, node.name, [x.codes], [pooled], dict(node.attrs)),
                _requantize(r, replace(x, codes=pooled), y, f"{node.name}_requantize", y.outputs[0])]
    moved = _requantize(r, x, y, f"{node.name}_requantize")
    return [moved, Node(node.op, node.name, [moved.outputs[0], *node.inputs[1:]], y.outputs, dict(node.attrs))]


def _pad(r: _Rewrite, node: Node) -> list[Node]:
    """A Pad of the codes, its constant quantized as the QuantizeLinear after it quantizes it (onnxruntime pads
    the dequantized floats); refused where that QuantizeLinear requantizes."""
    x, y = r.activation(node, 0), r.result(node)
    if not r.same_quantization(x, y):
        raise _Refused("its output is quantized otherwise than its input")
    inputs = [x.codes, *node.inputs[1:2]]
    if len(node.inputs) > 2 and node.inputs[2]:
        value = node.inputs[2]
        if value not in r.graph.constants:
            q = r.operand(node, 2)
            constants = r.graph.constants
            value = (np.float32(constants[q.codes]) - np.float32(constants[q.zero])) * np.float32(constants[q.scale])
        else:
            value = r.graph.constants[value]
        inputs.append(r.constant(f"{node.name}_value_code", _code(float(value), r.graph.constants[y.inputs[1]],
                                                                  r.graph.constants[y.inputs[2]])))
    else:
        inputs.append(y.inputs[2])  # a zero constant is the zero point's code
    return [Node("Pad", node.name, inputs + node.inputs[3:], y.outputs, dict(node.attrs))]


def _code(value: float, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """``value`` quantized as QuantizeLinear does it: float32 division, half to even, saturated."""
    info = np.iinfo(zero.dtype)
    code = np.rint(np.float32(value) / np.float32(scale)) + np.float32(zero)
    return np.asarray(np.clip(code, info.min, info.max)).astype(zero.dtype)


def _clamp(r: _Rewrite, node: Node) -> list[Node]:
    """Relu or Clip: a Clip of the codes to its bounds quantized, after a requantization (:func:`_requantize`)
    where the QuantizeLinear after it has another scale or zero point than its input (quantization is monotonic:
    clamping before it or after it is the same)."""
    x, y = r.activation(node, 0), r.result(node)
    limits = {"min": 0.0 if node.op == "Relu" else node.attrs.get("min", -np.inf), "max": node.attrs.get("max", np.inf)}
    for index, key in enumerate(limits, 1):
        if len(node.inputs) > index and node.inputs[index]:
            if node.inputs[index] not in r.graph.constants:
                raise _Refused(f"its {key} '{node.inputs[index]}' is computed, not a constant")
            limits[key] = float(r.graph.constants[node.inputs[index]])
    nodes = []
    if not r.same_quantization(x, y):
        nodes.append(_requantize(r, x, y, f"{node.name}_requantize"))
        x = _Quantized(nodes[-1].outputs[0], y.inputs[1], y.inputs[2], 1)
    scale, zero = r.graph.constants[x.scale], r.graph.constants[x.zero]
    bounds = [r.constant(f"{node.name}_{key}_code", _code(value, scale, zero)) for key, value in limits.items()]
    return [*nodes, Node("Clip", node.name, [x.codes, *bounds], y.outputs)]


def _requantize(r: _Rewrite, x: _Quantized, y: Node, name: str, output: str | None = None) -> Node:
    """A depthwise 1x1 QLinearConv with unit weights that moves image codes from ``x``'s quantization to that of
    the QuantizeLinear ``y``, as ``QuantizeLinear(DequantizeLinear(codes))`` computes it in float32: its weight
    scale is chosen (:func:`_unit_scale`) so that its one rounding gives that result for every code where one
    can."""
    shape = r.graph.shapes.get(x.codes, ())
    if len(shape) != 4:
        raise _Refused(f"it requantizes '{x.codes}', which is not an image tensor")
    constants = r.graph.constants
    scale = _unit_scale(constants[x.scale], constants[x.zero], constants[y.inputs[1]], constants[y.inputs[2]])
    channels = shape[1]
    output = output or f"{name}_codes"
    r.graph.shapes[output] = shape
    weight = r.constant(f"{name}_weight", np.ones((channels, 1, 1, 1), np.int8))
    w_scale = r.constant(f"{name}_weight_scale", np.full(channels, scale, np.float32))
    w_zero = r.constant(f"{name}_weight_zero_point", np.zeros(channels, np.int8))
    return Node("QLinearConv", name, [x.codes, x.scale, x.zero, weight, w_scale, w_zero, *y.inputs[1:3]], [output],
                {"group": channels, "kernel_shape": [1, 1]})


def _unit_scale(x_scale: np.ndarray, x_zero: np.ndarray, y_scale: np.ndarray, y_zero: np.ndarray,
                steps: int = 64) -> np.float32:
    """The float32 ``w`` within ``steps`` ulps of 1 for which ``rint(k * ((x_scale * w) / y_scale)) + y_zero``
    (one rounding, as QLinearConv requantizes) differs from ``rint((k * x_scale) / y_scale) + y_zero``
    (DequantizeLinear, then QuantizeLinear) for the fewest codes ``k``, saturated, all float32; the nearest to 1
    of those. None differ but where the scales' ratio makes exact ties of ``k * ratio`` (docs/compiler.md)."""
    info = np.iinfo(x_zero.dtype)
    k = (np.arange(info.min, info.max + 1) - int(x_zero)).astype(np.float32)
    s1, s2 = np.float32(x_scale), np.float32(y_scale)
    out = np.iinfo(y_zero.dtype)
    expected = np.clip(np.rint((k * s1) / s2) + int(y_zero), out.min, out.max)
    best, fewest = np.float32(1.0), k.size + 1
    below, above = np.float32(1.0), np.float32(1.0)
    for _ in range(steps):
        for w in (below, above):
            ratio = np.float32(np.float32(s1 * w) / s2)
            differ = np.count_nonzero(np.clip(np.rint(k * ratio) + int(y_zero), out.min, out.max) != expected)
            if differ < fewest:
                best, fewest = w, differ
            if not differ:
                return w
        below, above = np.nextafter(below, np.float32(0)), np.nextafter(above, np.float32(2))
    return best


#: Float op type -> the rewrite of it, its DequantizeLinear inputs and its QuantizeLinear output into QOperator
#: nodes.
RULES: dict[str, Callable[[_Rewrite, Node], list[Node]]] = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "Add": _add, "GlobalAveragePool": _global_average_pool,
    "AveragePool": _average_pool, "Concat": _concat, "MaxPool": _on_codes, "Reshape": _on_codes,
    "Flatten": _on_codes, "Transpose": _on_codes, "Relu": _clamp, "Clip": _clamp, "Pad": _pad,
    "Sigmoid": _table, "LeakyRelu": _table, "LayerNormalization": _layer_norm, TABLE_OP: lambda r, node: [node],  # made on import, already on codes
}

_ADVICE = {"BatchNormalization": "fold it into the convolution before quantizing (onnxruntime.quantization."
                                 "shape_inference.quant_pre_process)"}


def is_qdq(graph: Graph) -> bool:
    """Whether some DequantizeLinear of a computed tensor feeds another node: a QDQ model."""
    return any(node.op == "DequantizeLinear" and node.inputs[0] not in graph.constants and graph.consumers(
        node.outputs[0]) for node in graph.nodes)


def fold_qdq(graph: Graph) -> Graph:
    """``graph`` with its QDQ patterns rewritten into QOperator ops (in place); every node that cannot be is
    named in one error. Other graphs keep their float ops; a DequantizeLinear of constant weights becomes the
    float weights."""
    _complete_zero_points(graph)
    _evaluate_constants(graph, "QuantizeLinear")
    if not is_qdq(graph):
        _evaluate_constants(graph, "DequantizeLinear")
        return graph
    r = _Rewrite(graph)
    nodes, refused = [], []
    for node in graph.nodes:
        if node.op in ("QuantizeLinear", "DequantizeLinear"):
            nodes.append(node)
        elif node.op in RULES:
            try:
                nodes += RULES[node.op](r, node)
            except _Refused as why:
                refused.append((node, str(why)))
        else:
            refused.append((node, _ADVICE.get(node.op, "mvu has no quantized form of it")))
    nodes = [node for node in nodes if id(node) not in r.absorbed]
    for index, node in enumerate(nodes):
        if node.op == "QuantizeLinear" and node.inputs[0] in r.dequantized:  # back to back: a requantization
            try:
                nodes[index] = _requantize(r, r.operand(node, 0), node, node.name, node.outputs[0])
            except _Refused as why:
                refused.append((node, str(why)))
    if refused:
        raise refusal(graph.name, "cannot import", refused)
    graph.nodes = nodes
    drop_unused(graph)
    return graph


def _complete_zero_points(graph: Graph) -> None:
    """Give every QuantizeLinear and DequantizeLinear its zero point (by default 0, of the codes' type)."""
    written = {}  # the type of each QuantizeLinear's codes
    for op in ("QuantizeLinear", "DequantizeLinear"):
        for node in (n for n in graph.nodes if n.op == op):
            if len(node.inputs) < 3 or not node.inputs[2]:
                if op == "QuantizeLinear":
                    dtype = np.dtype(np.int8 if node.attrs.get("output_dtype", 0) == 3 else np.uint8)
                else:
                    codes = node.inputs[0]
                    dtype = graph.constants[codes].dtype if codes in graph.constants else written.get(codes, np.uint8)
                graph.constants[f"{node.name}_zero_point"] = np.zeros((), dtype)
                node.inputs = [*node.inputs[:2], f"{node.name}_zero_point"]
            if op == "QuantizeLinear":
                written[node.outputs[0]] = graph.constants[node.inputs[2]].dtype


def _along(value: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """A per-tensor or per-channel (along ``axis``) parameter shaped to broadcast against an ``ndim`` tensor."""
    if value.size == 1:
        return value.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return value.reshape(shape)


def _quantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    """QuantizeLinear as onnxruntime computes it: ``x / scale`` in float32, rounded half to even, plus the zero
    point, saturated."""
    info = np.iinfo(zero.dtype)
    codes = np.rint(x.astype(np.float32) / _along(scale.astype(np.float32), axis, x.ndim))
    codes = codes + _along(zero, axis, x.ndim).astype(np.float32)
    return np.clip(codes, info.min, info.max).astype(zero.dtype)


def _dequantize(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    """DequantizeLinear as onnxruntime computes it: ``(codes - zero_point) * scale`` in float32."""
    centred = codes.astype(np.int32) - _along(zero, axis, codes.ndim).astype(np.int32)
    return centred.astype(np.float32) * _along(scale.astype(np.float32), axis, codes.ndim)


_CONSTANT_EVALUATORS = {"QuantizeLinear": _quantize, "DequantizeLinear": _dequantize}


def _evaluate_constants(graph: Graph, op: str) -> None:
    """Replaces each ``op`` node (QuantizeLinear or DequantizeLinear) whose inputs are all constants by its
    value: float weights quantized in a QDQ model, or quantized weights dequantized in a float model."""
    kept = []
    for node in graph.nodes:
        if node.op != op or not all(i in graph.constants for i in node.inputs):
            kept.append(node)
            continue
        value, scale, zero = (graph.constants[name] for name in node.inputs)
        graph.constants[node.outputs[0]] = _CONSTANT_EVALUATORS[op](value, scale, zero, node.attrs.get("axis", 1))
    graph.nodes = kept
