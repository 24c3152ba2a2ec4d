"""Post-training quantization of an imported graph into integer layers.

Activations are uint8 with a zero point (per tensor, from calibration),
weights int8 symmetric per output channel, biases int32. Every layer's
output requantization uses the post-processor's fixed-point arithmetic
(:mod:`mvu.hdl.contract.requantization`), whether it runs on the accelerator or,
for the ops the array cannot run, on the host. :data:`HANDLERS` maps each op
type to the function that turns its nodes into layers.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np
import onnx

from mvu.hdl.contract.requantization import Requantization
from mvu.host.compiler.builder import LayerBuilder, conv_placement
from mvu.host.compiler.fuse_tables import fuse_tables
from mvu.host.compiler.graph import Graph, ModelImportError, Node, refusal
from mvu.host.compiler.rewrites import pad_widths
from mvu.host.model.quantized import VIEW, Layer, QuantizedModel, QuantParams
from mvu.host.runtime.runner import uniform_pool

__all__ = ["HANDLERS", "LIMITS", "TABLE_FUNCTIONS", "activation_clamp", "calibrate", "check_graph", "quantize_graph"]


def calibrate(model: onnx.ModelProto, graph: Graph, images: np.ndarray, *, progress: bool = True) -> dict:
    """Min and max of every graph tensor over ``images`` (N x C x H x W), with onnxruntime."""
    import onnxruntime as ort

    wanted = [graph.input] + [out for node in graph.nodes for out in node.outputs]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in wanted:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    ranges: dict[str, list[float]] = {}
    for index, image in enumerate(images):
        values = session.run(None, {input_name: image[None].astype(np.float32)})
        for name, value in zip(names, values):
            if name in wanted:
                low, high = float(value.min()), float(value.max())
                old = ranges.get(name, [low, high])
                ranges[name] = [min(old[0], low), max(old[1], high)]
        if progress and sys.stderr.isatty():  # a counter for people; logs get the one line below
            print(f"\rcalibrating {index + 1}/{len(images)}", end="", file=sys.stderr)
    if progress:
        print(f"\rcalibrated on {len(images)} images", file=sys.stderr)
    return ranges


def _fused_activation(graph: Graph, tensor: str) -> tuple[str, str]:
    """If ``tensor``'s only consumer is Relu or Clip(0, 6), return (its output, kind)."""
    consumers = graph.consumers(tensor)
    if len(consumers) != 1 or tensor == graph.output:
        return tensor, "none"
    node = consumers[0]
    if node.op == "Relu":
        return node.outputs[0], "relu"
    if node.op == "Clip":
        low, high = _clip_bounds(graph, node)
        if low == 0 and high == 6:
            return node.outputs[0], "relu6"
    return tensor, "none"


def _clip_bounds(graph: Graph, node: Node) -> tuple[float, float]:
    low, high = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
    if len(node.inputs) > 1 and node.inputs[1]:
        low = float(graph.constants[node.inputs[1]])
    if len(node.inputs) > 2 and node.inputs[2]:
        high = float(graph.constants[node.inputs[2]])
    return low, high


def _affine_form(graph: Graph, node: Node) -> tuple | None:
    """``(scale, shift)`` when ``node`` is ``x * scale + shift`` with constant per-channel terms, else None."""
    constant = [i for i in node.inputs if i in graph.constants]
    if node.op == "BatchNormalization":
        gamma, beta, mean, var = (graph.constants[n].astype(np.float64) for n in node.inputs[1:5])
        scale = gamma / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
        return scale, beta - mean * scale
    if len(node.inputs) != 2 or len(constant) != 1:
        return None
    value = graph.constants[constant[0]].astype(np.float64)
    if value.size > 1 and value.squeeze().ndim != 1:
        return None  # only scalars and per-channel vectors
    return (value, 0.0) if node.op == "Mul" else (1.0, value)


def _channel_gate(graph: Graph, node: Node) -> tuple[str, str] | None:
    """``(x, gate)`` when ``node`` multiplies a tensor ``[N, C, H, W]`` by a computed ``[N, C, 1, 1]`` (a
    squeeze-excite block's gate), else None."""
    if len(node.inputs) != 2 or any(name in graph.constants for name in node.inputs):
        return None
    for x, gate in (node.inputs, node.inputs[::-1]):
        shape, gate_shape = graph.shapes.get(x, ()), graph.shapes.get(gate, ())
        if len(shape) == 4 and tuple(gate_shape) == (*shape[:2], 1, 1) and tuple(shape[2:]) != (1, 1):
            return x, gate
    return None


