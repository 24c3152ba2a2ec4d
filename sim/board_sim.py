"""The whole board simulated: :class:`~mvu.hdl.link_soc.LinkSoc` (UART, host link, core, memory) built by
Verilator with sim/board_harness.cpp, which bridges its serial line to a TCP port. The host's `board` executor
then reaches it at ``socket://127.0.0.1:PORT``, through the same transport code as a real board's serial port.

The memory is the board's choice (:data:`MEMORIES`): ``"bram"``, on-chip memory of ``memory_bytes``, or
``"sdram"``, the ULX3S's SDRAM controller (:func:`~mvu.hdl.board_soc.board_sdram`) on the behavioural chip of
sim/sdram_chip.h, which checks the chip's timing rules and ends the simulation on a breach. Builds are cached
like the core's model."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.toolchain import cache_dir
from mvu.hdl.verilog import component_verilog
from mvu.sim.toolchain import tool_environment, verilator_root
from mvu.sim.verilator_model import hdl_sources

__all__ = ["build_board_sim", "SimulatedBoard", "SimulatedBoardError", "SIMULATION_DIVISOR", "MEMORIES"]

_HARNESS = Path(__file__).with_name("board_harness.cpp")
_CHIP = Path(__file__).with_name("sdram_chip.h")
#: Clock cycles per bit on the simulated UART: far faster than a real board's, the same logic.
SIMULATION_DIVISOR = 4
_FLAGS = ["-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert", "-Wno-fatal", "-Wno-lint", "-Wno-style"]
#: The harness's exit status when the SDRAM chip saw a rule broken.
_VIOLATION = 3


class SimulatedBoardError(RuntimeError):
    """The simulated board stopped on its own: its SDRAM chip saw a timing rule broken, or it crashed."""


def _block_ram(config: HardwareConfig, memory_bytes: int | None):
    """On-chip memory of ``memory_bytes`` (default 1 MB), and a harness without a chip."""
    from mvu.hdl.block_ram_memory import BlockRamMemory
    from mvu.hdl.memory_arbiter import ID_BITS

    return BlockRamMemory(config.mem_bytes, memory_bytes or 1 << 20, id_bits=ID_BITS), "#define MVU_SDRAM 0\n"


def _sdram(config: HardwareConfig, memory_bytes: int | None):
    """The ULX3S's SDRAM controller at the configuration's clock, and the chip for the harness."""
    from mvu.hdl.board_soc import board_sdram

    controller = board_sdram(config)
    timing, geometry = dataclasses.asdict(controller.timing), controller.geometry
    values = ", ".join(f".{name} = {value!r}" for name, value in timing.items() if name != "cas_latency")
    header = (f'#define MVU_SDRAM 1\n#include "sdram_chip.h"\n'
              f"static const sdram::Timing SDRAM_TIMING = {{{values}}};\n"
              f"static const sdram::Geometry SDRAM_GEOMETRY = {{{geometry.row_bits}, {geometry.col_bits}, "
              f"{geometry.bank_bits}}};\n"
              f"static const double SDRAM_PERIOD_NS = {1e3 / config.clock_mhz!r};\n"
              f"static const int SDRAM_READ_DELAY = {controller.read_delay};\n")
    return controller, header


#: The memories a simulated board can have: the SoC's memory and the harness's board_config.h for a
#: configuration and ``memory_bytes`` (the block RAM's; the SDRAM is its chip's 32 MB).
MEMORIES = {"bram": _block_ram, "sdram": _sdram}


def build_board_sim(config: HardwareConfig, *, memory: str = "bram", memory_bytes: int | None = None,
                    divisor: int = SIMULATION_DIVISOR) -> Path:
    """The simulator's executable for ``config`` with ``memory`` (one of :data:`MEMORIES`; ``memory_bytes``:
    the block RAM's size, or None), built once, then from the cache."""
    from mvu.hdl.link_soc import LinkSoc

    if memory not in MEMORIES:
        raise ValueError(f"a simulated board's memory is one of {', '.join(MEMORIES)}, not {memory!r}")
    if memory == "sdram" and memory_bytes is not None:
        raise ValueError("memory_bytes sizes on-chip memory; the simulated SDRAM is the ULX3S's 32 MB chip")
    digest = hashlib.sha256(repr((config.to_dict(), memory, memory_bytes, divisor, _FLAGS)).encode())
    digest.update(hdl_sources() + _HARNESS.read_bytes() + _CHIP.read_bytes())
    digest.update(f"amaranth={metadata.version('amaranth')} verilator={metadata.version('verilator')}".encode())
    target = cache_dir() / "board_sim" / digest.hexdigest()[:20]
    binary = target / "board_sim"
    if binary.exists():
        return binary
    work = Path(tempfile.mkdtemp(prefix="mvu-board-", dir=cache_dir()))
    try:
        memory_block, header = MEMORIES[memory](config, memory_bytes)
        soc = LinkSoc(config, divisor=divisor, memory=memory_block)
        (work / "link_soc.v").write_text(component_verilog(soc, "link_soc"))
        (work / "board_config.h").write_text(header)
        for source in (_HARNESS, _CHIP):
            shutil.copy(source, work / source.name)
        command = [str(verilator_root() / "bin" / "verilator"), "--cc", "link_soc.v", "--top-module", "link_soc",
                   "--exe", "board_harness.cpp", "-o", "board_sim", "--Mdir", "obj", *_FLAGS, "--build", "-j", str(max(1, min(os.cpu_count() or 1, 4)))]
        result = subprocess.run(command, cwd=work, env=tool_environment(), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"Verilator build of the simulated board failed:\n{result.stdout[-3000:]}"
                               f"{result.stderr[-3000:]}")
        staged = work / "staged"
        staged.mkdir()
        shutil.copy(work / "obj" / "board_sim", staged / "board_sim")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            staged.rename(target)
        except OSError:
            if not binary.exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return binary


