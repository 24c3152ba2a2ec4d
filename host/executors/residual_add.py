"""The STOREs' residual add (:mod:`mvu.hdl.contract.residual_add`) over whole tensors, fast: onnxruntime's float32
kernel where it computes exactly the contract's integers, else the add's table of every byte pair."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mvu.hdl.contract.residual_add import ResidualAdd
from mvu.host.executors.kernels import qlinear_add

__all__ = ["add_rows"]

_FLOAT64_EXACT = 1 << 53


@lru_cache(maxsize=256)
def _float32_coefficients(add: ResidualAdd) -> tuple[np.float32, np.float32, np.float32] | None:
    """``(ratio_in, ratio_out, start)`` as float32 where the float32 kernel equals the integer arithmetic: each
    coefficient a float32 exactly, and every sum below ``2**53`` grid units, so the kernel's float64 sums are
    exact and each is rounded once to float32 like the contract's ``round24``."""
    r_in, r_out = (add.ratio_q, add.ratio_b) if add.q_inner else (add.ratio_b, add.ratio_q)
    inner = abs(r_in) * 255 + abs(add.start)
    if abs(r_out) * 255 + 2 * inner >= _FLOAT64_EXACT:
        return None
    values = [np.ldexp(np.float64(v), -add.shift) for v in (r_in, r_out, add.start)]
    floats = [np.float32(v) for v in values]
    if any(float(f) != float(v) for f, v in zip(floats, values)):
        return None
    return floats[0], floats[1], floats[2]


def add_rows(add: ResidualAdd, q: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``add(q, b)`` for uint8 arrays of one shape: exactly the contract's sums."""
    coefficients = _float32_coefficients(add)
    if coefficients is not None:
        r_in, r_out, start = coefficients
        inner, outer = (q, b) if add.q_inner else (b, q)
        out = qlinear_add(np.ascontiguousarray(outer), np.ascontiguousarray(inner), r_out, r_in, start, add.low,
                          add.high)
        if out is not None:
            return out
    return add(q, b)
