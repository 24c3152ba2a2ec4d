"""Models that arrive already quantized (QuantizeLinear, QLinearConv, ...): imported with their own scales.

:data:`HANDLERS` maps each op type such a model may use to the function that
turns its nodes into layers computing what the QLinear operators specify,
with onnxruntime's arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mvu.host.compiler.builder import LayerBuilder, conv_placement
from mvu.host.compiler.fuse_tables import fuse_tables
from mvu.host.compiler.graph import Graph, ModelImportError, Node, refusal
from mvu.host.compiler.ir import LAYER_NORM_OP, TABLE_OP
from mvu.host.compiler.rewrites import pad_widths
from mvu.host.model.quantized import Layer, QuantizedModel, QuantParams
from mvu.host.runtime.runner import uniform_pool

__all__ = ["HANDLERS", "from_qlinear_graph"]


def _scale(in_scale: float, w_scale: np.ndarray, out_scale: float) -> dict:
    """The float32 requantization scales onnxruntime computes (``x_scale * w_scale / y_scale``), which the
    post-processor multiplies by in its float32 mode: results are onnxruntime's, bit for bit."""
    return {"scale": ((np.float32(in_scale) * w_scale.astype(np.float32)) / np.float32(out_scale)).astype(np.float32)}


class _Pass(LayerBuilder):
    """One pass of :func:`from_qlinear_graph`; ``input_q`` is the QuantizeLinear's quantization."""

    def __init__(self, graph: Graph):
        super().__init__(graph)
        self.input_q: QuantParams | None = None

    def params(self, scale_name: str, zero_name: str) -> QuantParams:
        """A tensor's quantization from its scale and zero-point constants, in uint8 codes."""
        return QuantParams(float(self.graph.constants[scale_name]), int(self.codes(zero_name)))

    def codes(self, name: str) -> np.ndarray:
        """Constant activation codes as uint8: int8 codes ``q`` become ``q + 128``, with their zero point, so that
        every result is the int8 one plus 128 (the clamps 0..255 are int8's -128..127)."""
        value = self.graph.constants[name]
        if value.dtype == np.int8:
            return (value.astype(np.int16) + 128).astype(np.uint8)
        if value.dtype != np.uint8:
            raise ModelImportError(f"{self.graph.name}: activation '{name}' is {value.dtype}; mvu takes uint8 or "
                                   f"int8 activations")
        return value

    def read(self, node: Node, name: str, q: QuantParams) -> None:
        """Refuse ``node`` reading tensor ``name`` with other parameters than it was written with."""
        if self.tensor_q.get(name) != q:
            raise ModelImportError(f"{self.graph.name}: {node.op} '{node.name}' reads '{name}' with other "
                                   f"parameters than it was written with")

    def weights(self, node: Node, weight_name: str, zero_name: str) -> np.ndarray:
        """The node's weights, refused unless symmetric int8."""
        weight, zero = self.graph.constants[weight_name], self.graph.constants[zero_name]
        if weight.dtype != np.int8 or np.any(zero != 0):
            raise ModelImportError(f"{self.graph.name}: {node.op} '{node.name}' needs symmetric int8 weights")
        return weight

    def w_scale(self, name: str, channels: int) -> np.ndarray:
        """Per-tensor or per-channel weight scales as one float64 value per output channel."""
        return np.broadcast_to(np.asarray(self.graph.constants[name], np.float64).reshape(-1), (channels,))


def _quantize_linear(p: _Pass, node: Node) -> None:
    """The model's input quantization; the host quantizes the float input with it."""
    ins = node.inputs
    if ins[0] != p.graph.input:
        raise ModelImportError(f"{p.graph.name}: QuantizeLinear '{node.name}' inside the network is not supported")
    p.input_q = p.tensor_q[node.outputs[0]] = p.params(ins[1], ins[2])


def _padding(p: _Pass, node: Node) -> list[int]:
    """The node's explicit pads; auto_pad is refused."""
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise ModelImportError(f"{p.graph.name}: {node.op} '{node.name}' uses auto_pad; mvu needs explicit pads")
    return list(node.attrs.get("pads", [0] * 4))


