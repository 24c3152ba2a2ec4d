"""Exact integer matrix products for the executors: uint8 activations minus zero points, times int8 weights.

The engine is onnxruntime's MatMulInteger (int32 accumulators: exact modulo
2**32, which is all the accelerator keeps). Some CPU kernels saturate 16-bit
intermediate sums; the engine is therefore checked once against float64 on
operands that would saturate, and float64 BLAS (exact for these sums below
2**53) replaces it if it disagrees.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from mvu.host.executors.onnxruntime_sessions import operator_session

__all__ = ["centred_matmul", "as_unsigned", "engine_name"]


def _float64_matmul(a: np.ndarray, zero_point: int, w: np.ndarray) -> np.ndarray:
    return ((a.astype(np.float64) - zero_point) @ w.astype(np.float64)).astype(np.int64)


def _onnxruntime_session():
    from onnx import TensorProto

    return operator_session("MatMulInteger", ["a", "w", "zero_point"],
                            {"a": (TensorProto.UINT8, [None, None]), "w": (TensorProto.INT8, [None, None]),
                             "zero_point": (TensorProto.UINT8, [])}, {"y": (TensorProto.INT32, [None, None])})


@cache
def _engine():
    """``(a, zero point, w) -> (a - zero point) @ w`` (int, congruent modulo 2**32): onnxruntime when it is
    exact on this machine."""
    session = _onnxruntime_session()
    zero_points = [np.array(z, np.uint8) for z in range(256)]

    def run(a: np.ndarray, zero_point: int, w: np.ndarray) -> np.ndarray:
        return session.run(None, {"a": a, "w": w, "zero_point": zero_points[zero_point]})[0]

    rng = np.random.default_rng(0)
    a = np.concatenate([np.full((8, 256), 255, np.uint8), np.zeros((8, 256), np.uint8),
                        rng.integers(0, 256, (8, 256), dtype=np.uint8)])
    w = np.concatenate([np.full((256, 8), -128, np.int8), np.full((256, 8), 127, np.int8),
                        rng.integers(-128, 128, (256, 8), dtype=np.int8)], axis=1)
    exact = all(np.array_equal(run(a, z, w), _float64_matmul(a, z, w)) for z in (0, 128, 255))
    return run if exact else _float64_matmul


def engine_name() -> str:
    """Which engine computes the products on this machine ("onnxruntime" or "float64"); sets it up if needed."""
    return "float64" if _engine() is _float64_matmul else "onnxruntime"


def centred_matmul(a: np.ndarray, zero_points, w: np.ndarray) -> np.ndarray:
    """``(a - zero_points) @ w`` wrapped to int32, as the accumulators keep it (modulo 2**32);
    ``zero_points`` is a scalar or one per column of ``a``.

    ``a`` is uint8 [M, K], ``w`` int8 [K, N].
    """
    a, w = np.ascontiguousarray(a, dtype=np.uint8), np.ascontiguousarray(w, dtype=np.int8)
    zero_points = np.asarray(zero_points, dtype=np.int64)
    if not zero_points.ndim and 0 <= zero_points <= 255:  # the engine subtracts it
        return _engine()(a, int(zero_points), w).astype(np.int32, copy=False)
    product = _engine()(a, 0, w).astype(np.int32, copy=False)
    per_column = np.broadcast_to(zero_points, a.shape[1:])[None]
    product -= _float64_matmul(per_column, 0, w)[0].astype(np.int32)  # int32 arithmetic wraps
    return product


def as_unsigned(a: np.ndarray, zero_point: int) -> tuple[np.ndarray, int]:
    """``a - zero_point`` in the uint8 form :func:`centred_matmul` takes: int8 values and their zero point
    move up by 128."""
    if a.dtype == np.int8:
        return a.view(np.uint8) ^ np.uint8(0x80), zero_point + 128
    return a, zero_point
