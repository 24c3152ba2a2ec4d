"""Programs cut by SYNCs on the reference executor: each part planned on its own where that is exact, the rest
interpreted on one machine, bit for bit as the whole program interpreted and as the ISA's sequential semantics.

A chain of layer programs (products, convolutions, depthwise convolutions, global pools) linked into one image with a
SYNC between layers, each layer's LOADs reading the rows the previous layer's STOREs wrote, runs every layer planned;
random programs with state crossing their SYNCs (buffer entries, accumulators, the weight tile, the parameter block,
the table) follow the naive model of tests/test_reference_semantics.py.
"""

import random

import numpy as np
import pytest
from conftest import NARROW, TINY
from test_reference_semantics import naive_run, random_memory, run_as_naive

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import (
    INSTRUCTION_BYTES,
    Buffer,
    Compute,
    Finish,
    Load,
    Opcode,
    Store,
    Sync,
    decode_columns,
    encode_columns,
)
from mvu.hdl.contract.program import MemoryImage, Program
from mvu.hdl.contract.requantization import Requantization, requantization_block
from mvu.hdl.contract.residual_add import ADD_BLOCK_BYTES
from mvu.host.depthwise import DepthwiseProgram
from mvu.host.executors import execution_plan, reference
from mvu.host.executors.reference import ReferenceExecutor
from mvu.host.gemm import ConvolutionInput, GemmProgram
from mvu.host.global_pool import GlobalPoolProgram, global_pool_limit

# A chain of layer programs linked into one ---------------------------------------------------------------------------


def _requant(rng: np.random.Generator, channels: int, terms: int) -> Requantization:
    """Per-channel requantization to uint8 that keeps sums of ``terms`` random byte products mostly unsaturated."""
    shift = 30 + int(np.log2(60 * 60 * np.sqrt(terms))) - 5
    return Requantization(rng.integers(-999, 999, channels), rng.integers(1 << 29, 1 << 30, channels),
                          np.full(channels, shift), out_zero_point=int(rng.integers(100, 156)), clamp_min=0,
                          clamp_max=255)


def _layer(config: HardwareConfig, rng: np.random.Generator, kind: str, x: np.ndarray, zero_point: int):
    """A layer program of ``kind`` on ``x`` (``[N, H, W, C]`` or ``[M, K]``) and its output as the next input."""
    channels = x.shape[-1]
    out = int(rng.integers(2, 3 * config.cols)) if config.rows == config.cols else config.cols * int(rng.integers(1, 3))
    if kind == "pool":
        pixels = x.shape[1] * x.shape[2]
        program = GlobalPoolProgram(config, x, act_zero_point=zero_point, requant=Requantization(
            [0], [1 << 30], [30 + int(np.log2(pixels))], out_zero_point=128, clamp_min=0, clamp_max=255))
        return program, (len(x), channels)
    if kind == "depthwise":
        conv = ConvolutionInput(x, (3, 3), (1, 1), (1, 1, 1, 1))
        program = DepthwiseProgram(config, conv, rng.integers(-128, 128, (channels, 3, 3), dtype=np.int8),
                                   act_zero_point=zero_point, requant=_requant(rng, channels, 9))
        return program, x.shape
    if kind == "conv":
        kernel, stride = ((3, 3), (1, 1)) if rng.random() < 0.5 else ((3, 3), (2, 2))
        conv = ConvolutionInput(x, kernel, stride, (1, 1, 1, 1))
        weights = rng.integers(-128, 128, (9 * channels, out), dtype=np.int8)
        program = GemmProgram(config, conv, weights, act_zero_point=zero_point, requant=_requant(rng, out, 9 * channels))
        return program, (len(x), *conv.out_size, out)
    weights = rng.integers(-128, 128, (channels, out), dtype=np.int8)  # dense: a 1x1 convolution or a product
    program = GemmProgram(config, x.reshape(-1, channels), weights, act_zero_point=zero_point,
                          requant=_requant(rng, out, channels))
    return program, (*x.shape[:-1], out)


