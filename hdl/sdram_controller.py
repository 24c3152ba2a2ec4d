"""An SDR SDRAM controller: the core's memory port on a 16-bit SDRAM chip (the ULX3S's 32 MB).

The host side takes read requests of ``len`` beats and masked write beats, one job at a time in the order
they are accepted (a write beat first when both wait); the chip side drives the pins of amaranth-boards'
``sdram`` resource. One beat of ``beat_bytes`` is ``beat_bytes // 2`` consecutive 16-bit words, read or
written as bursts of ``burst`` words (the largest of 1, 2, 4, 8 that divides the beat), one column command
every ``burst`` cycles, so a row hit streams a word per cycle. Byte address ``2 * word`` maps to column,
bank and row from the lowest bits up (``word = row : bank : column``): a sequential stream that leaves one
row goes on in the next bank while the row it left stays open.

Each bank keeps its row open until a request needs another row of that bank or a refresh closes all of them
(open-row policy; docs/boards.md has the measured hit and miss numbers). Command slots the job leaves free
(between its column commands, and while idle) go to the next job waiting on ``write`` or ``req``: its
bank is precharged and its row opened ahead, in a bank other than the job's. A refresh is due every
``tREFI`` less a margin for closing the banks; it takes precedence over the job under way, which resumes
after it at the next burst. Every timing rule is a counter of cycles that must pass before a command is
allowed: per bank before a READ/WRITE (tRCD), a PRECHARGE (tRAS, tWR, a read burst's end) and an ACTIVE
(tRC, tRP, tRFC, tMRD); for all banks before an ACTIVE (tRRD), a column command (the burst under way) and a
WRITE after a READ (the read data and one turnaround cycle on ``dq``).

States: ``INIT`` waits ``t_init`` (200 us, shorter in simulation) with NOPs; ``INIT_PRECHARGE`` precharges
all banks; ``INIT_REFRESH`` issues ``init_refreshes`` auto refreshes; ``INIT_MODE`` loads the mode register
(burst length, sequential bursts, CAS latency); ``IDLE`` takes the next job (and prepares its row);
``RUN`` issues, per burst, the PRECHARGE, ACTIVE and READ/WRITE it needs (and prepares the next job's row in
free slots); ``REFRESH`` precharges all banks and issues an auto refresh.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from enum import IntEnum
from functools import reduce

from amaranth import Array, Cat, Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from mvu.hdl.interfaces import READ_ID_BITS, masked_write_beat

__all__ = ["Command", "SdramGeometry", "SdramTiming", "SdramCycles", "SdramPins", "SdramController",
           "mode_register", "burst_words"]

#: Width of the SDRAM's data bus.
WORD_BITS = 16


class Command(IntEnum):
    """SDRAM commands as ``(ras, cas, we)`` with ``cs`` high, active high as amaranth-boards' pins read."""

    NOP = 0b000
    BURST_STOP = 0b001
    READ = 0b010
    WRITE = 0b011
    ACTIVE = 0b100
    PRECHARGE = 0b101
    REFRESH = 0b110
    MODE = 0b111


@dataclass(frozen=True)
class SdramGeometry:
    """A 16-bit chip's organisation (defaults: 32 MB, 8192 rows x 512 columns x 4 banks, e.g. IS42S16160)."""

    row_bits: int = 13
    col_bits: int = 9
    bank_bits: int = 2

    def __post_init__(self):
        if not 11 <= self.row_bits or not 1 <= self.col_bits <= 10 or not 1 <= self.bank_bits:
            raise ValueError(f"an SDRAM needs at least 11 row bits (A10 selects all banks) and 1 to 10 column "
                             f"bits (A10 is auto precharge in column commands), not {self}")

    @property
    def capacity(self) -> int:
        """Bytes in the chip."""
        return 2 << (self.row_bits + self.col_bits + self.bank_bits)