class SimulatedBoard:
    """A running simulated board; :attr:`port` is what ``--port`` takes. Use as a context manager.

    :meth:`close` stops it and raises :class:`SimulatedBoardError` when it had stopped on its own (an SDRAM
    timing rule broken: the rule is in the message); then :attr:`sdram_commands` holds the commands its SDRAM
    chip saw, by name (empty without an SDRAM)."""

    def __init__(self, config: HardwareConfig, *, memory: str = "bram", memory_bytes: int | None = None,
                 divisor: int = SIMULATION_DIVISOR):
        binary = build_board_sim(config, memory=memory, memory_bytes=memory_bytes, divisor=divisor)
        self._folder = Path(tempfile.mkdtemp(prefix="mvu-board-sim-"))
        self.sdram_commands: dict[str, int] = {}
        port_file, self._log = self._folder / "port", self._folder / "log"
        with self._log.open("w") as log:
            self.process = subprocess.Popen([str(binary), str(divisor), str(port_file)], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().endswith("\n"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the simulated board did not start listening: {self._log.read_text()[-2000:]}")
            time.sleep(0.01)
        self.port = f"socket://127.0.0.1:{int(port_file.read_text())}"

    def close(self) -> None:
        stopped_itself = self.process.poll() is not None
        if not stopped_itself:
            self.process.terminate()
        status = self.process.wait(10)
        output = self._log.read_text()
        shutil.rmtree(self._folder, ignore_errors=True)
        if found := re.search(r"^sdram commands:(.*)$", output, re.MULTILINE):
            self.sdram_commands = {name: int(count) for name, count in re.findall(r"(\w+)=(\d+)", found.group(1))}
        if status == _VIOLATION or (stopped_itself and status != 0):
            raise SimulatedBoardError(f"the simulated board stopped (status {status}): {output[-2000:].strip()}")

    def __enter__(self) -> "SimulatedBoard":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
