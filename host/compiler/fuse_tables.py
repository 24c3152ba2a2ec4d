"""Elementwise tables moved onto the accelerator: a ``lut`` layer that alone reads an accelerator product's output
becomes that product's STORE lookup (docs/isa.md), so the activation costs no pass over the tensor on the host."""

from __future__ import annotations

from collections import Counter

from mvu.host.model.quantized import QuantizedModel
from mvu.host.runtime.fused_adds import FUSED_TABLE

__all__ = ["FUSED_TABLE", "fuse_tables"]

#: Layer kinds whose accelerator products end in a requantizing STORE.
_PRODUCTS = frozenset({"conv", "fc_quantized"})


def fuse_tables(model: QuantizedModel) -> QuantizedModel:
    """Fold each ``lut`` layer into the accelerator product whose output only it reads; returns ``model``.

    The product keeps its requantization (into the table's input quantization: ``table_zero_point`` keeps that
    zero point), gains the ``table`` (``table_layer`` names it) and writes the table's output tensor in its
    quantization. The table's row of the report stays, placed :data:`FUSED_TABLE`; tables that stay on the host
    keep their "host" row.
    """
    readers = Counter(name for layer in model.layers for name in layer.inputs)
    producers = {layer.output: layer for layer in model.layers}
    fused = set()
    for table in (layer for layer in model.layers if layer.kind == "lut"):
        source = producers.get(table.inputs[0])
        if (source is None or source.kind not in _PRODUCTS or source.placement != "accelerator"
                or readers[source.output] != 1 or source.output == model.output or "table" in source.arrays
                or table.arrays["table"].ndim != 1):  # the STOREs look up in one table of 256
            continue
        source.attrs.update(table_zero_point=source.out_q.zero_point, table_layer=table.name)
        source.arrays["table"] = table.arrays["table"]
        source.output, source.out_q = table.output, table.out_q
        producers[source.output] = source
        fused.add(table.name)
    model.layers = [layer for layer in model.layers if layer.name not in fused]
    for row in model.report:
        if row["layer"] in fused:
            row["placement"] = FUSED_TABLE
    return model
