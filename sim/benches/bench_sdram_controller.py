"""cocotb bench of :class:`mvu.hdl.sdram_controller.SdramController` against a behavioural SDRAM chip.

Four controllers side by side (:data:`VARIANTS`): the ULX3S's (8-byte beats in bursts of 4, 50 MHz, CAS
latency 2, the chip on the inverted clock: ``read_delay=-1``) and three that cover the other shapes:
2-byte beats (bursts of 1), 6-byte beats (three bursts of 1 per beat; beats cross rows), 32-byte beats (two
bursts of 8 per beat, an extra register on ``dq_i``), each with CAS latency 3 at 100 or 133 MHz; the
power-up wait is cut to 2 us. Each runs against its own chip (:mod:`mvu.sim.benches.sdram_model`), which
checks every timing rule and the initialisation and stores the data; the bench is the host and keeps a
dictionary of what memory must hold (a word per address, unwritten words as the chip's initial contents).
A read's expected beats are taken from that dictionary when the controller accepts the read: the
controller finishes each job before it takes the next, so the read sees every write accepted before it and
none after.

Measured (``pytest tests/test_benches.py -k sdram -s``; bytes per cycle of the bus's 2, refresh
included; latency: cycles from a read request taken to its first beat):

=============================================  =================  =================  ==================
variant                                        sequential reads   random reads       sequential writes
=============================================  =================  =================  ==================
ulx3s: 8-byte beats, 50 MHz, CAS 2, read -1    1.967 B/c, 7.1 c   1.771 B/c, 7.5 c   1.964 B/c
narrow: 2-byte beats, 100 MHz, CAS 3           1.850 B/c, 6.0 c   0.434 B/c, 8.6 c   0.985 B/c
odd: 6-byte beats, 133 MHz, CAS 3              1.919 B/c, 8.2 c   0.891 B/c, 10.7 c  1.473 B/c
wide: 32-byte beats, 100 MHz, CAS 3, read +1   1.971 B/c, 22.1 c  1.868 B/c, 23.1 c  1.974 B/c
=============================================  =================  =================  ==================

Sequential reads are requests of 16 beats at consecutive addresses, random reads single beats anywhere
in the 32 MB (almost all row misses), sequential writes single beats at consecutive addresses. A row hit's
first beat comes ``2 + CAS latency + read_delay + words`` cycles after its request is taken (a cycle to
issue the READ, the command register, CAS latency, the input register, the beat's other words). Beats of
bursts of 1 (2 and 6 bytes) lose a cycle between write beats: a write beat is a job of its own.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import cocotb
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out
from cocotb.triggers import ReadOnly, RisingEdge

from mvu.hdl.sdram_controller import SdramController, SdramGeometry, SdramTiming
from mvu.sim.benches.runner import pack_fields, start
from mvu.sim.benches.sdram_model import SdramModel

GEOMETRY = SdramGeometry()
ROW_BYTES = 2 << GEOMETRY.col_bits
PIN_NAMES = ("clk_en", "cs", "ras", "cas", "we", "ba", "a", "dq_o", "dq_oe", "dqm")


@dataclass(frozen=True)
class Variant:
    """One controller of the bench: its beat, clock, CAS latency and registers on ``dq_i``."""

    beat: int
    clock_hz: float
    cas_latency: int
    read_delay: int = 0

    @property
    def timing(self) -> SdramTiming:
        return SdramTiming(t_init=2_000.0, cas_latency=self.cas_latency)

    def controller(self) -> SdramController:
        return SdramController(self.beat, self.clock_hz, timing=self.timing, geometry=GEOMETRY,
                               read_delay=self.read_delay)


VARIANTS = {
    "ulx3s": Variant(beat=8, clock_hz=50e6, cas_latency=2, read_delay=-1),
    "narrow": Variant(beat=2, clock_hz=100e6, cas_latency=3),
    "odd": Variant(beat=6, clock_hz=133e6, cas_latency=3),
    "wide": Variant(beat=32, clock_hz=100e6, cas_latency=3, read_delay=1),
}


class Controllers(wiring.Component):
    """The controllers of :data:`VARIANTS`, each on ports named after it (``ulx3s_req_valid``, ...)."""

    def __init__(self):
        self.controllers = {name: variant.controller() for name, variant in VARIANTS.items()}
        super().__init__({name: Out(controller.signature) for name, controller in self.controllers.items()})

    def elaborate(self, platform):
        m = Module()
        for name, controller in self.controllers.items():
            m.submodules[name] = controller
            wiring.connect(m, wiring.flipped(getattr(self, name)), controller)
        return m


def component() -> Controllers:
    return Controllers()


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
    """What a run measured: first-beat latencies, bytes read and written, when, and busy refreshes."""

    latencies: list[int] = field(default_factory=list)
    first_accept: int | None = None
    last_beat: int = 0
    last_write: int = 0
    read_bytes: int = 0
    writes: int = 0
    busy_refreshes: int = 0


class Host:
    """Drives controller ``name``'s host side from queues of reads and writes and checks every beat."""

    def __init__(self, dut, name: str, seed: int, present_chance: float = 0.7):
        self.dut, self.name, self.rng = dut, name, random.Random(seed)
        self.variant = variant = VARIANTS[name]
        self.beat, self.words = variant.beat, variant.beat // 2
        self.chip = SdramModel(variant.timing, GEOMETRY, 1e9 / variant.clock_hz, seed=seed)
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
        controller = variant.controller()
        self.req_layout, self.write_layout = controller.req.p.shape(), controller.write.p.shape()

    def pin(self, name: str):
        return getattr(self.dut, f"{self.name}_{name}")

    def _word(self, address: int) -> int:
        return self.written.get(address, self.chip.initial_word(address))

    def memory_beat(self, addr: int) -> int:
        first, words = addr // 2, GEOMETRY.capacity // 2
        return sum(self._word((first + i) % words) << (16 * i) for i in range(self.words))

    def write_memory(self, write: Write) -> None:
        first, words = write.addr // 2, GEOMETRY.capacity // 2
        for i in range(self.words):
            new = (write.data >> (16 * i)) & 0xFFFF
            keep = (0 if write.mask >> (2 * i) & 1 else 0xFF) | (0 if write.mask >> (2 * i + 1) & 1 else 0xFF00)
            address = (first + i) % words
            self.written[address] = (self._word(address) & keep) | (new & ~keep & 0xFFFF)

    @property
    def busy(self) -> bool:
        return bool(self.reads or self.writes or self.expected)

    async def initialise(self) -> None:
        """Reset the controllers and wait until this one has initialised its chip."""
        await start(self.dut, **{f"{name}_{port}": 0 for name in VARIANTS
                                 for port in ("req_valid", "write_valid", "sdram_dq_i")})
        for _ in range(self.variant.timing.cycles(self.variant.clock_hz).init + 200):
            await self._cycle()
            if int(self.pin("ready").value):
                return
        raise AssertionError(f"{self.name}: the controller never finished initialising")

    async def run(self, max_cycles: int) -> Stats:
        """Run until every queued request is answered; fails after ``max_cycles``."""
        for _ in range(max_cycles):
            await self._cycle()
            if not self.busy:
                return self.stats
        raise AssertionError(f"{self.name}: requests left after {max_cycles} cycles: {len(self.reads)} reads, "
                             f"{len(self.writes)} writes, {len(self.expected)} beats")

    async def _cycle(self) -> None:
        await RisingEdge(self.dut.clk)
        self.cycle += 1
        driven = self.chip.output(self.cycle - self.variant.read_delay)  # through the board's clock and registers
        self.pin("sdram_dq_i").value = self.rng.getrandbits(16) if driven is None else driven
        self._present("req", self.reads, self.req_layout, lambda r: dict(addr=r.addr, len=r.beats, id=r.id))
        self._present("write", self.writes, self.write_layout, lambda w: dict(addr=w.addr, data=w.data, mask=w.mask))
        await ReadOnly()
        self._sample()

    def _present(self, port: str, queue: deque, layout, fields) -> None:
        """Show the head of ``queue`` now and then; once shown, it stays until taken (then it is popped)."""
        valid, payload = self.pin(f"{port}_valid"), self.pin(f"{port}_payload")
        if int(valid.value) and queue and queue[0] is self.shown.get(id(queue)):
            return
        show = bool(queue) and self.rng.random() < self.present_chance
        valid.value = show
        if show:
            payload.value = pack_fields(layout, **fields(queue[0]))
            self.shown[id(queue)] = queue[0]

    def _sample(self) -> None:
        stats = self.stats
        self.chip.clock(self.cycle, **{name: int(self.pin(f"sdram_{name}").value) for name in PIN_NAMES})
        if len(self.chip.counts.refresh_cycles) > self.refreshes_seen:
            self.refreshes_seen += 1
            stats.busy_refreshes += self.busy
        if int(self.pin("req_valid").value) and int(self.pin("req_ready").value):
            read = self.reads.popleft()
            stats.first_accept = self.cycle if stats.first_accept is None else stats.first_accept
            if read.beats:
                self.answering.append([self.cycle, read.beats, read.beats])
            for k in range(read.beats):
                self.expected.append((read.id, self.memory_beat((read.addr + k * self.beat) % GEOMETRY.capacity)))
        if int(self.pin("write_valid").value) and int(self.pin("write_ready").value):
            self.write_memory(self.writes.popleft())
            stats.first_accept = self.cycle if stats.first_accept is None else stats.first_accept
            stats.writes += 1
            stats.last_write = self.cycle
        if int(self.pin("resp_valid").value):
            assert self.expected, f"{self.name} cycle {self.cycle}: a beat nobody asked for"
            payload = int(self.pin("resp_payload").value)
            got = (payload & ((1 << 8 * self.beat) - 1), payload >> 8 * self.beat)
            want_id, want = self.expected.popleft()
            assert got == (want, want_id), (f"{self.name} cycle {self.cycle}: beat {got[0]:#x} id {got[1]}, "
                                           f"expected {want:#x} id {want_id}")
            head = self.answering[0]
            if head[2] == head[1]:
                stats.latencies.append(self.cycle - head[0])
            head[2] -= 1
            if head[2] == 0:
                self.answering.popleft()
            stats.read_bytes += self.beat
            stats.last_beat = self.cycle


