"""The `board` executor: runs programs on an FPGA board over its host link (docs/host-link.md).

The board's memory keeps what was uploaded, so only the parts of a program's memory image that changed
since the last run cross the link (after the first run: the input activations), and only what the
program's STOREs write comes back."""

from __future__ import annotations

import time

import numpy as np

from mvu.hdl.contract.config import INSTRUCTION_BYTES, HardwareConfig
from mvu.hdl.contract.csr_map import COUNTERS, MAGIC, Csr, ErrorCode, Status
from mvu.hdl.contract.host_link import PROTOCOL_VERSION
from mvu.hdl.contract.isa import Opcode, decode_columns
from mvu.hdl.contract.program import Program, RunResult, check_program
from mvu.host.executors.link import Link, LinkError

__all__ = ["BoardExecutor", "written_ranges", "BLOCK"]

#: Upload granularity: a block of the memory image is sent when any of its bytes changed.
BLOCK = 4096


def written_ranges(config: HardwareConfig, program: Program) -> list[tuple[int, int]]:
    """``[start, stop)`` byte ranges the program's STOREs write, merged."""
    words = program.memory.read(program.address, program.length * INSTRUCTION_BYTES).reshape(-1, INSTRUCTION_BYTES)
    columns = decode_columns(words)
    store = columns["opcode"] == Opcode.STORE
    width = np.where(columns["raw"][store] != 0, 4 * config.cols, config.cols)
    ranges = []
    for address, stride, count, row in zip(columns["dram_addr"][store], columns["dram_stride"][store],
                                           columns["count"][store], width):
        if stride == row:
            ranges.append((int(address), int(address + count * row)))
        else:
            ranges += [(int(address + i * stride), int(address + i * stride + row)) for i in range(int(count))]
    merged: list[list[int]] = []
    for start, stop in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [(start, stop) for start, stop in merged]


def _changed_runs(old: np.ndarray, new: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` runs of :data:`BLOCK`-sized blocks of ``new`` that differ from ``old``."""
    size = -(-new.size // BLOCK) * BLOCK
    a, b = np.zeros(size, np.uint8), np.zeros(size, np.uint8)
    a[:min(old.size, size)], b[:new.size] = old[:size], new
    changed = (a.reshape(-1, BLOCK) != b.reshape(-1, BLOCK)).any(axis=1)
    changed[old.size // BLOCK:] = True  # never uploaded
    edges = np.flatnonzero(np.diff(np.concatenate([[0], changed.astype(np.int8), [0]])))
    return [(int(start) * BLOCK, min(int(stop) * BLOCK, new.size)) for start, stop in zip(edges[::2], edges[1::2])]


class BoardExecutor:
    """Runs programs on the board on serial ``port`` (a device path, or a pyserial URL such as
    ``socket://HOST:PORT``), built for ``config``."""

    name = "board"
    memory_bytes_per_cycle = None

    def __init__(self, config: HardwareConfig, port: str, *, baud: int = 3_000_000, timeout: float = 1.0,
                 retries: int = 5, run_timeout: float = 600.0):
        import serial

        self.config, self.port, self.run_timeout = config, port, run_timeout
        try:
            self._serial = serial.serial_for_url(port, baudrate=baud, timeout=timeout)
        except (serial.SerialException, ValueError) as error:
            raise LinkError(f"no serial port {port} ({error.args[-1] if error.args else error})") from None
        self.link = Link(self._serial, name=f"the board on {port}", retries=retries)
        version, _ = self.link.ping()
        if version != PROTOCOL_VERSION:
            raise LinkError(f"the board on {port} speaks host-link version {version}; this mvu speaks "
                            f"{PROTOCOL_VERSION}: build its bitstream with this mvu")
        magic, fingerprint = self.link.read_csrs(Csr.MAGIC, 2)
        if magic != MAGIC:
            raise LinkError(f"the board on {port} answers but is not an mvu core (magic {magic:#010x})")
        if fingerprint != config.fingerprint:
            raise LinkError(f"the board on {port} runs a bitstream for another configuration (fingerprint "
                            f"{fingerprint:#010x}; {config.describe()} is {config.fingerprint:#010x}): build and "
                            "program one for this configuration with `mvu build --board ...`")
        #: Bytes of memory on the board (its host link refuses READs beyond them).
        self.memory_bytes = self.link.memory_bytes()
        self._board_memory = np.zeros(0, np.uint8)  # what the board holds, as far as this executor wrote it

    def close(self) -> None:
        self._serial.close()

    def run(self, program: Program) -> RunResult:
        """Uploads what changed, runs ``program``, and reads back what its STOREs wrote into its image."""
        check_program(self.config, program.memory, program.address, program.length)
        if program.memory.size > self.memory_bytes:
            raise LinkError(f"the program needs {program.memory.size:,} bytes of memory; the board on {self.port} "
                            f"holds {self.memory_bytes:,}")
        started = time.perf_counter()
        image = program.memory.data
        for start, stop in _changed_runs(self._board_memory, image):
            self.link.write(start, image[start:stop].tobytes())
        mirror = np.zeros(max(image.size, self._board_memory.size), np.uint8)
        mirror[:self._board_memory.size] = self._board_memory
        mirror[:image.size] = image
        self.link.write_csr(Csr.PROG_ADDR, program.address)
        self.link.write_csr(Csr.PROG_LEN, program.length)
        self.link.write_csr(Csr.CTRL, 1)
        self._wait(program)
        for start, stop in written_ranges(self.config, program):
            image[start:stop] = np.frombuffer(self.link.read(start, stop - start), np.uint8)
            mirror[start:stop] = image[start:stop]
        self._board_memory = mirror
        words = self.link.read_csrs(Csr.COUNTER_BASE, 2 * len(COUNTERS))
        counters = {name: words[2 * i + 1] << 32 | words[2 * i] for i, (name, _) in enumerate(COUNTERS)}
        return RunResult(backend=self.name, wall_seconds=time.perf_counter() - started,
                         instructions=program.length, counters=counters)

    def _wait(self, program: Program) -> None:
        deadline = time.monotonic() + self.run_timeout
        while not (status := self.link.read_csrs(Csr.STATUS)[0]) & Status.DONE:
            if time.monotonic() > deadline:
                raise LinkError(f"the board on {self.port} did not finish the program within {self.run_timeout:g} s")
            time.sleep(0.001)
        if status & Status.ERROR:
            code, pc = self.link.read_csrs(Csr.ERROR_CODE, 2)
            raise LinkError(f"the board stopped with {ErrorCode(code).name} at instruction {pc}")
