"""The post-processor's arithmetic on rows of int32 sums, in one compiled pass (the host's fast path of
:func:`mvu.hdl.contract.requantization.requantize`)."""

from __future__ import annotations

import numpy as np

from mvu.hdl.contract.requantization import float32_scales, requantize
from mvu.host.executors.kernels import float32_requantize_rows, postprocess_rows

__all__ = ["requantize_rows"]


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
