"""The compiled kernels against the numpy arithmetic they replace, on seeded random data with edge values."""

import numpy as np
import pytest

from mvu.hdl.contract.requantization import requantize
from mvu.host.executors.kernels import float32_requantize_rows, qlinear_add
from mvu.host.executors.requantize import requantize_rows
from mvu.host.model.quantized import Layer, QuantParams
from mvu.host.runtime.runner import ModelRunner

INT32 = np.iinfo(np.int32)


def random_int32(rng, shape) -> np.ndarray:
    values = rng.integers(-(1 << 20), 1 << 20, shape, dtype=np.int64)
    edges = np.array([INT32.min, INT32.max, -1, 0, 1, INT32.min + 1, INT32.max - 1])
    values.flat[rng.integers(0, values.size, min(values.size, 50))] = rng.choice(edges, min(values.size, 50))
    return values.astype(np.int32)


@pytest.mark.parametrize("seed", range(6))
def test_post_processor_kernel_matches_the_numpy_definition(seed):
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(1, 300), rng.integers(1, 70)
    acc = random_int32(rng, (rows, cols))
    bias = random_int32(rng, cols)
    multiplier = rng.integers(0, 1 << 31, cols)
    multiplier[:2] = [0, (1 << 31) - 1][:cols]
    shift = rng.integers(0, 64, cols)
    shift[:2] = [0, 63][:cols]
    low, high = [(-128, 127), (0, 255), (-3, 90), (7, 7)][seed % 4]
    zero_point = int(rng.integers(-128, 128))
    got = requantize_rows(acc, bias, multiplier, shift, zero_point, low, high)
    np.testing.assert_array_equal(got, requantize(acc, bias, multiplier, shift, zero_point, low, high))
    assert got.dtype == np.uint8 and got.shape == acc.shape


def numpy_float32_requantize(acc, bias, scale, zero_point, low, high):
    total = (acc.astype(np.int64) + bias).astype(np.int32).astype(np.float32)
    return np.clip(np.rint(total * scale) + np.float32(zero_point), low, high).astype(np.int64).astype(np.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_float32_requantization_kernel_matches_numpy(seed):
    rng = np.random.default_rng(100 + seed)
    rows, cols = rng.integers(1, 300), rng.integers(1, 70)
    acc = random_int32(rng, (rows, cols))
    acc[:, : cols // 2] //= 1 << 8  # most sums in the output's range, the rest saturating or wrapping
    bias = rng.integers(-(1 << 10), 1 << 10, cols)
    scale = rng.uniform(2e-3, 2e-2, cols).astype(np.float32)
    scale[0], acc[:, 0] = 0.5, rng.integers(-300, 600, rows)  # odd sums land on ties: half to even decides them
    low, high = [(0, 255), (0, 6), (-128, 127)][seed % 3]
    zero_point = int(rng.integers(0, 256))
    got = float32_requantize_rows(acc, bias, scale, zero_point, low, high)
    np.testing.assert_array_equal(got, numpy_float32_requantize(acc, bias, scale, zero_point, low, high))


@pytest.mark.parametrize("seed", range(4))
def test_qlinear_add_kernel_matches_the_numpy_path(seed):
    rng = np.random.default_rng(200 + seed)
    shape = (4, 64, 20, 20)  # enough elements to meet the rare sums where rounding twice would differ
    a, b = (rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(2))
    a[0, 0, 0, :3], b[0, 0, 0, :3] = [0, 255, 128], [255, 0, 128]
    runner = ModelRunner.__new__(ModelRunner)
    runner._adds = {}  # the layer's onnxruntime kernel, where it is exact here; else the compiled one
    runner._added = {}  # no Add done by a convolution's STOREs
    runner.model = type("Model", (), {"tensor_q": {"a": QuantParams(float(rng.uniform(0.01, 0.1)), int(rng.integers(0, 256))),
                                                    "b": QuantParams(float(rng.uniform(0.01, 0.1)), int(rng.integers(0, 256)))}})
    layer = Layer("add", "add", ["a", "b"], "y", "host", {"clamp": (0, 255)}, {},
                  QuantParams(float(rng.uniform(0.02, 0.2)), int(rng.integers(0, 256))))
    channels_last = {"a": np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2),
                     "b": np.ascontiguousarray(b.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)}
    mixed = {"a": a, "b": channels_last["b"]}  # layouts differ: the numpy path
    assert qlinear_add(mixed["a"], mixed["b"], np.float32(1), np.float32(1), np.float32(0), 0, 255) is None
    fused = runner._add(layer, channels_last, None)
    np.testing.assert_array_equal(fused, runner._add(layer, mixed, None))
    np.testing.assert_array_equal(fused, runner._add(layer, {"a": a, "b": b}, None))
    assert fused.strides == channels_last["a"].strides  # the result keeps its inputs' layout


@pytest.mark.parametrize("taps, n", [(1, 4), (9, 32), (25, 16)])
def test_diagonal_sums_equal_the_product_with_diagonal_blocks(taps, n):
    from mvu.host.executors.intmatmul import centred_matmul
    from mvu.host.executors.kernels import diagonal_sums

    rng = np.random.default_rng(taps)
    a = rng.integers(0, 256, (37, taps * n), dtype=np.uint8)
    diagonals = rng.integers(-128, 128, (taps, n), dtype=np.int8)
    diagonals[0, :2] = (-128, 127)
    w = np.zeros((taps, n, n), np.int8)
    w[:, np.arange(n), np.arange(n)] = diagonals
    for zero_point in (0, 255, int(rng.integers(1, 255))):
        np.testing.assert_array_equal(diagonal_sums(a.reshape(37, taps, n).transpose(1, 0, 2), zero_point, diagonals),
                                      centred_matmul(a, zero_point, w.reshape(taps * n, n)))