@dataclass(frozen=True)
class SdramTiming:
    """A chip's timing rules in ns, and its initialisation.

    The defaults are the slowest of the parts fitted to ULX3S boards at speed grade -7/-6A (IS42S16160G-7,
    MT48LC16M16A2-6A, AS4C32M16SB-7): each value is the largest of their datasheets' minimums.
    ``t_init`` is the power-up wait (200 us; a bench shortens it), ``t_refi`` the average refresh interval
    (64 ms / 8192 rows), ``t_wr`` the last write data to PRECHARGE (also at least ``t_wr_cycles``).
    """

    t_rp: float = 21.0  # AS4C32M16SB-7 (Alliance datasheet, table 16): 21 ns; the others 20
    t_rcd: float = 21.0
    t_ras: float = 42.0
    t_ras_max: float = 100_000.0
    t_rc: float = 63.0
    t_rrd: float = 14.0
    t_wr: float = 15.0
    t_wr_cycles: int = 2
    t_rfc: float = 66.0
    t_mrd_cycles: int = 2
    t_refi: float = 7812.5
    t_init: float = 200_000.0
    init_refreshes: int = 8
    cas_latency: int = 2

    def __post_init__(self):
        if self.cas_latency not in (2, 3):
            raise ValueError(f"cas_latency must be 2 or 3, not {self.cas_latency!r}")
        for name in ("t_wr_cycles", "t_mrd_cycles", "init_refreshes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)!r}")

    def cycles(self, clock_hz: float) -> SdramCycles:
        """The rules in whole cycles of a ``clock_hz`` clock (each rounded up, at least 1)."""
        period = 1e9 / clock_hz

        def up(ns: float) -> int:
            return max(1, math.ceil(ns / period - 1e-9))

        cycles = SdramCycles(
            rp=up(self.t_rp), rcd=up(self.t_rcd), ras=up(self.t_ras), rc=up(self.t_rc), rrd=up(self.t_rrd),
            wr=max(self.t_wr_cycles, up(self.t_wr)), rfc=up(self.t_rfc), mrd=self.t_mrd_cycles,
            init=up(self.t_init), cas_latency=self.cas_latency, refresh=0)
        # The refresh falls due early enough to close a row opened just before: tRAS + tRP (+ tWR after a
        # write) + a burst, with room to spare; a job's column commands never delay it longer.
        margin = cycles.rc + cycles.rp + cycles.wr + 16
        refresh = int(self.t_refi / period) - margin
        if refresh < 1:
            raise ValueError(f"a {clock_hz / 1e6:g} MHz clock is too slow for a refresh every {self.t_refi} ns")
        return SdramCycles(**{**cycles.__dict__, "refresh": refresh})


@dataclass(frozen=True)
class SdramCycles:
    """:class:`SdramTiming` in cycles; ``refresh``: cycles from one auto refresh to the next falling due."""

    rp: int
    rcd: int
    ras: int
    rc: int
    rrd: int
    wr: int
    rfc: int
    mrd: int
    init: int
    cas_latency: int
    refresh: int


def burst_words(beat_bytes: int) -> int:
    """The burst length for beats of ``beat_bytes``: the largest of 1, 2, 4, 8 dividing its words."""
    words = beat_bytes // 2
    return max(length for length in (1, 2, 4, 8) if words % length == 0)


def mode_register(burst: int, cas_latency: int) -> int:
    """The mode register: burst length ``burst``, sequential bursts, CAS latency, burst writes."""
    return {1: 0, 2: 1, 4: 2, 8: 3}[burst] | cas_latency << 4


