"""cocotb bench of :class:`mvu.hdl.sdram_controller.SdramController` against a behavioural SDRAM chip.

The chip (:mod:`mvu.sim.benches.sdram_model`) checks every timing rule and the initialisation and stores
the data; the bench is the host and keeps a dictionary of what memory must hold (a word per address,
unwritten words as the chip's initial contents). A read's expected beats are taken from that dictionary
when the controller accepts the read: the controller finishes each job before it takes the next, so the
read sees every write accepted before it and none after. The ULX3S's setting: 8-byte beats (bursts of 4),
50 MHz, CAS latency 2, the power-up wait cut to 2 us.

Measured (``pytest tests/test_benches.py -k sdram -s``, 50 MHz, 8-byte beats, refresh included):

- sequential reads (requests of 16 beats, back to back): 1.963 bytes/cycle of the bus's 2; the first beat
  9.2 cycles after a request is taken (9 on a row hit: a cycle to issue, the command register, CAS latency
  2, the input register, 3 more words of the beat, the response register);
- random single-beat reads anywhere in the 32 MB: 1.318 bytes/cycle, first beat 11.1 cycles after the
  request is taken (96 % row misses: PRECHARGE and ACTIVE cost a cycle each at 50 MHz, plus tRAS/tRC waits);

the exact numbers are logged by :func:`bandwidth`.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from mvu.hdl.sdram_controller import SdramController, SdramGeometry, SdramTiming
from mvu.sim.benches.runner import pack_fields, start
from mvu.sim.benches.sdram_model import SdramModel

BEAT = 8
CLOCK_HZ = 50e6
TIMING = SdramTiming(t_init=2_000.0, cas_latency=2)
GEOMETRY = SdramGeometry()
WORDS = BEAT // 2
ROW_BYTES = 2 << GEOMETRY.col_bits
PIN_NAMES = ("cke", "cs", "ras", "cas", "we", "ba", "a", "dq_o", "dq_oe", "dqm")


def component() -> SdramController:
    return SdramController(BEAT, CLOCK_HZ, timing=TIMING, geometry=GEOMETRY)


@dataclass
class Read:
    addr: int
    beats: int
    id: int


@dataclass
class Write:
    addr: int
    data: int
    mask: int


@dataclass
class Stats:
    """What a run measured: cycles from each read's acceptance to its first beat, beats, and when."""

    latencies: list[int] = field(default_factory=list)
    first_accept: int | None = None
    last_beat: int = 0
    read_bytes: int = 0
    writes: int = 0
    busy_refreshes: int = 0


