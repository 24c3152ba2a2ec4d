"""The reference executor's fast paths give the slow paths' bits: a plan rerun after its add blocks, weights or
parameters change in memory writes what the interpreter writes for the new bytes; the residual add's float32 kernel
gives the integer model's sums; weights vouched for as fixed are compared once."""

import dataclasses

import numpy as np
import pytest
from conftest import NARROW, TINY
from test_fused_products import expected_output, fused_or_skip, random_case
from test_network_program import quantized, small_network

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import Opcode
from mvu.hdl.contract.requantization import Requantization
from mvu.hdl.contract.residual_add import ADD_BLOCK_BYTES, ResidualAdd, residual_add
from mvu.host.depthwise import DepthwiseProgram
from mvu.host.executors import FIXED_WEIGHTS
from mvu.host.executors.fused_products import FusedProduct
from mvu.host.executors.kernels import diagonal_maxima, same_bytes
from mvu.host.executors.reference import ReferenceExecutor
from mvu.host.executors.residual_add import _float32_coefficients, add_rows
from mvu.host.executors.window_gather import WindowGather
from mvu.host.gemm import ConvolutionInput, GemmProgram
from mvu.host.network_program import NetworkProgram
from mvu.host.runtime.runner import ModelRunner


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


def residual_adds(rng: np.random.Generator) -> list[ResidualAdd]:
    """Adds of random float32 coefficients in both operand orders, and edge cases: halves that tie (at both
    roundings), negative ratios, clamps, a start far below the ratios (sums beyond 2**53 grid units) and zeros."""
    adds = [ResidualAdd.from_float32(0.5, 0.5, -0.25), ResidualAdd.from_float32(0.5, 1.0, 0.5, q_inner=True),
            ResidualAdd.from_float32(-0.75, 1.5, 300.0, low=3, high=250), ResidualAdd(0, 0, 0, 0),
            ResidualAdd.from_float32(90.5, -60.25, np.float32(2.0 ** -40)),
            ResidualAdd.from_float32(np.float32(1 + 2.0 ** -23), np.float32(3 * 2.0 ** -24), 127.5, q_inner=True)]
    for _ in range(20):
        ratios = rng.uniform(-2, 2, 2).astype(np.float32)
        low, high = sorted(int(x) for x in rng.integers(0, 256, 2))
        adds.append(ResidualAdd.from_float32(*ratios, np.float32(rng.uniform(-300, 300)),
                                             q_inner=bool(rng.integers(0, 2)), low=low, high=high))
    return adds


def test_fused_multiply_adds_give_the_contracts_sums_of_every_byte_pair():
    """The float32 kernel against the integer model (the add's table) on all 65,536 byte pairs, written into a
    new array, into the codes themselves and into a strided view."""
    codes = np.arange(256, dtype=np.uint8)
    q, b = (pair.ravel() for pair in np.meshgrid(codes, codes, indexing="ij"))
    fast = 0
    for add in residual_adds(np.random.default_rng(8)):
        want = residual_add(q, b, add)
        fast += _float32_coefficients(add) is not None
        np.testing.assert_array_equal(add_rows(add, q, b), want)
        in_place = q.copy()
        assert add_rows(add, in_place, b, out=in_place) is in_place
        np.testing.assert_array_equal(in_place, want)
        rows = np.zeros((256, 300), np.uint8)
        add_rows(add, q.reshape(256, 256), b.reshape(256, 256), out=rows[:, 7:263])
        np.testing.assert_array_equal(rows[:, 7:263], want.reshape(256, 256))
        assert not rows[:, :7].any() and not rows[:, 263:].any()
    assert fast >= 20  # the kernel, not the table, computed nearly all of them


def test_fused_multiply_adds_round_each_sum_once():
    """3 * (1 + 2**-23) - 3 is 3 * 2**-23 exactly, but 4 * 2**-23 where the product is rounded first; plus
    0.5 - 3.5 * 2**-23 that sum lands just below the tie at 0.5 (rint: 0), or just above it (1)."""
    add = ResidualAdd.from_float32(np.float32(0.5 - 3.5 * 2.0 ** -23), np.float32(1 + 2.0 ** -23), -3.0)
    q, b = np.array([1], np.uint8), np.array([3], np.uint8)
    assert residual_add(q, b, add)[0] == 0
    assert _float32_coefficients(add) is not None
    assert add_rows(add, q, b)[0] == 0