class SdramPins(wiring.Signature):
    """A 16-bit SDR SDRAM's pins (``Out`` in the controller), active high as amaranth-boards' ``sdram``
    resource presents them (its ``cs``, ``ras``, ``cas``, ``we`` are inverted at the pads). The chip's
    clock is the board top's: the controller's clock, phase-shifted as the board needs.

    Members:
        clk_en: ``Out(1)``: clock enable (CKE); always 1.
        cs: ``Out(1)``: chip select; always 1 (NOP is ``ras = cas = we = 0``).
        ras: ``Out(1)``: row address strobe.
        cas: ``Out(1)``: column address strobe.
        we: ``Out(1)``: write enable.
        ba: ``Out(bank_bits)``: bank address.
        a: ``Out(row_bits)``: address: the row (ACTIVE), the column (READ, WRITE), A10 all banks (PRECHARGE),
            the mode (MODE).
        dq_o: ``Out(16)``: write data.
        dq_oe: ``Out(1)``: drive ``dq_o`` onto the data pins.
        dq_i: ``In(16)``: the data pins, read data.
        dqm: ``Out(2)``: byte masks of ``dq`` (bit 0: bits 7..0); a set bit keeps that byte from being written.
    """

    def __init__(self, geometry: SdramGeometry):
        super().__init__({
            "clk_en": Out(1), "cs": Out(1), "ras": Out(1), "cas": Out(1), "we": Out(1),
            "ba": Out(geometry.bank_bits), "a": Out(geometry.row_bits),
            "dq_o": Out(WORD_BITS), "dq_oe": Out(1), "dq_i": In(WORD_BITS), "dqm": Out(WORD_BITS // 8),
        })


def _hold(m: Module, counter: Signal, cycles: int | Value) -> None:
    """Let ``counter`` (counting down to 0) reach 0 no sooner than ``cycles`` cycles from now."""
    m.d.sync += counter.eq(Mux(counter > cycles, counter - 1, cycles - 1))


class SdramController(wiring.Component):
    """The memory port of ``beat_bytes`` (a multiple of 2) on a 16-bit SDR SDRAM clocked at ``clock_hz``.

    ``id_bits``: width of the tag each read request carries back on its beats. ``memory_bytes``: the chip's
    capacity.

    Read data: for a READ on the pins from controller edge ``n``, the controller registers ``dq_i`` at its
    edge ``n + cas_latency + 1 + read_delay``. With ``read_delay = 0`` the chip samples commands at the
    controller's next edge (its clock leads the controller's by a little, less than tOH) and the data is
    taken as the chip's next word replaces it; ``-1`` suits a chip clocked by the inverted clock (it samples
    commands mid-cycle; its data, valid tAC after its edge, is taken one controller edge sooner: right up to
    about 70 MHz at tAC 6 ns); each register the board top puts on ``dq_i`` adds 1.

    Members:
        req: ``In(stream.Signature(...))``: read requests: ``addr`` (byte address, beat-aligned; addresses
            wrap at the chip's capacity), ``len`` (beats; 0 reads nothing), ``id``.
        resp: ``Out(stream.Signature(..., always_ready=True))``: ``data`` beats (lowest bytes first), in
            request order, each with its request's ``id``.
        write: ``In(stream.Signature(masked_write_beat(beat_bytes)))``: a beat of ``data`` written to
            ``addr`` where its ``mask`` bits are set.
        sdram: ``Out(SdramPins(geometry))``: the chip.
        ready: ``Out(1)``: initialisation is over; requests wait until then.
    """

    def __init__(self, beat_bytes: int, clock_hz: float, *, timing: SdramTiming = SdramTiming(),
                 geometry: SdramGeometry = SdramGeometry(), id_bits: int = READ_ID_BITS + 1,
                 read_delay: int = 0):
        if beat_bytes < 2 or beat_bytes % 2:
            raise ValueError(f"beat_bytes must be a positive multiple of the 2-byte SDRAM bus, not {beat_bytes}")
        if read_delay < -1:
            raise ValueError(f"read_delay must be -1 or more, not {read_delay}")
        self.beat_bytes, self.clock_hz, self.timing, self.geometry = beat_bytes, clock_hz, timing, geometry
        self.cycles, self.burst, self.read_delay = timing.cycles(clock_hz), burst_words(beat_bytes), read_delay
        self.memory_bytes = geometry.capacity
        request = data.StructLayout({"addr": 32, "len": 16, "id": id_bits})
        response = data.StructLayout({"data": 8 * beat_bytes, "id": id_bits})
        super().__init__({
            "req": In(stream.Signature(request)),
            "resp": Out(stream.Signature(response, always_ready=True)),
            "write": In(stream.Signature(masked_write_beat(beat_bytes))),
            "sdram": Out(SdramPins(geometry)),
            "ready": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        c, g, BL = self.cycles, self.geometry, self.burst
        words, banks = self.beat_bytes // 2, 1 << g.bank_bits
        bursts_per_beat = words // BL
        pins = self.sdram

        # The job: reading or writing ``bursts`` bursts from word address ``word``.
        word = Signal(g.row_bits + g.bank_bits + g.col_bits)
        bursts = Signal(16 + ceil_log2(bursts_per_beat + 1))
        writing, job_id = Signal(), Signal.like(self.req.p.id)
        col, bank, row = word[:g.col_bits], word[g.col_bits:g.col_bits + g.bank_bits], word[-g.row_bits:]

        # Bank state and the timing counters (cycles left before a command is allowed).
        is_open = Array(Signal(name=f"open{b}") for b in range(banks))
        open_row = Array(Signal(g.row_bits, name=f"row{b}") for b in range(banks))
        rw_wait = Array(Signal(range(c.rcd + 1), name=f"rw_wait{b}") for b in range(banks))
        pre_wait = Array(Signal(range(max(c.ras, BL + c.wr) + 1), name=f"pre_wait{b}") for b in range(banks))
        act_wait = Array(Signal(range(max(c.rc, c.rp, c.rfc, c.mrd) + 1), name=f"act_wait{b}")
                         for b in range(banks))
        rrd_wait, cmd_wait = Signal(range(c.rrd + 1)), Signal(range(BL + 1))
        bus_wait = Signal(range(c.cas_latency + BL + 2))
        all_closed = ~Cat(*is_open).any()
        all_settled = Cat(*(w == 0 for w in act_wait)).all() & Cat(*(w == 0 for w in pre_wait)).all()

        # The command this cycle (at most one ``issue`` flag), registered onto the pins.
        issue = {command: Signal(name=f"issue_{command.name.lower()}") for command in Command
                 if command not in (Command.NOP, Command.BURST_STOP)}
        cmd_ba, cmd_a = Signal(g.bank_bits), Signal(g.row_bits)
        m.d.comb += [pins.clk_en.eq(1), pins.cs.eq(1)]
        m.d.sync += [Cat(pins.we, pins.cas, pins.ras).eq(
                         reduce(operator.or_, (Mux(flag, command, 0) for command, flag in issue.items()))),
                     pins.ba.eq(cmd_ba), pins.a.eq(cmd_a)]

        # Bookkeeping of the command issued.
        for b in range(banks):
            for counter in (rw_wait[b], pre_wait[b], act_wait[b]):
                m.d.sync += counter.eq(Mux(counter == 0, 0, counter - 1))
        for counter in (rrd_wait, cmd_wait, bus_wait):
            m.d.sync += counter.eq(Mux(counter == 0, 0, counter - 1))
        with m.If(issue[Command.ACTIVE]):
            for b in range(banks):
                with m.If(cmd_ba == b):
                    _hold(m, rw_wait[b], c.rcd)
                    _hold(m, pre_wait[b], c.ras)
                    _hold(m, act_wait[b], c.rc)
                    m.d.sync += [is_open[b].eq(1), open_row[b].eq(cmd_a)]
            _hold(m, rrd_wait, c.rrd)
        with m.If(issue[Command.PRECHARGE]):
            for b in range(banks):
                with m.If(cmd_a[10] | (cmd_ba == b)):
                    _hold(m, act_wait[b], c.rp)
                    m.d.sync += is_open[b].eq(0)
        with m.If(issue[Command.READ] | issue[Command.WRITE]):
            for b in range(banks):
                with m.If(cmd_ba == b):
                    _hold(m, pre_wait[b], Mux(writing, BL - 1 + c.wr, BL))
            _hold(m, cmd_wait, BL)
        with m.If(issue[Command.READ]):
            _hold(m, bus_wait, c.cas_latency + BL + 1)
        for command, cycles in ((Command.REFRESH, c.rfc), (Command.MODE, c.mrd)):
            with m.If(issue[command]):
                for b in range(banks):
                    _hold(m, act_wait[b], cycles)

        # Refresh timer.
        refresh_timer = Signal(range(max(c.refresh, c.init) + 1), init=c.init)
        refresh_due = Signal()
        m.d.sync += refresh_timer.eq(Mux(refresh_timer == 0, 0, refresh_timer - 1))
        with m.If(issue[Command.REFRESH]):
            m.d.sync += refresh_timer.eq(c.refresh)
        m.d.comb += refresh_due.eq(refresh_timer == 0)

        # Host side.
        take_write, take_read = Signal(), Signal()
        m.d.comb += [self.write.ready.eq(take_write), self.req.ready.eq(take_read)]
        init_refreshes = Signal(range(self.timing.init_refreshes + 1), init=self.timing.init_refreshes)
        hit = is_open[bank] & (open_row[bank] == row)
        # The next job (a write first), whose bank is made ready while this job's bursts run: its address and
        # whether its bank's row was its row, as they were a cycle ago. Only a hint: the timing counters and
        # open banks as they are now decide whether a command is allowed.
        next_word = Signal.like(word)
        m.d.comb += next_word.eq(Mux(self.write.valid, self.write.p.addr[1:], self.req.p.addr[1:]))
        ahead, ahead_valid, ahead_matches = Signal.like(word), Signal(), Signal()
        m.d.sync += [ahead.eq(next_word), ahead_valid.eq(self.write.valid | self.req.valid),
                     ahead_matches.eq(open_row[next_word[g.col_bits:g.col_bits + g.bank_bits]]
                                      == next_word[-g.row_bits:])]
        ahead_bank, ahead_row = ahead[g.col_bits:g.col_bits + g.bank_bits], ahead[-g.row_bits:]
        ahead_wanted = ahead_valid & ~(is_open[ahead_bank] & ahead_matches)
        m.d.comb += cmd_ba.eq(bank)

        def prepare_next(other_bank: bool):
            """In a free command slot: precharge the next job's bank or open its row (in another bank than the
            job under way's if ``other_bank``)."""
            with m.If(ahead_wanted & ((ahead_bank != bank) if other_bank else 1)):
                m.d.comb += cmd_ba.eq(ahead_bank)
                with m.If(is_open[ahead_bank]):
                    with m.If(pre_wait[ahead_bank] == 0):
                        m.d.comb += issue[Command.PRECHARGE].eq(1)
                with m.Elif((act_wait[ahead_bank] == 0) & (rrd_wait == 0)):
                    m.d.comb += [issue[Command.ACTIVE].eq(1), cmd_a.eq(ahead_row)]

        with m.FSM():
            with m.State("INIT"):
                with m.If(refresh_due):
                    m.next = "INIT_PRECHARGE"
            with m.State("INIT_PRECHARGE"):
                m.d.comb += [issue[Command.PRECHARGE].eq(1), cmd_a[10].eq(1)]
                m.next = "INIT_REFRESH"
            with m.State("INIT_REFRESH"):
                with m.If(all_settled):
                    m.d.comb += issue[Command.REFRESH].eq(1)
                    m.d.sync += init_refreshes.eq(init_refreshes - 1)
                    with m.If(init_refreshes == 1):
                        m.next = "INIT_MODE"
            with m.State("INIT_MODE"):
                with m.If(all_settled):
                    m.d.comb += [issue[Command.MODE].eq(1), cmd_a.eq(mode_register(BL, c.cas_latency))]
                    m.next = "IDLE"
            with m.State("IDLE"):
                m.d.comb += self.ready.eq(1)
                with m.If(refresh_due):
                    m.next = "REFRESH"
                with m.Else():
                    prepare_next(other_bank=False)
                    with m.If(cmd_wait <= 1):  # the last burst's write data is leaving the write register
                        with m.If(self.write.valid):
                            m.d.comb += take_write.eq(1)
                            m.d.sync += [word.eq(self.write.p.addr[1:]), bursts.eq(bursts_per_beat), writing.eq(1)]
                            m.next = "RUN"
                        with m.Elif(self.req.valid):
                            m.d.comb += take_read.eq(1)
                            m.d.sync += [word.eq(self.req.p.addr[1:]), writing.eq(0), job_id.eq(self.req.p.id),
                                         bursts.eq(self.req.p.len * bursts_per_beat)]
                            with m.If(self.req.p.len != 0):
                                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.ready.eq(1)
                with m.If(refresh_due):
                    m.next = "REFRESH"
                with m.Elif(hit):
                    with m.If((rw_wait[bank] == 0) & (cmd_wait == 0) & (~writing | (bus_wait == 0))):
                        m.d.comb += [issue[Command.WRITE].eq(writing), issue[Command.READ].eq(~writing), cmd_a.eq(col)]
                        m.d.sync += [word.eq(word + BL), bursts.eq(bursts - 1)]
                        with m.If(bursts == 1):
                            m.next = "IDLE"
                    with m.Else():
                        prepare_next(other_bank=True)
                with m.Elif(is_open[bank]):
                    with m.If(pre_wait[bank] == 0):
                        m.d.comb += issue[Command.PRECHARGE].eq(1)
                with m.Elif((act_wait[bank] == 0) & (rrd_wait == 0)):
                    m.d.comb += [issue[Command.ACTIVE].eq(1), cmd_a.eq(row)]
            with m.State("REFRESH"):
                m.d.comb += self.ready.eq(1)
                with m.If(~all_closed):
                    with m.If(Cat(*(w == 0 for w in pre_wait)).all()):
                        m.d.comb += [issue[Command.PRECHARGE].eq(1), cmd_a[10].eq(1)]
                with m.Elif(all_settled):
                    m.d.comb += issue[Command.REFRESH].eq(1)
                    m.next = "IDLE"
                    with m.If(bursts != 0):  # the job under way goes on
                        m.next = "RUN"

        self._write_data(m, issue[Command.WRITE], take_write)
        self._read_data(m, issue[Command.READ], job_id)
        return m

    def _write_data(self, m: Module, write: Value, take: Value) -> None:
        """A word a cycle onto ``dq`` after each ``write`` command, from the beat ``take`` takes from
        ``self.write``; bytes masked where the beat's mask is clear."""
        pins, BL = self.sdram, self.burst
        wdata, wmask, wr_left = Signal(8 * self.beat_bytes), Signal(self.beat_bytes), Signal(range(BL))
        m.d.sync += [pins.dq_oe.eq(0), pins.dqm.eq(0)]
        with m.If(write | (wr_left != 0)):
            m.d.sync += [pins.dq_o.eq(wdata[:WORD_BITS]), pins.dqm.eq(~wmask[:2]), pins.dq_oe.eq(1),
                         wdata.eq(wdata >> WORD_BITS), wmask.eq(wmask >> 2),
                         wr_left.eq(Mux(write, BL - 1, wr_left - 1))]
        with m.If(take):  # after the shift: the last word of a burst is on its way out already
            m.d.sync += [wdata.eq(self.write.p.data), wmask.eq(self.write.p.mask)]

    def _read_data(self, m: Module, read: Value, job_id: Value) -> None:
        """Gather the words of each ``read`` command's burst, ``cas_latency + 2 + read_delay`` cycles later,
        into beats on ``resp``, each with ``job_id`` as it was at the command."""
        pins, BL, words = self.sdram, self.burst, self.beat_bytes // 2
        rd_left, rd_id = Signal(range(BL)), Signal.like(job_id)
        marker = data.StructLayout({"valid": 1, "id": len(job_id)})
        pipe = [Signal(marker, name=f"pipe{k}") for k in range(self.cycles.cas_latency + 2 + self.read_delay)]
        with m.If(read):
            m.d.sync += [rd_left.eq(BL - 1), rd_id.eq(job_id)]
        with m.Elif(rd_left != 0):
            m.d.sync += rd_left.eq(rd_left - 1)
        m.d.sync += pipe[0].eq(Cat(read | (rd_left != 0), Mux(read, job_id, rd_id)))
        m.d.sync += [later.eq(earlier) for earlier, later in zip(pipe, pipe[1:])]
        dq_in, gathered, count = Signal(WORD_BITS), Signal(WORD_BITS * words), Signal(range(words))
        beat = Cat(gathered[WORD_BITS:], dq_in)
        m.d.sync += dq_in.eq(pins.dq_i)
        with m.If(pipe[-1].valid):
            m.d.sync += [gathered.eq(beat), count.eq(Mux(count == words - 1, 0, count + 1))]
        m.d.comb += [self.resp.valid.eq(pipe[-1].valid & (count == words - 1)), self.resp.p.data.eq(beat),
                     self.resp.p.id.eq(pipe[-1].id)]