def layer_chain(config: HardwareConfig, rng: np.random.Generator, layers: int, size: int = 6):
    """``layers`` random layer programs, each built on the previous one's output (run on the reference, one program
    at a time), and the kinds chosen."""
    channels = int(rng.integers(2, 2 * config.cols)) if config.rows == config.cols else config.cols
    x = rng.integers(0, 256, (int(rng.integers(1, 3)), size, size, channels), dtype=np.uint8)
    zero_point, programs, kinds = int(rng.integers(0, 256)), [], []
    executor = ReferenceExecutor(config)
    for _ in range(layers):
        pools = x.ndim == 4 and global_pool_limit(config, x.shape[1] * x.shape[2], float32_scale=False) is None
        kind = str(rng.choice(["conv", "depthwise", "dense"] + ["pool"] * pools if x.ndim == 4 else ["dense"]))
        program, shape = _layer(config, rng, kind, x, zero_point)
        executor.run(program.program)
        x = program.result().reshape(shape)
        zero_point = program.requant.out_zero_point
        programs.append(program)
        kinds.append(kind)
    return programs, kinds


def _activations(program) -> tuple[int, int]:
    """Where a layer program keeps its activations: ``(start, bytes)``."""
    size = program.m * program.k * program._width if isinstance(program, GlobalPoolProgram) \
        else program._activation_bytes()
    return program._a_base, size


def link(programs: list) -> tuple[Program, list[int]]:
    """The programs' images one after another and their instructions in one stream, a SYNC between layers, each
    layer's activation LOADs reading the previous layer's outputs; every layer's outputs and (but the first's)
    activations are zeroed. Returns the program and each image's offset."""
    memory = MemoryImage()
    offsets = [memory.allocate(p.program.memory.size) for p in programs]
    streams = []
    for index, (program, offset) in enumerate(zip(programs, offsets)):
        image = program.program.memory
        memory.data[offset:offset + image.size] = image.data
        memory.data[offset + program.out_base:][:program._out_bytes] = 0
        start, size = _activations(program)
        words = image.data[program.program.address:][:program.program.length * INSTRUCTION_BYTES]
        columns = decode_columns(words.reshape(-1, INSTRUCTION_BYTES))
        columns = {name: values[columns["opcode"] != Opcode.FINISH].copy() for name, values in columns.items()}
        op, address = columns["opcode"], columns["dram_addr"]
        loads, stores = op == Opcode.LOAD, op == Opcode.STORE
        moved = np.where(loads | stores, address + offset, address)
        if index:
            previous = programs[index - 1]
            assert size == previous._out_bytes, "the layers' layouts disagree"
            memory.data[offset + start:][:size] = 0
            inside = loads & (address >= start) & (address < start + size)
            moved[inside] = offsets[index - 1] + previous.out_base + address[inside] - start
        columns["dram_addr"] = moved
        for name, flag in (("param_addr", "load_params"), ("table_addr", "load_table")):
            columns[name] = np.where(stores & (columns[flag] != 0), columns[name] + offset, columns[name])
        streams += [encode_columns(columns), encode_columns({"opcode": np.array([Opcode.SYNC])})]
    streams[-1] = encode_columns({"opcode": np.array([Opcode.FINISH])})
    return Program.place_words(memory, np.concatenate(streams)), offsets