def fused_gemm(rng: np.random.Generator) -> tuple[GemmProgram, np.ndarray]:
    """A float32-scale GEMM (fused on onnxruntime where it is exact here) and its weights."""
    a = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    w = rng.integers(-128, 128, (50, 30), dtype=np.int8)
    w[0], w[1] = -128, 127
    requant = Requantization.from_float32_scales(rng.uniform(1e-4, 1e-2, 30), rng.integers(-999, 999, 30),
                                                 out_zero_point=4, clamp_min=0, clamp_max=255)
    return GemmProgram(NARROW, a, w, act_zero_point=7, requant=requant), w


@pytest.mark.parametrize("fixed", [False, True], ids=["checked", "fixed"])
def test_fixed_weights_are_compared_only_when_packed(fixed, monkeypatch):
    """A program whose notes vouch for its weights has them packed and compared on its first run only, and every
    run, on new activations each time, writes what the interpreter writes; without the note every run compares."""
    gemm, _ = fused_gemm(np.random.default_rng(21))
    if fixed:
        gemm.program.notes[FIXED_WEIGHTS] = True
    executor = ReferenceExecutor(NARROW)
    assert_plan_is_interpreter(executor, gemm.program)
    plan = gemm.program.notes[ReferenceExecutor._NOTE].plan
    if not any(plan._fused.values()):
        pytest.skip("onnxruntime's int8 kernels are not exact on this machine; the general path runs instead")
    compared = []
    original = FusedProduct.same_weights
    monkeypatch.setattr(FusedProduct, "same_weights", lambda self, w: compared.append(1) or original(self, w))
    rng = np.random.default_rng(22)
    for _ in range(3):
        gemm.load_activations(rng.integers(0, 256, (40, 50), dtype=np.uint8))
        assert_plan_is_interpreter(executor, gemm.program)
    assert len(compared) == (0 if fixed else 3)


