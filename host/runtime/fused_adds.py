"""Residual adds moved into the STOREs of the convolution before them: an Add layer that alone reads an accelerator
convolution's output becomes that convolution's STORE ``add`` (docs/isa.md), so its output comes out of the
product and the host makes no pass over the tensors; a table that alone reads the Add's output becomes the same
STOREs' ``lookup``, which comes after the add."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from mvu.hdl.contract.residual_add import ResidualAdd
from mvu.host.executors.kernels import qlinear_add
from mvu.host.executors.onnxruntime_add import add_coefficients, onnxruntime_add
from mvu.host.model.quantized import Layer, QuantizedModel

__all__ = ["FUSED_ADD", "FUSED_TABLE", "FusedAdd", "fused_adds"]

#: The placement an Add layer that runs in its producer's STOREs is listed with.
FUSED_ADD = "accelerator (fused add)"
#: The placement a table that runs in its producer's STOREs is listed with.
FUSED_TABLE = "accelerator (fused table)"


@dataclass(frozen=True)
class FusedAdd:
    """The Add layer ``add`` done by a convolution's STOREs: ``addend`` names its other input; ``table``, the
    ``lut`` layer those STOREs look the sums up in, if one alone reads them."""

    add: Layer
    addend: str
    residual: ResidualAdd
    table: Layer | None = None


def _residual(model: QuantizedModel, add: Layer, conv_first: bool) -> ResidualAdd | None:
    """The STOREs' add for ``add`` with the convolution's output as its first input or its second, or None where
    its coefficients do not fit the add block (the host then adds, with the same arithmetic)."""
    quantizations = [(model.tensor_q[name].scale, model.tensor_q[name].zero_point) for name in add.inputs]
    (ratio_a, ratio_b), start = add_coefficients(quantizations, (add.out_q.scale, add.out_q.zero_point))
    low, high = add.attrs["clamp"]
    ratios = (ratio_a, ratio_b) if conv_first else (ratio_b, ratio_a)
    try:
        residual = ResidualAdd.from_float32(*ratios, start, q_inner=not conv_first, low=low, high=high)
    except ValueError:
        return None
    return residual if _same_as_host(residual, quantizations, add, conv_first) else None


def _same_as_host(residual: ResidualAdd, quantizations: list, add: Layer, conv_first: bool) -> bool:
    """Whether the STOREs' add gives the host's sum for every byte pair. The host adds whole tensors with
    onnxruntime's QLinearAdd kernel where it has one; :func:`add_coefficients` derives ``start`` as that kernel
    does (one float32 unit off, it moved ResNet-50's ``add_386`` 187 + 139 from 60 to 59), but that is checked
    on random scales, not each Add's, so each Add is checked on all 65,536 pairs laid out as a tensor (a
    one-element tensor takes the kernel's broadcast path, which rounds otherwise)."""
    first, second = (codes.ravel() for codes in np.meshgrid(np.arange(256, dtype=np.uint8),
                                                             np.arange(256, dtype=np.uint8), indexing="ij"))
    low, high = add.attrs["clamp"]
    kernel = onnxruntime_add(*quantizations, (add.out_q.scale, add.out_q.zero_point))
    if kernel is not None:
        host = kernel(first, second, low, high)
    else:
        (ratio_a, ratio_b), start = add_coefficients(quantizations, (add.out_q.scale, add.out_q.zero_point))
        host = qlinear_add(first, second, ratio_a, ratio_b, start, low, high)
    q, addend = (first, second) if conv_first else (second, first)
    return host is not None and np.array_equal(residual(q, addend), host)


def fused_adds(model: QuantizedModel) -> dict[str, FusedAdd]:
    """Per accelerator convolution (by name), the Add layer its STOREs can do.

    An Add qualifies when it has two tensor inputs, one the output of a single-group accelerator convolution
    with uint8 codes and no table that nothing else reads, the other a tensor computed before that
    convolution, and its coefficients and clamp fit the add block. A ``lut`` layer of one table that alone reads
    the Add's output (not the model's) joins it.
    """
    readers = Counter(name for layer in model.layers for name in layer.inputs)
    index = {layer.output: i for i, layer in enumerate(model.layers)}
    index[model.input] = -1
    producers = {layer.output: layer for layer in model.layers}
    tables = {layer.inputs[0]: layer for layer in model.layers if layer.kind == "lut" and layer.arrays["table"].ndim == 1}
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
                alone = readers[add.output] == 1 and add.output != model.output
                fused[conv.name] = FusedAdd(add, other, residual, tables.get(add.output) if alone else None)
                break
    return fused
