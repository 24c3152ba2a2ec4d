"""Models that arrive already quantized (QuantizeLinear, QLinearConv, ...): imported with their own scales."""

from __future__ import annotations

import numpy as np

from mvu.host.compiler.graph import Graph, ModelImportError
from mvu.host.model.quantized import Layer, QuantizedModel, QuantParams

__all__ = ["from_qlinear_graph"]


def _scale(in_scale: float, w_scale: np.ndarray, out_scale: float) -> dict:
    """The float32 requantization scales onnxruntime computes (``x_scale * w_scale / y_scale``), which the
    post-processor multiplies by in its float32 mode: results are onnxruntime's, bit for bit."""
    return {"scale": ((np.float32(in_scale) * w_scale.astype(np.float32)) / np.float32(out_scale)).astype(np.float32)}


def from_qlinear_graph(graph: Graph) -> QuantizedModel:
    """Layers that compute what the model's QLinear operators specify, with onnxruntime's arithmetic."""
    c = graph.constants

    def params(scale_name: str, zero_name: str) -> QuantParams:
        zero = c[zero_name]
        if zero.dtype != np.uint8:
            raise ModelImportError(f"{graph.name}: activation '{zero_name}' is {zero.dtype}; mvu takes uint8 activations")
        return QuantParams(float(c[scale_name]), int(zero))

    tensor_q: dict[str, QuantParams] = {}
    layers: list[Layer] = []
    report: list[dict] = []
    input_q = None
    for node in graph.nodes:
        ins = node.inputs
        if node.op == "QuantizeLinear":
            if ins[0] != graph.input:
                raise ModelImportError(f"{graph.name}: QuantizeLinear '{node.name}' inside the network is not supported")
            input_q = tensor_q[node.outputs[0]] = params(ins[1], ins[2])
        elif node.op == "QLinearConv":
            in_q, out_q = params(ins[1], ins[2]), params(ins[6], ins[7])
            weight, w_scale, w_zero = c[ins[3]], np.asarray(c[ins[4]], np.float64).reshape(-1), c[ins[5]]
            if weight.dtype != np.int8 or np.any(w_zero != 0):
                raise ModelImportError(f"{graph.name}: QLinearConv '{node.name}' needs symmetric int8 weights")
            channels = weight.shape[0]
            w_scale = np.broadcast_to(w_scale, (channels,))
            bias = c[ins[8]].astype(np.int64) if len(ins) > 8 and ins[8] else np.zeros(channels, np.int64)
            group = node.attrs.get("group", 1)
            attrs = {"strides": list(node.attrs.get("strides", [1, 1])), "pads": list(node.attrs.get("pads", [0] * 4)),
                     "dilations": list(node.attrs.get("dilations", [1, 1])), "group": group,
                     "kernel": list(weight.shape[2:]), "in_zero_point": in_q.zero_point, "clamp": (0, 255),
                     "activation": "none", "rounding": "float32"}
            shape = graph.shapes[node.outputs[0]]
            macs = int(np.prod(shape[1:]) * np.prod(weight.shape[1:]))
            placement = "accelerator" if group == 1 else "host"
            layers.append(Layer("conv", node.name, [ins[0]], node.outputs[0], placement, attrs,
                                {"weight": weight, "bias": bias, **_scale(in_q.scale, w_scale, out_q.scale)},
                                out_q, macs))
            tensor_q[node.outputs[0]] = out_q
            report.append({"layer": node.name, "op": "QLinearConv", "placement": placement, "scale": out_q.scale,
                           "zero_point": out_q.zero_point, "macs": macs})
        elif node.op == "QLinearAdd":
            out_q = params(ins[6], ins[7])
            constants = {}
            for name, scale, zero in ((ins[0], ins[1], ins[2]), (ins[3], ins[4], ins[5])):
                if name in c:  # e.g. a classifier's quantized bias
                    constants[name] = c[name]
                    tensor_q[name] = params(scale, zero)
                elif tensor_q.get(name) != params(scale, zero):
                    raise ModelImportError(f"{graph.name}: QLinearAdd '{node.name}' reads '{name}' with other parameters "
                                       f"than it was written with")
            layers.append(Layer("add", node.name, [ins[0], ins[3]], node.outputs[0], "host",
                                {"activation": "none", "clamp": (0, 255)}, constants, out_q))
            tensor_q[node.outputs[0]] = out_q
            report.append({"layer": node.name, "op": "QLinearAdd", "placement": "host", "scale": out_q.scale,
                           "zero_point": out_q.zero_point, "macs": 0})
        elif node.op == "QLinearGlobalAveragePool":
            if node.attrs.get("channels_last", 0):
                raise ModelImportError(f"{graph.name}: channels-last QLinearGlobalAveragePool is not supported")
            out_q = params(ins[3], ins[4])
            layers.append(Layer("gap", node.name, [ins[0]], node.outputs[0], "host", {}, {}, out_q))
            tensor_q[node.outputs[0]] = out_q
        elif node.op in ("Reshape", "Flatten"):
            layers.append(Layer("reshape", node.name, [ins[0]], node.outputs[0], "host",
                                {"shape": list(graph.shapes[node.outputs[0]])}, {}, tensor_q[ins[0]]))
            tensor_q[node.outputs[0]] = tensor_q[ins[0]]
        elif node.op == "QLinearMatMul":
            in_q, out_q = params(ins[1], ins[2]), params(ins[6], ins[7])
            weight, w_zero = c[ins[3]], c[ins[5]]
            if weight.dtype != np.int8 or np.any(w_zero != 0):
                raise ModelImportError(f"{graph.name}: QLinearMatMul '{node.name}' needs symmetric int8 weights")
            w_scale = np.broadcast_to(np.asarray(c[ins[4]], np.float64).reshape(-1), (weight.shape[1],))
            layers.append(Layer("fc_quantized", node.name, [ins[0]], node.outputs[0], "accelerator",
                                {"in_zero_point": in_q.zero_point, "clamp": (0, 255), "rounding": "float32"},
                                {"weight": weight, "bias": np.zeros(weight.shape[1], np.int64),
                                 **_scale(in_q.scale, w_scale, out_q.scale)}, out_q, int(weight.size)))
            tensor_q[node.outputs[0]] = out_q
            report.append({"layer": node.name, "op": "QLinearMatMul", "placement": "accelerator",
                           "scale": out_q.scale, "zero_point": out_q.zero_point, "macs": int(weight.size)})
        elif node.op == "QGemm":  # com.microsoft: A x B^T + C, requantized like QLinearConv
            in_q, out_q = params(ins[1], ins[2]), params(ins[7], ins[8]) if len(ins) > 8 else None
            weight, w_zero = c[ins[3]], c[ins[5]]
            if out_q is None or node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0:
                raise ModelImportError(f"{graph.name}: QGemm '{node.name}' must have a quantized output, no transA "
                                   f"and alpha 1")
            if weight.dtype != np.int8 or np.any(w_zero != 0):
                raise ModelImportError(f"{graph.name}: QGemm '{node.name}' needs symmetric int8 weights")
            weight = weight.T if node.attrs.get("transB", 0) else weight  # [K, N]
            w_scale = np.broadcast_to(np.asarray(c[ins[4]], np.float64).reshape(-1), (weight.shape[1],))
            bias = c[ins[6]].astype(np.int64) if ins[6] else np.zeros(weight.shape[1], np.int64)
            layers.append(Layer("fc_quantized", node.name, [ins[0]], node.outputs[0], "accelerator",
                                {"in_zero_point": in_q.zero_point, "clamp": (0, 255), "rounding": "float32"},
                                {"weight": np.ascontiguousarray(weight), "bias": bias,
                                 **_scale(in_q.scale, w_scale, out_q.scale)}, out_q, int(weight.size)))
            tensor_q[node.outputs[0]] = out_q
            report.append({"layer": node.name, "op": "QGemm", "placement": "accelerator",
                           "scale": out_q.scale, "zero_point": out_q.zero_point, "macs": int(weight.size)})
        elif node.op == "MaxPool":  # on uint8 codes: the maximum keeps the input's scale and zero point
            a = node.attrs
            if a.get("ceil_mode", 0) or any(d != 1 for d in a.get("dilations", [1, 1])):
                raise ModelImportError(f"{graph.name}: MaxPool '{node.name}' with ceil_mode or dilations is not supported")
            layers.append(Layer("maxpool", node.name, [ins[0]], node.outputs[0], "host",
                                {"kernel": list(a["kernel_shape"]), "strides": list(a.get("strides", [1, 1])),
                                 "pads": list(a.get("pads", [0] * 4))}, {}, tensor_q[ins[0]]))
            tensor_q[node.outputs[0]] = tensor_q[ins[0]]
        elif node.op == "DequantizeLinear":
            if node.outputs[0] != graph.output:
                raise ModelImportError(f"{graph.name}: DequantizeLinear '{node.name}' inside the network is not supported")
            layers.append(Layer("dequantize", node.name, [ins[0]], node.outputs[0], "host", {}, {},
                                params(ins[1], ins[2])))
        else:
            raise ModelImportError(f"{graph.name}: {node.op} (node '{node.name}') cannot be mixed into a pre-quantized model")
    if input_q is None:
        raise ModelImportError(f"{graph.name}: a pre-quantized model must start with QuantizeLinear")
    # The float input is quantized by the host: the first layers read it under the QuantizeLinear output's name.
    first = next(n for n in graph.nodes if n.op == "QuantizeLinear").outputs[0]
    for layer in layers:
        layer.inputs = [graph.input if i == first else i for i in layer.inputs]
    tensor_q[graph.input] = input_q
    return QuantizedModel(graph.input, graph.input_shape, input_q, graph.output, layers, tensor_q,
                          dict(graph.shapes), report)
