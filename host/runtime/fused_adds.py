"""Residual adds moved into the STOREs of the convolution before them: an Add layer that alone reads an accelerator
convolution's output becomes that convolution's STORE ``add`` (docs/isa.md), so its output comes out of the
product and the host makes no pass over the tensors."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from mvu.hdl.contract.residual_add import ResidualAdd
from mvu.host.executors.onnxruntime_add import add_coefficients
from mvu.host.model.quantized import Layer, QuantizedModel

__all__ = ["FUSED_ADD", "FusedAdd", "fused_adds"]

#: The placement an Add layer that runs in its producer's STOREs is listed with.
FUSED_ADD = "accelerator (fused add)"


@dataclass(frozen=True)
class FusedAdd:
    """The Add layer ``add`` done by a convolution's STOREs: ``addend`` names its other input."""

    add: Layer
    addend: str
    residual: ResidualAdd


def _residual(model: QuantizedModel, add: Layer, conv_first: bool) -> ResidualAdd | None:
    """The STOREs' add for ``add`` with the convolution's output as its first input or its second, or None where
    its coefficients do not fit the add block (the host then adds, with the same arithmetic)."""
    quantizations = [(model.tensor_q[name].scale, model.tensor_q[name].zero_point) for name in add.inputs]
    (ratio_a, ratio_b), start = add_coefficients(quantizations, (add.out_q.scale, add.out_q.zero_point))
    low, high = add.attrs["clamp"]
    ratios = (ratio_a, ratio_b) if conv_first else (ratio_b, ratio_a)
    try:
        return ResidualAdd.from_float32(*ratios, start, q_inner=not conv_first, low=low, high=high)
    except ValueError:
        return None


def fused_adds(model: QuantizedModel) -> dict[str, FusedAdd]:
    """Per accelerator convolution (by name), the Add layer its STOREs can do.

    An Add qualifies when it has two tensor inputs, one the output of a single-group accelerator convolution
    with uint8 codes and no table that nothing else reads, the other a tensor computed before that
    convolution, and its coefficients and clamp fit the add block.
    """
    readers = Counter(name for layer in model.layers for name in layer.inputs)
    index = {layer.output: i for i, layer in enumerate(model.layers)}
    index[model.input] = -1
    producers = {layer.output: layer for layer in model.layers}
    fused: dict[str, FusedAdd] = {}
    for add in (layer for layer in model.layers if layer.kind == "add" and len(layer.inputs) == 2):
        if any(name in add.arrays or name not in index for name in add.inputs) or add.inputs[0] == add.inputs[1]:
            continue
        low, high = add.attrs["clamp"]
        if not 0 <= low <= high <= 255:
            continue
        for position, name in enumerate(add.inputs):
            conv, other = producers.get(name), add.inputs[1 - position]
            if (conv is None or conv.kind != "conv" or conv.placement != "accelerator" or conv.attrs["group"] != 1
                    or "table" in conv.arrays or conv.attrs["clamp"][0] < 0 or readers[name] != 1
                    or name == model.output or conv.name in fused or index[other] >= index[name]):
                continue
            residual = _residual(model, add, position == 0)
            if residual is not None:
                fused[conv.name] = FusedAdd(add, other, residual)
                break
    return fused