def _qlinear_conv(p: _Pass, node: Node) -> None:
    """Placed by :func:`conv_placement`; requantized in float32 like onnxruntime."""
    ins = node.inputs
    in_q, out_q = p.params(ins[1], ins[2]), p.params(ins[6], ins[7])
    weight = p.weights(node, ins[3], ins[5])
    channels = weight.shape[0]
    bias = p.graph.constants[ins[8]].astype(np.int64) if len(ins) > 8 and ins[8] else np.zeros(channels, np.int64)
    group = node.attrs.get("group", 1)
    attrs = {"strides": list(node.attrs.get("strides", [1, 1])), "pads": _padding(p, node),
             "dilations": list(node.attrs.get("dilations", [1, 1])), "group": group,
             "kernel": list(weight.shape[2:]), "in_zero_point": in_q.zero_point, "clamp": (0, 255),
             "activation": "none", "rounding": "float32"}
    macs = int(np.prod(p.graph.shapes[node.outputs[0]][1:]) * np.prod(weight.shape[1:]))
    arrays = {"weight": weight, "bias": bias, **_scale(in_q.scale, p.w_scale(ins[4], channels), out_q.scale)}
    p.emit(Layer("conv", node.name, [ins[0]], node.outputs[0], conv_placement(group, weight.shape), attrs,
                 arrays, out_q, macs), "QLinearConv")


def _qlinear_add(p: _Pass, node: Node) -> None:
    """On the host; a constant operand (e.g. a classifier's quantized bias) travels in the layer's arrays."""
    ins = node.inputs
    constants = {}
    for name, scale, zero in ((ins[0], ins[1], ins[2]), (ins[3], ins[4], ins[5])):
        if name in p.graph.constants:
            constants[name] = p.codes(name)
            p.tensor_q[name] = p.params(scale, zero)
        else:
            p.read(node, name, p.params(scale, zero))
    p.emit(Layer("add", node.name, [ins[0], ins[3]], node.outputs[0], "host",
                 {"activation": "none", "clamp": (0, 255)}, constants, p.params(ins[6], ins[7])), "QLinearAdd")


def _qlinear_global_average_pool(p: _Pass, node: Node) -> None:
    if node.attrs.get("channels_last", 0):
        raise ModelImportError(f"{p.graph.name}: channels-last QLinearGlobalAveragePool '{node.name}' is not "
                               f"supported")
    p.emit(Layer("gap", node.name, [node.inputs[0]], node.outputs[0], "accelerator", {}, {},
                 p.params(node.inputs[3], node.inputs[4])), node.op)


def _reshape(p: _Pass, node: Node) -> None:
    """Reshape or Flatten: the same codes in the output's shape (:meth:`LayerBuilder.reshape`)."""
    p.reshape(node, p.graph.shapes.get(node.inputs[0]), p.graph.shapes[node.outputs[0]], p.tensor_q[node.inputs[0]])


def _product(p: _Pass, node: Node, in_q: QuantParams, weight: np.ndarray, w_scale_name: str, bias: np.ndarray,
             out_q: QuantParams) -> None:
    """``x @ weight + bias`` (``weight`` int8 [K, N]) on the accelerator, requantized in float32."""
    arrays = {"weight": weight, "bias": bias, **_scale(in_q.scale, p.w_scale(w_scale_name, weight.shape[1]),
                                                        out_q.scale)}
    p.emit(Layer("fc_quantized", node.name, [node.inputs[0]], node.outputs[0], "accelerator",
                 {"in_zero_point": in_q.zero_point, "clamp": (0, 255), "rounding": "float32"}, arrays, out_q,
                 int(weight.size)), node.op)


def _qlinear_matmul(p: _Pass, node: Node) -> None:
    ins = node.inputs
    weight = p.product_rows(ins[0], p.weights(node, ins[3], ins[5]))
    _product(p, node, p.params(ins[1], ins[2]), weight, ins[4], np.zeros(weight.shape[1], np.int64),
             p.params(ins[6], ins[7]))


