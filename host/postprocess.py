"""The post-processing unit's arithmetic: int32 accumulators to output bytes (docs/isa.md)."""

from __future__ import annotations

import numpy as np

__all__ = ["requantize"]


def requantize(acc: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
               out_zero_point, clamp_min, clamp_max) -> np.ndarray:
    """The post-processing unit's arithmetic (docs/isa.md), rows x channels -> bytes.

    Parameters broadcast against ``acc``: per channel, or per row and channel.
    """
    # int32 additions wrap modulo 2**32; the rest happens in place on one int64 array.
    total = np.add(acc, np.asarray(bias).astype(np.int32), dtype=np.int32)
    x = np.multiply(total, np.asarray(multiplier, dtype=np.int64), dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    x += np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    x >>= shift
    x += out_zero_point
    np.clip(x, clamp_min, clamp_max, out=x)
    return x.astype(np.uint8)  # the low byte: int8 results in two's complement
