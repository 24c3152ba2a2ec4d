"""cocotb bench of :class:`mvu.hdl.store_unit.StoreUnit`: random STOREs against :func:`requantize` in numpy.

The bench holds random accumulators in a model of the accumulator buffer
(read a cycle after the address) and the parameter blocks in a memory with
random latency; the memory takes written beats with random backpressure.
STOREs write requantized bytes (fixed point or float32 scales) or raw int32
rows, with parameters near the byte range so that few results clamp; some
load one of a few random lookup tables after their parameters, and the
requantizing ones that follow a table's load often look their bytes up in it.
Some requantizing STOREs that load parameters also add an addend (a random add
block after the parameter block, addend rows in their own area of memory).
"""

import dataclasses
import random
from dataclasses import dataclass

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import TABLE_BYTES, Store
from mvu.hdl.contract.requantization import requantize
from mvu.hdl.contract.residual_add import ADD_BLOCK_BYTES
from mvu.hdl.interfaces import INSTRUCTION_BITS, write_beat
from mvu.hdl.store_unit import StoreUnit
from mvu.sim.benches.bench_residual_add import random_add
from mvu.sim.benches.runner import ReadMemory, field, pack, start

CONFIG = HardwareConfig(rows=4, cols=8, act_depth=64, wgt_depth=32, acc_depth=64, mem_bytes=4)
C, P = CONFIG.cols, CONFIG.mem_bytes
MEMORY_BYTES = 16384
TABLES = 3  # lookup tables, stored after the first MEMORY_BYTES
ADDENDS = MEMORY_BYTES + TABLES * TABLE_BYTES  # then the addends' area, ADDEND_BYTES long
ADDEND_BYTES = 4096
WRITE = write_beat(P)


def component() -> StoreUnit:
    return StoreUnit(CONFIG)


@dataclass
class Expected:
    """One STORE and what it must produce: its memory reads (parameters, table; address and beats) and its
    written beats (address, data)."""

    store: Store
    reads: list[tuple[int, int]]
    writes: list[tuple[int, int]]


def random_params(rng: np.random.Generator, float32_scale: bool) -> tuple[np.ndarray, ...]:
    """Bias, multiplier and shift per channel that scale accumulators of up to 2**20 to about the byte range."""
    bias = rng.integers(-(1 << 20), 1 << 20, C)
    if float32_scale:
        return bias, rng.integers(1 << 23, 1 << 24, C), rng.integers(36, 41, C)
    return bias, rng.integers(1 << 30, 1 << 31, C), rng.integers(42, 47, C)


