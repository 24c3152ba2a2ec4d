"""What a pass over an imported graph builds: integer layers, each tensor's quantization, the compile report.

The float path (:mod:`mvu.host.compiler.quantize`) and the pre-quantized path
(:mod:`mvu.host.compiler.prequantized`) each map op types to handlers that
emit layers through a :class:`LayerBuilder`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from mvu.host.compiler.graph import Graph
from mvu.host.model.quantized import Layer, QuantizedModel, QuantParams

__all__ = ["LayerBuilder", "unsupported"]


class LayerBuilder:
    """The layers made so far from ``graph``, and the quantization of the tensors they write."""

    def __init__(self, graph: Graph, tensor_q: dict[str, QuantParams] | None = None):
        self.graph = graph
        self.tensor_q: dict[str, QuantParams] = dict(tensor_q or {})
        self.layers: list[Layer] = []
        self.report: list[dict] = []

    def emit(self, layer: Layer, op: str | None = None) -> None:
        """Append ``layer``; its output takes ``layer.out_q`` when it has one; with ``op``, the report gains a
        row for it (float logits have no scale: NaN, zero point 0)."""
        self.layers.append(layer)
        out_q = layer.out_q
        if out_q is not None:
            self.tensor_q[layer.output] = out_q
        if op is not None:
            self.report.append({"layer": layer.name, "op": op, "placement": layer.placement,
                                "scale": float("nan") if out_q is None else out_q.scale,
                                "zero_point": 0 if out_q is None else out_q.zero_point, "macs": layer.macs})

    def model(self, input_q: QuantParams, shapes: dict[str, tuple[int, ...]]) -> QuantizedModel:
        graph = self.graph
        return QuantizedModel(graph.input, graph.input_shape, input_q, graph.output, self.layers, self.tensor_q,
                              shapes, self.report)


def unsupported(graph: Graph, handlers: Mapping[str, Callable]) -> str:
    """The nodes no handler takes, as ``Op (node 'name'), ...``; empty when there are none."""
    return ", ".join(f"{node.op} (node '{node.name}')" for node in graph.nodes if node.op not in handlers)
