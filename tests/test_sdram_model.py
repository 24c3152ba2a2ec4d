"""The behavioural SDRAM chip of the controller's bench: it keeps data and refuses each broken rule."""

from __future__ import annotations

import pytest

from mvu.hdl.sdram_controller import Command, SdramGeometry, SdramTiming, mode_register
from mvu.sim.benches.sdram_model import SdramModel, SdramViolation

PERIOD = 10.0  # ns: tRP, tRCD, tRRD, tWR 2 cycles, tRAS 5, tRC 8, tRFC 7
TIMING = SdramTiming(t_init=100.0, t_rp=20.0, t_rcd=20.0, t_rc=80.0, init_refreshes=2, cas_latency=2)
BURST = 4
ALL_BANKS = 1 << 10


class Chip:
    """A model and a clock: :meth:`at` issues a command at a cycle, the cycles between are NOPs."""

    def __init__(self):
        self.model = SdramModel(TIMING, SdramGeometry(), PERIOD, seed=7)
        self.cycle = -1
        self.data: dict[int, int] = {}  # cycle -> (dq_o, dqm) driven then

    def at(self, cycle: int, command: Command = Command.NOP, ba: int = 0, a: int = 0) -> None:
        while self.cycle < cycle:
            self.cycle += 1
            now = command if self.cycle == cycle else Command.NOP
            dq, dqm = self.data.pop(self.cycle, (None, 0))
            self.model.clock(self.cycle, clk_en=1, cs=1, ras=now >> 2 & 1, cas=now >> 1 & 1, we=now & 1,
                             ba=ba if self.cycle == cycle else 0, a=a if self.cycle == cycle else 0,
                             dq_o=dq or 0, dq_oe=dq is not None, dqm=dqm)

    def write(self, cycle: int, ba: int, column: int, words: list[int], dqm: int = 0) -> None:
        for k, word in enumerate(words):
            self.data[cycle + k] = (word, dqm)
        self.at(cycle, Command.WRITE, ba, column)


def initialised() -> Chip:
    """A chip through power-up (cycles 10 to 30), with row 3 of bank 1 open at cycle 40."""
    chip = Chip()
    chip.at(10, Command.PRECHARGE, a=ALL_BANKS)
    chip.at(12, Command.REFRESH)
    chip.at(19, Command.REFRESH)
    chip.at(26, Command.MODE, a=mode_register(BURST, 2))
    chip.at(40, Command.ACTIVE, ba=1, a=3)
    return chip


def test_stores_and_returns_bursts_with_byte_masks():
    chip = initialised()
    chip.write(42, 1, 8, [0x1111, 0x2222, 0x3333, 0x4444])
    chip.write(46, 1, 8, [0xAAAA, 0xBBBB, 0xCCCC, 0xDDDD], dqm=0b01)  # high bytes only
    chip.at(50, Command.READ, ba=1, a=8)
    chip.at(51)
    out = [chip.model.output(cycle) for cycle in range(50, 57)]
    assert out == [None, None, 0xAA11, 0xBB22, 0xCC33, 0xDD44, None]
    assert chip.model.word((3 << 11) | (1 << 9) | 7) == chip.model.initial_word((3 << 11) | (1 << 9) | 7)


VIOLATIONS = {
    "power-up": ([(5, Command.PRECHARGE, 0, ALL_BANKS)], "ns of NOPs first"),
    "init order": ([(10, Command.REFRESH, 0, 0)], "before the PRECHARGE of all banks"),
    "refreshes before MODE": ([(10, Command.PRECHARGE, 0, ALL_BANKS), (12, Command.REFRESH, 0, 0),
                               (19, Command.MODE, 0, mode_register(BURST, 2))], "MODE after 1 auto refreshes"),
    "ACTIVE before MODE": ([(10, Command.PRECHARGE, 0, ALL_BANKS), (12, Command.ACTIVE, 0, 0)],
                           "before the mode register"),
    "tRCD": ([(41, Command.READ, 1, 0)], "tRCD"),
    "tRAS": ([(43, Command.PRECHARGE, 1, 0)], "tRAS"),
    "tRP": ([(45, Command.PRECHARGE, 1, 0), (46, Command.ACTIVE, 1, 4)], "tRP"),
    "tRC": ([(45, Command.PRECHARGE, 1, 0), (47, Command.ACTIVE, 1, 4)], "tRC"),
    "tRRD": ([(41, Command.ACTIVE, 2, 4)], "tRRD"),
    "tRFC": ([(45, Command.PRECHARGE, 1, 0), (60, Command.REFRESH, 0, 0), (66, Command.ACTIVE, 0, 4)], "tRFC"),
    "tMRD": ([(10, Command.PRECHARGE, 0, ALL_BANKS), (12, Command.REFRESH, 0, 0), (19, Command.REFRESH, 0, 0),
              (26, Command.MODE, 0, mode_register(BURST, 2)), (27, Command.ACTIVE, 0, 0)], "tMRD"),
    "READ to a closed bank": ([(42, Command.READ, 0, 0)], "no open row"),
    "ACTIVE to an open bank": ([(47, Command.ACTIVE, 1, 5)], "whose row 3 is open"),
    "REFRESH with a row open": ([(60, Command.REFRESH, 0, 0)], "while bank 1 has row 3 open"),
    "read burst cut short": ([(42, Command.READ, 1, 0), (44, Command.READ, 1, 4)], "cuts short"),
    "PRECHARGE cuts a read": ([(44, Command.READ, 1, 0), (46, Command.PRECHARGE, 1, 0)], "cuts its read burst"),
    "refresh interval": ([(45, Command.PRECHARGE, 1, 0), (26 + int(TIMING.t_refi / PERIOD) + 2, Command.NOP, 0, 0)],
                         "no auto refresh"),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_each_broken_rule_is_refused(name):
    commands, message = VIOLATIONS[name]
    chip = Chip() if commands[0][0] < 40 else initialised()
    with pytest.raises(SdramViolation, match=message):
        for cycle, command, ba, a in commands:
            chip.at(cycle, command, ba, a)


def test_write_recovery_and_write_data():
    chip = initialised()
    chip.write(45, 1, 0, [1, 2, 3, 4])
    with pytest.raises(SdramViolation, match="tWR"):
        chip.at(49, Command.PRECHARGE, ba=1)  # last data at 48: tWR needs 2 cycles
    chip = initialised()
    chip.data[45] = (1, 0)  # one word of four
    with pytest.raises(SdramViolation, match="not driven"):
        chip.at(45, Command.WRITE, ba=1)
        chip.at(47)


def test_dq_driven_by_both_sides():
    chip = initialised()
    chip.at(42, Command.READ, ba=1, a=0)
    chip.data[46] = (5, 0)
    with pytest.raises(SdramViolation, match="drives dq while the chip"):
        chip.at(46)