def test_the_runner_vouches_for_the_weights_of_the_programs_it_builds():
    """The runner writes nothing but inputs into its programs between runs: its layers' programs and the network it
    links carry :data:`FIXED_WEIGHTS`, and the network's reruns on new inputs still give the numpy backend's
    logits."""
    model = quantized(small_network())
    runner = ModelRunner(model, TINY, "reference", network=True)
    rng = np.random.default_rng(23)
    runner.run_batch(rng.integers(0, 256, (1, 3, 8, 8), dtype=np.uint8))
    network = runner.networks[1]
    assert isinstance(network, NetworkProgram), network
    assert network.program.notes[FIXED_WEIGHTS]
    assert runner._programs and all(p.program.notes[FIXED_WEIGHTS] for p in runner._programs.values())
    for _ in range(2):
        x = rng.integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
        np.testing.assert_array_equal(runner.run_batch(x), ModelRunner(model, TINY, "numpy").run_batch(x))


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "any byte"])
def test_window_gathers_copy_each_cell_from_its_source(aligned):
    """Each scratch cell holds the ``width`` bytes from its source (the first and the last a memory holds among
    them) or its fill, run after run into the same buffer as the memory changes."""
    rng = np.random.default_rng(24)
    width, size = 8, 1000
    sources = rng.integers(0, (size - width) // width + 1, 300) * width
    if not aligned:
        sources = rng.integers(0, size - width + 1, 300)
    sources[:2] = 0, (size - width) // width * width if aligned else size - width
    inside = rng.random(300) > 0.2
    inside[:2] = True
    fills = rng.integers(0, 256, 300, dtype=np.uint8)
    gather = WindowGather(width, sources, inside, fills)
    assert gather.aligned == aligned
    for _ in range(2):
        memory = rng.integers(0, 256, size, dtype=np.uint8)
        want = np.where(inside[:, None], memory[sources[:, None] + np.arange(width)], fills[:, None])
        scratch = gather.gather(memory)
        assert scratch is gather.scratch
        np.testing.assert_array_equal(scratch, want)
    with pytest.raises(ValueError, match="read up to byte"):
        gather.gather(memory[:size - 1])


@pytest.mark.parametrize("maximum", [True, False], ids=["max pool", "depthwise"])
def test_products_over_consecutive_rows_chain_into_one(maximum):
    """A pool or depthwise program tiles its output rows to the accumulators' depth: the plan runs each column
    tile's row tiles as one product (its taps' rows continue each other's) and writes what the interpreter writes,
    edge codes included."""
    rng = np.random.default_rng(25 + maximum)
    x = rng.integers(0, 256, (2, 9, 11, 8), dtype=np.uint8)
    x[0, 0], x[1, -1] = 0, 255
    weights = np.ones((8, 3, 3), np.int8) if maximum else rng.integers(-128, 128, (8, 3, 3), dtype=np.int8)
    requant = Requantization(np.zeros(8), np.ones(8), np.zeros(8), out_zero_point=0, clamp_min=0, clamp_max=255) \
        if maximum else Requantization.from_scales(rng.uniform(1e-3, 1e-2, 8), rng.integers(-99, 99, 8),
                                                   out_zero_point=9)
    program = DepthwiseProgram(TINY, ConvolutionInput(x, (3, 3), (1, 1), (1, 1, 1, 1)), weights,
                               act_zero_point=0 if maximum else 5, requant=requant, maximum=maximum)
    assert_plan_is_interpreter(ReferenceExecutor(TINY), program.program)
    columns = program.program.notes[ReferenceExecutor._NOTE].columns
    stores = int((columns["opcode"] == Opcode.STORE).sum())
    (segment,) = program.program.notes[ReferenceExecutor._NOTE].segments
    assert len(segment.plan.products) == 8 // TINY.cols < stores


def test_a_network_runs_tensors_are_the_layer_by_layer_runs_and_its_output_is_kept():
    """A network run reads its layers' results where the network left them, without copies: every tensor equals the
    layer-by-layer run's, and the logits it returned stay as they were when the next batch runs."""
    model = quantized(small_network())
    network = ModelRunner(model, TINY, "reference", network=True)
    layers = ModelRunner(model, TINY, "reference")
    rng = np.random.default_rng(26)
    first, second = (rng.integers(0, 256, (1, 3, 8, 8), dtype=np.uint8) for _ in range(2))
    network.run_batch(second)  # links the network
    logits = network.run_batch(first)
    layers.run_batch(first)
    assert set(network.tensors) == set(layers.tensors)
    for name, tensor in layers.tensors.items():
        np.testing.assert_array_equal(network.tensors[name], tensor, err_msg=name)
    kept = logits.copy()
    network.run_batch(second)
    np.testing.assert_array_equal(logits, kept)
    assert not np.array_equal(network.last_output, kept)


def test_a_network_whose_output_an_accelerator_layer_writes_returns_a_copy():
    """The output of a network cut after its global pool (a program's result) is the network's memory no longer:
    the next batch leaves it as it was."""
    model = quantized(small_network())
    gap = next(index for index, layer in enumerate(model.layers) if layer.kind == "gap")
    cut = dataclasses.replace(model, layers=model.layers[:gap + 1], output=model.layers[gap].output)
    runner = ModelRunner(cut, TINY, "reference", network=True)
    rng = np.random.default_rng(27)
    first, second = (rng.integers(0, 256, (1, 3, 8, 8), dtype=np.uint8) for _ in range(2))
    runner.run_batch(second)
    pooled = runner.run_batch(first)
    assert isinstance(runner.networks[1], NetworkProgram) and runner.stats[gap].placement == "accelerator"
    kept = pooled.copy()
    runner.run_batch(second)
    np.testing.assert_array_equal(pooled, kept)
    np.testing.assert_array_equal(kept, ModelRunner(cut, TINY, "numpy").run_batch(first))
    assert not np.array_equal(runner.last_output, kept)


def test_fixed_weights_are_compared_again_in_another_memory_buffer():
    """The note vouches for the weights in the memory the program ran on: moved to another buffer (of the same
    size, so the program's plan is kept) with other weights, the program is repacked and follows them."""
    gemm, w = fused_gemm(np.random.default_rng(28))
    gemm.program.notes[FIXED_WEIGHTS] = True
    executor = ReferenceExecutor(NARROW)
    executor.run(gemm.program)
    plan = gemm.program.notes[ReferenceExecutor._NOTE].plan
    if not any(plan._fused.values()):
        pytest.skip("onnxruntime's int8 kernels are not exact on this machine; the general path runs instead")
    before = gemm.result().copy()
    moved = gemm.program.memory.data.copy()
    w_pad = np.zeros((56, 32), np.int8)  # K and N padded to whole tiles of NARROW (8 x 16)
    w_pad[:50, :30] = w
    at = moved.tobytes().find(w_pad.tobytes())
    moved[at:at + w_pad.size] = (-w_pad.astype(np.int16)).clip(-128, 127).astype(np.int8).view(np.uint8).ravel()
    gemm.program.memory.data = moved
    assert_plan_is_interpreter(executor, gemm.program)
    assert gemm.program.notes[ReferenceExecutor._NOTE].plan is plan
    assert (gemm.result() != before).any()
