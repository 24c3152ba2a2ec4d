"""cocotb bench of :class:`mvu.hdl.load_unit.LoadUnit`: random LOADs against a random-latency memory.

Every buffer write, memory request and token pulse is checked against what
the instructions ask for, with a LOAD issuing while the one before it drains.
Activation entries take two memory beats and weight entries four, so beats are gathered in both widths. Window LOADs
(implicit im2col, padding on every side, strides and dilations of 1 to 3) are
checked against the contract's definition (:mod:`mvu.hdl.contract.window`):
the entries inside the input are requested in order, each entry is written
once (those outside the input as ``fill``, in free cycles of the buffer port,
so in any order with the others). Half the activation windows start their
entries at any byte: each is requested from its beat, one beat longer when it
does not start one.
"""

import random
from dataclasses import dataclass

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.isa import Buffer, Load
from mvu.hdl.contract.window import window_rows
from mvu.hdl.interfaces import INSTRUCTION_BITS
from mvu.hdl.load_unit import LoadUnit
from mvu.sim.benches.runner import ReadMemory, start

CONFIG = HardwareConfig(rows=8, cols=16, act_depth=64, wgt_depth=32, acc_depth=64, mem_bytes=4)
MEMORY_BYTES = 4096


def component() -> LoadUnit:
    return LoadUnit(CONFIG)


@dataclass
class Expected:
    """One LOAD and what it must produce: requests, writes (buffer, address, data)."""

    load: Load
    requests: list[tuple[int, int]]
    writes: list[tuple[Buffer, int, int]]