async def ready_host(dut, name: str, seed: int, present_chance: float = 0.7) -> Host:
    """A host of controller ``name`` after reset, once the controller has initialised its chip."""
    host = Host(dut, name, seed, present_chance)
    await host.initialise()
    return host


def random_address(rng: random.Random, beat: int, hot: list[int]) -> int:
    """Beat-aligned: mostly in a few hot rows (2 of them in one bank, so rows conflict), some anywhere."""
    if rng.random() < 0.2:
        return rng.randrange(0, GEOMETRY.capacity, beat)
    return (rng.choice(hot) + rng.randrange(0, ROW_BYTES, 2)) // beat * beat


@cocotb.test()
@cocotb.parametrize(name=list(VARIANTS))
async def random_traffic(dut, name: str):
    """Random bursts of writes (some bytes masked) and reads near them, across rows and banks and around
    the end of the chip."""
    host = await ready_host(dut, name, seed=1)
    rng, beat = host.rng, host.beat
    bank_stride = ROW_BYTES  # word = row : bank : column
    row_stride = bank_stride << GEOMETRY.bank_bits
    hot = [bank * bank_stride + row * row_stride for bank, row in ((0, 5), (0, 6), (1, 5), (2, 900), (3, 8191))]
    for _ in range(300):
        if rng.random() < 0.5:
            addr = random_address(rng, beat, hot)
            for k in range(rng.randint(1, 8)):
                mask = (1 << beat) - 1 if rng.random() < 0.7 else rng.getrandbits(beat)
                host.writes.append(Write((addr + k * beat) % GEOMETRY.capacity, rng.getrandbits(8 * beat), mask))
        else:
            host.reads.append(Read(random_address(rng, beat, hot), rng.choice([0, 1, 1, 2, 3, 8, 16, 33]),
                                   rng.getrandbits(3)))
    stats = await host.run(100_000)
    commands = host.chip.counts.commands
    dut._log.info(f"{name} random traffic: {host.cycle} cycles, commands {commands}")
    assert stats.writes > 300 and stats.read_bytes > 250 * beat, stats
    assert commands["PRECHARGE"] > 50, "rows must conflict"


