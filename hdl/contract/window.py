"""A window LOAD's addressing (implicit im2col), defined once for every executor and checker (docs/isa.md)."""

from __future__ import annotations

import numpy as np

__all__ = ["WINDOW_FIELDS", "window_rows", "window_extent", "read_window"]

#: A window LOAD's descriptor fields, in the order :func:`read_window` takes them after ``dram_stride``.
WINDOW_FIELDS = ("row_stride", "in_h", "in_w", "out_w", "start_y", "start_x", "stride_y", "stride_x", "offset_y",
                 "offset_x", "fill")


def window_rows(count: int, dram_addr: int, dram_stride: int, row_stride: int, in_h: int, in_w: int, out_w: int,
                start_y: int, start_x: int, stride_y: int, stride_x: int, offset_y: int, offset_x: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each entry's source address (int64 ``[count]``) and whether its input pixel lies inside the
    ``in_h x in_w`` input (``False``: the entry is all ``fill`` and reads no memory)."""
    position = start_x + np.arange(count, dtype=np.int64)
    oy, ox = start_y + position // out_w, position % out_w
    iy, ix = oy * stride_y + offset_y, ox * stride_x + offset_x
    inside = (iy >= 0) & (iy < in_h) & (ix >= 0) & (ix < in_w)
    return dram_addr + iy * row_stride + ix * dram_stride, inside


def window_extent(dram_addr, dram_stride, row_stride, in_h, in_w, entry_bytes):
    """One past the last byte of the input rectangle a window LOAD may read (scalars or arrays)."""
    return dram_addr + (in_h - 1) * row_stride + (in_w - 1) * dram_stride + entry_bytes


def read_window(memory: np.ndarray, width: int, count: int, dram_addr: int, dram_stride: int, row_stride: int,
                in_h: int, in_w: int, out_w: int, start_y: int, start_x: int, stride_y: int, stride_x: int,
                offset_y: int, offset_x: int, fill: int) -> np.ndarray:
    """The ``[count, width]`` bytes a window LOAD writes into its buffer."""
    addresses, inside = window_rows(count, dram_addr, dram_stride, row_stride, in_h, in_w, out_w, start_y, start_x,
                                    stride_y, stride_x, offset_y, offset_x)
    entries = np.full((count, width), fill, dtype=np.uint8)
    entries[inside] = memory[addresses[inside, None] + np.arange(width)]
    return entries
