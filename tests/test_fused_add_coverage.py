"""Adds whose STOREs' sums equal onnxruntime's only with ``start`` derived as its kernel derives it: the Adds of
ResNet-50 and EfficientNet-Lite0 that stayed on the host while ``start`` was derived without the kernel's fused
multiply-add."""

import numpy as np
import pytest

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.residual_add import ResidualAdd
from mvu.host.executors import onnxruntime_add as ort_add
from mvu.host.executors.kernels import qlinear_add

#: (a, b, out) quantizations of Adds (recipe's layer) that were kept on the host: (scale, zero point).
ADDS = {
    "resnet50 add_386": [(0.1023106481514725, 132), (0.30254992316750917, 126), (0.16067620071710326, 0)],
    "efficientnet-lite0 add_137": [(0.21827970766553692, 134), (0.3702005274155561, 125), (0.3791848126579733, 124)],
    "efficientnet-lite0 add_275": [(0.1805006513408586, 161), (0.285628838632621, 122), (0.2994328517539828, 133)],
}
FIRST, SECOND = (codes.ravel() for codes in np.meshgrid(np.arange(256, dtype=np.uint8),
                                                         np.arange(256, dtype=np.uint8), indexing="ij"))


def kernel_or_skip(quantizations):
    add = ort_add.onnxruntime_add(*quantizations)
    if add is None:
        pytest.skip("onnxruntime's QLinearAdd is not used on this machine; the compiled kernel runs")
    return add


@pytest.mark.parametrize("name", ADDS)
def test_the_stores_add_as_onnxruntime_on_every_pair(name):
    """onnxruntime's kernel, the compiled definition and the STOREs' integer add (the convolution's codes as
    either input) give the same sums for all 65,536 byte pairs."""
    quantizations = ADDS[name]
    got = kernel_or_skip(quantizations)(FIRST, SECOND)
    (ratio_a, ratio_b), start = ort_add.add_coefficients(quantizations[:2], quantizations[2])
    np.testing.assert_array_equal(qlinear_add(FIRST, SECOND, ratio_a, ratio_b, start, 0, 255), got)
    np.testing.assert_array_equal(ResidualAdd.from_float32(ratio_a, ratio_b, start)(FIRST, SECOND), got)
    np.testing.assert_array_equal(ResidualAdd.from_float32(ratio_b, ratio_a, start, q_inner=True)(SECOND, FIRST), got)


def test_the_kernels_derivation_of_start_decides_some_pairs():
    """The derivations of ``start`` differ by a float32 unit on these scales, and only one gives the kernel's
    sums on every pair: the probe at start-up picked it."""
    kernel_or_skip(ADDS["resnet50 add_386"])
    rule = ort_add._offset_rule()
    for name, quantizations in ADDS.items():
        got = ort_add.QLinearAdd(*quantizations)(FIRST, SECOND)
        starts = {offset: ort_add._coefficients(quantizations[:2], quantizations[2], offset)[1]
                  for offset in ort_add._OFFSETS}
        assert len(set(starts.values())) == len(starts), name
        same = {offset for offset in ort_add._OFFSETS
                if np.array_equal(ort_add._defined(quantizations, FIRST, SECOND, offset), got)}
        assert same == {rule}, name


def test_lite0s_adds_run_in_the_stores_with_identical_logits():
    """EfficientNet-Lite0 (compiled from its recipe) on the reference: every Add comes out of its convolution's
    STOREs, and the logits and the Adds' outputs equal the numpy backend's (host adds) bit for bit."""
    from mvu.host.compiler.recipes import cached_package
    from mvu.host.runtime.fused_adds import FUSED_ADD
    from mvu.host.runtime.runner import ModelRunner

    config = HardwareConfig()
    model = cached_package("efficientnet-lite0", config).model
    x = np.random.default_rng(0).integers(0, 256, (1, *model.input_shape[1:]), dtype=np.uint8)
    runners = {backend: ModelRunner(model, config, backend) for backend in ("numpy", "reference")}
    logits = {backend: runner.run_batch(x) for backend, runner in runners.items()}
    adds = [stats for stats in runners["reference"].stats if stats.kind == "add"]
    assert len(adds) == sum(layer.kind == "add" for layer in model.layers) and all(stats.placement == FUSED_ADD for stats in adds)
    np.testing.assert_array_equal(logits["reference"], logits["numpy"])
    for layer in (layer for layer in model.layers if layer.name in ("add_137", "add_275")):
        np.testing.assert_array_equal(runners["reference"].tensors[layer.output],
                                      runners["numpy"].tensors[layer.output])
