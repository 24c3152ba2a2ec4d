"""What a pass over an imported graph builds: integer layers, each tensor's quantization, the compile report.

The float path (:mod:`mvu.host.compiler.quantize`) and the pre-quantized path
(:mod:`mvu.host.compiler.prequantized`) each map op types to handlers that
emit layers through a :class:`LayerBuilder`.
"""

from __future__ import annotations

import numpy as np

from mvu.host.compiler.graph import Graph, Node
from mvu.host.model.quantized import VIEW, Layer, QuantizedModel, QuantParams, is_view

__all__ = ["LayerBuilder", "conv_placement"]

#: Ops that take a flattened feature map as the rows of a product with constant weights (their input 0, their
#: weights input 1 with K first, or K last with ``transB``).
_PRODUCTS = ("Gemm", "MatMul", "QGemm", "QLinearMatMul")


def conv_placement(group: int, weight_shape: tuple[int, ...]) -> str:
    """Where a convolution with ``group`` groups and weights ``[C_out, C_in / group, kh, kw]`` runs: one group, or
    one channel per group (depthwise: :class:`mvu.host.depthwise.DepthwiseProgram`), on the accelerator; other
    grouped convolutions on the host."""
    depthwise = weight_shape[0] == group and weight_shape[1] == 1
    return "accelerator" if group == 1 or depthwise else "host"


class LayerBuilder:
    """The layers made so far from ``graph``, and the quantization of the tensors they write."""

    def __init__(self, graph: Graph, tensor_q: dict[str, QuantParams] | None = None):
        self.graph = graph
        self.tensor_q: dict[str, QuantParams] = dict(tensor_q or {})
        self.layers: list[Layer] = []
        self.report: list[dict] = []
        #: Flattened feature maps read in channels-last order, with their ``(C, H, W)``: their products' weight
        #: rows follow (:meth:`product_rows`).
        self.channels_last: dict[str, tuple[int, int, int]] = {}

    def reshape(self, node: Node, shape: tuple[int, ...] | None, out_shape: tuple[int, ...], in_q: QuantParams
                ) -> None:
        """A Flatten or Reshape: a :data:`VIEW` where its bytes stay put; also where it flattens a feature map
        ``[N, C, H, W]`` that only products with constant weights read, which then read it in channels-last order
        (their weight rows permuted to match); else a copy on the host."""
        attrs, placement = {"shape": list(out_shape)}, "host"
        output = node.outputs[0]
        readers = self.graph.consumers(output)
        if shape and is_view(shape):
            placement = VIEW
        elif (shape is not None and len(shape) == 4 and len(out_shape) == 2 and output != self.graph.output
              and out_shape[1] == int(np.prod(shape[1:])) and readers
              and all(r.op in _PRODUCTS and r.inputs[0] == output and r.inputs[1 if r.op in ("Gemm", "MatMul") else 3]
                      in self.graph.constants and not r.attrs.get("transA", 0) for r in readers)):
            attrs["channels_last"] = list(shape[1:])
            self.channels_last[output] = tuple(shape[1:])
            placement = VIEW
        self.emit(Layer("reshape", node.name, [node.inputs[0]], output, placement, attrs, {}, in_q), node.op)

    def product_rows(self, tensor: str, weight: np.ndarray) -> np.ndarray:
        """Weights ``[K, N]`` of a product reading ``tensor``, their K rows in the order the tensor's bytes lie:
        ``(h, w, c)`` for a feature map flattened in channels-last order, else as they are."""
        if tensor not in self.channels_last:
            return weight
        c, h, w = self.channels_last[tensor]
        return np.ascontiguousarray(weight.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(weight.shape))

    def emit(self, layer: Layer, op: str, *, float_output: bool = False) -> None:
        """Append ``layer`` and its report row (``op``: what it computes, in the model's terms). Its output takes
        ``layer.out_q``, unless the output is float (logits; a dequantize layer's ``out_q`` is its input's): then
        the row's scale and zero point are None."""
        self.layers.append(layer)
        out_q = None if float_output else layer.out_q
        if out_q is not None:
            self.tensor_q[layer.output] = out_q
        self.report.append({"layer": layer.name, "op": op, "placement": layer.placement,
                            "scale": None if out_q is None else out_q.scale,
                            "zero_point": None if out_q is None else out_q.zero_point, "macs": layer.macs})

    def model(self, input_q: QuantParams, shapes: dict[str, tuple[int, ...]]) -> QuantizedModel:
        graph = self.graph
        return QuantizedModel(graph.input, graph.input_shape, input_q, graph.output, self.layers, self.tensor_q,
                              shapes, self.report)