def random_window(rng: random.Random, memory: bytes, buffer: Buffer, entry: int, depth: int, **tokens) -> Expected:
    """A random legal window LOAD: a small input tensor somewhere in memory, windows that leave it on every side."""
    P = CONFIG.mem_bytes
    unit = 1 if buffer == Buffer.ACT and rng.random() < 0.5 else P  # bytes, or beats
    in_h, in_w = rng.randint(1, 7), rng.randint(1, 7)
    dram_stride = unit * rng.choice([entry // unit, entry // unit, rng.randint(1, 3 * entry // unit)])
    row_stride = in_w * dram_stride + unit * rng.choice([0, 0, rng.randint(1, 4)])
    extent = (in_h - 1) * row_stride + (in_w - 1) * dram_stride + entry + P  # the last entry's last beat
    stride_y, stride_x, dilation = rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 2)
    out_w = rng.randint(1, 6)
    fields = dict(row_stride=row_stride, in_h=in_h, in_w=in_w, out_w=out_w, start_y=rng.randint(0, 3),
                  start_x=rng.randint(0, out_w - 1), stride_y=stride_y, stride_x=stride_x,
                  offset_y=dilation * rng.randint(0, 2) - rng.randint(0, 3),
                  offset_x=dilation * rng.randint(0, 2) - rng.randint(0, 3), fill=rng.randint(0, 255))
    entries = rng.randint(1, min(24, depth))
    dram = unit * rng.randint(0, (MEMORY_BYTES - extent) // unit)
    load = Load(buffer=buffer, sram_addr=rng.randint(0, depth - entries), count=entries, dram_addr=dram,
                dram_stride=dram_stride, window=True, **fields, **tokens)
    addresses, inside = window_rows(entries, dram, dram_stride, *list(fields.values())[:-1])
    fill = int.from_bytes(bytes([load.fill]) * entry, "little")
    return Expected(load, [(int(a) // P * P, entry // P + (a % P != 0)) for a, i in zip(addresses, inside) if i],
                    [(buffer, load.sram_addr + n, int.from_bytes(memory[a:a + entry], "little") if i else fill)
                     for n, (a, i) in enumerate(zip(addresses.tolist(), inside))])


def random_loads(rng: random.Random, memory: bytes, count: int, windows: float = 0.0) -> list[Expected]:
    """``count`` random legal LOADs (beat-aligned, in range) with random token flags; ``windows`` of them (a
    fraction) window LOADs."""
    P = CONFIG.mem_bytes
    loads = []
    for _ in range(count):
        buffer = rng.choice(list(Buffer))
        entry, depth = (CONFIG.rows, CONFIG.act_depth) if buffer == Buffer.ACT else (CONFIG.cols, CONFIG.wgt_depth)
        if rng.random() < windows:
            loads.append(random_window(rng, memory, buffer, entry, depth, wait_compute=rng.random() < 0.4,
                                       signal_compute=rng.random() < 0.4))
            continue
        entries = rng.randint(1, 8)
        stride = P * rng.choice([0, 1, entry // P, entry // P, rng.randint(1, 40)])
        dram = P * rng.randint(0, (MEMORY_BYTES - (entries - 1) * stride - entry) // P)
        load = Load(buffer=buffer, sram_addr=rng.randint(0, depth - entries), count=entries, dram_addr=dram,
                    dram_stride=stride, wait_compute=rng.random() < 0.4, signal_compute=rng.random() < 0.4)
        sources = [dram + i * stride for i in range(entries)]
        loads.append(Expected(load, [(a, entry // P) for a in sources],
                              [(buffer, load.sram_addr + i, int.from_bytes(memory[a:a + entry], "little"))
                               for i, a in enumerate(sources)]))
    return loads


def _clash(a: Load, b: Load) -> bool:
    """Whether two LOADs write entries of the same buffer."""
    return a.buffer == b.buffer and a.sram_addr < b.sram_addr + b.count and b.sram_addr < a.sram_addr + a.count


async def run_loads(dut, rng: random.Random, count: int, windows: float = 0.0, **memory_timing) -> None:
    """Issue ``count`` random LOADs and check the unit cycle by cycle, then in total.

    Per cycle: ``idle`` low exactly while a LOAD is open (accepted, an entry still to write); ``instr.ready`` only
    while at most one is open, and none that writes entries the offered one would; no read request while the
    newest LOAD waits for its ``wait_compute`` token; ``next_tokens.pop`` only when ``next_tokens.avail``, once per
    such LOAD; ``stall_token`` while it waits without a token; every write an entry of an open LOAD that took its
    token; ``next_tokens.push`` exactly in the cycle the oldest open ``signal_compute`` LOAD has all its entries
    written (in the cycle of its last write, or the one after the LOAD before it retired).
    In total: the requests are exactly the expected ones, in order, and each LOAD's buffer writes too (a window
    LOAD's in any order).
    """
    memory = rng.randbytes(MEMORY_BYTES)
    port = ReadMemory(dut, memory, CONFIG.mem_bytes, rng, **memory_timing)
    loads = random_loads(rng, memory, count, windows)
    queue = list(loads)
    opened: list[list] = []  # [expected, writes made] of the open LOADs, oldest first
    waiting, overlapped = False, 0  # the newest LOAD waits for its token; cycles two LOADs were open
    offer_at, token = 0, 0
    made = {id(e): [] for e in loads}
    await start(dut, instr_valid=0, mem_resp_valid=0)
    for cycle in range(100_000):
        await RisingEdge(dut.clk)
        port.drive(cycle)
        offer = bool(queue) and cycle >= offer_at
        dut.instr_valid.value = offer
        dut.instr_payload.value = (int.from_bytes(queue[0].load.encode(), "little") if offer
                                   else rng.getrandbits(INSTRUCTION_BITS))
        token ^= rng.random() < 0.15  # the token comes and goes in runs
        dut.next_tokens_avail.value = token
        await ReadOnly()

        port.sample(cycle)
        assert int(dut.idle.value) == (not opened), f"cycle {cycle}: idle"
        ready = int(dut.instr_ready.value)
        if ready and offer:
            assert len(opened) <= 1 and not any(_clash(queue[0].load, e.load) for e, _ in opened), \
                f"cycle {cycle}: ready for a LOAD that would write the open one's entries"
        assert int(dut.stall_token.value) == (waiting and not token), f"cycle {cycle}: stall_token"
        assert not (waiting and int(dut.mem_req_valid.value)), f"cycle {cycle}: read requested before the token"
        if int(dut.next_tokens_pop.value):
            assert waiting and token, f"cycle {cycle}: token_pop without a waiting LOAD or a token"
            waiting = False
        act, wgt = int(dut.act_write_en.value), int(dut.wgt_write_en.value)
        assert not (act and wgt), f"cycle {cycle}: both buffers written"
        if act or wgt:
            prefix, buffer = ("act", Buffer.ACT) if act else ("wgt", Buffer.WGT)
            address = int(getattr(dut, f"{prefix}_write_addr").value)
            owner = [entry for entry in opened if entry[0].load.buffer == buffer and
                     entry[0].load.sram_addr <= address < entry[0].load.sram_addr + entry[0].load.count]
            assert len(owner) == 1, f"cycle {cycle}: a write to {buffer.name} {address} outside the open LOADs"
            assert not (waiting and owner[0] is opened[-1]), f"cycle {cycle}: a write before the LOAD's token"
            owner[0][1].append((buffer, address, int(getattr(dut, f"{prefix}_write_data").value)))
        overlapped += len(opened) == 2
        retired = bool(opened) and len(opened[0][1]) == opened[0][0].load.count
        push = retired and opened[0][0].load.signal_compute
        assert int(dut.next_tokens_push.value) == push, f"cycle {cycle}: next_tokens.push should be {int(push)}"
        if retired:
            expected, writes = opened.pop(0)
            made[id(expected)] = writes
        if offer and ready:
            opened.append([queue.pop(0), []])
            waiting = opened[-1][0].load.wait_compute
            offer_at = cycle + 1 + rng.choice([0, 0, rng.randint(1, 12)])
        if not (queue or opened or port.pending):
            break
    else:
        raise AssertionError("the LOADs did not finish")
    assert port.requests == [r for e in loads for r in e.requests], "read requests differ"
    for index, e in enumerate(loads):
        writes = made[id(e)]
        expected = sorted(e.writes, key=writes.index) if e.load.window and sorted(writes) == sorted(e.writes) \
            else e.writes
        assert writes == expected, f"LOAD {index}'s buffer writes differ"
    return overlapped


@cocotb.test()
async def random_timing(dut):
    """Random LOADs; memory with backpressure, random latency and gaps between beats."""
    await run_loads(dut, random.Random(5), 80)


@cocotb.test()
async def streaming(dut):
    """Random LOADs; a memory that always accepts and answers a beat every cycle after one cycle."""
    await run_loads(dut, random.Random(6), 80, ready_chance=1.0, latency=(1, 1), gap_chance=0.0)


@cocotb.test()
async def overlapped_under_latency(dut):
    """Back-to-back LOADs on a slow memory (latency 20 to 40, no gaps): the next one issues while the last one's
    entries arrive, for a good share of the cycles."""
    overlapped = await run_loads(dut, random.Random(9), 80, windows=0.5, ready_chance=1.0, latency=(20, 40),
                                 gap_chance=0.0)
    assert overlapped > 300, f"only {overlapped} cycles with two LOADs open"


@cocotb.test()
async def windows_random_timing(dut):
    """Window LOADs among plain ones; memory with backpressure, random latency and gaps between beats."""
    await run_loads(dut, random.Random(7), 120, windows=0.6)


@cocotb.test()
async def windows_streaming(dut):
    """Window LOADs among plain ones; a memory that answers a beat every cycle after one cycle, so that entries
    outside the input meet arriving entries at the buffer port."""
    await run_loads(dut, random.Random(8), 120, windows=0.6, ready_chance=1.0, latency=(1, 1), gap_chance=0.0)