def _weights_int8(weight: np.ndarray, bias: np.ndarray | None = None,
                  in_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 weights and their scales.

    A channel's scale is kept large enough that its bias, in accumulator units
    (``in_scale * scale``), fits comfortably in int32.
    """
    flat = weight.reshape(weight.shape[0], -1).astype(np.float64)
    scale = np.abs(flat).max(axis=1) / 127.0
    if bias is not None:
        scale = np.maximum(scale, np.abs(np.asarray(bias, np.float64)) / (in_scale * 2.0 ** 30))
    scale = np.where(scale > 0, scale, 1.0)  # an all-zero channel
    q = np.clip(np.round(flat / scale[:, None]), -127, 127).astype(np.int8)
    return q.reshape(weight.shape), scale


def activation_clamp(out_q: QuantParams, activation: str) -> tuple[int, int]:
    """The uint8 range a fused activation ("none", "relu" or "relu6") leaves in ``out_q``'s units."""
    low = out_q.zero_point if activation in ("relu", "relu6") else 0
    high = min(255, out_q.zero_point + int(round(6.0 / out_q.scale))) if activation == "relu6" else 255
    return low, high


def _accumulator_bias(bias: np.ndarray | None, acc_scale: np.ndarray) -> np.ndarray:
    """``bias`` in accumulator units (``in_scale * w_scale``) as int64; zeros without one."""
    return np.zeros(acc_scale.size, np.int64) if bias is None else np.round(bias / acc_scale).astype(np.int64)


def _output_requant(in_q: QuantParams, w_scale: np.ndarray, bias: np.ndarray | None, out_q: QuantParams,
                    activation: str) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """A layer's post-processor parameters (int32 bias, fixed-point multipliers and shifts, from
    :class:`~mvu.hdl.contract.requantization.Requantization`) and its clamp."""
    acc_scale = in_q.scale * w_scale
    bias_q = np.clip(_accumulator_bias(bias, acc_scale), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
    low, high = activation_clamp(out_q, activation)
    requant = Requantization.from_scales(acc_scale / out_q.scale, bias_q, out_zero_point=out_q.zero_point,
                                         clamp_min=low, clamp_max=high)
    return {"bias": bias_q, "multiplier": requant.multiplier, "shift": requant.shift}, (low, high)


def _with_activation(op: str, activation: str) -> str:
    return op if activation == "none" else f"{op}+{activation}"


def _constant_input(graph: Graph, node: Node, index: int) -> np.ndarray | None:
    """The node's optional constant input ``index``, or None when it is absent."""
    return graph.constants[node.inputs[index]] if len(node.inputs) > index and node.inputs[index] else None


def _concatenated_ranges(graph: Graph, ranges: dict) -> dict[str, tuple[float, float]]:
    """One range, their union, for every tensor joined by channel Concats of feature maps (through the MaxPools that
    keep their input's quantization too), so that each such Concat only lays its inputs side by side: its parts'
    producers store their channels into one buffer (concatenation by addressing)."""
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.get(name, name) != name:
            name = parent[name]
        return name

    def join(names: list[str]) -> None:
        parent.setdefault(names[0], names[0])  # a group's root is one of its members too
        for name in names[1:]:
            parent[root(name)] = root(names[0])

    concatenated = set()
    for node in graph.nodes:
        feature_maps = len(graph.shapes.get(node.outputs[0], ())) == 4
        if node.op == "Concat" and node.attrs.get("axis") in (1, -3) and feature_maps \
                and all(name in ranges and name not in graph.constants for name in node.inputs):
            join([node.outputs[0], *node.inputs])
            concatenated.add(node.outputs[0])
        elif node.op == "MaxPool" and node.inputs[0] in ranges:
            join([node.inputs[0], node.outputs[0]])
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(root(name), []).append(name)
    shared = {}
    for members in groups.values():
        if concatenated & set(members):
            union = (min(ranges[name][0] for name in members), max(ranges[name][1] for name in members))
            shared.update(dict.fromkeys(members, union))
    return shared


class _Pass(LayerBuilder):
    """One pass of :func:`quantize_graph` over a graph with calibrated ``ranges``."""

    def __init__(self, graph: Graph, ranges: dict):
        self.shared = _concatenated_ranges(graph, ranges)
        super().__init__(graph, {graph.input: QuantParams.from_range(*self.shared.get(graph.input,
                                                                                       ranges[graph.input]))})
        self.ranges = ranges
        self.shapes = dict(graph.shapes)
        self.fused: set[int] = set()  # activation nodes folded into their producer's layer

    def q_of(self, name: str) -> QuantParams:
        if name not in self.tensor_q:
            raise ModelImportError(f"{self.graph.name}: tensor '{name}' has no quantization parameters")
        return self.tensor_q[name]

    def out_params(self, name: str, activation: str) -> QuantParams:
        """The output quantization of tensor ``name`` from its calibrated range, narrowed by ``activation``; one
        for all the tensors a channel Concat joins (:func:`_concatenated_ranges`)."""
        if name in self.shared:
            return QuantParams.from_range(*self.shared[name])
        low, high = self.ranges[name]
        if activation == "relu6":
            low, high = 0.0, min(high, 6.0)
        elif activation == "relu":
            low = 0.0
        return QuantParams.from_range(low, high)

    def fuse(self, tensor: str) -> tuple[str, str]:
        """``tensor`` after a fusable activation, and the activation ("none" if there is none)."""
        output, activation = _fused_activation(self.graph, tensor)
        if output != tensor:
            self.fused.add(id(self.graph.consumers(tensor)[0]))
        self.shapes[output] = self.shapes.get(tensor, self.shapes.get(output))
        return output, activation


def _conv(p: _Pass, node: Node) -> None:
    """Conv (+ ReLU/ReLU6): placed by :func:`conv_placement`."""
    output, activation = p.fuse(node.outputs[0])
    weight, bias = p.graph.constants[node.inputs[1]], _constant_input(p.graph, node, 2)
    geometry = {"strides": list(node.attrs.get("strides", [1, 1])), "pads": list(node.attrs.get("pads", [0, 0, 0, 0])),
                "dilations": list(node.attrs.get("dilations", [1, 1])), "group": node.attrs.get("group", 1)}
    _emit_conv(p, node.name, node.inputs[0], output, activation, weight, bias, geometry,
               _with_activation("Conv", activation))


def _emit_conv(p: _Pass, name: str, source: str, output: str, activation: str, weight: np.ndarray,
               bias: np.ndarray | None, geometry: dict, description: str) -> None:
    """A conv layer of float ``weight`` ``[C_out, C_in / group, kh, kw]`` and ``bias`` over ``source``, with its
    ``geometry`` (strides, pads, dilations, group)."""
    in_q, out_q = p.q_of(source), p.out_params(output, activation)
    q_weight, w_scale = _weights_int8(weight, bias, in_q.scale)
    arrays, clamp = _output_requant(in_q, w_scale, bias, out_q, activation)
    attrs = {**geometry, "kernel": list(weight.shape[2:]), "in_zero_point": in_q.zero_point, "clamp": clamp,
             "activation": activation}
    macs = int(np.prod(p.shapes[output][1:]) * np.prod(weight.shape[1:]))
    p.emit(Layer("conv", name, [source], output, conv_placement(geometry["group"], weight.shape), attrs,
                 {"weight": q_weight, **arrays}, out_q, macs), description)


def _affine(p: _Pass, node: Node) -> None:
    """``x * scale + shift`` with constant scalar or per-channel terms (an unfolded BatchNormalization, Mul or
    Add by a constant): on a feature map ``[N, C, H, W]`` a depthwise 1x1 convolution of weight ``scale`` and bias
    ``shift`` (on the accelerator, its weights quantized like any convolution's); on other tensors a step on the
    host."""
    form = _affine_form(p.graph, node)
    source = next(i for i in node.inputs if i not in p.graph.constants)
    output, activation = p.fuse(node.outputs[0])
    channels = p.shapes[source][1]
    scale, shift_term = (np.broadcast_to(np.asarray(term, np.float64).reshape(-1), (channels,)) for term in form)
    if len(p.shapes[source]) == 4:
        geometry = {"strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": channels}
        _emit_conv(p, node.name, source, output, activation, scale.reshape(channels, 1, 1, 1), shift_term.copy(),
                   geometry, _with_activation(f"{node.op} (depthwise 1x1)", activation))
        return
    in_q, out_q = p.q_of(source), p.out_params(output, activation)
    attrs = {"clamp": activation_clamp(out_q, activation), "ratio": (scale * in_q.scale / out_q.scale).tolist(),
             "offset": np.round(shift_term / out_q.scale).astype(np.int64).tolist()}
    p.emit(Layer("affine", node.name, [source], output, "host", attrs, {}, out_q),
           f"{node.op} (per-channel affine)")


def _mul(p: _Pass, node: Node) -> None:
    """Mul by a constant, an affine step; by a squeeze-excite gate, a per-channel scale on the host."""
    if _affine_form(p.graph, node) is not None:
        _affine(p, node)
        return
    x, gate = _channel_gate(p.graph, node)
    p.emit(Layer("channel_scale", node.name, [x, gate], node.outputs[0], "host", {},
                 {}, p.out_params(node.outputs[0], "none")), "Mul (per-channel gate)")


def _add(p: _Pass, node: Node) -> None:
    """Add or Sum: by a constant, an affine step; of tensors, an add layer on the host."""
    if _affine_form(p.graph, node) is not None:
        _affine(p, node)
        return
    output, activation = p.fuse(node.outputs[0])
    out_q = p.out_params(output, activation)
    p.emit(Layer("add", node.name, list(node.inputs), output, "host",
                 {"activation": activation, "clamp": activation_clamp(out_q, activation)}, {}, out_q), "Add")


def _clamp(p: _Pass, node: Node) -> None:
    """A Relu or Clip that no producer absorbed: a clamp of the input's codes."""
    low, high = (0.0, np.inf) if node.op == "Relu" else _clip_bounds(p.graph, node)
    in_q = p.q_of(node.inputs[0])
    lo = int(np.clip(round(low / in_q.scale) + in_q.zero_point, 0, 255)) if np.isfinite(low) else 0
    hi = int(np.clip(round(high / in_q.scale) + in_q.zero_point, 0, 255)) if np.isfinite(high) else 255
    p.emit(Layer("clamp", node.name, [node.inputs[0]], node.outputs[0], "host", {"clamp": (lo, hi)}, {}, in_q),
           node.op)


_POOLS = {"MaxPool": "maxpool", "AveragePool": "avgpool", "GlobalAveragePool": "gap"}


def _pool(p: _Pass, node: Node) -> None:
    """Pooling on the accelerator (the runner pools on the host where the configuration or its programs cannot): a
    MaxPool (keeping its input's quantization) and an AveragePool whose windows all divide by the whole kernel as
    depthwise programs of unit weights, a GlobalAveragePool as a global pool program; other AveragePools on the
    host."""
    in_q = p.q_of(node.inputs[0])
    out_q = in_q if node.op == "MaxPool" else p.out_params(node.outputs[0], "none")
    attrs = {"kernel": list(node.attrs.get("kernel_shape", [])), "strides": list(node.attrs.get("strides", [1, 1])),
             "pads": list(node.attrs.get("pads", [0, 0, 0, 0])),
             "count_include_pad": node.attrs.get("count_include_pad", 0)}
    if node.attrs.get("ceil_mode", 0):
        attrs["ceil_mode"] = 1
    shape = p.shapes.get(node.inputs[0])
    on_array = node.op in ("MaxPool", "GlobalAveragePool") or (node.op == "AveragePool" and shape is not None
                                                               and uniform_pool(shape[2:], attrs))
    p.emit(Layer(_POOLS[node.op], node.name, [node.inputs[0]], node.outputs[0], "accelerator" if on_array else "host",
                 attrs, {}, out_q), node.op)


def _reshape(p: _Pass, node: Node) -> None:
    """Flatten or Reshape: the same codes in the output's shape (:meth:`LayerBuilder.reshape`)."""
    p.reshape(node, p.shapes.get(node.inputs[0]), p.shapes[node.outputs[0]], p.q_of(node.inputs[0]))


def _pad(p: _Pass, node: Node) -> None:
    """A Pad that no convolution absorbed: on the host, in the input's quantization, the constant as its code."""
    begin, end, value, mode = pad_widths(p.graph, node)
    in_q = p.q_of(node.inputs[0])
    code = int(np.clip(round(value / in_q.scale) + in_q.zero_point, 0, 255))
    p.emit(Layer("pad", node.name, [node.inputs[0]], node.outputs[0], "host",
                 {"before": begin, "after": end, "mode": mode, "value": code}, {}, in_q), f"Pad ({mode})")


def _transpose(p: _Pass, node: Node) -> None:
    """A permutation of the axes other than the batch (a channel shuffle's, NHWC and back), on the codes."""
    p.emit(Layer("transpose", node.name, [node.inputs[0]], node.outputs[0], "host", {"perm": list(node.attrs["perm"])},
                 {},
                 p.q_of(node.inputs[0])), node.op)


def _gelu_values(x: np.ndarray, attrs: dict) -> np.ndarray:
    if attrs.get("approximate", "none") in ("tanh", b"tanh"):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))  # no overflow for large |x|


