"""The reference executor and the GEMM tiling against the plain definition."""

import itertools
import random

import numpy as np
import pytest
from conftest import NARROW, TINY

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import Buffer, Load
from mvu.hdl.contract.requantization import Requantization, float32_significand, quantize_multiplier, requantize
from mvu.host.executors.reference import ReferenceExecutor
from mvu.host.gemm import GemmError, GemmProgram, GemmTiling, golden_gemm, plan_gemm


def naive_requantize(acc, bias, multiplier, shift, zero_point, low, high):
    """Per element with Python integers: the documented arithmetic, spelled out."""
    x = (acc + bias + 2 ** 31) % 2 ** 32 - 2 ** 31
    product = x * multiplier
    y = (product + (1 << shift >> 1)) >> shift
    return min(max(y + zero_point, low), high) % 256


def test_requantize_matches_integer_definition():
    rng = np.random.default_rng(3)
    n = 4000
    acc = rng.integers(-2 ** 31, 2 ** 31, n)
    bias = rng.integers(-2 ** 31, 2 ** 31, n)
    multiplier = rng.integers(0, 2 ** 31, n)
    shift = rng.integers(0, 64, n)
    got = requantize(acc, bias, multiplier, shift, 5, -100, 120)
    expected = [naive_requantize(*map(int, values), 5, -100, 120)
                for values in zip(acc, bias, multiplier, shift)]
    assert got.tolist() == expected


def test_rounding_is_half_up():
    acc = np.array([5, -5, 6, -6, 7, -7])  # divided by 4: 1.25 -1.25 1.5 -1.5 1.75 -1.75
    out = requantize(acc, np.zeros(6), np.ones(6), np.full(6, 2), 0, -128, 127).view(np.int8)
    assert out.tolist() == [1, -1, 2, -1, 2, -2]


def test_float32_scales_round_half_to_even():
    acc = np.array([5, -5, 6, -6, 7, -7, 2, -2])  # divided by 4: 1.25 -1.25 1.5 -1.5 1.75 -1.75 0.5 -0.5
    significand, shift = float32_significand(0.25)
    out = requantize(acc, np.zeros(8), np.full(8, significand), np.full(8, shift), 0, -128, 127,
                     float32_scale=True).view(np.int8)
    assert out.tolist() == [1, -1, 2, -2, 2, -2, 0, 0]


def test_float32_significands_give_onnxruntimes_arithmetic_for_any_scale():
    """``float32(x) * scale``, rounded half to even, for scales inside the post-processor's range and beyond."""
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, 3000), rng.integers(-2 ** 12, 2 ** 12, 3000),
                        [0, 1, -1, 2 ** 31 - 1, -2 ** 31, 2 ** 24 + 1, -(2 ** 24 + 3)]])
    scales = np.float32([0, 2 ** -149, 2 ** -60, 2 ** -41, 2 ** -40, 3e-5, 0.0123, 0.5, 1, 1.5, 2 ** 23, 2 ** 24,
                         3e30, *rng.uniform(1e-4, 2.0, 20)])
    for scale in scales:
        significand, shift = float32_significand(scale)
        assert 0 <= significand < 2 ** 24 and 0 <= shift <= 63
        got = requantize(x, 0, significand, shift, 0, -(2 ** 15), 2 ** 15 - 1, float32_scale=True)
        with np.errstate(over="ignore"):  # the largest scale overflows to infinity, which clamps like the rest
            wanted = np.clip(np.rint(x.astype(np.float32) * scale).astype(np.float64), -(2 ** 15), 2 ** 15 - 1)
        np.testing.assert_array_equal(got, wanted.astype(np.int64).astype(np.uint8), err_msg=f"scale {scale}")


@pytest.mark.parametrize("scale", [1e-6, 0.0123, 0.5, 1.0, 3.7, 2 ** -40])
def test_quantize_multiplier(scale):
    multiplier, shift = quantize_multiplier(scale)
    assert 0 <= multiplier < 2 ** 31 and 0 <= shift <= 63
    assert abs(multiplier * 2.0 ** -shift - scale) <= scale * 2 ** -29 + 2.0 ** -64


def test_quantize_multiplier_rejects_bad_scales():
    for scale in (0, -1, float("inf"), 2.0 ** 31):
        with pytest.raises(ValueError):
            quantize_multiplier(scale)


def run_reference(config, a, w, zero_point, requant, tiling=None):
    gemm = GemmProgram(config, a, w, act_zero_point=zero_point, requant=requant, tiling=tiling)
    ReferenceExecutor(config).run(gemm.program)
    return gemm.result()


def random_case(rng, m, k, n, signed=False, output="fixed"):
    """Operands and a requantization: ``output`` is "fixed" (point), "float32" (scales) or "raw"."""
    a = rng.integers(-128, 128, (m, k), dtype=np.int8) if signed else rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-128, 128, (k, n), dtype=np.int8)
    zero_point = int(rng.integers(-128, 128) if signed else rng.integers(0, 256))
    make = {"fixed": Requantization.from_scales, "float32": Requantization.from_float32_scales}.get(output)
    requant = None if make is None else make(rng.uniform(1e-4, 1e-2, n), rng.integers(-5000, 5000, n),
                                             out_zero_point=int(rng.integers(0, 30)), clamp_min=0, clamp_max=255)
    return a, w, zero_point, requant


@pytest.mark.parametrize("config", [TINY, NARROW, HardwareConfig()], ids=["tiny", "narrow", "default"])
def test_reference_gemm_matches_definition(config):
    rng = np.random.default_rng(11)
    for m, k, n in [(1, 1, 1), (7, 5, 3), (33, 17, 9), (70, 40, 21)]:
        for signed, raw in itertools.product((False, True), ("fixed", "float32", "raw")):
            a, w, zp, requant = random_case(rng, m, k, n, signed, raw)
            expected = golden_gemm(a, w, zp, requant)
            got = run_reference(config, a, w, zp, requant)
            assert got.dtype == expected.dtype
            np.testing.assert_array_equal(got, expected)


