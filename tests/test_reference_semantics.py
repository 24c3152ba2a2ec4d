"""The reference executor against the ISA's semantics spelled out one instruction at a time, on random programs
with overlapping ranges, reused weight banks, mixed zero points and odd strides."""

import random

import numpy as np
import pytest
from conftest import NARROW, TINY

from mvu.hdl.contract.isa import Buffer, Compute, Finish, Load, ProgramError, Store
from mvu.hdl.contract.program import MemoryImage, Program
from mvu.hdl.contract.requantization import requantization_block, requantize
from mvu.host.executors.reference import ReferenceExecutor


def naive_run(config, memory: np.ndarray, instructions) -> None:
    """Each instruction in order, each accumulator row wrapped to int32 after every addition (or kept the larger,
    ``maximum``)."""
    act = np.zeros((config.act_depth, config.rows), np.uint8)
    wgt = np.zeros((config.wgt_depth, config.cols), np.uint8)
    acc = np.zeros((config.acc_depth, config.cols), np.int64)
    bank = np.zeros((config.rows, config.cols), np.int64)
    params = np.zeros((3, config.cols), np.int64)
    table = np.zeros(256, np.uint8)
    for ins in instructions:
        if isinstance(ins, Load):
            target = act if ins.buffer == Buffer.ACT else wgt
            for i in range(ins.count):
                start = ins.dram_addr + i * ins.dram_stride
                target[ins.sram_addr + i] = memory[start:start + target.shape[1]]
        elif isinstance(ins, Compute):
            if ins.preload:
                bank = wgt[ins.wgt_addr:ins.wgt_addr + config.rows].view(np.int8).astype(np.int64)
            for i in range(ins.count):
                row = act[ins.act_addr + i]
                x = (row.view(np.int8) if ins.act_signed else row).astype(np.int64) - ins.act_zero_point
                product = (x @ bank + 2 ** 31) % 2 ** 32 - 2 ** 31
                if ins.accumulate and ins.maximum:
                    acc[ins.acc_addr + i] = np.maximum(acc[ins.acc_addr + i], product)
                else:
                    total = product + (acc[ins.acc_addr + i] if ins.accumulate else 0)
                    acc[ins.acc_addr + i] = (total + 2 ** 31) % 2 ** 32 - 2 ** 31
        elif isinstance(ins, Store):
            if ins.load_params:
                params = memory[ins.param_addr:ins.param_addr + config.param_block_bytes].view(np.int32)
                params = params.reshape(3, config.cols).astype(np.int64)
            if ins.load_table:
                table = memory[ins.table_addr:ins.table_addr + 256].copy()
            for i in range(ins.count):
                row = acc[ins.acc_addr + i:ins.acc_addr + i + 1]
                if ins.raw:
                    out = row.astype("<i4").view(np.uint8).reshape(-1)
                else:
                    out = requantize(row, params[0], params[1], params[2] & 63, ins.out_zero_point,
                                     ins.clamp_min, ins.clamp_max, float32_scale=ins.float32_scale).reshape(-1)
                    out = table[out] if ins.lookup else out
                start = ins.dram_addr + i * ins.dram_stride
                memory[start:start + out.size] = out


def random_program(config, rng: random.Random, length: int) -> Program:
    memory = MemoryImage()
    memory.allocate(8192)
    data = np.random.default_rng(rng.randrange(1 << 30))
    memory.data[:] = data.integers(0, 256, memory.data.size)
    blocks = 4
    for b in range(blocks):
        memory.data[4096 + b * config.param_block_bytes:][:config.param_block_bytes] = requantization_block(
            config, data.integers(-2 ** 20, 2 ** 20, config.cols), data.integers(0, 2 ** 31, config.cols),
            data.integers(0, 64, config.cols))
    tables = [6144, 6400]  # random bytes, like the rest of memory
    beat = config.mem_bytes
    instructions, params, table = [], False, False
    for _ in range(length):
        kind = rng.choice("LLCCCCCCS")
        if kind == "L":
            buffer = rng.choice([Buffer.ACT, Buffer.WGT])
            depth = config.act_depth if buffer == Buffer.ACT else config.wgt_depth
            count = rng.randint(1, 20)
            instructions.append(Load(buffer, rng.randrange(depth - count + 1), count, beat * rng.randrange(750),
                                     beat * rng.choice([0, 1, 2, 3, 4, 8, 9])))
        elif kind == "C":
            count = rng.randint(1, 12)
            signed = rng.random() < 0.3
            acc = min(rng.choice([0, 4, 8, rng.randrange(config.acc_depth)]), config.acc_depth - count)
            instructions.append(Compute(
                act_addr=rng.randrange(config.act_depth - count + 1), count=count, acc_addr=acc,
                wgt_addr=rng.randrange(config.wgt_depth - config.rows + 1), preload=rng.random() < 0.6,
                accumulate=rng.random() < 0.6, act_signed=signed, maximum=rng.random() < 0.2,
                act_zero_point=rng.randrange(-128, 128) if signed else rng.randrange(256)))
        else:
            count = rng.randint(1, 10)
            load_params = not params or rng.random() < 0.3
            params |= load_params
            raw, load_table = rng.random() < 0.3, rng.random() < 0.3
            table |= load_table
            low, high = (rng.randrange(-128, 0), rng.randrange(128)) if rng.random() < 0.7 else (
                rng.randrange(100), rng.randrange(100, 256))
            instructions.append(Store(
                acc_addr=rng.randrange(config.acc_depth - count + 1), count=count, dram_addr=beat * rng.randrange(750),
                dram_stride=beat * rng.choice([0, 1, 4, 8, 16, 32]),
                param_addr=4096 + config.param_block_bytes * rng.randrange(blocks), load_params=load_params,
                raw=raw, float32_scale=rng.random() < 0.3, out_zero_point=rng.randrange(-50, 50),
                clamp_min=low, clamp_max=high, table_addr=rng.choice(tables), load_table=load_table,
                lookup=table and not raw and rng.random() < 0.6))
    instructions.append(Finish())
    return Program.place(memory, instructions)


