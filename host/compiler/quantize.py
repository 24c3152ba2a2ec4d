"""Post-training quantization of an imported graph into integer layers.

Activations are uint8 with a zero point (per tensor, from calibration),
weights int8 symmetric per output channel, biases int32. Every layer's
output requantization uses the post-processor's fixed-point arithmetic
(:func:`mvu.host.executors.reference.requantize`), whether it runs on the accelerator or,
for the ops the array cannot run, on the host.
"""

from __future__ import annotations

import sys

import numpy as np
import onnx

from mvu.hdl.contract.requantization import quantize_multiplier
from mvu.host.compiler.graph import Graph, ModelImportError, Node
from mvu.host.model.quantized import Layer, QuantizedModel, QuantParams

__all__ = ["activation_clamp", "calibrate", "quantize_graph"]


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


def _affine_form(graph: Graph, node: Node):
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


def _output_requant(in_q: QuantParams, w_scale: np.ndarray, bias: np.ndarray | None, out_q: QuantParams,
                    activation: str) -> dict:
    acc_scale = in_q.scale * w_scale
    pairs = [quantize_multiplier(float(s)) for s in acc_scale / out_q.scale]
    bias_q = np.zeros(w_scale.size, np.int64) if bias is None else np.round(bias / acc_scale).astype(np.int64)
    low, high = activation_clamp(out_q, activation)
    return {"bias": np.clip(bias_q, -2 ** 31, 2 ** 31 - 1).astype(np.int32),
            "multiplier": np.array([p[0] for p in pairs], np.int64),
            "shift": np.array([p[1] for p in pairs], np.int64),
            "clamp": (low, high)}


