"""A behavioural SDR SDRAM chip for the SDRAM controller's bench: it stores data and checks the timing rules.

The model sees the pins once a cycle (:meth:`SdramModel.clock`, the command the chip samples at the end of
that cycle) and says what it drives on ``dq`` (:meth:`SdramModel.output`): a READ's words ``cas_latency``
cycles after its command, one a cycle. Every rule is checked in ns against :class:`SdramTiming` (not
against the controller's cycle counts), and any breach raises :class:`SdramViolation` naming the cycle,
the command and the rule: the power-up wait and the initialisation order (PRECHARGE all, auto refreshes,
MODE before any ACTIVE), tRCD, tRP, tRAS (and its maximum), tRC, tRRD, tWR, tRFC, tMRD, the refresh
interval, ACTIVE to an open bank, READ/WRITE to a closed bank, a burst cut short, write data not driven,
and ``dq`` driven by both sides.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from mvu.hdl.sdram_controller import Command, SdramGeometry, SdramTiming

__all__ = ["SdramViolation", "SdramModel"]

NEVER = -(10**12)


class SdramViolation(AssertionError):
    """The controller broke one of the chip's rules."""


@dataclass
class _Bank:
    row: int | None = None
    activated: int = NEVER
    precharged: int = NEVER
    write_end: int = NEVER  # the cycle of the last write data
    read_end: int = NEVER  # the first cycle after the last READ's burst (commands)


@dataclass
class _Counts:
    """Commands seen, by name."""

    commands: dict[str, int] = field(default_factory=dict)
    refresh_cycles: list[int] = field(default_factory=list)