def run_as_naive(config, program: Program):
    """Run ``program`` on the reference executor and check that memory ends as :func:`naive_run` leaves it."""
    expected = program.memory.data.copy()
    naive_run(config, expected, program.instructions())
    run = ReferenceExecutor(config).run(program)
    np.testing.assert_array_equal(program.memory.data, expected)
    return run


@pytest.mark.parametrize("seed", range(40))
def test_random_programs_follow_the_sequential_semantics(seed):
    rng = random.Random(seed)
    config = rng.choice([TINY, NARROW])
    program = random_program(config, rng, rng.randint(1, 150))
    run = run_as_naive(config, program)
    instructions = program.instructions()
    assert run.counters["compute"] == sum(isinstance(ins, Compute) for ins in instructions)
    assert run.counters["macs"] == sum(ins.count for ins in instructions if isinstance(ins, Compute)) \
        * config.rows * config.cols


def test_a_store_may_write_the_parameters_of_the_next():
    config = TINY
    memory = MemoryImage()
    memory.allocate(4096)
    memory.data[:1024] = np.random.default_rng(5).integers(0, 256, 1024)
    memory.data[2048:2048 + config.param_block_bytes] = requantization_block(config, [1] * 4, [1 << 30] * 4, [3] * 4)
    block = 2048 + config.param_block_bytes
    instructions = [Load(Buffer.ACT, 0, 8, 0, 4), Load(Buffer.WGT, 0, 4, 64, 4),
                    Compute(act_addr=0, count=8, acc_addr=0),
                    Store(acc_addr=0, count=3, dram_addr=block, dram_stride=16, raw=True),
                    Store(acc_addr=0, count=8, dram_addr=1024, dram_stride=4, param_addr=block, load_params=True),
                    Store(acc_addr=0, count=8, dram_addr=1056, dram_stride=4, param_addr=2048, load_params=True),
                    Finish()]
    program = Program.place(memory, instructions)
    expected = program.memory.data.copy()
    naive_run(config, expected, instructions)
    ReferenceExecutor(config).run(program)
    np.testing.assert_array_equal(program.memory.data, expected)


# Execution plans -----------------------------------------------------------------------------------------------

def _plan(program):
    return program.notes[ReferenceExecutor._NOTE].plan


def random_memory(config, rng: random.Random) -> tuple[MemoryImage, int, int]:
    """4 KiB of random bytes, then four random parameter blocks and two random tables: the image and the blocks'
    and the tables' addresses."""
    memory = MemoryImage()
    memory.allocate(4096)
    data = np.random.default_rng(rng.randrange(1 << 30))
    memory.data[:] = data.integers(0, 256, memory.data.size)
    params = memory.allocate(4 * config.param_block_bytes)
    for b in range(4):
        memory.data[params + b * config.param_block_bytes:][:config.param_block_bytes] = requantization_block(
            config, data.integers(-2 ** 20, 2 ** 20, config.cols), data.integers(0, 2 ** 31, config.cols),
            data.integers(0, 64, config.cols))
    return memory, params, memory.place(data.integers(0, 256, 512, dtype=np.uint8))