class Host:
    """Drives the controller's host side from queues of reads and writes and checks every beat."""

    def __init__(self, dut, seed: int, present_chance: float = 0.7):
        self.dut, self.rng = dut, random.Random(seed)
        self.chip = SdramModel(TIMING, GEOMETRY, 1e9 / CLOCK_HZ, seed=seed)
        self.present_chance = present_chance
        self.reads: deque[Read] = deque()
        self.writes: deque[Write] = deque()
        self.expected: deque[tuple[int, int]] = deque()  # (id, beat)
        self.answering: deque[list[int]] = deque()  # [acceptance cycle, beats, beats left] of each read
        self.written: dict[int, int] = {}  # word address -> word
        self.shown: dict[int, object] = {}  # queue -> the request shown from it
        self.cycle = 0
        self.stats = Stats()
        self.refreshes_seen = 0
        layouts = component()
        self.req_layout = layouts.req.p.shape()
        self.write_layout = layouts.write.p.shape()
        self.resp_layout = layouts.resp.p.shape()

    def memory_beat(self, addr: int) -> int:
        first = (addr % GEOMETRY.capacity) // 2
        return sum(self.written.get(first + i, self.chip.initial_word(first + i)) << (16 * i) for i in range(WORDS))

    def write_memory(self, write: Write) -> None:
        first = (write.addr % GEOMETRY.capacity) // 2
        for i in range(WORDS):
            old = self.written.get(first + i, self.chip.initial_word(first + i))
            new = (write.data >> (16 * i)) & 0xFFFF
            keep = (0 if write.mask >> (2 * i) & 1 else 0xFF) | (0 if write.mask >> (2 * i + 1) & 1 else 0xFF00)
            self.written[first + i] = (old & keep) | (new & ~keep & 0xFFFF)

    @property
    def busy(self) -> bool:
        return bool(self.reads or self.writes or self.expected)

    async def run(self, max_cycles: int) -> Stats:
        """Run until every queued request is answered; fails after ``max_cycles``."""
        dut = self.dut
        for _ in range(max_cycles):
            await RisingEdge(dut.clk)
            self.cycle += 1
            driven = self.chip.output(self.cycle)
            dut.sdram_dq_i.value = self.rng.getrandbits(16) if driven is None else driven
            self._present(dut.req_valid, dut.req_payload, self.reads, self.req_layout,
                          lambda r: dict(addr=r.addr, len=r.beats, id=r.id))
            self._present(dut.write_valid, dut.write_payload, self.writes, self.write_layout,
                          lambda w: dict(addr=w.addr, data=w.data, mask=w.mask))
            await ReadOnly()
            self._sample()
            if not self.busy:
                return self.stats
        raise AssertionError(f"requests left after {max_cycles} cycles: {len(self.reads)} reads, "
                             f"{len(self.writes)} writes, {len(self.expected)} beats")

    def _present(self, valid, payload, queue: deque, layout, fields) -> None:
        """Show the head of ``queue`` now and then; once shown, it stays until taken (then it is popped)."""
        if int(valid.value) and queue and queue[0] is self.shown.get(id(queue)):
            return
        show = bool(queue) and self.rng.random() < self.present_chance
        valid.value = show
        if show:
            payload.value = pack_fields(layout, **fields(queue[0]))
            self.shown[id(queue)] = queue[0]

    def _sample(self) -> None:
        dut, stats = self.dut, self.stats
        pins = {name: int(getattr(dut, f"sdram_{'clk_en' if name == 'cke' else name}").value) for name in PIN_NAMES}
        self.chip.clock(self.cycle, **pins)
        if len(self.chip.counts.refresh_cycles) > self.refreshes_seen:
            self.refreshes_seen += 1
            stats.busy_refreshes += self.busy
        if int(dut.req_valid.value) and int(dut.req_ready.value):
            read = self.reads.popleft()
            stats.first_accept = self.cycle if stats.first_accept is None else stats.first_accept
            if read.beats:
                self.answering.append([self.cycle, read.beats, read.beats])
            for k in range(read.beats):
                self.expected.append((read.id, self.memory_beat(read.addr + k * BEAT)))
        if int(dut.write_valid.value) and int(dut.write_ready.value):
            self.write_memory(self.writes.popleft())
            stats.writes += 1
        if int(dut.resp_valid.value):
            assert self.expected, f"cycle {self.cycle}: a beat nobody asked for"
            payload = int(dut.resp_payload.value)
            got = (payload & ((1 << 8 * BEAT) - 1), payload >> 8 * BEAT)
            want_id, want = self.expected.popleft()
            assert got == (want, want_id), (f"cycle {self.cycle}: beat {got[0]:#x} id {got[1]}, "
                                           f"expected {want:#x} id {want_id}")
            head = self.answering[0]
            if head[2] == head[1]:
                stats.latencies.append(self.cycle - head[0])
            head[2] -= 1
            if head[2] == 0:
                self.answering.popleft()
            stats.read_bytes += BEAT
            stats.last_beat = self.cycle


async def ready_host(dut, seed: int, present_chance: float = 0.7) -> Host:
    """A host after reset, once the controller has initialised the chip."""
    await start(dut, req_valid=0, write_valid=0, sdram_dq_i=0)
    host = Host(dut, seed, present_chance)
    for _ in range(TIMING.cycles(CLOCK_HZ).init + 200):
        await RisingEdge(dut.clk)
        host.cycle += 1
        await ReadOnly()
        host._sample()
        if int(dut.ready.value):
            return host
    raise AssertionError("the controller never finished initialising")