def _qgemm(p: _Pass, node: Node) -> None:
    """com.microsoft QGemm: ``A x B^T + C``, requantized like QLinearConv."""
    ins = node.inputs
    in_q = p.params(ins[1], ins[2])
    if len(ins) <= 8 or node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0:
        raise ModelImportError(f"{p.graph.name}: QGemm '{node.name}' must have a quantized output, no transA "
                               f"and alpha 1")
    out_q = p.params(ins[7], ins[8])
    weight = p.weights(node, ins[3], ins[5])
    weight = p.product_rows(ins[0], np.ascontiguousarray(weight.T if node.attrs.get("transB", 0) else weight))
    bias = p.graph.constants[ins[6]].astype(np.int64) if ins[6] else np.zeros(weight.shape[1], np.int64)
    _product(p, node, in_q, weight, ins[4], bias, out_q)


def _maxpool(p: _Pass, node: Node) -> None:
    """On uint8 codes: the maximum keeps the input's scale and zero point. On the accelerator (the runner pools on the
    host where the configuration has no ``max_pool`` or window LOADs cannot express the windows)."""
    a = node.attrs
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        raise ModelImportError(f"{p.graph.name}: MaxPool '{node.name}' with dilations is not supported")
    p.emit(Layer("maxpool", node.name, [node.inputs[0]], node.outputs[0], "accelerator",
                 {**_window(p, node), "count_include_pad": 0}, {}, p.tensor_q[node.inputs[0]]), node.op)


def _window(p: _Pass, node: Node) -> dict:
    """A pool's kernel, strides and pads, and ``ceil_mode`` where it is set."""
    a = node.attrs
    window = {"kernel": list(a["kernel_shape"]), "strides": list(a.get("strides", [1, 1])), "pads": _padding(p, node)}
    return {**window, "ceil_mode": 1} if a.get("ceil_mode", 0) else window


def _average_pool(p: _Pass, node: Node) -> None:
    """com.microsoft QLinearAveragePool, on the accelerator where its windows all divide by the whole kernel, else
    on the host (in the post-processor's fixed point either way: onnxruntime pools the
    dequantized floats, so results may differ by one code). With ``count_include_pad`` its kernel divides by the
    whole window, also where ``ceil_mode`` extends it past the pads."""
    a = node.attrs
    if a.get("channels_last", 0):
        raise ModelImportError(f"{p.graph.name}: channels-last {node.op} '{node.name}' is not supported")
    p.read(node, node.inputs[0], p.params(node.inputs[1], node.inputs[2]))
    attrs = {**_window(p, node), "count_include_pad": a.get("count_include_pad", 0),
             **({"count_ceil_pad": 1} if a.get("ceil_mode", 0) else {})}
    shape = p.graph.shapes.get(node.inputs[0])
    placement = "accelerator" if shape is not None and uniform_pool(shape[2:], attrs) else "host"
    p.emit(Layer("avgpool", node.name, [node.inputs[0]], node.outputs[0], placement, attrs, {},
                 p.params(node.inputs[3], node.inputs[4])), node.op)


def _concat(p: _Pass, node: Node) -> None:
    """com.microsoft QLinearConcat (output scale and zero point, then each input's tensor, scale and zero
    point), on the host; an input quantized like the output is copied, others requantized in fixed point."""
    ins = node.inputs
    parts = [ins[index:index + 3] for index in range(2, len(ins), 3)]
    for name, scale, zero in parts:
        p.read(node, name, p.params(scale, zero))
    p.emit(Layer("concat", node.name, [name for name, _, _ in parts], node.outputs[0], "host",
                 {"axis": node.attrs.get("axis", 1)}, {}, p.params(ins[0], ins[1])), node.op)