def planned_program(config, rng: random.Random, length: int) -> Program:
    """A random program of the kind a plan expresses: loads of whole aligned chunks from an input region,
    products on aligned accumulator ranges, stores to fresh output rows; otherwise as mixed as the
    random programs above (zero points, signedness, accumulation, reused weight banks, odd strides)."""
    memory, params, tables = random_memory(config, rng)
    beat, R, chunk, span = config.mem_bytes, config.rows, 8, 8
    act_chunks, wgt_tiles = config.act_depth // chunk, config.wgt_depth // R
    instructions = [Load(Buffer.ACT, c * chunk, chunk, beat * rng.randrange(400), beat * rng.choice([0, 1, 2, 8, 9]))
                    for c in range(act_chunks)]
    instructions += [Load(Buffer.WGT, t * R, R, beat * rng.randrange(400), beat * rng.choice([1, 4, 16]))
                     for t in range(wgt_tiles)]
    instructions.append(Compute(act_addr=0, count=1, acc_addr=0, wgt_addr=0, preload=True))
    computed, loaded_params, loaded_table = {0: 1}, False, False
    for _ in range(length):
        kind = rng.choice("LCCCCS")
        if kind == "L":
            if rng.random() < 0.5:  # a chunk in one LOAD, or in two that continue each other
                c, address, stride = rng.randrange(act_chunks), beat * rng.randrange(400), beat * rng.choice([1, 2, 9])
                half = rng.choice([chunk, rng.randint(1, chunk - 1)])
                instructions.append(Load(Buffer.ACT, c * chunk, half, address, stride))
                if half < chunk:
                    instructions.append(Load(Buffer.ACT, c * chunk + half, chunk - half, address + half * stride,
                                             stride))
            else:
                t = rng.randrange(wgt_tiles)
                instructions.append(Load(Buffer.WGT, t * R, R, beat * rng.randrange(400), beat * rng.choice([1, 4])))
        elif kind == "C":
            start = rng.randrange(config.acc_depth // span) * span
            count = computed.get(start) or rng.randint(1, span)
            within = rng.randint(0, chunk - count)
            signed = rng.random() < 0.3
            accumulate = start in computed and rng.random() < 0.7
            computed[start] = count
            instructions.append(Compute(
                act_addr=rng.randrange(act_chunks) * chunk + within, count=count, acc_addr=start,
                wgt_addr=rng.randrange(wgt_tiles) * R, preload=rng.random() < 0.6, accumulate=accumulate,
                act_signed=signed, act_zero_point=rng.randrange(-128, 128) if signed else rng.randrange(256)))
        elif computed:
            start = rng.choice(sorted(computed))
            raw = rng.random() < 0.3
            stride = beat * rng.choice([1, 4, 16]) + (4 * config.cols if raw else config.cols)
            target = memory.allocate(computed[start] * stride)
            load_params = not loaded_params or rng.random() < 0.5
            loaded_params = True
            load_table = rng.random() < 0.3
            loaded_table |= load_table
            instructions.append(Store(
                acc_addr=start, count=computed[start], dram_addr=target, dram_stride=stride,
                param_addr=params + config.param_block_bytes * rng.randrange(4), load_params=load_params,
                raw=raw, float32_scale=rng.random() < 0.3, out_zero_point=rng.randrange(-50, 50), clamp_min=-128,
                clamp_max=127, table_addr=tables + 256 * rng.randrange(2), load_table=load_table,
                lookup=loaded_table and not raw and rng.random() < 0.6))
    instructions.append(Finish())
    return Program.place(memory, instructions)


@pytest.mark.parametrize("seed", range(30))
def test_plans_follow_the_sequential_semantics(seed):
    rng = random.Random(1000 + seed)
    config = rng.choice([TINY, NARROW])
    program = planned_program(config, rng, rng.randint(5, 120))
    expected = program.memory.data.copy()
    naive_run(config, expected, program.instructions())
    ReferenceExecutor(config).run(program)
    assert _plan(program) is not None
    np.testing.assert_array_equal(program.memory.data, expected)


def test_a_program_that_overwrites_what_it_reads_is_interpreted():
    config = TINY
    memory = MemoryImage()
    memory.allocate(1024)
    memory.data[:] = np.random.default_rng(3).integers(0, 256, 1024)
    instructions = [Load(Buffer.ACT, 0, 4, 0, 4), Load(Buffer.WGT, 0, 4, 256, 4),
                    Compute(act_addr=0, count=4, acc_addr=0, preload=True),
                    Store(acc_addr=0, count=4, dram_addr=0, dram_stride=16, raw=True),  # over the next load's rows
                    Load(Buffer.ACT, 0, 4, 0, 16), Compute(act_addr=0, count=4, acc_addr=4),
                    Store(acc_addr=4, count=4, dram_addr=512, dram_stride=16, raw=True), Finish()]
    program = Program.place(memory, instructions)
    expected = program.memory.data.copy()
    naive_run(config, expected, instructions)
    ReferenceExecutor(config).run(program)
    assert _plan(program) is None
    np.testing.assert_array_equal(program.memory.data, expected)


def test_a_changed_program_is_checked_again():
    program = planned_program(TINY, random.Random(7), 40)
    executor = ReferenceExecutor(TINY)
    executor.run(program)
    end = program.address + program.length * 32
    program.memory.data[end - 32:end] = 0  # the FINISH becomes an illegal opcode
    with pytest.raises(ProgramError, match="opcode"):
        executor.run(program)
