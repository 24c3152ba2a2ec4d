"""Global average pooling on the accelerator (unit weight tiles, accumulating COMPUTEs): bit for bit the host's
QLinearGlobalAveragePool on the reference (planned and interpreted) and the RTL; chunking, reruns and refusals."""

import dataclasses

import numpy as np
import pytest
from conftest import NARROW, TINY
from test_depthwise import WIDE

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.requantization import Requantization, float32_significand, requantize
from mvu.host.depthwise import DepthwiseProgram
from mvu.host.executors import make_executor
from mvu.host.gemm import ConvolutionInput, GemmError
from mvu.host.global_pool import GlobalPoolProgram, global_pool_limit, unit_tiles

DEFAULT = HardwareConfig()

#: name: (configuration, (batch, channels, height, width), activations signed)
CASES = {
    "ResNet-50's 7x7x2048, four channel chunks": (DEFAULT, (1, 2048, 7, 7), False),
    "channels not a multiple of 32, batch 3": (DEFAULT, (3, 1000, 7, 7), False),
    "one pixel, batch 3": (DEFAULT, (3, 37, 1, 1), False),
    "image chunks 9, 9, 7": (DEFAULT, (25, 40, 7, 7), False),
    "tiny: 25 pixels, one group a chunk": (TINY, (3, 13, 5, 5), False),
    "tiny: one group, count-1 COMPUTEs": (TINY, (2, 4, 3, 3), True),
    "rows < cols: two sub-entries a group": (NARROW, (3, 37, 5, 5), False),
    "rows < cols: one pixel": (NARROW, (3, 37, 1, 1), True),
    "rows > cols: two output parts a group": (WIDE, (3, 37, 7, 7), False),
    "rows > cols: one image, odd channels": (WIDE, (1, 13, 3, 5), True),
}


def case(rng, shape, signed=False):
    """Activations spread around their zero point, and QLinearGlobalAveragePool's requantization: scales whose
    ratio over the pixel count is a float32 significand and shift, chosen so that the means do not saturate."""
    n, c, h, w = shape
    dtype, low, high = (np.int8, -128, 128) if signed else (np.uint8, 0, 256)
    x = rng.integers(low, high, (n, h, w, c), dtype=dtype)
    zero_point = int(rng.integers(-8, 8)) + (0 if signed else 128)
    in_scale = 0.05
    out_scale = in_scale / (float(rng.uniform(0.4, 0.6)) * np.sqrt(h * w))
    significand, shift = float32_significand(in_scale / (out_scale * h * w))
    out_zero_point, clamp = (int(rng.integers(-9, 9)), (-128, 127)) if signed else (int(rng.integers(120, 136)),
                                                                                     (0, 255))
    requant = Requantization(np.zeros(c, np.int64), np.full(c, significand), np.full(c, shift), out_zero_point,
                             *clamp, float32_scale=True)
    return x, zero_point, requant


def host_pool(x, zero_point, requant):
    """The runner's host GAP (``ModelRunner._gap``) on channels-last ``x``: ``[N, C]``."""
    sums = (x.astype(np.int64) - zero_point).reshape(len(x), -1, x.shape[3]).sum(axis=1)
    out = requantize(sums, 0, requant.multiplier[0], requant.shift[0], requant.out_zero_point, requant.clamp_min,
                     requant.clamp_max, float32_scale=True)
    return out.view(requant.output_dtype)


def run(executor, config, x, zero_point, requant):
    program = GlobalPoolProgram(config, x, None, act_zero_point=zero_point, requant=requant,
                                memory_bytes_per_cycle=executor.memory_bytes_per_cycle)
    executor.run(program.program)
    return program


