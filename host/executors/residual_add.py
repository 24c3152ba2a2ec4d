"""The STOREs' residual add (:mod:`mvu.hdl.contract.residual_add`) over whole tensors, fast: float32 fused
multiply-adds where they compute exactly the contract's integers, else the add's table of every byte pair."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from mvu.hdl.contract.residual_add import ResidualAdd
from mvu.host.executors.kernels import fused_multiply_adds

__all__ = ["add_rows"]


@lru_cache(maxsize=256)
def _float32_coefficients(add: ResidualAdd) -> tuple[np.float32, np.float32, np.float32] | None:
    """``(ratio_q, ratio_b, start)`` as float32 where each is a float32 exactly: then each fused multiply-add
    rounds the contract's exact sum once to 24 significant bits, as its ``round_significant`` does (the sums lie on
    the grid ``2**-shift``, shift 0..63, far inside float32's normal range), and ``rint`` is its final
    ``round_shift``."""
    grid = (add.ratio_q, add.ratio_b, add.start)
    floats = tuple(np.float32(np.ldexp(np.float64(v), -add.shift)) for v in grid)
    if any(int(np.ldexp(np.float64(f), add.shift)) != v for f, v in zip(floats, grid)):  # compared as integers
        return None
    return floats


def add_rows(add: ResidualAdd, q: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``add(q, b)`` for uint8 arrays of one shape: exactly the contract's sums; into ``out`` (``q``'s shape, any
    strides, may be ``q`` itself) if given."""
    coefficients = _float32_coefficients(add)
    if coefficients is None:
        sums = add(q, b)
    else:
        sums = out if out is not None and out.flags.c_contiguous else np.empty(q.shape, np.uint8)
        if sums is not q:
            sums[...] = q
        fused_multiply_adds(sums.reshape(-1), np.ascontiguousarray(b).reshape(-1), *coefficients, add.q_inner,
                            add.low, add.high)
    if out is None or sums is out:
        return sums
    out[...] = sums
    return out
