"""The post-processing unit's arithmetic: int32 accumulators to output bytes (docs/isa.md)."""

from __future__ import annotations

import numpy as np

from .kernels import float32_requantize_rows, postprocess_rows

__all__ = ["requantize", "requantize_rows", "float32_scales", "SIGNIFICAND_BITS"]

SIGNIFICAND_BITS = 24  # a float32's significand, hidden bit included


def float32_scales(multiplier, shift) -> np.ndarray:
    """The float32 scales ``(multiplier mod 2**24) * 2**-shift`` that float32-scale STOREs multiply by
    (exact: a 24-bit significand and an exponent of at least -63 make a normal float32)."""
    significand = np.asarray(multiplier, dtype=np.int64) & ((1 << SIGNIFICAND_BITS) - 1)
    return np.ldexp(significand.astype(np.float64), -np.asarray(shift, dtype=np.int64)).astype(np.float32)


def requantize(acc: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
               out_zero_point, clamp_min, clamp_max, *, float32_scale: bool = False) -> np.ndarray:
    """The post-processing unit's arithmetic (docs/isa.md), rows x channels -> bytes.

    Parameters broadcast against ``acc``: per channel, or per row and channel.
    ``float32_scale`` selects float32 arithmetic (onnxruntime's requantization):
    ``float32(x) * float32_scales(multiplier, shift)``, rounded half to even.
    """
    # int32 additions wrap modulo 2**32; the rest happens in place on one int64 array.
    total = np.add(acc, np.asarray(bias).astype(np.int32), dtype=np.int32)
    if float32_scale:
        scaled = np.rint(total.astype(np.float32) * float32_scales(multiplier, shift))  # float32 product
        x = scaled.astype(np.int64) + out_zero_point  # |scaled| < 2**55
        np.clip(x, clamp_min, clamp_max, out=x)
        return x.astype(np.uint8)
    x = np.multiply(total, np.asarray(multiplier, dtype=np.int64), dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    x += np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    x >>= shift
    x += out_zero_point
    np.clip(x, clamp_min, clamp_max, out=x)
    return x.astype(np.uint8)  # the low byte: int8 results in two's complement


def requantize_rows(acc: np.ndarray, bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray,
                    out_zero_point: int, clamp_min: int, clamp_max: int, *, float32_scale: bool = False,
                    out: np.ndarray | None = None) -> np.ndarray:
    """:func:`requantize` for int32 ``acc`` [..., channels] with one parameter per channel, in one compiled
    pass (other shapes take :func:`requantize`); into ``out`` (uint8, ``acc``'s shape, any strides) if given."""
    acc = np.asarray(acc)
    params = [np.asarray(p) for p in (bias, multiplier, shift)]
    if acc.dtype != np.int32 or not acc.ndim or any(p.shape != acc.shape[-1:] for p in params):
        result = requantize(acc, *params, out_zero_point, clamp_min, clamp_max, float32_scale=float32_scale)
    else:
        rows = acc if acc.ndim == 2 else np.ascontiguousarray(acc).reshape(-1, acc.shape[-1])
        result = out if out is not None and acc.ndim == 2 else np.empty(rows.shape, np.uint8)
        if float32_scale:
            float32_requantize_rows(rows, params[0], float32_scales(params[1], params[2]), out_zero_point,
                                    clamp_min, clamp_max, out=result)
        else:
            postprocess_rows(rows, *params, out_zero_point, clamp_min, clamp_max, out=result)
        if result is not out:
            result = result.reshape(acc.shape)
    if out is None or result is out:
        return result
    out[...] = result
    return out