#: Elementwise op -> its float function of ``x`` and the node's attributes (ONNX's definitions and defaults).
TABLE_FUNCTIONS: dict[str, Callable[[np.ndarray, dict], np.ndarray]] = {
    "Gelu": _gelu_values,
    "Sigmoid": lambda x, a: _sigmoid(x),
    "HardSigmoid": lambda x, a: np.clip(a.get("alpha", 0.2) * x + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda x, a: x * np.clip(x / 6 + 0.5, 0, 1),
    "Tanh": lambda x, a: np.tanh(x),
    "LeakyRelu": lambda x, a: np.where(x >= 0, x, a.get("alpha", 0.01) * x),
    "Swish": lambda x, a: x * _sigmoid(a.get("alpha", 1.0) * x),  # SiLU, x * Sigmoid(x), fused on import
}


def _table(p: _Pass, node: Node) -> None:
    """An elementwise function (:data:`TABLE_FUNCTIONS`) as a table of its 256 input codes' output codes, in the
    calibrated output quantization; on the host, or on the accelerator where :func:`~mvu.host.compiler.fuse_tables.
    fuse_tables` folds it into the product that feeds it."""
    in_q, out_q = p.q_of(node.inputs[0]), p.out_params(node.outputs[0], "none")
    x = in_q.dequantize(np.arange(256)).astype(np.float64)
    p.emit(Layer("lut", node.name, [node.inputs[0]], node.outputs[0], "host", {},
                 {"table": out_q.quantize(TABLE_FUNCTIONS[node.op](x, node.attrs))}, out_q), f"{node.op} (table)")


def _layer_norm(p: _Pass, node: Node) -> None:
    """LayerNormalization on the host: dequantized, normalized in float64, quantized with the calibrated scale."""
    shape = p.shapes[node.inputs[0]]
    axis = node.attrs.get("axis", -1) % len(shape)
    arrays = {"gamma": p.graph.constants[node.inputs[1]].astype(np.float32),
              "beta": _constant_input(p.graph, node, 2)}
    arrays["beta"] = np.zeros_like(arrays["gamma"]) if arrays["beta"] is None else arrays["beta"].astype(np.float32)
    p.emit(Layer("layernorm", node.name, [node.inputs[0]], node.outputs[0], "host",
                 {"axis": axis, "epsilon": node.attrs.get("epsilon", 1e-5)}, arrays,
                 p.out_params(node.outputs[0], "none")), "LayerNormalization (float)")


def _lp_norm(p: _Pass, node: Node) -> None:
    """LpNormalization (L2, over the channels) on the host in float64 from the dequantized codes, times the
    per-channel constant of a Mul that alone reads it (SSD's conv4_3 L2Norm with its learned scale), quantized
    with the calibrated range of what it writes."""
    output, scale = node.outputs[0], np.ones(p.shapes[node.inputs[0]][1])
    readers = p.graph.consumers(output)
    if output != p.graph.output and len(readers) == 1 and readers[0].op == "Mul" and \
            (form := _affine_form(p.graph, readers[0])) is not None and np.all(np.asarray(form[1]) == 0):
        scale = scale * np.asarray(form[0]).reshape(-1)
        p.fused.add(id(readers[0]))
        output = readers[0].outputs[0]
        p.shapes[output] = p.shapes.get(node.outputs[0], p.shapes.get(output))
    p.emit(Layer("l2norm", node.name, [node.inputs[0]], output, "host", {}, {"scale": scale.astype(np.float32)},
                 p.out_params(output, "none")), "LpNormalization (float)")


def _concat(p: _Pass, node: Node) -> None:
    """Concat: a view where every input has the output's quantization (the bytes side by side: producers store into
    one buffer where the network is one program), else a requantizing copy on the host."""
    out_q = p.out_params(node.outputs[0], "none")
    placement = VIEW if all(p.tensor_q.get(name) == out_q for name in node.inputs) else "host"
    p.emit(Layer("concat", node.name, list(node.inputs), node.outputs[0], placement,
                 {"axis": node.attrs.get("axis", 1)}, {}, out_q), node.op)


def _gemm(p: _Pass, node: Node) -> None:
    """Gemm: ``alpha * x @ W + beta * C`` with a constant ``W`` (transposed by ``transB``) and ``C``."""
    weight = p.graph.constants[node.inputs[1]].astype(np.float64)
    weight = (weight.T if node.attrs.get("transB", 0) else weight) * node.attrs.get("alpha", 1.0)
    weight = p.product_rows(node.inputs[0], weight)
    bias = _constant_input(p.graph, node, 2)
    _product(p, node, weight, None if bias is None else bias * node.attrs.get("beta", 1.0))


def _matmul(p: _Pass, node: Node) -> None:
    """MatMul by constant weights; of a channels-last tensor ``[N, ..., C]`` (a PyTorch Linear over NHWC, as in
    ConvNeXt) every position's row is one row of the product, and the Adds and Muls of per-column constants after
    it (its bias, a layer scale) fold into its bias and weights."""
    weight = p.graph.constants[node.inputs[1]].astype(np.float64)
    if len(p.shapes.get(node.inputs[0], ())) <= 2:
        _product(p, node, p.product_rows(node.inputs[0], weight), None)
        return
    bias, tensor = np.zeros(weight.shape[1]), node.outputs[0]
    while (term := _column_term(p, tensor, weight.shape[1])) is not None:
        reader, value = term
        weight, bias = (weight, bias + value) if reader.op == "Add" else (weight * value, bias * value)
        p.fused.add(id(reader))
        tensor = reader.outputs[0]
    _product(p, node, weight, bias, tensor)


def _column_term(p: _Pass, tensor: str, columns: int) -> tuple[Node, np.ndarray] | None:
    """``tensor``'s only reader and its constant when it adds or multiplies one value per last-axis column."""
    readers = p.graph.consumers(tensor)
    if tensor == p.graph.output or len(readers) != 1 or readers[0].op not in ("Add", "Mul") or \
            len(readers[0].inputs) != 2:
        return None
    value = p.graph.constants.get(next(i for i in readers[0].inputs if i != tensor))
    if value is None or value.size not in (1, columns) or (value.size > 1 and value.shape[-1] != columns):
        return None
    return readers[0], np.broadcast_to(value.astype(np.float64).reshape(-1), (columns,))


def _product(p: _Pass, node: Node, weight: np.ndarray, bias: np.ndarray | None, tensor: str | None = None) -> None:
    """``x @ weight + bias`` on the accelerator, written to ``tensor`` (the node's output unless terms after it were
    folded in). Logits (the graph's output, or a Softmax's input) leave it as int32 and are scaled to float on the
    host; other outputs are requantized like a convolution's."""
    bias = None if bias is None else np.broadcast_to(np.asarray(bias, np.float64).reshape(-1), (weight.shape[1],))
    in_q = p.q_of(node.inputs[0])
    q_weight, w_scale = _weights_int8(weight.T, bias, in_q.scale)  # per output column
    tensor = tensor or node.outputs[0]
    rows = p.shapes.get(node.inputs[0], ())[1:-1]  # positions per image of a channels-last product
    macs, pointwise = int(weight.size * np.prod(rows)), {"pointwise": 1} if rows else {}
    if all(c.op == "Softmax" for c in p.graph.consumers(tensor)) or tensor == p.graph.output:
        arrays = {"weight": q_weight.T.copy(), "w_scale": w_scale,
                  "bias": _accumulator_bias(bias, in_q.scale * w_scale)}
        p.emit(Layer("fc", node.name, [node.inputs[0]], node.outputs[0], "accelerator",
                     {"in_zero_point": in_q.zero_point}, arrays, None, macs), node.op)
        return
    output, activation = p.fuse(tensor)
    out_q = p.out_params(output, activation)
    arrays, clamp = _output_requant(in_q, w_scale, bias, out_q, activation)
    p.emit(Layer("fc_quantized", node.name, [node.inputs[0]], output, "accelerator",
                 {"in_zero_point": in_q.zero_point, "clamp": clamp, **pointwise},
                 {"weight": q_weight.T.copy(), **arrays}, out_q, macs), _with_activation(node.op, activation))


def _softmax(p: _Pass, node: Node) -> None:
    p.emit(Layer("softmax", node.name, [node.inputs[0]], node.outputs[0], "host"), node.op)


#: Op type -> the handler that turns such a node into layers.
HANDLERS: dict[str, Callable[[_Pass, Node], None]] = {
    "Conv": _conv, "Add": _add, "Sum": _add, "Mul": _mul, "BatchNormalization": _affine,
    "Relu": _clamp, "Clip": _clamp, "MaxPool": _pool, "AveragePool": _pool, "GlobalAveragePool": _pool,
    "Flatten": _reshape, "Reshape": _reshape, "Concat": _concat, "Gemm": _gemm, "MatMul": _matmul,
    "Softmax": _softmax, "Pad": _pad, "Transpose": _transpose, "LayerNormalization": _layer_norm,
    "LpNormalization": _lp_norm,
    **dict.fromkeys(TABLE_FUNCTIONS, _table),
}


def _explicit_pads(graph: Graph, node: Node) -> str | None:
    return None if node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET") else \
        "uses auto_pad; mvu needs explicit pads"


def _one_constant(graph: Graph, node: Node) -> str | None:
    return None if _affine_form(graph, node) is not None or _channel_gate(graph, node) is not None else \
        "needs one constant operand, a scalar or one value per channel (or a squeeze-excite gate [N, C, 1, 1])"


def _pool_window(graph: Graph, node: Node) -> str | None:
    if any(d != 1 for d in node.attrs.get("dilations", [])):
        return "uses dilations, which mvu's pooling does not support"
    return _explicit_pads(graph, node)


def _pad_limits(graph: Graph, node: Node) -> str | None:
    begin, end, value, mode = pad_widths(graph, node)
    if mode not in ("constant", "edge", "reflect"):
        return f"uses mode {mode!r}; mvu pads with a constant, the edge or a reflection"
    if value is None:
        return "pads with a computed value; mvu takes a constant"
    if begin[0] or end[0] or min(begin + end) < 0:
        return "pads the batch or crops (negative pads), which mvu does not support"
    return None


def _keeps_batch(graph: Graph, node: Node) -> str | None:
    perm = node.attrs.get("perm", [])
    return None if perm and perm[0] == 0 else "moves the batch axis; mvu keeps it first"


def _constant_terms(graph: Graph, node: Node) -> str | None:
    return None if all(i in graph.constants for i in node.inputs[1:] if i) else \
        "has a computed scale or bias; mvu takes constants"


def _l2_over_channels(graph: Graph, node: Node) -> str | None:
    return None if node.attrs.get("p", 2) == 2 and node.attrs.get("axis", -1) == 1 else \
        "is not an L2 norm over the channels (p 2, axis 1), the one mvu supports"


def _no_trans_a(graph: Graph, node: Node) -> str | None:
    return "has transA, which mvu does not support" if node.attrs.get("transA", 0) else None


#: Op type -> why a node of it cannot be quantized (None when it can), checked before calibration.
LIMITS: dict[str, Callable[[Graph, Node], str | None]] = {
    "Conv": _explicit_pads, "Mul": _one_constant, "MaxPool": _pool_window, "AveragePool": _pool_window,
    "Gemm": _no_trans_a, "Pad": _pad_limits, "Transpose": _keeps_batch, "LayerNormalization": _constant_terms,
    "LpNormalization": _l2_over_channels,
}


def check_graph(graph: Graph) -> None:
    """Refuse, in one error, every node the float path cannot quantize: cheap, so done before calibration."""
    problems = [(node, f"float models may use {', '.join(sorted(HANDLERS))}") for node in graph.nodes
                if node.op not in HANDLERS]
    problems += [(node, why) for node in graph.nodes if node.op in LIMITS and (why := LIMITS[node.op](graph, node))]
    if problems:
        raise refusal(graph.name, "cannot quantize", problems)


def quantize_graph(graph: Graph, ranges: dict) -> QuantizedModel:
    """Turn the float graph into integer layers using calibrated ``ranges``."""
    check_graph(graph)
    p = _Pass(graph, ranges)
    for node in graph.nodes:
        if id(node) not in p.fused:
            HANDLERS[node.op](p, node)
    return fuse_tables(p.model(p.tensor_q[graph.input], p.shapes))