def random_address(rng: random.Random, hot: list[int]) -> int:
    """Beat-aligned: mostly near a few hot rows (2 of them in one bank, so rows conflict), some anywhere."""
    if rng.random() < 0.2:
        return rng.randrange(0, GEOMETRY.capacity, BEAT)
    return rng.choice(hot) + rng.randrange(0, ROW_BYTES, BEAT)


@cocotb.test()
async def random_traffic(dut):
    """Random bursts of writes (some bytes masked) and reads near them, across rows and banks."""
    host = await ready_host(dut, seed=1)
    rng = host.rng
    bank_stride = ROW_BYTES  # word = row : bank : column
    row_stride = bank_stride << GEOMETRY.bank_bits
    hot = [bank * bank_stride + row * row_stride for bank, row in ((0, 5), (0, 6), (1, 5), (2, 900), (3, 8191))]
    for _ in range(300):
        if rng.random() < 0.5:
            addr = random_address(rng, hot)
            for k in range(rng.randint(1, 8)):
                mask = (1 << BEAT) - 1 if rng.random() < 0.7 else rng.getrandbits(BEAT)
                host.writes.append(Write((addr + k * BEAT) % GEOMETRY.capacity, rng.getrandbits(8 * BEAT), mask))
        else:
            host.reads.append(Read(random_address(rng, hot), rng.choice([0, 1, 1, 2, 3, 8, 16, 33]),
                                   rng.getrandbits(3)))
    stats = await host.run(100_000)
    commands = host.chip.counts.commands
    dut._log.info(f"random traffic: {host.cycle} cycles, commands {commands}")
    assert stats.writes > 300 and stats.read_bytes > 2000, stats
    assert commands["PRECHARGE"] > 50, "rows must conflict"


@cocotb.test()
async def refresh_under_load(dut):
    """Back-to-back reads and writes for many refresh intervals: refreshes interrupt them, nothing is lost."""
    host = await ready_host(dut, seed=2, present_chance=1.0)
    rng = host.rng
    for k in range(400):
        host.writes.append(Write(k * BEAT, rng.getrandbits(8 * BEAT), (1 << BEAT) - 1))
        host.reads.append(Read(rng.randrange(0, 400) * BEAT, 24, k & 7))
    stats = await host.run(100_000)
    refreshes = len(host.chip.counts.refresh_cycles) - TIMING.init_refreshes
    dut._log.info(f"refresh under load: {host.cycle} cycles, {refreshes} refreshes, {stats.busy_refreshes} busy")
    assert host.cycle > 5 * TIMING.cycles(CLOCK_HZ).refresh and stats.busy_refreshes >= 5, stats


async def bandwidth(dut, name: str, seed: int, reads: list[Read]) -> tuple[Stats, float, float]:
    """Run ``reads`` back to back; log and return the bytes per cycle and the mean first-beat latency."""
    host = await ready_host(dut, seed=seed, present_chance=1.0)
    host.reads.extend(reads)
    stats = await host.run(200_000)
    span = stats.last_beat - stats.first_accept + 1
    rate, latency = stats.read_bytes / span, sum(stats.latencies) / len(stats.latencies)
    dut._log.info(f"{name}: {stats.read_bytes} bytes in {span} cycles = {rate:.3f} bytes/cycle; first beat "
                  f"{latency:.1f} cycles (min {min(stats.latencies)}, max {max(stats.latencies)}) after a request "
                  f"is taken; {host.chip.counts.commands}")
    return stats, rate, latency


@cocotb.test()
async def sequential_reads(dut):
    """Requests of 16 beats at consecutive addresses: near the bus's 2 bytes a cycle."""
    _, rate, latency = await bandwidth(dut, "sequential reads", 3, [Read(k * 16 * BEAT, 16, 0) for k in range(256)])
    assert rate > 1.8 and latency < 10


@cocotb.test()
async def random_reads(dut):
    """Single beats anywhere in the chip: mostly row misses."""
    rng = random.Random(4)
    reads = [Read(rng.randrange(0, GEOMETRY.capacity, BEAT), 1, 0) for _ in range(1000)]
    _, rate, latency = await bandwidth(dut, "random reads", 4, reads)
    assert rate > 0.3