@pytest.mark.parametrize("name", CASES)
def test_global_pools_equal_the_host_pool_on_the_reference(name, plan):
    config, shape, signed = CASES[name]
    x, zero_point, requant = case(np.random.default_rng(len(name)), shape, signed)
    program = run(make_executor("reference", config), config, x, zero_point, requant)
    expected = host_pool(x, zero_point, requant)
    np.testing.assert_array_equal(program.result(), expected)
    assert program.result().dtype == expected.dtype
    assert len(np.unique(expected)) > min(20, expected.size // 4)  # not saturated
    assert (program.program.notes["reference executor"].plan is not None) == plan
    assert (program.m, program.k, program.n) == (shape[0], shape[2] * shape[3], shape[1])


def test_chunks_fill_half_the_buffers_and_split_evenly():
    chunks = GlobalPoolProgram(DEFAULT, np.zeros((1, 7, 7, 2048), np.uint8)).chunks
    assert chunks == [(0, 1, g, 16) for g in range(0, 64, 16)]  # 16 groups x 49 pixels <= 1024 entries
    chunks = GlobalPoolProgram(DEFAULT, np.zeros((25, 7, 7, 40), np.uint8)).chunks
    assert [(i, n) for i, n, _, _ in chunks] == [(0, 9), (9, 9), (18, 7)]  # 10 images of 2 groups fit


@pytest.mark.parametrize("rows, cols", [(4, 4), (8, 16), (16, 8), (4, 32)])
def test_unit_tiles_join_each_lane_to_its_own_channel(rows, cols):
    tiles, pairs = unit_tiles(rows, cols)
    group = max(rows, cols)
    joined = np.zeros((group, group), np.int64)  # channel in, channel out
    for tile, (sub, part) in zip(tiles, pairs):
        joined[sub * rows:(sub + 1) * rows, part * cols:(part + 1) * cols] += tile
    np.testing.assert_array_equal(joined, np.eye(group))


def test_raw_sums_and_a_rerun_with_new_activations():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (3, 5, 5, 37), dtype=np.uint8)
    program = GlobalPoolProgram(NARROW, x, act_zero_point=200)
    executor = make_executor("reference", NARROW)
    executor.run(program.program)
    np.testing.assert_array_equal(program.result(), (x.astype(np.int64) - 200).sum(axis=(1, 2)))
    assert program.result().dtype == np.int32
    again = rng.integers(0, 256, x.shape, dtype=np.uint8)
    program.load_activations(again)
    executor.run(program.program)
    np.testing.assert_array_equal(program.result(), (again.astype(np.int64) - 200).sum(axis=(1, 2)))
    with pytest.raises(GemmError, match=r"shape \(3, 5, 5, 37\)"):
        program.load_activations(again[..., :5])


def test_fixed_point_scales_run_without_float32_requantization():
    config = HardwareConfig(float32_requant=False)
    x = np.random.default_rng(9).integers(0, 256, (2, 7, 7, 70), dtype=np.uint8)
    requant = Requantization([0], [1 << 30], [33], out_zero_point=128, clamp_min=0, clamp_max=255)  # sum / 8
    program = run(make_executor("reference", config), config, x, 128, requant)
    sums = (x.astype(np.int64) - 128).sum(axis=(1, 2))
    expected = requantize(sums, 0, 1 << 30, 33, 128, 0, 255)
    np.testing.assert_array_equal(program.result(), expected)
    assert len(np.unique(expected)) > 20


@pytest.mark.parametrize("config, x, options, message", [
    (TINY, np.zeros((1, 7, 7, 8), np.uint8), {}, "49 pixels per image needs 49 activation"),
    (HardwareConfig(float32_requant=False), np.zeros((1, 2, 2, 8), np.uint8),
     {"requant": Requantization([0], [1 << 23], [30], clamp_min=0, clamp_max=255, float32_scale=True)},
     "float32 requantization is not built into"),
    (TINY, np.zeros((1, 2, 2, 2), np.uint8), {"requant": Requantization([0, 1], [1, 1], [3, 3])}, "varies by channel"),
    (TINY, np.zeros((1, 2, 2, 2), np.uint8), {"w": np.ones((2, 2), np.int8)}, "no weights"),
    (TINY, np.zeros((2, 2, 2), np.uint8), {}, r"\[N, H, W, C\]"),
    (TINY, np.zeros((1, 2, 2, 2), np.int16), {}, "uint8 or int8"),
    (TINY, np.zeros((1, 2, 2, 2), np.int8), {"act_zero_point": 200}, "outside -128..127"),
])
def test_what_the_program_cannot_do_is_refused_by_name(config, x, options, message):
    with pytest.raises(GemmError, match=message):
        GlobalPoolProgram(config, x, **options)


