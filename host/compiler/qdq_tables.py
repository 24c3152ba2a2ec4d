"""QDQ tables: float elementwise ops between the DequantizeLinear of one 8-bit tensor and a QuantizeLinear
(HardSigmoid, HardSwish, Tanh, Gelu, GELU's Erf form, or any chain of such ops with scalar constants, even with
QuantizeLinear/DequantizeLinear pairs inside, as onnxruntime's quantizer writes an inlined HardSwish or an Erf
GELU) compute a function of the input's 256 codes; where constants vary along one axis (ConvNeXt's layer scale,
a Mul by one value per channel), one such function per channel. :func:`fuse_qdq_tables` replaces each such region by one
:data:`~mvu.host.compiler.ir.TABLE_OP` node whose table is onnxruntime's own result for every code: the region
run once by onnxruntime on a 256-element tensor, with the model's opsets and onnxruntime's default
optimizations, so the table equals what onnxruntime computes on the model, bit for bit.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from mvu.host.compiler.ir import TABLE_OP, Node
from mvu.host.compiler.rewrites import constant_value

__all__ = ["fuse_qdq_tables"]

#: Ops a region may hold: elementwise on one tensor, their other inputs constants (the scales and zero points of
#: QuantizeLinear and DequantizeLinear scalars, others scalars or varying along one axis).
_ELEMENTWISE = frozenset({
    "QuantizeLinear", "DequantizeLinear", "Add", "Sub", "Mul", "Div", "Erf", "Tanh", "Sigmoid", "HardSigmoid",
    "HardSwish", "Gelu", "LeakyRelu", "Relu", "Clip", "Neg", "Abs", "Exp", "Sqrt", "Pow", "Softplus", "Elu",
    "Identity"})

#: Regions the QDQ rules (mvu.host.compiler.qdq) fold exactly themselves: clamps of the codes (Relu, Clip), and
#: one Sigmoid or LeakyRelu (onnxruntime's QLinear kernels).
_CLAMPS = frozenset({"Relu", "Clip", "Identity"})
_QLINEAR_ALONE = frozenset({"Sigmoid", "LeakyRelu"})

_QDQ = ("QuantizeLinear", "DequantizeLinear")

_CODES = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}


class _Graph:
    """The nodes being rewritten, their producers and positions, and their constants."""

    def __init__(self, nodes: list[Node], constants: dict[str, np.ndarray]):
        self.nodes, self.constants = nodes, constants
        self.producers = {out: node for node in nodes for out in node.outputs}
        self.position = {id(node): index for index, node in enumerate(nodes)}

    def value(self, name: str) -> np.ndarray | None:
        return constant_value(self.nodes, self.constants, name)

    def zero_point(self, node: Node) -> np.ndarray:
        """A QuantizeLinear's or DequantizeLinear's zero point (its default: 0 of the type its codes have)."""
        if len(node.inputs) > 2 and node.inputs[2]:
            return np.asarray(self.value(node.inputs[2]))
        if node.op == "QuantizeLinear":
            return np.zeros((), np.int8 if node.attrs.get("output_dtype", 0) == 3 else np.uint8)
        writer = self.producers.get(node.inputs[0])
        return self.zero_point(writer) if writer is not None and writer.op == "QuantizeLinear" else np.zeros((), np.uint8)

    def per_tensor_codes(self, node: Node) -> bool:
        scale, zero = self.value(node.inputs[1]), self.zero_point(node)
        return scale is not None and scale.size == 1 and zero.size == 1 and zero.dtype in _CODES \
            and not node.attrs.get("block_size", 0)


class _Region:
    """The nodes between one source DequantizeLinear's output and a QuantizeLinear (itself included): while it
    reads several DequantizeLinear outputs, the latest one's codes are followed back through their QuantizeLinear
    (the region of an inlined HardSwish or an Erf GELU that onnxruntime quantized inside); then, while that keeps
    one source, tables written one after another are composed into one."""

    def __init__(self, graph: _Graph, end: Node):
        self.graph, self.end = graph, end
        self.nodes: dict[int, Node] = {}
        self.sources: set[str] = set()
        self.shapes: set[tuple[int, ...]] = set()  # of the constants that are not scalars
        self.complete = self._walk(end.outputs[0]) and self._one_source()
        while self.complete and self.sources:  # none: a QuantizeLinear of constants
            nodes, sources, shapes = dict(self.nodes), set(self.sources), set(self.shapes)
            if not (self._through(self._latest()) and self._one_source()):
                self.nodes, self.sources, self.shapes = nodes, sources, shapes
                break

    def _one_source(self) -> bool:
        while len(self.sources) > 1:
            if not self._through(self._latest()):
                return False
        return True

    def _latest(self) -> str:
        return max(self.sources, key=lambda name: self.graph.position[id(self.graph.producers[name])])

    def _through(self, source: str) -> bool:
        """Take ``source``'s DequantizeLinear into the region and follow its codes back through their
        QuantizeLinear; False where something else writes them or what computes them is no region's."""
        self.sources.discard(source)
        dq = self.graph.producers[source]
        writer = self.graph.producers.get(dq.inputs[0])
        self.nodes[id(dq)] = dq
        return writer is not None and writer.op == "QuantizeLinear" and self._walk(dq.inputs[0])

    def _walk(self, tensor: str, scalar: bool = False) -> bool:
        """Add what computes ``tensor`` from the sources and constants (``scalar``: a scalar one); False if
        something else does."""
        node = self.graph.producers.get(tensor)
        if node is None or node.op == "Constant":
            value = self.graph.value(tensor)
            if value is not None and value.size > 1 and not scalar:
                self.shapes.add(value.shape)
            return value is not None and (value.size == 1 or not scalar)
        if node.op == "DequantizeLinear" and self.graph.value(node.inputs[0]) is None:
            self.sources.add(tensor)
            return True
        if node.op not in _ELEMENTWISE:
            return False
        if id(node) not in self.nodes:
            self.nodes[id(node)] = node
            return all(self._walk(name, node.op in _QDQ and index > 0) for index, name in enumerate(node.inputs)
                       if name)
        return True

    def channels(self) -> tuple[int, ...] | None:
        """The shape the region's constants broadcast to ((), all scalars), or None where they vary along more
        than one axis."""
        try:
            shape = np.broadcast_shapes(*self.shapes)
        except ValueError:
            return None
        return shape if sum(size > 1 for size in shape) <= 1 else None

    def source(self) -> Node | None:
        """The one DequantizeLinear the region reads, if it is a table worth making (see the module docstring)."""
        if not self.complete or len(self.sources) != 1 or self.channels() is None:
            return None
        float_ops = [n.op for n in self.nodes.values() if n.op not in _QDQ]
        if set(float_ops) <= _CLAMPS or (len(float_ops) == 1 and float_ops[0] in _QLINEAR_ALONE):
            return None
        dq = self.graph.producers[next(iter(self.sources))]
        return dq if self.graph.per_tensor_codes(dq) and self.graph.per_tensor_codes(self.end) else None

    def ordered(self) -> list[Node]:
        return sorted(self.nodes.values(), key=lambda node: self.graph.position[id(node)])