@cocotb.test()
@cocotb.parametrize(name=["ulx3s", "wide"])
async def refresh_under_load(dut, name: str):
    """Back-to-back reads and writes for many refresh intervals: refreshes interrupt them, nothing is lost."""
    host = await ready_host(dut, name, seed=2, present_chance=1.0)
    rng, beat = host.rng, host.beat
    for k in range(400):
        host.writes.append(Write(k * beat, rng.getrandbits(8 * beat), (1 << beat) - 1))
        host.reads.append(Read(rng.randrange(0, 400) * beat, 192 // beat, k & 7))
    stats = await host.run(200_000)
    refreshes = len(host.chip.counts.refresh_cycles) - host.variant.timing.init_refreshes
    dut._log.info(f"{name} refresh under load: {host.cycle} cycles, {refreshes} refreshes, "
                  f"{stats.busy_refreshes} with requests waiting")
    period = host.variant.timing.cycles(host.variant.clock_hz).refresh
    assert host.cycle > 5 * period and stats.busy_refreshes >= 5, stats


async def measure(dut, name: str, what: str, seed: int, reads: list[Read], writes: list[Write]) -> float:
    """Run ``reads`` or ``writes`` back to back, log bytes per cycle and the first-beat latency, and return
    the bytes per cycle. Written beats are read back (after the measurement) and checked."""
    host = await ready_host(dut, name, seed=seed, present_chance=1.0)
    host.reads.extend(reads)
    host.writes.extend(writes)
    stats = await host.run(200_000)
    if reads:
        span = stats.last_beat - stats.first_accept + 1
        latency = sum(stats.latencies) / len(stats.latencies)
        dut._log.info(f"{name} {what}: {stats.read_bytes} bytes in {span} cycles = "
                      f"{stats.read_bytes / span:.3f} bytes/cycle; first beat {latency:.1f} cycles "
                      f"(min {min(stats.latencies)}, max {max(stats.latencies)}) after a request is taken; "
                      f"{host.chip.counts.commands}")
    else:
        span = stats.last_write - stats.first_accept + 1
        dut._log.info(f"{name} {what}: {stats.writes * host.beat} bytes in {span} cycles = "
                      f"{stats.writes * host.beat / span:.3f} bytes/cycle; {host.chip.counts.commands}")
        host.reads.append(Read(0, len(writes), 0))
        await host.run(200_000)
    return (stats.read_bytes if reads else stats.writes * host.beat) / span


@cocotb.test()
@cocotb.parametrize(name=list(VARIANTS))
async def sequential_reads(dut, name: str):
    """Requests of 16 beats at consecutive addresses, 16 KB: near the bus's 2 bytes a cycle."""
    beat = VARIANTS[name].beat
    reads = [Read(k * 16 * beat, 16, k & 7) for k in range(16384 // (16 * beat))]
    assert await measure(dut, name, "sequential reads", 3, reads, []) > 1.8


@cocotb.test()
@cocotb.parametrize(name=list(VARIANTS))
async def random_reads(dut, name: str):
    """Single beats anywhere in the chip, mostly row misses: each costs at most a precharge, tRC and its words
    (and a few cycles of control)."""
    variant = VARIANTS[name]
    rng, beat, cycles = random.Random(4), variant.beat, variant.timing.cycles(variant.clock_hz)
    reads = [Read(rng.randrange(0, GEOMETRY.capacity, beat), 1, 0) for _ in range(500)]
    assert await measure(dut, name, "random reads", 4, reads, []) > beat / (cycles.rp + cycles.rc + beat // 2 + 4)


@cocotb.test()
@cocotb.parametrize(name=list(VARIANTS))
async def sequential_writes(dut, name: str):
    """Single beats at consecutive addresses, 16 KB."""
    rng, beat = random.Random(5), VARIANTS[name].beat
    writes = [Write(k * beat, rng.getrandbits(8 * beat), (1 << beat) - 1) for k in range(16384 // beat)]
    assert await measure(dut, name, "sequential writes", 5, [], writes) > (1.8 if beat % 4 == 0 else 0.9)