def _outputs(program, data: np.ndarray, offset: int = 0) -> np.ndarray:
    """A layer's valid output bytes in the image ``data`` (its own at ``offset`` 0)."""
    rows = data[offset + program.out_base:][:program._out_bytes].reshape(program.m, -1)
    return rows[:, :program.n * (1 if program.requant is not None else 4)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("config", [TINY, NARROW, HardwareConfig()], ids=["tiny", "narrow", "default"])
def test_a_chain_of_layers_runs_planned_part_by_part(config, seed, monkeypatch):
    rng = np.random.default_rng(seed)
    programs, kinds = layer_chain(config, rng, int(rng.integers(2, 6)))
    program, offsets = link(programs)
    interpreted = program.memory.data.copy()
    run = ReferenceExecutor(config).run(program)
    segments = program.notes[ReferenceExecutor._NOTE].segments
    assert len(segments) == len(programs) and all(segment.plan is not None for segment in segments), kinds
    for layer, offset in zip(programs, offsets):  # as each layer's program run on its own
        np.testing.assert_array_equal(_outputs(layer, program.memory.data, offset),
                                      _outputs(layer, layer.program.memory.data))
    separate = [layer.program.notes[ReferenceExecutor._NOTE].counters for layer in programs]
    assert run.counters == {name: sum(counters[name] for counters in separate) for name in run.counters}
    with monkeypatch.context() as patch:
        patch.setattr(reference, "build_plan", lambda *args: None)
        whole = Program(MemoryImage(), program.address, program.length)
        whole.memory.data = interpreted
        ReferenceExecutor(config).run(whole)
    assert whole.notes[ReferenceExecutor._NOTE].segments[0].plan is None
    np.testing.assert_array_equal(program.memory.data, interpreted)
    assert len(np.unique(_outputs(programs[-1], program.memory.data, offsets[-1]))) > 1  # not all saturated
    program.memory.data[offsets[-1] + programs[-1].out_base:][:programs[-1]._out_bytes] = 0
    ReferenceExecutor(config).run(program)  # a rerun: the parts' plans reused
    np.testing.assert_array_equal(program.memory.data, interpreted)


# Random programs with state crossing SYNCs -------------------------------------------------------------------------


def segmented_program(config: HardwareConfig, rng: random.Random, parts: int) -> Program:
    """Parts separated by SYNCs: some set all they read (LOADs of every chunk and tile, products onto their own
    accumulator ranges, a parameter load before requantizing), often reading rows an earlier part stored; the
    others use what earlier parts left (entries, the weight tile, accumulators, parameters, the table), accumulate
    onto earlier ranges, keep the largest products, reload a few entries in part."""
    memory, blocks, tables = random_memory(config, rng)
    beat, R, chunk = config.mem_bytes, config.rows, 8
    act_chunks, wgt_tiles = config.act_depth // chunk, config.wgt_depth // R
    instructions, written, params, table = [], [], False, False
    computed: dict[int, int] = {}  # accumulator ranges (start: count) computed so far

    def source() -> int:
        """Rows to load: the random input, or rows an earlier part stored."""
        return rng.choice(written) if written and rng.random() < 0.5 else beat * rng.randrange(600)

    for part in range(parts):
        own = part == 0 or rng.random() < 0.6
        if part:
            instructions.append(Sync())
        if own:
            instructions += [Load(Buffer.ACT, c * chunk, chunk, source(), beat * rng.choice([1, 2, 8]))
                             for c in range(act_chunks)]
            instructions += [Load(Buffer.WGT, t * R, R, source(), beat * rng.choice([1, 4])) for t in range(wgt_tiles)]
        mine: dict[int, int] = {}
        for step in range(rng.randint(1, 25)):
            kind = rng.choice("LCCCSS")
            if kind == "L" and not own:
                c, half = rng.randrange(act_chunks), rng.randint(1, chunk)
                instructions.append(Load(Buffer.ACT, c * chunk, half, source(), beat * rng.choice([1, 2])))
            elif kind in "LC":
                ranges = mine if own else computed
                start = rng.randrange(config.acc_depth // chunk) * chunk
                count = ranges.get(start) or rng.randint(1, chunk)
                accumulate = start in ranges and rng.random() < 0.7
                maximum = accumulate and not own and rng.random() < 0.3
                signed = rng.random() < 0.3
                instructions.append(Compute(
                    act_addr=rng.randrange(act_chunks) * chunk + rng.randint(0, chunk - count), count=count,
                    acc_addr=start, wgt_addr=rng.randrange(wgt_tiles) * R, preload=(own and step == 0)
                    or rng.random() < 0.5, accumulate=accumulate, maximum=maximum, act_signed=signed,
                    act_zero_point=rng.randrange(-128, 128) if signed else rng.randrange(256)))
                mine[start] = computed[start] = count
            elif mine if own else computed:
                start = rng.choice(sorted(mine if own else computed))
                raw = rng.random() < 0.3
                load_params = not params or (own and not any(isinstance(i, Store) for i in instructions[-step:])) \
                    or rng.random() < 0.2
                load_table = not table and rng.random() < 0.5 or rng.random() < 0.1
                params, table = params or load_params, table or load_table
                count = computed[start]
                stride = (4 * config.cols if raw else config.cols) + beat * rng.choice([0, 1, 4])
                address = memory.allocate(count * stride, alignment=beat)
                instructions.append(Store(
                    acc_addr=start, count=count, dram_addr=address, dram_stride=stride,
                    param_addr=blocks + config.param_block_bytes * rng.randrange(4), load_params=load_params, raw=raw,
                    float32_scale=rng.random() < 0.3, out_zero_point=rng.randrange(-20, 20), clamp_min=-128,
                    clamp_max=127, table_addr=tables + 256 * rng.randrange(2), load_table=load_table,
                    lookup=table and not raw and rng.random() < 0.4))
                written.append(address)
    instructions.append(Finish())
    return Program.place(memory, instructions)


def _plans(program: Program) -> list[bool]:
    return [segment.plan is not None for segment in program.notes[ReferenceExecutor._NOTE].segments]


@pytest.mark.parametrize("seed", range(60))
def test_state_crossing_syncs_follows_the_sequential_semantics(seed):
    rng = random.Random(seed)
    config = rng.choice([TINY, NARROW])
    run_as_naive(config, segmented_program(config, rng, rng.randint(2, 8)))


def test_random_parts_are_planned_and_interpreted_both():
    """The random programs above exercise plans next to interpreted parts (not all one or the other)."""
    plans = []
    for seed in range(60):
        rng = random.Random(seed)
        config = rng.choice([TINY, NARROW])
        program = segmented_program(config, rng, rng.randint(2, 8))
        ReferenceExecutor(config).run(program)
        plans.append(_plans(program))
    assert sum(any(p) and not all(p) for p in plans) >= 15


# State crossing a SYNC, case by case -----------------------------------------------------------------------------

def _case(config, parts: list[list]) -> Program:
    """``parts`` with SYNCs between them in an image of random bytes with two parameter blocks."""
    memory = MemoryImage()
    memory.allocate(4096)
    memory.data[:2048] = np.random.default_rng(len(parts)).integers(0, 256, 2048)
    for b, address in enumerate((2048, 2048 + config.param_block_bytes)):
        memory.data[address:address + config.param_block_bytes] = requantization_block(
            config, [b * 7 - 3] * config.cols, [1 << 30] * config.cols, [5 + b] * config.cols)
    instructions = [step for index, part in enumerate(parts) for step in ([Sync()] if index else []) + part]
    return Program.place(memory, instructions + [Finish()])


#: Two parts after a case's: the second reads the rows the first stores, so the whole program has no plan.
_CHAINED = [[Load(Buffer.ACT, 0, 8, 0, 4), Load(Buffer.WGT, 0, 4, 512, 4), Compute(0, 8, 40, preload=True),
             Store(40, 8, 1600, 16, raw=True)],
            [Load(Buffer.ACT, 0, 8, 1600, 16), Load(Buffer.WGT, 0, 4, 512, 4), Compute(0, 8, 48, preload=True),
             Store(48, 8, 1740, 16, raw=True)]]


def _loads():
    return [Load(Buffer.ACT, 0, 8, 0, 4), Load(Buffer.WGT, 0, 8, 512, 4)]


_SECOND = 2048 + TINY.param_block_bytes
#: parts -> which are planned
CASES = {
    "self-contained parts": ([_loads() + [Compute(0, 8, 0, preload=True),
                                          Store(0, 8, 1024, 4, param_addr=2048, load_params=True)],
                              _loads() + [Compute(0, 8, 8, wgt_addr=4, preload=True),
                                          Store(8, 8, 1100, 4, param_addr=_SECOND, load_params=True)]],
                             [True, True]),
    "a part reads the rows the previous part stored": (
        [_loads() + [Compute(0, 8, 0, preload=True), Store(0, 8, 1024, 4, param_addr=2048, load_params=True)],
         [Load(Buffer.ACT, 0, 8, 1024, 4), Load(Buffer.WGT, 0, 4, 1040, 4), Compute(0, 8, 0, preload=True),
          Store(0, 8, 1200, 16, raw=True)]], [True, True]),
    "parameters loaded before a SYNC and used after": (
        [_loads() + [Compute(0, 8, 0, preload=True), Store(0, 8, 1024, 4, param_addr=_SECOND, load_params=True)],
         _loads() + [Compute(0, 8, 8, preload=True), Store(8, 8, 1100, 4)]], [False, False]),
    "accumulation across a SYNC": (
        [_loads() + [Compute(0, 8, 0, preload=True)],
         _loads() + [Compute(0, 8, 0, wgt_addr=4, preload=True, accumulate=True), Store(0, 8, 1200, 16, raw=True)]],
        [False, False]),
    "the weight tile used after a SYNC without a preload": (
        [_loads() + [Compute(0, 8, 0, wgt_addr=4, preload=True), Store(0, 8, 1200, 16, raw=True)],
         [Load(Buffer.ACT, 0, 8, 300, 4), Compute(0, 8, 8, preload=False), Store(8, 8, 1400, 16, raw=True)]],
        [False, False]),
    "the parameters of a part two before, a planned part between": (
        [_loads() + [Compute(0, 8, 0, preload=True), Store(0, 8, 1024, 4, param_addr=_SECOND, load_params=True)],
         _loads() + [Compute(0, 8, 8, wgt_addr=4, preload=True), Store(8, 8, 1200, 16, raw=True)],
         _loads() + [Compute(0, 8, 16, preload=True), Store(16, 8, 1400, 4)]], [False, True, False]),
    "a part that loads parameters settles them for the parts before": (
        [_loads() + [Compute(0, 8, 0, preload=True), Store(0, 8, 1024, 4, param_addr=2048, load_params=True)],
         _loads() + [Compute(0, 8, 8, preload=True), Store(8, 8, 1100, 4, param_addr=_SECOND, load_params=True)],
         _loads() + [Compute(0, 8, 16, wgt_addr=4, preload=True), Store(16, 8, 1300, 4)]], [True, False, False]),
}


@pytest.mark.parametrize("chained", [True, False], ids=["chained", "alone"])
@pytest.mark.parametrize("name", CASES)
def test_state_crossing_a_sync(name, chained):
    """Each case's parts planned or interpreted as the state they share allows, where a later part reads what an
    earlier one stored (``chained``); alone, a case whose parts are not all planned is planned whole."""
    parts, planned = CASES[name]
    program = _case(TINY, parts + _CHAINED if chained else parts)
    expected = program.memory.data.copy()
    naive_run(TINY, expected, program.instructions())
    ReferenceExecutor(TINY).run(program)
    np.testing.assert_array_equal(program.memory.data, expected)
    assert _plans(program) == (planned + [True, True] if chained else planned if all(planned) else [True])


@pytest.mark.parametrize("seed", range(20))
def test_add_blocks_written_by_an_earlier_part_are_seen(seed):
    """A part's add blocks are read when it is planned, so a part after STOREs that write one is not planned: which
    STORE rows meet which blocks, against the bytes each row writes."""
    rng = np.random.default_rng(seed)
    config = TINY
    stores = int(rng.integers(1, 6))
    columns = {"opcode": np.full(stores, Opcode.STORE), "dram_addr": rng.integers(0, 300, stores),
               "count": rng.integers(1, 6, stores), "dram_stride": rng.choice([0, 4, 8, 16, 40], stores),
               "raw": rng.integers(0, 2, stores)}
    blocks = np.unique(rng.integers(0, 400, 3))
    written = {int(start + row * stride + byte)
               for start, count, stride, raw in zip(columns["dram_addr"], columns["count"], columns["dram_stride"],
                                                    columns["raw"])
               for row in range(count) for byte in range(4 * config.cols if raw else config.cols)}
    meets = any(int(block) + byte in written for block in blocks for byte in range(ADD_BLOCK_BYTES))
    assert execution_plan._stores_write(config, columns, blocks) == meets


def test_the_largest_products_onto_accumulators_never_written_keep_zero():
    """A reset machine's accumulators are zero: keeping the larger of them and a product keeps zero where the
    product is negative (which a plan of the products alone would not)."""
    parts = [_loads() + [Compute(0, 8, 0, preload=True, accumulate=True, maximum=True, act_zero_point=200),
                         Store(0, 8, 1200, 16, raw=True)]]
    program = _case(TINY, parts)
    expected = program.memory.data.copy()
    naive_run(TINY, expected, program.instructions())
    ReferenceExecutor(TINY).run(program)
    np.testing.assert_array_equal(program.memory.data, expected)
    assert (expected[1200:1328].view("<i4") == 0).any()