def _clip(p: _Pass, node: Node) -> None:
    """A Clip of the codes (what a QDQ model's Relu or Clip becomes): bounds in the input's codes."""
    ins = [*node.inputs, "", ""]
    low, high = int(p.codes(ins[1])) if ins[1] else 0, int(p.codes(ins[2])) if ins[2] else 255
    p.emit(Layer("clamp", node.name, [node.inputs[0]], node.outputs[0], "host", {"clamp": (low, high)}, {},
                 p.tensor_q[node.inputs[0]]), node.op)


def _transpose(p: _Pass, node: Node) -> None:
    """A permutation of the codes' axes other than the batch (a channel shuffle's)."""
    perm = list(node.attrs.get("perm", []))
    if not perm or perm[0] != 0:
        raise ModelImportError(f"{p.graph.name}: Transpose '{node.name}' moves the batch axis; mvu keeps it first")
    p.emit(Layer("transpose", node.name, [node.inputs[0]], node.outputs[0], "host", {"perm": perm}, {},
                 p.tensor_q[node.inputs[0]]), node.op)


def _pad(p: _Pass, node: Node) -> None:
    """A Pad of the codes: a constant is a code (onnxruntime's quantizer writes the zero point's for 0); the edge
    and reflections are the same codes as the floats'."""
    begin, end, _, mode = pad_widths(p.graph, node)
    constant = len(node.inputs) > 2 and node.inputs[2] in p.graph.constants
    if mode not in ("constant", "edge", "reflect") or (mode == "constant" and not constant) or begin[0] or end[0] \
            or min(begin + end) < 0:
        raise ModelImportError(f"{p.graph.name}: Pad '{node.name}' must pad the codes with a constant code, the edge "
                               f"or a reflection, not the batch, without cropping")
    p.emit(Layer("pad", node.name, [node.inputs[0]], node.outputs[0], "host",
                 {"before": begin, "after": end, "mode": mode, "value": int(p.codes(node.inputs[2])) if constant else 0},
                 {}, p.tensor_q[node.inputs[0]]), f"Pad ({mode})")


def _onnxruntime_table(p: _Pass, node: Node) -> np.ndarray:
    """The output code onnxruntime's kernel for the com.microsoft elementwise ``node`` gives each of the 256 input
    codes, from one run of that kernel on all of them, as uint8 codes (int8 ones plus 128, like :meth:`_Pass.codes`)."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    signed = p.graph.constants[node.inputs[2]].dtype == np.int8
    codes = np.arange(256) - 128 * signed
    parameters = [name for name in node.inputs[1:] if name]
    element = helper.np_dtype_to_tensor_dtype(np.dtype(np.int8 if signed else np.uint8))
    graph = helper.make_graph(
        [helper.make_node(node.op, ["x", *node.inputs[1:]], ["y"], domain="com.microsoft", **node.attrs)], "table",
        [helper.make_tensor_value_info("x", element, [256])], [helper.make_tensor_value_info("y", element, [256])],
        [numpy_helper.from_array(p.graph.constants[name], name) for name in parameters])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": codes.astype(np.int8 if signed else np.uint8)})[0]
    return (out.astype(np.int16) + 128 * signed).astype(np.uint8)


def _qlinear_table(p: _Pass, node: Node) -> None:
    """QLinearSigmoid, QLinearLeakyRelu (com.microsoft): onnxruntime computes them as a table of the 256 input
    codes, and so does mvu, with that very table (:func:`_onnxruntime_table`); a QDQ region of float elementwise
    ops brings the table onnxruntime made for it (:data:`~mvu.host.compiler.ir.TABLE_OP`): outputs are
    onnxruntime's, bit for bit. On the host, or in the STOREs of the product that alone feeds it
    (``fuse_tables``)."""
    ins = node.inputs
    p.read(node, ins[0], p.params(ins[1], ins[2]))
    attrs = {}
    if node.op == TABLE_OP:
        table, description = p.graph.constants[ins[5]], f"{', '.join(node.attrs['ops'])} (QDQ table)"
        if table.ndim == 2:  # one per channel
            attrs["axis"] = node.attrs["axis"] % len(p.graph.shapes[ins[0]])
            description = f"{', '.join(node.attrs['ops'])} (QDQ table per channel)"
    else:
        table, description = _onnxruntime_table(p, node), f"{node.op} (table)"
    p.emit(Layer("lut", node.name, [ins[0]], node.outputs[0], "host", attrs, {"table": table},
                 p.params(ins[3], ins[4])), description)


def _layer_norm(p: _Pass, node: Node) -> None:
    """A QDQ LayerNormalization (:data:`~mvu.host.compiler.ir.LAYER_NORM_OP`): on the host, dequantized,
    normalized in float64 and quantized as the QuantizeLinear after it says; onnxruntime normalizes in float32,
    so the codes are its own within one."""
    ins = node.inputs
    p.read(node, ins[0], p.params(ins[1], ins[2]))
    gamma = p.graph.constants[ins[3]].astype(np.float32)
    beta = p.graph.constants[ins[4]].astype(np.float32) if ins[4] else np.zeros_like(gamma)
    axis = node.attrs.get("axis", -1) % len(p.graph.shapes[ins[0]])
    p.emit(Layer("layernorm", node.name, [ins[0]], node.outputs[0], "host",
                 {"axis": axis, "epsilon": node.attrs.get("epsilon", 1e-5)}, {"gamma": gamma, "beta": beta},
                 p.params(ins[5], ins[6])), "LayerNormalization (float)")


def _dequantize_linear(p: _Pass, node: Node) -> None:
    """The graph's float output; its quantization is the layer's, not a tensor's that others read."""
    if node.outputs[0] != p.graph.output:
        raise ModelImportError(f"{p.graph.name}: DequantizeLinear '{node.name}' inside the network is not "
                               f"supported")
    p.emit(Layer("dequantize", node.name, [node.inputs[0]], node.outputs[0], "host", {}, {},
                 p.params(node.inputs[1], node.inputs[2])), node.op, float_output=True)