def quantize_graph(graph: Graph, ranges: dict) -> QuantizedModel:
    """Turn the float graph into integer layers using calibrated ``ranges``."""
    tensor_q: dict[str, QuantParams] = {graph.input: QuantParams.from_range(*ranges[graph.input])}
    shapes = dict(graph.shapes)
    layers: list[Layer] = []
    report: list[dict] = []
    consumed: set[int] = set()

    def q_of(name: str) -> QuantParams:
        if name not in tensor_q:
            raise ModelImportError(f"{graph.name}: tensor '{name}' has no quantization parameters")
        return tensor_q[name]

    def out_params(name: str, activation: str) -> QuantParams:
        low, high = ranges[name]
        if activation == "relu6":
            low, high = 0.0, min(high, 6.0)
        elif activation == "relu":
            low = 0.0
        return QuantParams.from_range(low, high)

    for node in graph.nodes:
        if id(node) in consumed:
            continue
        if node.op == "Conv":
            output, activation = _fused_activation(graph, node.outputs[0])
            if output != node.outputs[0]:
                consumed.add(id(graph.consumers(node.outputs[0])[0]))
            weight = graph.constants[node.inputs[1]]
            bias = graph.constants[node.inputs[2]] if len(node.inputs) > 2 and node.inputs[2] else None
            in_q, out_q = q_of(node.inputs[0]), out_params(output, activation)
            q_weight, w_scale = _weights_int8(weight, bias, in_q.scale)
            group = node.attrs.get("group", 1)
            kernel = list(weight.shape[2:])
            attrs = {"strides": list(node.attrs.get("strides", [1, 1])),
                     "pads": list(node.attrs.get("pads", [0, 0, 0, 0])),
                     "dilations": list(node.attrs.get("dilations", [1, 1])), "group": group,
                     "kernel": kernel, "in_zero_point": in_q.zero_point}
            if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
                raise ModelImportError(f"{graph.name}: Conv '{node.name}' uses auto_pad; explicit pads are needed")
            requant = _output_requant(in_q, w_scale, bias, out_q, activation)
            out_shape = shapes[output] = shapes.get(node.outputs[0], shapes.get(output))
            macs = int(np.prod(out_shape[1:]) * np.prod(weight.shape[1:]))
            layer = Layer("conv", node.name, [node.inputs[0]], output,
                          "accelerator" if group == 1 else "host", attrs,
                          {"weight": q_weight, **{k: v for k, v in requant.items() if k != "clamp"}},
                          out_q, macs)
            layer.attrs["clamp"] = requant["clamp"]
            layer.attrs["activation"] = activation
            layers.append(layer)
            tensor_q[output] = out_q
            report.append({"layer": node.name, "op": f"Conv{'+' + activation if activation != 'none' else ''}",
                           "placement": layer.placement, "scale": out_q.scale, "zero_point": out_q.zero_point,
                           "macs": macs})
        elif node.op in ("Add", "Sum", "Mul", "BatchNormalization") and _affine_form(graph, node) is not None:
            scale, shift_term = _affine_form(graph, node)
            source = next(i for i in node.inputs if i not in graph.constants)
            output, activation = _fused_activation(graph, node.outputs[0])
            if output != node.outputs[0]:
                consumed.add(id(graph.consumers(node.outputs[0])[0]))
            in_q, out_q = q_of(source), out_params(output, activation)
            channels = shapes[source][1]
            scale = np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (channels,))
            shift_term = np.broadcast_to(np.asarray(shift_term, np.float64).reshape(-1), (channels,))
            layers.append(Layer("affine", node.name, [source], output, "host",
                                {"clamp": activation_clamp(out_q, activation), "ratio": (scale * in_q.scale / out_q.scale).tolist(),
                                 "offset": np.round(shift_term / out_q.scale).astype(np.int64).tolist()},
                                {}, out_q))
            tensor_q[output] = out_q
            shapes[output] = shapes.get(node.outputs[0], shapes.get(output))
            report.append({"layer": node.name, "op": f"{node.op} (per-channel affine)", "placement": "host",
                           "scale": out_q.scale, "zero_point": out_q.zero_point, "macs": 0})
        elif node.op in ("Add", "Sum"):
            output, activation = _fused_activation(graph, node.outputs[0])
            if output != node.outputs[0]:
                consumed.add(id(graph.consumers(node.outputs[0])[0]))
            out_q = out_params(output, activation)
            layer = Layer("add", node.name, list(node.inputs), output, "host",
                          {"activation": activation, "clamp": activation_clamp(out_q, activation)}, {}, out_q)
            layers.append(layer)
            tensor_q[output] = out_q
            shapes[output] = shapes.get(node.outputs[0], shapes.get(output))
            report.append({"layer": node.name, "op": "Add", "placement": "host", "scale": out_q.scale,
                           "zero_point": out_q.zero_point, "macs": 0})
        elif node.op in ("Relu", "Clip"):
            low, high = (0.0, np.inf) if node.op == "Relu" else _clip_bounds(graph, node)
            in_q = q_of(node.inputs[0])
            lo = int(np.clip(round(low / in_q.scale) + in_q.zero_point, 0, 255)) if np.isfinite(low) else 0
            hi = int(np.clip(round(high / in_q.scale) + in_q.zero_point, 0, 255)) if np.isfinite(high) else 255
            layers.append(Layer("clamp", node.name, [node.inputs[0]], node.outputs[0], "host", {"clamp": (lo, hi)},
                                {}, in_q))
            tensor_q[node.outputs[0]] = in_q
        elif node.op in ("MaxPool", "AveragePool", "GlobalAveragePool"):
            in_q = q_of(node.inputs[0])
            out_q = in_q if node.op == "MaxPool" else out_params(node.outputs[0], "none")
            attrs = {"kernel": list(node.attrs.get("kernel_shape", [])), "strides": list(node.attrs.get("strides", [1, 1])),
                     "pads": list(node.attrs.get("pads", [0, 0, 0, 0])),
                     "count_include_pad": node.attrs.get("count_include_pad", 0)}
            if node.attrs.get("ceil_mode", 0):
                raise ModelImportError(f"{graph.name}: {node.op} '{node.name}' uses ceil_mode, which is not supported")
            kind = {"MaxPool": "maxpool", "AveragePool": "avgpool", "GlobalAveragePool": "gap"}[node.op]
            layers.append(Layer(kind, node.name, [node.inputs[0]], node.outputs[0], "host", attrs, {}, out_q))
            tensor_q[node.outputs[0]] = out_q
        elif node.op in ("Flatten", "Reshape"):
            in_q = q_of(node.inputs[0])
            layers.append(Layer("reshape", node.name, [node.inputs[0]], node.outputs[0], "host",
                                {"shape": list(shapes[node.outputs[0]])}, {}, in_q))
            tensor_q[node.outputs[0]] = in_q
        elif node.op == "Concat":
            out_q = out_params(node.outputs[0], "none")
            layers.append(Layer("concat", node.name, list(node.inputs), node.outputs[0], "host",
                                {"axis": node.attrs.get("axis", 1)}, {}, out_q))
            tensor_q[node.outputs[0]] = out_q
        elif node.op in ("Gemm", "MatMul"):
            weight = graph.constants[node.inputs[1]].astype(np.float64)
            if node.op == "Gemm":
                if node.attrs.get("transA", 0):
                    raise ModelImportError(f"{graph.name}: Gemm '{node.name}' with transA is not supported")
                weight = weight.T if node.attrs.get("transB", 0) else weight
                weight = weight * node.attrs.get("alpha", 1.0)
                bias = graph.constants[node.inputs[2]] * node.attrs.get("beta", 1.0) if len(node.inputs) > 2 else None
            else:
                bias = None
            bias = None if bias is None else np.broadcast_to(np.asarray(bias, np.float64).reshape(-1), (weight.shape[1],))
            in_q = q_of(node.inputs[0])
            q_weight, w_scale = _weights_int8(weight.T, bias, in_q.scale)  # per output column
            final = all(c.op == "Softmax" for c in graph.consumers(node.outputs[0])) or node.outputs[0] == graph.output
            if final:  # logits leave the accelerator as int32 and are scaled to float on the host
                bias_q = np.zeros(w_scale.size, np.int64) if bias is None else np.round(bias / (in_q.scale * w_scale)).astype(np.int64)
                layers.append(Layer("fc", node.name, [node.inputs[0]], node.outputs[0], "accelerator",
                                    {"in_zero_point": in_q.zero_point},
                                    {"weight": q_weight.T.copy(), "w_scale": w_scale, "bias": bias_q},
                                    None, int(weight.size)))
                op_name = node.op
            else:
                output, activation = _fused_activation(graph, node.outputs[0])
                if output != node.outputs[0]:
                    consumed.add(id(graph.consumers(node.outputs[0])[0]))
                out_q = out_params(output, activation)
                requant = _output_requant(in_q, w_scale, bias, out_q, activation)
                layer = Layer("fc_quantized", node.name, [node.inputs[0]], output, "accelerator",
                              {"in_zero_point": in_q.zero_point, "clamp": requant["clamp"]},
                              {"weight": q_weight.T.copy(), **{k: v for k, v in requant.items() if k != "clamp"}},
                              out_q, int(weight.size))
                layers.append(layer)
                tensor_q[output] = out_q
                shapes[output] = shapes.get(node.outputs[0], shapes.get(output))
                op_name = f"{node.op}{'+' + activation if activation != 'none' else ''}"
            report.append({"layer": node.name, "op": op_name, "placement": "accelerator",
                           "scale": float("nan") if final else out_q.scale,
                           "zero_point": 0 if final else out_q.zero_point, "macs": int(weight.size)})
        elif node.op == "Softmax":
            layers.append(Layer("softmax", node.name, [node.inputs[0]], node.outputs[0], "host"))
        else:
            raise ModelImportError(f"{graph.name}: cannot quantize {node.op} (node '{node.name}')")
    return QuantizedModel(graph.input, graph.input_shape, tensor_q[graph.input], graph.output, layers,
                          tensor_q, shapes, report)