class SdramModel:
    """A chip of ``geometry`` with ``timing``, clocked every ``period_ns``; unwritten words read as random."""

    def __init__(self, timing: SdramTiming, geometry: SdramGeometry, period_ns: float, seed: int = 0):
        self.timing, self.geometry, self.period = timing, geometry, period_ns
        self.banks = [_Bank() for _ in range(1 << geometry.bank_bits)]
        self.words: dict[int, int] = {}
        self.seed = seed
        self.scheduled: dict[int, int] = {}  # cycle -> word driven on dq
        self.write_burst: tuple[int, int, int, int] | None = None  # (bank, row, column, words left), next word
        self.burst_until = NEVER  # no READ/WRITE before this cycle without cutting a burst short
        self.mode: tuple[int, int] | None = None  # (burst length, CAS latency)
        self.mode_set = NEVER
        self.last_refresh = NEVER
        self.last_active = NEVER
        self.started: int | None = None
        self.init_refreshes = 0
        self.precharged_all = False
        self.counts = _Counts()
        self.handlers = {
            Command.ACTIVE: self._active, Command.READ: self._read, Command.WRITE: self._write,
            Command.PRECHARGE: self._precharge, Command.REFRESH: self._refresh, Command.MODE: self._mode,
        }

    def initial_word(self, address: int) -> int:
        """What the word at ``address`` holds before it is written (the same for every model of a seed)."""
        return random.Random(self.seed * 1_000_003 + address).getrandbits(16)

    def word(self, address: int) -> int:
        """The word at ``address`` (row : bank : column)."""
        return self.words.get(address, self.initial_word(address))

    def output(self, cycle: int) -> int | None:
        """The word the chip drives on ``dq`` in ``cycle``, or None."""
        return self.scheduled.get(cycle)

    # Checks.
    def _fail(self, cycle: int, what: str) -> None:
        raise SdramViolation(f"SDRAM cycle {cycle}: {what}")

    def _after(self, cycle: int, event: int, ns: float, what: str, rule: str) -> None:
        elapsed = (cycle - event) * self.period
        if elapsed < ns - 1e-9:
            self._fail(cycle, f"{what}: {rule} is {ns:g} ns, only {elapsed:.1f} ns passed")

    def _address(self, bank: int, row: int, column: int) -> int:
        g = self.geometry
        return (row << (g.bank_bits + g.col_bits)) | (bank << g.col_bits) | column

    def clock(self, cycle: int, *, clk_en: int, cs: int, ras: int, cas: int, we: int, ba: int, a: int,
              dq_o: int, dq_oe: int, dqm: int) -> None:
        """The pins in ``cycle``, sampled by the chip at its end."""
        if self.started is None:
            self.started = cycle
        for done in [when for when in self.scheduled if when < cycle - 1]:
            del self.scheduled[done]
        if dq_oe and (cycle in self.scheduled or cycle - 1 in self.scheduled):
            self._fail(cycle, "the controller drives dq while the chip drives it (or the cycle before)")
        self._check_refresh_and_rows(cycle)
        command = Command((ras << 2) | (cas << 1) | we) if cs else Command.NOP
        if command != Command.NOP:
            self._command(cycle, command, clk_en, ba, a)
        self._take_write_data(cycle, dq_o, dq_oe, dqm)

    def _command(self, cycle: int, command: Command, clk_en: int, ba: int, a: int) -> None:
        name = command.name
        self.counts.commands[name] = self.counts.commands.get(name, 0) + 1
        if not clk_en:
            self._fail(cycle, f"{name} with clock enable low")
        if (cycle - self.started) * self.period < self.timing.t_init:
            self._fail(cycle, f"{name} {(cycle - self.started) * self.period:g} ns after power-up; "
                              f"the chip needs {self.timing.t_init:g} ns of NOPs first")
        if not self.precharged_all and not (command == Command.PRECHARGE and a >> 10 & 1):
            self._fail(cycle, f"{name} before the PRECHARGE of all banks that starts initialisation")
        if self.mode_set != NEVER:
            self._after(cycle, self.mode_set, self.timing.t_mrd_cycles * self.period, f"{name}", "tMRD from MODE")
        handler = self.handlers.get(command)
        if handler is None:
            self._fail(cycle, f"{name}: the model has no such command (the controller never needs it)")
        handler(cycle, ba, a)

    def _check_refresh_and_rows(self, cycle: int) -> None:
        if self.mode is not None and (cycle - self.last_refresh) * self.period > self.timing.t_refi:
            self._fail(cycle, f"no auto refresh for {(cycle - self.last_refresh) * self.period:g} ns; "
                              f"tREFI is {self.timing.t_refi:g} ns")
        for index, bank in enumerate(self.banks):
            if bank.row is not None and (cycle - bank.activated) * self.period > self.timing.t_ras_max:
                self._fail(cycle, f"bank {index}'s row open longer than tRAS max {self.timing.t_ras_max:g} ns")

    def _take_write_data(self, cycle: int, dq_o: int, dq_oe: int, dqm: int) -> None:
        if self.write_burst is None:
            if dq_oe:
                self._fail(cycle, "the controller drives dq outside a write burst")
            return
        bank, row, column, left = self.write_burst
        if not dq_oe:
            self._fail(cycle, f"write data for bank {bank} row {row} column {column} not driven")
        address = self._address(bank, row, column)
        old = self.word(address)
        keep = (0xFF if dqm & 1 else 0) | (0xFF00 if dqm & 2 else 0)
        self.words[address] = (old & keep) | (dq_o & ~keep & 0xFFFF)
        length = self.mode[0]
        next_column = (column & ~(length - 1)) | ((column + 1) & (length - 1))
        self.write_burst = (bank, row, next_column, left - 1) if left > 1 else None

    # Commands.
    def _active(self, cycle: int, ba: int, a: int) -> None:
        if self.mode is None:
            self._fail(cycle, "ACTIVE before the mode register is loaded")
        bank, t = self.banks[ba], self.timing
        if bank.row is not None:
            self._fail(cycle, f"ACTIVE of row {a} in bank {ba}, whose row {bank.row} is open")
        self._after(cycle, bank.precharged, t.t_rp, f"ACTIVE in bank {ba}", "tRP from PRECHARGE")
        self._after(cycle, bank.activated, t.t_rc, f"ACTIVE in bank {ba}", "tRC from ACTIVE in the same bank")
        self._after(cycle, self.last_active, t.t_rrd, f"ACTIVE in bank {ba}", "tRRD from ACTIVE in any bank")
        self._after(cycle, self.last_refresh, t.t_rfc, f"ACTIVE in bank {ba}", "tRFC from REFRESH")
        bank.row, bank.activated, self.last_active = a, cycle, cycle

    def _column(self, cycle: int, name: str, ba: int, a: int) -> tuple[_Bank, int]:
        """The bank and column of a READ or WRITE, once it is allowed."""
        if self.mode is None:
            self._fail(cycle, f"{name} before the mode register is loaded")
        bank = self.banks[ba]
        if bank.row is None:
            self._fail(cycle, f"{name} to bank {ba}, which has no open row")
        self._after(cycle, bank.activated, self.timing.t_rcd, f"{name} to bank {ba}", "tRCD from ACTIVE")
        if cycle < self.burst_until:
            self._fail(cycle, f"{name} cuts short the burst under way (it ends at cycle {self.burst_until})")
        if a >> 10 & 1:
            self._fail(cycle, f"{name} with auto precharge (A10), which the model does not have")
        return bank, a & ((1 << self.geometry.col_bits) - 1)

    def _read(self, cycle: int, ba: int, a: int) -> None:
        bank, column = self._column(cycle, "READ", ba, a)
        length, latency = self.mode
        for i in range(length):
            word_column = (column & ~(length - 1)) | ((column + i) & (length - 1))
            self.scheduled[cycle + latency + i] = self.word(self._address(ba, bank.row, word_column))
        self.burst_until = bank.read_end = cycle + length

    def _write(self, cycle: int, ba: int, a: int) -> None:
        bank, column = self._column(cycle, "WRITE", ba, a)
        length = self.mode[0]
        self.write_burst = (ba, bank.row, column, length)
        self.burst_until = cycle + length
        bank.write_end = cycle + length - 1

    def _precharge(self, cycle: int, ba: int, a: int) -> None:
        t = self.timing
        for index in range(len(self.banks)) if a >> 10 & 1 else [ba]:
            bank = self.banks[index]
            if bank.row is None:
                continue
            self._after(cycle, bank.activated, t.t_ras, f"PRECHARGE of bank {index}", "tRAS from ACTIVE")
            write_recovery = max(t.t_wr, t.t_wr_cycles * self.period)
            self._after(cycle, bank.write_end, write_recovery, f"PRECHARGE of bank {index}", "tWR from the last write data")
            if cycle < bank.read_end:
                self._fail(cycle, f"PRECHARGE of bank {index} cuts its read burst short")
            bank.row, bank.precharged = None, cycle
        self.precharged_all |= bool(a >> 10 & 1)

    def _all_idle(self, cycle: int, name: str) -> None:
        t = self.timing
        for index, bank in enumerate(self.banks):
            if bank.row is not None:
                self._fail(cycle, f"{name} while bank {index} has row {bank.row} open")
            self._after(cycle, bank.precharged, t.t_rp, f"{name}", f"tRP from PRECHARGE of bank {index}")
            self._after(cycle, bank.activated, t.t_rc, f"{name}", f"tRC from ACTIVE of bank {index}")
        self._after(cycle, self.last_refresh, t.t_rfc, f"{name}", "tRFC from REFRESH")

    def _refresh(self, cycle: int, ba: int, a: int) -> None:
        self._all_idle(cycle, "REFRESH")
        self.last_refresh = cycle
        self.counts.refresh_cycles.append(cycle)
        if self.mode is None:
            self.init_refreshes += 1

    def _mode(self, cycle: int, ba: int, a: int) -> None:
        self._all_idle(cycle, "MODE")
        if self.init_refreshes < self.timing.init_refreshes:
            self._fail(cycle, f"MODE after {self.init_refreshes} auto refreshes; initialisation needs "
                              f"{self.timing.init_refreshes}")
        length_code, latency = a & 7, a >> 4 & 7
        if length_code > 3 or a >> 3 & 1 or latency not in (2, 3) or a >> 7:
            self._fail(cycle, f"MODE {a:#x}: the model has burst lengths 1-8 (sequential), CAS latency 2 or "
                              f"3 and burst writes only")
        self.mode, self.mode_set = (1 << length_code, latency), cycle