def test_every_tiling_gives_the_same_answer():
    rng = np.random.default_rng(5)
    a, w, zp, requant = random_case(rng, 21, 19, 13)
    expected = golden_gemm(a, w, zp, requant)
    for m_block, n_block, k_chunk in [(1, 1, 1), (5, 2, 2), (21, 1, 1), (8, 4, 1), (16, 2, 2)]:
        got = run_reference(TINY, a, w, zp, requant, GemmTiling(m_block, n_block, k_chunk))
        np.testing.assert_array_equal(got, expected)


def weight_loads(gemm: GemmProgram) -> int:
    return sum(isinstance(ins, Load) and ins.buffer == Buffer.WGT for ins in gemm.program.instructions())


@pytest.mark.parametrize("k_chunk, loading_blocks", [(4, 2), (2, 1), (1, 8)], ids=["one chunk", "two", "four: every block"])
def test_weights_a_half_holds_are_not_loaded_again(k_chunk, loading_blocks):
    """An N block's M blocks use the same weight tiles: with one or two chunks a block, the halves of the weight
    buffer keep them, so only the N block's first blocks load them; the result is the definition's."""
    rng = np.random.default_rng(21)
    a, w, zp, requant = random_case(rng, 30, 16, 8)  # 4 K tiles, 2 N tiles on TINY
    gemm = GemmProgram(TINY, a, w, act_zero_point=zp, requant=requant, tiling=GemmTiling(4, 1, k_chunk))
    chunks = 4 // k_chunk
    assert weight_loads(gemm) == 2 * loading_blocks * chunks  # per N block and chunk: one LOAD
    ReferenceExecutor(TINY).run(gemm.program)
    np.testing.assert_array_equal(gemm.result(), golden_gemm(a, w, zp, requant))


def test_planner_fits_the_buffers_and_prefers_long_streams():
    rng = random.Random(2)
    for _ in range(50):
        m, k, n = (rng.randrange(1, 3000) for _ in range(3))
        tiling = plan_gemm(HardwareConfig(), m, k, n)
        assert tiling.m_block * tiling.k_chunk <= 1024 and tiling.m_block * tiling.n_block <= 512
    assert plan_gemm(HardwareConfig(), 1024, 1024, 1024).m_block >= 64


def test_gemm_input_errors():
    a = np.zeros((4, 5), np.uint8)
    w = np.zeros((5, 3), np.int8)
    with pytest.raises(GemmError, match=r"disagree on K"):
        GemmProgram(TINY, a, np.zeros((4, 3), np.int8))
    with pytest.raises(GemmError, match="weights must be int8, not int16"):
        GemmProgram(TINY, a, w.astype(np.int16))
    with pytest.raises(GemmError, match="activations must be uint8 or int8, not float32"):
        GemmProgram(TINY, a.astype(np.float32), w)
    with pytest.raises(GemmError, match="zero point 300 is outside 0..255"):
        GemmProgram(TINY, a, w, act_zero_point=300)
    with pytest.raises(GemmError, match="requantization has 2 channels; the product has 3"):
        GemmProgram(TINY, a, w, requant=Requantization.from_scales([0.1, 0.1]))
    with pytest.raises(GemmError, match="overflow half the activation buffer"):
        GemmProgram(TINY, a, w, tiling=GemmTiling(64, 1, 1))
    with pytest.raises(GemmError, match="external memory"):
        GemmProgram(TINY, np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (2 ** 22, 2 ** 11), (0, 0)),
                    np.zeros((2 ** 11, 1), np.int8))


@pytest.mark.parametrize("zero_points", [0, 77, 255, 300, -5, "per column"])
def test_centred_products_are_exact_modulo_2_to_the_32(zero_points):
    from mvu.host.executors.intmatmul import centred_matmul

    rng = np.random.default_rng(11)
    a = np.concatenate([np.full((3, 700), 255, np.uint8), rng.integers(0, 256, (5, 700), dtype=np.uint8)])
    w = np.concatenate([np.full((700, 2), -128, np.int8), rng.integers(-128, 128, (700, 6), dtype=np.int8)], axis=1)
    if zero_points == "per column":
        zero_points = rng.integers(0, 256, 700)
    expected = (a.astype(np.int64) - zero_points) @ w.astype(np.int64)
    got = centred_matmul(a, zero_points, w)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected.astype(np.int32))


@pytest.mark.parametrize("float32", [False, True])
def test_output_table_is_looked_up_by_the_stores(float32):
    rng = np.random.default_rng(16)
    a = rng.integers(0, 256, (37, 21), dtype=np.uint8)
    w = rng.integers(-128, 128, (21, 11), dtype=np.int8)
    make = Requantization.from_float32_scales if float32 else Requantization.from_scales
    requant = make(rng.uniform(1e-3, 1e-2, 11), rng.integers(-500, 500, 11), out_zero_point=3)
    table = rng.permutation(256).astype(np.uint8)
    gemm = GemmProgram(TINY, a, w, act_zero_point=7, requant=requant, table=table)
    ReferenceExecutor(TINY).run(gemm.program)
    plain = golden_gemm(a, w, 7, requant).view(np.uint8)
    np.testing.assert_array_equal(gemm.result().view(np.uint8), table[plain])
    np.testing.assert_array_equal(gemm.result(), golden_gemm(a, w, 7, requant, table))
    with pytest.raises(GemmError, match="an output table needs requantized outputs"):
        GemmProgram(TINY, a, w, table=table)
