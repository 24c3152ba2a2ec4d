"""An imported ONNX graph as the compiler's passes read and rewrite it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Graph", "Node", "INTERNAL_OPS", "LAYER_NORM_OP", "TABLE_OP"]

#: A QDQ region of elementwise ops made one table (compiler/qdq_tables.py): inputs ``x, x_scale, x_zero_point,
#: y_scale, y_zero_point, table`` (the table as uint8 output codes, int8 ones plus 128, indexed by the input code
#: as uint8, int8 ones plus 128; ``[C, 256]``, one per channel along the attribute ``axis``, counted from the
#: last, where the region's constants vary along it).
TABLE_OP = "QLinearTable"
#: A QDQ LayerNormalization on the codes (compiler/qdq.py): inputs ``x, x_scale, x_zero_point, scale, bias,
#: y_scale, y_zero_point``, its scale and bias float constants ("" for no bias); the node's attributes.
LAYER_NORM_OP = "QLinearLayerNormalization"
#: Ops only mvu's own rewrites write into a graph; no ONNX model names them.
INTERNAL_OPS = frozenset({TABLE_OP, LAYER_NORM_OP})


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