def _table(graph: _Graph, region: _Region, dq: Node, opsets: list, ir_version: int) -> tuple[np.ndarray, dict]:
    """onnxruntime's output codes for the 256 input codes of ``dq``, as uint8 (int8 ones plus 128): a table of
    256, or one per channel ``[C, 256]`` with its ``axis`` (counted from the last) in the attributes."""
    import onnxruntime as ort

    nodes = [dq, *region.ordered()]
    inputs = {dq.inputs[0]}
    constants = {name for node in nodes for name in node.inputs
                 if name and name not in inputs and name not in {out for n in nodes for out in n.outputs}}
    x_zero, y_zero = graph.zero_point(dq), graph.zero_point(region.end)
    channels = region.channels()  # the codes run along a new first axis, broadcast along the constants' axes
    model = helper.make_model(helper.make_graph(
        [helper.make_node(n.op, n.inputs, n.outputs, **n.attrs) for n in nodes], "table",
        [helper.make_tensor_value_info(dq.inputs[0], _CODES[x_zero.dtype], [256] + [1] * len(channels))],
        [helper.make_tensor_value_info(region.end.outputs[0], _CODES[y_zero.dtype], None)],
        [numpy_helper.from_array(np.asarray(graph.value(name)), name) for name in sorted(constants)]),
        opset_imports=opsets)
    model.ir_version = ir_version
    signed = x_zero.dtype == np.int8
    codes = (np.arange(256) - 128 * signed).astype(x_zero.dtype)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {dq.inputs[0]: codes.reshape(256, *[1] * len(channels))})[0]
    table = (out.astype(np.int16) + 128 * (y_zero.dtype == np.int8)).astype(np.uint8)
    if max(channels, default=1) == 1:
        return table.reshape(256), {}
    axis = next(index for index, size in enumerate(channels) if size > 1)
    return np.ascontiguousarray(table.reshape(256, -1).T), {"axis": axis - len(channels)}


def fuse_qdq_tables(nodes: list[Node], constants: dict[str, np.ndarray], opsets: list, ir_version: int) -> None:
    """Replace (in place) each QuantizeLinear that ends a table region by a ``TABLE_OP`` node writing its
    codes; the region's nodes that nothing else reads are dropped later. ``opsets`` and ``ir_version`` are the
    model's (``OperatorSetIdProto`` list, int)."""
    graph = _Graph(nodes, constants)
    covered: set[int] = set()  # nodes of the regions made so far (from the last QuantizeLinear back)
    for end in [n for n in reversed(nodes) if n.op == "QuantizeLinear"]:
        if id(end) in covered:
            continue
        region = _Region(graph, end)
        dq = region.source()
        if dq is None:
            continue
        try:
            values, attrs = _table(graph, region, dq, opsets, ir_version)
        except Exception:  # onnxruntime cannot run the region: its nodes stay, and are refused by name if need be
            continue
        covered.update(region.nodes)
        table = f"{end.name}_table"
        constants[table] = values
        inputs = [*dq.inputs[:2], _zero_point_name(graph, dq), end.inputs[1], _zero_point_name(graph, end), table]
        ops = [n.op for n in region.ordered() if n.op not in _QDQ]
        last = graph.producers[end.inputs[0]]  # the last float op: named after it, unless others still read it
        name = end.name if sum(end.inputs[0] in node.inputs for node in nodes) > 1 else last.name
        nodes[graph.position[id(end)]] = Node(TABLE_OP, name, inputs, list(end.outputs), {"ops": ops, **attrs})


def _zero_point_name(graph: _Graph, node: Node) -> str:
    """The name of ``node``'s zero point, made a constant where the node leaves it out."""
    if len(node.inputs) > 2 and node.inputs[2]:
        return node.inputs[2]
    name = f"{node.name}_zero_point"
    graph.constants[name] = graph.zero_point(node)
    return name