def random_stores(rng: np.random.Generator, acc: np.ndarray, count: int) -> tuple[list[Expected], bytes]:
    """``count`` random STOREs with what each must do, and the memory holding their parameter blocks."""
    block, slot = CONFIG.param_block_bytes, CONFIG.param_block_bytes + ADD_BLOCK_BYTES
    memory = bytearray(rng.integers(0, 256, ADDENDS + ADDEND_BYTES, dtype=np.uint8).tobytes())
    free_blocks = list(rng.permutation(MEMORY_BYTES // slot))  # each block (and add block) is read by one STORE
    params, stores, table = (), [], None
    for index in range(count):
        raw, float32_scale = rng.random() < 0.2, rng.random() < 0.4
        table_addr = MEMORY_BYTES + TABLE_BYTES * int(rng.integers(TABLES))
        load_table = rng.random() < 0.25
        if load_table:
            table = np.frombuffer(memory, np.uint8, TABLE_BYTES, table_addr)
        lookup = table is not None and not raw and rng.random() < 0.7
        load_params = index == 0 or rng.random() < 0.5  # the first STORE sets the parameters
        param_addr = slot * int(free_blocks.pop())
        add = load_params and not raw and rng.random() < 0.4
        if load_params:
            params = random_params(rng, float32_scale)
            memory[param_addr:param_addr + block] = np.concatenate(params).astype("<i4").tobytes()
        rows = int(rng.integers(1, 9))
        entry = 4 * C if raw else C
        stride = P * int(rng.choice([entry // P, entry // P, 0, rng.integers(1, 40)]))
        dram = P * int(rng.integers(0, (MEMORY_BYTES - (rows - 1) * stride - entry) // P))
        low, high = [(-128, 127), (0, 255), (-128, 255), (0, 6)][rng.integers(4)]
        addend_addr = ADDENDS + P * int(rng.integers(0, (ADDEND_BYTES - (rows - 1) * stride - C) // P))
        residual = random_add(rng)
        residual = dataclasses.replace(residual, addend_offset=addend_addr - dram)
        if add:
            memory[param_addr + block:param_addr + slot] = residual.block().tobytes()
        store = Store(acc_addr=int(rng.integers(0, CONFIG.acc_depth - rows + 1)), count=rows, dram_addr=dram,
                      dram_stride=stride, param_addr=param_addr, load_params=load_params, raw=raw, add=add,
                      float32_scale=float32_scale, out_zero_point=int(rng.integers(-128, 256)), clamp_min=low,
                      clamp_max=high, table_addr=table_addr, load_table=load_table, lookup=lookup,
                      wait_compute=rng.random() < 0.4, signal_compute=rng.random() < 0.4)
        sums = acc[store.acc_addr:store.acc_addr + rows]
        data = sums.astype("<i4") if raw else requantize(sums, *params, store.out_zero_point, low, high,
                                                           float32_scale=float32_scale)
        addends = [np.frombuffer(memory, np.uint8, C, addend_addr + i * stride) for i in range(rows)]
        data = residual(data, np.array(addends)) if add else data
        data = table[data] if lookup else data
        writes = []
        for i in range(rows):
            row = data[i].tobytes()
            writes += [(dram + i * stride + b, int.from_bytes(row[b:b + P], "little")) for b in range(0, entry, P)]
        reads = ([(param_addr, (slot if add else block) // P)] * load_params
                 + [(table_addr, TABLE_BYTES // P)] * load_table
                 + [(addend_addr + i * stride, C // P) for i in range(rows)] * add)
        stores.append(Expected(store, reads, writes))
    return stores, bytes(memory)


async def run_stores(dut, seed: int, count: int, write_chance: float, **memory_timing) -> None:
    """Issue ``count`` random STOREs and check the unit cycle by cycle, then in total.

    Per cycle: ``idle``/``instr.ready`` exactly while no STORE is in
    progress; no write while a ``wait_compute`` STORE waits for its token,
    which it does once its parameter block and table have arrived (they and
    its addend rows need no accumulator, so they are read ahead of the
    token); ``prev_tokens.pop`` only with ``avail``, once per such STORE;
    ``stall_token`` while it waits without a token;
    ``stall_memory`` while a beat is refused; ``prev_tokens.push`` exactly
    in the cycle after the last beat of a ``signal_compute`` STORE, which
    ends it. In total: the parameter reads and written beats are exactly
    the expected ones.
    """
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    acc = np_rng.integers(-(1 << 20), 1 << 20, (CONFIG.acc_depth, C))
    stores, memory = random_stores(np_rng, acc, count)
    port = ReadMemory(dut, memory, P, rng, **memory_timing)
    queue = list(stores)
    current, waiting, written, finishing, setup = None, False, 0, False, 0
    writes, offer_at, token, read_addr = [], 0, 0, 0
    await start(dut, instr_valid=0, mem_resp_valid=0, write_ready=0)
    for cycle in range(100_000):
        await RisingEdge(dut.clk)
        port.drive(cycle)
        dut.acc_read_data.value = pack(acc[read_addr], 32)
        offer = bool(queue) and cycle >= offer_at
        dut.instr_valid.value = offer
        dut.instr_payload.value = (int.from_bytes(queue[0].store.encode(), "little") if offer
                                   else rng.getrandbits(INSTRUCTION_BITS))
        token ^= rng.random() < 0.15  # the token comes and goes in runs
        dut.prev_tokens_avail.value = token
        ready = rng.random() < write_chance
        dut.write_ready.value = ready
        await ReadOnly()

        port.sample(cycle)
        read_addr = int(dut.acc_read_addr.value)
        busy = current is not None
        assert int(dut.idle.value) == int(dut.instr_ready.value) == (not busy), f"cycle {cycle}: idle"
        set_up = setup == 0
        assert int(dut.stall_token.value) == (waiting and set_up and not token), f"cycle {cycle}: stall_token"
        valid = int(dut.write_valid.value)
        assert int(dut.stall_memory.value) == (valid and not ready), f"cycle {cycle}: stall_memory"
        assert not (waiting and valid), f"cycle {cycle}: a write before the token"
        if busy and not set_up and int(dut.mem_resp_valid.value):
            setup -= 1
        if int(dut.prev_tokens_pop.value):
            assert waiting and set_up and token, f"cycle {cycle}: prev_tokens.pop before the parameters, without " \
                                                 f"a waiting STORE or without a token"
            waiting = False
        push = finishing and current.store.signal_compute
        assert int(dut.prev_tokens_push.value) == push, f"cycle {cycle}: prev_tokens.push should be {int(push)}"
        if finishing:
            current, finishing = None, False
        if valid and ready:
            assert busy, f"cycle {cycle}: a write outside a STORE"
            writes.append(field(int(dut.write_payload.value), WRITE, "addr", "data"))
            written += 1
            finishing = written == len(current.writes)
        if offer and int(dut.instr_ready.value):
            current, written = queue.pop(0), 0
            waiting = current.store.wait_compute
            setup = sum(beats for _, beats in current.reads[:current.store.load_params + current.store.load_table])
            offer_at = cycle + 1 + rng.choice([0, 0, rng.randint(1, 12)])
        if not (queue or current or port.pending):
            break
    else:
        raise AssertionError("the STOREs did not finish")
    assert port.requests == [read for e in stores for read in e.reads], "parameter and table reads differ"
    expected = [w for e in stores for w in e.writes]
    first = next((i for i, (a, b) in enumerate(zip(writes, expected)) if a != b), min(len(writes), len(expected)))
    assert writes == expected, f"writes differ from write {first} on ({len(writes)} made, {len(expected)} expected)"


@cocotb.test()
async def random_timing(dut):
    """Random STOREs; memory with backpressure on writes, random latency and gaps on parameter reads."""
    await run_stores(dut, 21, 80, write_chance=0.7)


@cocotb.test()
async def streaming(dut):
    """Random STOREs; a memory that takes every beat and answers reads at once: rows stream back to back."""
    await run_stores(dut, 22, 80, write_chance=1.0, ready_chance=1.0, latency=(1, 1), gap_chance=0.0)
