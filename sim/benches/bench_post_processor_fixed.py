"""cocotb bench of :class:`mvu.hdl.post_processor.PostProcessor` built without its float32 path
(``float32=False``), against :func:`mvu.hdl.contract.requantization.requantize` in fixed point: the same
random bursts as bench_post_processor's fixed-point styles, with ``float32_scale`` driven at random and
ignored.
"""

import cocotb
import numpy as np

from mvu.hdl.post_processor import PostProcessor
from mvu.sim.benches.bench_post_processor import LANES, check_bursts
from mvu.sim.benches.runner import start

FIXED_STYLES = ("wide", "scaled", "tiny")


def component() -> PostProcessor:
    return PostProcessor(LANES, float32=False)


@cocotb.test()
async def random_fixed_point_requantization(dut):
    """Random fixed-point bursts match the reference exactly whatever float32_scale says."""
    await start(dut, in_valid=0)
    assert await check_bursts(dut, np.random.default_rng(5), bursts=200, styles=FIXED_STYLES,
                              ignored_float32=True) > 1000


@cocotb.test()
async def largest_shift(dut):
    """Shift 63 everywhere: the rounding term is 2**62."""
    await start(dut, in_valid=0)
    await check_bursts(dut, np.random.default_rng(6), bursts=20, shift=63, styles=FIXED_STYLES,
                       ignored_float32=True)
