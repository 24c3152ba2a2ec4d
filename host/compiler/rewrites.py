"""Import rules that rewrite an ONNX graph into ops mvu takes: GELU's Erf form becomes one Gelu node, a gated
``x * Sigmoid(x)`` (SiLU) one Swish node and ``x * HardSigmoid(x)`` one HardSwish node, and a zero Pad before a
convolution becomes the convolution's own padding."""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from mvu.host.compiler.ir import Graph, Node

__all__ = ["constant_value", "fold_pads", "fuse_gates", "fuse_gelu", "pad_widths"]


def constant_value(nodes: list[Node], constants: dict[str, np.ndarray], name: str) -> np.ndarray | None:
    """``name``'s value if it is an initializer or a Constant node's tensor (before constant folding)."""
    if name in constants:
        return constants[name]
    node = next((n for n in nodes if n.op == "Constant" and n.outputs[0] == name), None)
    if node is None:
        return None
    if "value" in node.attrs:
        return numpy_helper.to_array(node.attrs["value"])
    return np.asarray(node.attrs["value_float"]) if "value_float" in node.attrs else None


def _is(value: np.ndarray | None, number: float) -> bool:
    return value is not None and value.size == 1 and abs(float(value.reshape(-1)[0]) - number) < 1e-4 * abs(number)


def _readers(nodes: list[Node], tensor: str) -> list[Node]:
    return [n for n in nodes if tensor in n.inputs]


def _other(node: Node, tensor: str) -> str:
    """The other input of a two-input node."""
    return node.inputs[1] if node.inputs[0] == tensor else node.inputs[0]


def fuse_gelu(nodes: list[Node], constants: dict[str, np.ndarray]) -> None:
    """``x * 0.5 * (1 + erf(x / sqrt(2)))`` (Div or Mul by the constant, the halving first or last) becomes
    ``Gelu(x)`` under the last Mul's output name; the nodes it leaves unread are dropped later."""
    for erf in [n for n in nodes if n.op == "Erf"]:
        scaled = next((n for n in nodes if n.outputs[0] == erf.inputs[0] and n.op in ("Div", "Mul")), None)
        if scaled is None or len(scaled.inputs) != 2:
            continue
        x = next((i for i in scaled.inputs if constant_value(nodes, constants, i) is None), None)
        factor = constant_value(nodes, constants, _other(scaled, x)) if x else None
        if not (_is(factor, np.sqrt(2)) if scaled.op == "Div" else _is(factor, np.sqrt(0.5))):
            continue
        plus = _readers(nodes, erf.outputs[0])
        if len(plus) != 1 or plus[0].op != "Add" or not _is(constant_value(nodes, constants, _other(plus[0], erf.outputs[0])), 1):
            continue
        product = _readers(nodes, plus[0].outputs[0])
        if len(product) != 1 or product[0].op != "Mul":
            continue
        last = _last_mul(nodes, constants, product[0], plus[0].outputs[0], x)
        if last is not None:
            last.op, last.inputs, last.attrs = "Gelu", [x], {}


def _last_mul(nodes: list[Node], constants: dict[str, np.ndarray], product: Node, one_plus: str,
              x: str) -> Node | None:
    """The Mul that ends the GELU: ``(x * (1 + erf)) * 0.5`` or ``(x * 0.5) * (1 + erf)``."""
    other = _other(product, one_plus)
    if other == x:
        half = _readers(nodes, product.outputs[0])
        if len(half) == 1 and half[0].op == "Mul" and _is(constant_value(nodes, constants, _other(half[0], product.outputs[0])), 0.5):
            return half[0]
        return None
    halved = next((n for n in nodes if n.outputs[0] == other and n.op == "Mul" and x in n.inputs), None)
    return product if halved is not None and _is(constant_value(nodes, constants, _other(halved, x)), 0.5) else None


def _hard_swish_gate(gate: Node) -> bool:
    """Whether a HardSigmoid is HardSwish's: ``clip(x / 6 + 1/2, 0, 1)``."""
    return abs(gate.attrs.get("alpha", 0.2) - 1 / 6) < 1e-6 and abs(gate.attrs.get("beta", 0.5) - 0.5) < 1e-6


#: Gate op -> (whether it qualifies, the single op that ``x * gate(x)`` becomes).
_GATES = {"Sigmoid": (lambda gate: True, "Swish"), "HardSigmoid": (_hard_swish_gate, "HardSwish")}


def fuse_gates(nodes: list[Node]) -> None:
    """``Mul(x, Sigmoid(x))`` (SiLU) becomes ``Swish(x)`` and ``Mul(x, HardSigmoid(x))`` with HardSwish's
    coefficients ``HardSwish(x)``, under the Mul's output name; a gate nothing else reads is dropped later."""
    producers = {out: n for n in nodes for out in n.outputs}
    for mul in [n for n in nodes if n.op == "Mul" and len(n.inputs) == 2]:
        for gated in mul.inputs:
            gate, x = producers.get(gated), _other(mul, gated)
            if gate is None or gate.op not in _GATES or gate.inputs[:1] != [x] or not _GATES[gate.op][0](gate):
                continue
            mul.op, mul.inputs, mul.attrs = _GATES[gate.op][1], [x], {}
            break


def pad_widths(graph: Graph, node: Node) -> tuple[list[int], list[int], float | None, str]:
    """A Pad's widths before and after each axis, its constant value (None if it is computed, as a QDQ model's
    DequantizeLinear) and mode, whatever its opset."""
    rank = len(graph.shapes[node.inputs[0]])
    if len(node.inputs) > 1 and node.inputs[1]:  # opset 11 on: inputs
        pads = [int(v) for v in graph.constants[node.inputs[1]]]
        value = graph.constants.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else 0.0
        axes = [int(a) % rank for a in graph.constants[node.inputs[3]]] if len(node.inputs) > 3 and node.inputs[3] \
            else list(range(rank))
    else:
        pads, value, axes = list(node.attrs.get("pads", [])), node.attrs.get("value", 0.0), list(range(rank))
    begin, end = [0] * rank, [0] * rank
    for index, axis in enumerate(axes):
        begin[axis], end[axis] = pads[index], pads[index + len(axes)]
    mode = node.attrs.get("mode", "constant")
    value = None if value is None else float(np.asarray(value).reshape(-1)[0])
    return begin, end, value, mode.decode() if isinstance(mode, bytes) else mode


def fold_pads(graph: Graph) -> None:
    """A Pad of zeros on the height and width whose only reader is a Conv with explicit pads: the Conv pads
    instead (zero is what a quantized convolution pads with, its input's zero point)."""
    removed = set()
    for node in graph.nodes:
        if node.op != "Pad" or node.outputs[0] == graph.output:
            continue
        readers = graph.consumers(node.outputs[0])
        begin, end, value, mode = pad_widths(graph, node)
        if len(readers) != 1 or readers[0].op != "Conv" or readers[0].attrs.get("auto_pad", "NOTSET") not in (
                "NOTSET", b"NOTSET") or mode != "constant" or value != 0 or any(begin[:2] + end[:2]) or \
                min(begin + end) < 0:
            continue
        conv = readers[0]
        top, left, bottom, right = conv.attrs.get("pads", [0, 0, 0, 0])
        conv.attrs["pads"] = [top + begin[2], left + begin[3], bottom + end[2], right + end[3]]
        conv.inputs[0] = node.inputs[0]
        removed.add(id(node))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
