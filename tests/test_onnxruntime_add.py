"""onnxruntime's QLinearAdd against the compiled kernel that defines the Add layers' arithmetic."""

import numpy as np
import pytest
from conftest import cpu_flags

from mvu.host.executors.kernels import qlinear_add
from mvu.host.executors.onnxruntime_add import QLinearAdd, add_coefficients, onnxruntime_add


def add_or_skip(*quantizations):
    add = onnxruntime_add(*quantizations)
    if add is None:
        pytest.skip("onnxruntime's QLinearAdd differs from the definition on this machine; the compiled kernel runs")
    return add


@pytest.mark.parametrize("seed", range(5))
def test_onnxruntime_adds_as_the_kernel_defines(seed):
    rng = np.random.default_rng(300 + seed)
    quantizations = [(float(rng.uniform(1e-3, 0.3)), int(rng.integers(0, 256))) for _ in range(3)]
    quantizations[seed % 3] = (quantizations[seed % 3][0], [0, 255, 128][seed % 3])
    shape = tuple(int(v) for v in rng.integers(1, 40, 4))
    a, b = (rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(2))
    a.reshape(-1)[:3], b.reshape(-1)[:3] = [0, 255, 128][:a.size], [255, 0, 128][:b.size]
    a, b = (np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) for x in (a, b))  # channels last
    low, high = [(0, 255), (7, 200)][seed % 2]
    got = add_or_skip(*quantizations)(a, b, low, high)
    ratios, start = add_coefficients(quantizations[:2], quantizations[2])
    expected = qlinear_add(a, b, *ratios, start, low, high)
    np.testing.assert_array_equal(got, expected)
    assert got.strides == a.strides  # the result keeps its inputs' layout


def test_onnxruntime_add_declines_what_it_does_not_take():
    add = add_or_skip((0.1, 3), (0.2, 4), (0.3, 5))
    a = np.zeros((2, 3, 4), np.uint8)
    assert add(a, np.zeros((2, 4, 3), np.uint8).transpose(0, 2, 1)) is None  # layouts differ
    assert add(a, a.astype(np.int8)) is None
    assert onnxruntime_add((0.1, 3), (0.2, 256), (0.3, 5)) is None
    with pytest.raises(ValueError, match="zero point -1 of c is outside 0..255"):
        QLinearAdd((0.1, 3), (0.2, 4), (0.3, -1))


def test_onnxruntime_is_used_on_processors_with_fused_multiply_adds():
    """There onnxruntime's kernel computes the definition's fused multiply-adds, so the tests above run."""
    if "fma" not in cpu_flags():
        pytest.skip("no FMA instructions here; onnxruntime may round differently and is then not used")
    assert onnxruntime_add((0.1, 3), (0.2, 4), (0.3, 5)) is not None
