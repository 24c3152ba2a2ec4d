"""The whole board simulated: :class:`~mvu.hdl.link_soc.LinkSoc` (UART, host link, core, on-chip memory)
built by Verilator with sim/board_harness.cpp, which bridges its serial line to a TCP port. The host's
`board` executor then reaches it at ``socket://127.0.0.1:PORT``, through the same transport code as a
real board's serial port. Builds are cached like the core's model."""

from __future__ import annotations

import hashlib
import os
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

__all__ = ["build_board_sim", "SimulatedBoard", "SIMULATION_DIVISOR"]

_HARNESS = Path(__file__).with_name("board_harness.cpp")
#: Clock cycles per bit on the simulated UART: far faster than a real board's, the same logic.
SIMULATION_DIVISOR = 4
_FLAGS = ["-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert", "-Wno-fatal", "-Wno-lint", "-Wno-style"]


def build_board_sim(config: HardwareConfig, *, memory_bytes: int = 1 << 20, divisor: int = SIMULATION_DIVISOR) -> Path:
    """The simulator's executable for ``config`` (built once, then from the cache)."""
    from mvu.hdl.block_ram_memory import BlockRamMemory
    from mvu.hdl.link_soc import LinkSoc
    from mvu.hdl.memory_arbiter import ID_BITS

    digest = hashlib.sha256(repr((config.to_dict(), memory_bytes, divisor, _FLAGS)).encode())
    digest.update(hdl_sources() + _HARNESS.read_bytes())
    digest.update(f"amaranth={metadata.version('amaranth')} verilator={metadata.version('verilator')}".encode())
    target = cache_dir() / "board_sim" / digest.hexdigest()[:20]
    binary = target / "board_sim"
    if binary.exists():
        return binary
    work = Path(tempfile.mkdtemp(prefix="mvu-board-", dir=cache_dir()))
    try:
        soc = LinkSoc(config, divisor=divisor,
                      memory=BlockRamMemory(config.mem_bytes, memory_bytes, id_bits=ID_BITS))
        (work / "link_soc.v").write_text(component_verilog(soc, "link_soc"))
        shutil.copy(_HARNESS, work / "board_harness.cpp")
        command = [str(verilator_root() / "bin" / "verilator"), "--cc", "link_soc.v", "--top-module", "link_soc",
                   "--exe", "board_harness.cpp", "-o", "board_sim", "--Mdir", "obj", *_FLAGS,
                   "--build", "-j", str(max(1, min(os.cpu_count() or 1, 4)))]
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
    """A running simulated board; :attr:`port` is what ``--port`` takes. Use as a context manager."""

    def __init__(self, config: HardwareConfig, *, memory_bytes: int = 1 << 20, divisor: int = SIMULATION_DIVISOR):
        binary = build_board_sim(config, memory_bytes=memory_bytes, divisor=divisor)
        self._folder = Path(tempfile.mkdtemp(prefix="mvu-board-sim-"))
        port_file = self._folder / "port"
        self.process = subprocess.Popen([str(binary), str(divisor), str(port_file)], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().endswith("\n"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the simulated board did not start listening")
            time.sleep(0.01)
        self.port = f"socket://127.0.0.1:{int(port_file.read_text())}"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> "SimulatedBoard":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
