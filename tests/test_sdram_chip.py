"""The C++ SDRAM chip of the whole-board simulation (sim/sdram_chip.h) against the same cases as the bench's
Python chip (test_sdram_model.py): it keeps data, returns bursts with byte masks, and stops the simulation
on each broken rule, naming it."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
from test_sdram_model import ALL_BANKS, BURST, PERIOD, TIMING, VIOLATIONS

from mvu.hdl.sdram_controller import Command, SdramGeometry, mode_register

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler (g++)")

SIM = Path(__file__).parents[1] / "sim"
#: The harness's exit status on a broken rule.
VIOLATION = 3


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("sdram_chip") / "driver"
    subprocess.run(["g++", "-std=c++17", "-O1", "-Wall", "-Werror", f"-I{SIM}", "-o", str(binary),
                    str(Path(__file__).with_name("sdram_chip_driver.cpp"))], check=True)
    return binary


class Script:
    """Pins cycle by cycle, as test_sdram_model.Chip drives its model: :meth:`at` issues a command at a cycle
    (NOPs between), :meth:`write` drives a burst's data from its WRITE on."""

    def __init__(self):
        self.lines: list[str] = []
        self.cycle = -1
        self.data: dict[int, tuple[int, int]] = {}

    def at(self, cycle: int, command: Command = Command.NOP, ba: int = 0, a: int = 0) -> Script:
        while self.cycle < cycle:
            self.cycle += 1
            now = command if self.cycle == cycle else Command.NOP
            dq, dqm = self.data.pop(self.cycle, (None, 0))
            ba_a = (ba, a) if self.cycle == cycle else (0, 0)
            self.lines.append(f"{self.cycle} 1 1 {now >> 2 & 1} {now >> 1 & 1} {now & 1} {ba_a[0]} {ba_a[1]} "
                              f"{dq or 0} {int(dq is not None)} {dqm}")
        return self

    def write(self, cycle: int, ba: int, column: int, words: list[int], dqm: int = 0) -> Script:
        for k, word in enumerate(words):
            self.data[cycle + k] = (word, dqm)
        return self.at(cycle, Command.WRITE, ba, column)

    def run(self, driver: Path) -> subprocess.CompletedProcess:
        geometry, timing = SdramGeometry(), dataclasses.asdict(TIMING)
        timing.pop("cas_latency")
        arguments = [PERIOD, geometry.row_bits, geometry.col_bits, geometry.bank_bits, *timing.values()]
        return subprocess.run([str(driver), *map(str, arguments)], input="\n".join(self.lines) + "\n",
                              capture_output=True, text=True)


def initialised() -> Script:
    """Power-up as test_sdram_model.initialised: row 3 of bank 1 open at cycle 40."""
    return (Script().at(10, Command.PRECHARGE, a=ALL_BANKS).at(12, Command.REFRESH).at(19, Command.REFRESH)
            .at(26, Command.MODE, a=mode_register(BURST, 2)).at(40, Command.ACTIVE, ba=1, a=3))


def test_stores_and_returns_bursts_with_byte_masks(driver):
    script = initialised().write(42, 1, 8, [0x1111, 0x2222, 0x3333, 0x4444])
    script.write(46, 1, 8, [0xAAAA, 0xBBBB, 0xCCCC, 0xDDDD], dqm=0b01)  # high bytes only
    script.at(50, Command.READ, ba=1, a=10).at(60)  # a burst from column 10 wraps within its 4 words
    result = script.run(driver)
    assert result.returncode == 0, result.stderr
    driven = [tuple(map(int, line.split())) for line in result.stdout.splitlines()]
    assert driven == [(52, 0xCC33), (53, 0xDD44), (54, 0xAA11), (55, 0xBB22)]


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_each_broken_rule_stops_the_simulation(driver, name):
    commands, message = VIOLATIONS[name]
    script = Script() if commands[0][0] < 40 else initialised()
    for cycle, command, ba, a in commands:
        script.at(cycle, command, ba, a)
    result = script.run(driver)
    assert result.returncode == VIOLATION and message in result.stderr, (result.returncode, result.stderr)


def test_write_recovery_write_data_and_dq_driven_by_both_sides(driver):
    cases = {
        "tWR": initialised().write(45, 1, 0, [1, 2, 3, 4]).at(49, Command.PRECHARGE, ba=1),
        "not driven": initialised().write(45, 1, 0, [1]).at(47),
    }
    both = initialised().at(42, Command.READ, ba=1, a=0)
    both.data[46] = (5, 0)
    cases["drives dq while the chip"] = both.at(46)
    for message, script in cases.items():
        result = script.run(driver)
        assert result.returncode == VIOLATION and message in result.stderr, (message, result.stderr)