def test_the_limit_names_what_keeps_a_pool_off_the_accelerator():
    assert global_pool_limit(DEFAULT, 49) is None
    assert global_pool_limit(DEFAULT, 1024) is None
    assert "1025 activation" in global_pool_limit(DEFAULT, 1025)
    assert "98 activation" in global_pool_limit(NARROW, 49)  # two sub-entries per channel group
    no_float32 = HardwareConfig(float32_requant=False)
    assert "float32" in global_pool_limit(no_float32, 49)
    assert global_pool_limit(no_float32, 49, float32_scale=False) is None


@pytest.mark.parametrize("name", ["tiny: 25 pixels, one group a chunk", "tiny: one group, count-1 COMPUTEs"])
def test_global_pools_are_bit_exact_on_the_rtl_and_cheaper_than_a_depthwise_pool(name, verilator_executors):
    """The RTL writes the same bytes as the reference; a depthwise program of unit weights computing the same
    sums takes more cycles."""
    config, shape, signed = CASES[name]
    x, zero_point, requant = case(np.random.default_rng(len(name)), shape, signed)
    rtl = verilator_executors(config)
    on_rtl = run(rtl, config, x, zero_point, requant)
    on_reference = run(make_executor("reference", config), config, x, zero_point, requant)
    np.testing.assert_array_equal(on_rtl.program.memory.data, on_reference.program.memory.data)
    np.testing.assert_array_equal(on_rtl.result(), host_pool(x, zero_point, requant))
    cycles = rtl.run(on_rtl.program).counters["cycles"]
    depthwise = DepthwiseProgram(config, ConvolutionInput(x, shape[2:]), np.ones((shape[1], *shape[2:]), np.int8),
                                 act_zero_point=zero_point, requant=requant)
    depthwise_cycles = rtl.run(depthwise.program).counters["cycles"]
    np.testing.assert_array_equal(depthwise.result().reshape(on_rtl.result().shape), on_rtl.result())
    assert cycles < depthwise_cycles


@pytest.mark.parametrize("config, size, where", [
    (NARROW, (4, 5), "accelerator"), (dataclasses.replace(NARROW, float32_requant=False), (4, 5), "host"),
    (TINY, (6, 7), "host")], ids=["on the array", "no float32 post-processor", "too many pixels for the buffers"])
def test_the_runner_places_global_pools(config, size, where):
    """A GAP layer runs as a global pool program where the configuration can, else on the host with its stats
    saying so; the same bytes either way."""
    from mvu.host.model.quantized import Layer, QuantizedModel, QuantParams
    from mvu.host.runtime.runner import ModelRunner

    q, out_q = QuantParams(0.05, 17), QuantParams(0.03, 5)
    layer = Layer("gap", "gap", ["x"], "y", "accelerator", {}, {}, out_q)
    model = QuantizedModel("x", (1, 37, *size), q, "y", [layer], {"x": q, "y": out_q}, {}, [])
    x = np.random.default_rng(4).integers(0, 256, (3, 37, *size), dtype=np.uint8)
    runner = ModelRunner(model, config, "reference")
    np.testing.assert_array_equal(runner.run_batch(x), ModelRunner(model, config, "numpy").run_batch(x))
    assert runner.stats[0].placement == where and bool(runner.stats[0].counters) == (where == "accelerator")
