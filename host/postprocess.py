"""The post-processing unit's arithmetic: int32 accumulators to output bytes (docs/isa.md)."""

from __future__ import annotations

import numpy as np

from .kernels import postprocess_rows

__all__ = ["requantize", "requantize_rows"]


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


def requantize_rows(acc: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
                    out_zero_point: int, clamp_min: int, clamp_max: int) -> np.ndarray:
    """:func:`requantize` for int32 ``acc`` [..., channels] with one parameter per channel, in one compiled
    pass; other shapes take :func:`requantize`."""
    acc = np.asarray(acc)
    params = [np.asarray(p) for p in (bias, multiplier, shift)]
    if acc.dtype != np.int32 or not acc.ndim or any(p.shape != acc.shape[-1:] for p in params):
        return requantize(acc, *params, out_zero_point, clamp_min, clamp_max)
    rows = np.ascontiguousarray(acc).reshape(-1, acc.shape[-1])
    return postprocess_rows(rows, *params, out_zero_point, clamp_min, clamp_max).reshape(acc.shape)
