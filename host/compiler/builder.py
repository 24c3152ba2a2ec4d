"""What a pass over an imported graph builds: integer layers, each tensor's quantization, the compile report.

The float path (:mod:`mvu.host.compiler.quantize`) and the pre-quantized path
(:mod:`mvu.host.compiler.prequantized`) each map op types to handlers that
emit layers through a :class:`LayerBuilder`.
"""

from __future__ import annotations

from mvu.host.compiler.graph import Graph
from mvu.host.model.quantized import Layer, QuantizedModel, QuantParams

__all__ = ["LayerBuilder", "conv_placement"]


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
