"""Max pooling on the accelerator: window LOADs of each tap against a unit diagonal tile, COMPUTE's ``maximum``
keeping the larger product, zero point 0 so that the STOREs write the codes back unchanged."""

import dataclasses

import numpy as np
import pytest
from conftest import NARROW, TINY
from test_depthwise import WIDE

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import ProgramError
from mvu.hdl.contract.requantization import Requantization
from mvu.host.depthwise import DepthwiseProgram
from mvu.host.executors.reference import ReferenceExecutor
from mvu.host.gemm import ConvolutionInput
from mvu.host.model.quantized import Layer, QuantizedModel, QuantParams
from mvu.host.runtime.runner import ModelRunner

#: (batch, channels, height, width, attributes)
POOLS = {
    "3x3 s2 p1 (ResNet's)": (1, 40, 14, 13, {"kernel": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "2x2 s2 (VGG's), batch 3": (3, 19, 8, 10, {"kernel": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0]}),
    "3x3 s2 ceil mode": (2, 7, 15, 15, {"kernel": [3, 3], "strides": [2, 2], "pads": [0, 0, 0, 0], "ceil_mode": 1}),
    "3x2 s1 uneven pads": (1, 5, 6, 7, {"kernel": [3, 2], "strides": [1, 1], "pads": [0, 1, 2, 0]}),
}


def pool_model(shape, attrs: dict, placement: str = "accelerator") -> QuantizedModel:
    q = QuantParams(0.05, 17)
    layer = Layer("maxpool", "pool", ["x"], "y", placement, {**attrs, "count_include_pad": 0}, {}, q)
    return QuantizedModel("x", (1, *shape[1:]), q, "y", [layer], {"x": q, "y": q}, {}, [])


def images(shape, seed: int = 0) -> np.ndarray:
    """Random codes, each channel's below its own ceiling (some below the zero point 17, so that a window's
    maximum may be smaller than the padding's code would be if it read the zero point)."""
    rng = np.random.default_rng(seed)
    ceilings = rng.integers(1, 257, (1, shape[1], 1, 1))
    return (rng.integers(0, 1 << 16, shape) % ceilings).astype(np.uint8)


@pytest.mark.parametrize("config", [TINY, NARROW, WIDE, HardwareConfig()], ids=["tiny", "narrow", "wide", "default"])
@pytest.mark.parametrize("name", POOLS)
def test_max_pools_on_the_accelerator_equal_the_host_pool(name, config):
    """Every code, the padding's too (it must never win: codes below the input's zero point occur), equals the
    host's window maximum; the layer ran as a program."""
    *shape, attrs = POOLS[name]
    x = images(shape, len(name))
    expected = ModelRunner(pool_model(shape, attrs), config, "numpy").run_batch(x)
    runner = ModelRunner(pool_model(shape, attrs), config, "reference")
    np.testing.assert_array_equal(runner.run_batch(x), expected)
    (stats,) = runner.stats
    assert stats.placement == "accelerator" and stats.counters["compute"] > 0
    assert (expected < 17).any() and len(np.unique(expected)) > 40


def test_a_configuration_without_max_pool_pools_on_the_host():
    """Without the comparators the layer runs on the host and its stats say so; a program asking for the maximum
    is refused before it runs, naming the instruction and the option."""
    *shape, attrs = POOLS["3x3 s2 p1 (ResNet's)"]
    config = dataclasses.replace(NARROW, max_pool=False)
    x = images(shape)
    runner = ModelRunner(pool_model(shape, attrs), config, "reference")
    np.testing.assert_array_equal(runner.run_batch(x), ModelRunner(pool_model(shape, attrs), NARROW,
                                                                   "numpy").run_batch(x))
    assert runner.stats[0].placement == "host" and not runner.stats[0].counters
    conv = ConvolutionInput(x.transpose(0, 2, 3, 1), (3, 3), (2, 2), (1, 1, 1, 1))
    c = shape[1]
    program = DepthwiseProgram(config, conv, np.ones((c, 3, 3), np.int8), maximum=True, requant=Requantization(
        np.zeros(c), np.ones(c), np.zeros(c), out_zero_point=0, clamp_min=0, clamp_max=255))
    with pytest.raises(ProgramError, match=r"\(COMPUTE\): the accumulators' maximum is not built into this "
                                           r"configuration .*max_pool"):
        ReferenceExecutor(config).run(program.program)


@pytest.mark.parametrize("name", ["3x3 s2 p1 (ResNet's)", "3x3 s2 ceil mode"])
def test_max_pools_are_bit_exact_on_the_rtl(name, verilator_executors):
    """The RTL's memory after the program equals the reference's, and the pooled codes the host's."""
    *shape, attrs = POOLS[name]
    x = images(shape, 7)
    runs = {}
    for backend in ("verilator", "reference"):
        executor = verilator_executors(TINY) if backend == "verilator" else None
        runner = ModelRunner(pool_model(shape, attrs), TINY, backend, executor)
        runs[backend] = runner.run_batch(x)
    np.testing.assert_array_equal(runs["verilator"], runs["reference"])
    np.testing.assert_array_equal(runs["verilator"], ModelRunner(pool_model(shape, attrs), TINY,
                                                                 "numpy").run_batch(x))
