"""The reference executor's fast paths follow memory: a plan rerun after its add blocks, weights or parameters change
in memory writes what the interpreter writes for the new bytes."""

import numpy as np
import pytest
from conftest import TINY
from test_fused_products import expected_output, fused_or_skip, random_case

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import Opcode
from mvu.hdl.contract.requantization import Requantization
from mvu.hdl.contract.residual_add import ADD_BLOCK_BYTES, ResidualAdd
from mvu.host.executors.kernels import diagonal_maxima, same_bytes
from mvu.host.executors.reference import ReferenceExecutor
from mvu.host.gemm import GemmProgram


def assert_plan_is_interpreter(executor: ReferenceExecutor, program) -> None:
    """Run ``program`` on its plan and, from the same memory, on the interpreter: the same memory after."""
    data = program.memory.data
    before = data.copy()
    executor.run(program)
    prepared = program.notes[ReferenceExecutor._NOTE]
    assert any(segment.plan is not None for segment in prepared.segments)
    planned = data.copy()
    data[:] = before
    executor._interpret(prepared.columns, data)
    np.testing.assert_array_equal(planned, data)


def add_gemm(config: HardwareConfig, rng: np.random.Generator, n: int) -> GemmProgram:
    m, k = 9, 11
    requant = Requantization.from_float32_scales(rng.uniform(1e-4, 1e-3, n), rng.integers(-3000, 3000, n),
                                              out_zero_point=7, clamp_min=0, clamp_max=255)
    return GemmProgram(config, rng.integers(0, 256, (m, k), dtype=np.uint8),
                       rng.integers(-128, 128, (k, n), dtype=np.int8), act_zero_point=3, requant=requant,
                       addend=rng.integers(0, 256, (m, n), dtype=np.uint8),
                       residual=ResidualAdd.from_float32(0.75, 1.25, -3.5, low=2, high=250))


def test_add_blocks_rewritten_between_runs_are_read_again():
    """One column tile's add block changes after the first run: the next run adds with the new coefficients in that
    tile and the old ones in the others."""
    config = TINY
    executor = ReferenceExecutor(config)
    gemm = add_gemm(config, np.random.default_rng(5), n=3 * config.cols)
    assert_plan_is_interpreter(executor, gemm.program)
    data = gemm.program.memory.data
    columns = executor._prepare(gemm.program).columns
    adds = (columns["opcode"] == Opcode.STORE) & (columns["add"] != 0)
    blocks = sorted(set((columns["param_addr"][adds].astype(int) + config.param_block_bytes).tolist()))
    assert len(blocks) == 3
    old = ResidualAdd.from_block(data[blocks[1]:blocks[1] + ADD_BLOCK_BYTES])
    new = ResidualAdd.from_float32(0.5, 2.0, 1.0, low=0, high=200, addend_offset=old.addend_offset)
    data[blocks[1]:blocks[1] + ADD_BLOCK_BYTES] = new.block()
    before = gemm.result().copy()
    assert_plan_is_interpreter(executor, gemm.program)
    after = gemm.result()
    tile = slice(config.cols, 2 * config.cols)
    assert (after[:, tile] != before[:, tile]).any()
    np.testing.assert_array_equal(np.delete(after, np.r_[tile], axis=1), np.delete(before, np.r_[tile], axis=1))


@pytest.mark.parametrize("taps", [1, 4, 9])
def test_diagonal_maxima_are_the_largest_products_of_diagonal_tiles(taps):
    """The kernel against the largest of the products with each diagonal weight tile, on strided taps with edge
    values and zero points at both ends."""
    from mvu.host.executors.intmatmul import centred_matmul

    rng = np.random.default_rng(taps)
    n = 5
    a = rng.integers(0, 256, (37, taps * n), dtype=np.uint8)
    a[0], a[1] = 0, 255
    diagonals = rng.integers(-128, 128, (taps, n), dtype=np.int8)
    diagonals[0, :2] = (-128, 127)
    w = np.zeros((taps, n, n), np.int8)
    w[:, np.arange(n), np.arange(n)] = diagonals
    for zero_point in (0, 255, int(rng.integers(1, 255))):
        want = np.max([centred_matmul(a[:, t * n:(t + 1) * n], zero_point, w[t]) for t in range(taps)], axis=0)
        got = diagonal_maxima(a.reshape(37, taps, n).transpose(1, 0, 2), zero_point, diagonals)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 16, 37])
def test_same_bytes_finds_any_changed_byte_at_any_alignment(size):
    """Every single flipped bit is found, in the whole words and in the tail, on views that start mid-word."""
    rng = np.random.default_rng(size)
    memory = rng.integers(0, 256, size + 3, dtype=np.uint8)
    for start in range(3):
        a = memory[start:start + size]
        assert same_bytes(a, a.copy())
        for index in range(size):
            for bit in (0, 7):
                b = a.copy()
                b[index] ^= 1 << bit
                assert not same_bytes(a, b)
    assert not same_bytes(memory[:size], memory[:size + 1])


def test_a_fused_product_reruns_on_its_buffers_with_their_new_bytes():
    """Runs on the same buffers (whose binding is kept) see the bytes written between them; runs on other buffers
    write there."""
    rng = np.random.default_rng(2)
    x, zero_point, w, parameters = random_case(rng, False)
    product = fused_or_skip(w, parameters, act_signed=False, act_zero_point=zero_point, out_zero_point=9,
                            clamp_min=3, clamp_max=250)
    out = np.empty((len(x), w.shape[1]), np.uint8)
    for _ in range(3):
        x[...] = rng.integers(0, 256, x.shape)
        product.run(x, out)
        np.testing.assert_array_equal(out, expected_output(x, zero_point, w, parameters, 9, 3, 250))
    other_x, other_out = rng.integers(0, 256, x.shape, dtype=np.uint8), np.empty_like(out)
    product.run(other_x, other_out)
    np.testing.assert_array_equal(other_out, expected_output(other_x, zero_point, w, parameters, 9, 3, 250))
    np.testing.assert_array_equal(out, expected_output(x, zero_point, w, parameters, 9, 3, 250))