#: Op type -> the handler that turns such a node into layers.
HANDLERS: dict[str, Callable[[_Pass, Node], None]] = {
    "QuantizeLinear": _quantize_linear, "QLinearConv": _qlinear_conv, "QLinearAdd": _qlinear_add,
    "QLinearGlobalAveragePool": _qlinear_global_average_pool, "Reshape": _reshape, "Flatten": _reshape,
    "QLinearMatMul": _qlinear_matmul, "QGemm": _qgemm, "MaxPool": _maxpool, "DequantizeLinear": _dequantize_linear,
    "QLinearAveragePool": _average_pool, "QLinearConcat": _concat, "Clip": _clip, "Transpose": _transpose,
    "Pad": _pad, "QLinearSigmoid": _qlinear_table, "QLinearLeakyRelu": _qlinear_table, TABLE_OP: _qlinear_table,
    LAYER_NORM_OP: _layer_norm,
}


def from_qlinear_graph(graph: Graph) -> QuantizedModel:
    """Layers that compute what the model's QLinear operators specify, with onnxruntime's arithmetic."""
    if refused := [node for node in graph.nodes if node.op not in HANDLERS]:
        raise refusal(graph.name, "cannot import", [(node, f"cannot be mixed into a pre-quantized model, which may "
                                                           f"use {', '.join(sorted(HANDLERS))}") for node in refused])
    p = _Pass(graph)
    for node in graph.nodes:
        HANDLERS[node.op](p, node)
    if p.input_q is None:
        raise ModelImportError(f"{graph.name}: a pre-quantized model must start with QuantizeLinear")
    # The float input is quantized by the host: the first layers read it under the QuantizeLinear output's name.
    first = next(n for n in graph.nodes if n.op == "QuantizeLinear").outputs[0]
    for layer in p.layers:
        layer.inputs = [graph.input if i == first else i for i in layer.inputs]
    p.tensor_q[graph.input] = p.input_q
    return fuse_tables(p.model(p.input_q, dict(graph.shapes)))
