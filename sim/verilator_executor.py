"""The `verilator` executor: runs a program on the RTL model, one call for the whole program."""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass

import numpy as np

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.csr_map import COUNTERS, MAGIC, Csr, ErrorCode, counter_address
from mvu.hdl.contract.program import Program, RunResult, check_program
from mvu.sim.verilator_model import build_model

__all__ = ["MemoryModel", "VerilatorExecutor", "SimulationError", "SimulationTimeout"]


class SimulationError(RuntimeError):
    """The RTL stopped with an error: an illegal instruction or a memory access out of range."""


class SimulationTimeout(SimulationError):
    """The program did not finish within its cycle limit."""


@dataclass(frozen=True)
class MemoryModel:
    """External memory as the simulation models it."""

    latency: int = 40               # cycles from request to first beat
    bytes_per_cycle: float = 32.0   # shared by reads and writes
    max_outstanding: int = 64       # read requests in flight
    capacity: int | None = None     # bytes it holds (None: the memory port's whole address space)

    def __post_init__(self):
        if self.latency < 1:
            raise ValueError(f"latency must be at least 1 cycle, not {self.latency}")
        if self.bytes_per_cycle <= 0:
            raise ValueError(f"bytes_per_cycle must be positive, not {self.bytes_per_cycle}")
        if self.max_outstanding < 1:
            raise ValueError(f"max_outstanding must be at least 1, not {self.max_outstanding}")


class _Library:
    def __init__(self, path):
        lib = ctypes.CDLL(str(path))
        handle, u32, u64 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64
        lib.mvu_sim_create.argtypes = [u32, ctypes.c_double, u32]
        lib.mvu_sim_create.restype = handle
        lib.mvu_sim_destroy.argtypes = [handle]
        lib.mvu_sim_memory.argtypes = [handle, u64]
        lib.mvu_sim_memory.restype = ctypes.POINTER(ctypes.c_uint8)
        lib.mvu_sim_reset.argtypes = [handle]
        lib.mvu_sim_csr_read.argtypes = [handle, u32]
        lib.mvu_sim_csr_read.restype = u32
        lib.mvu_sim_csr_write.argtypes = [handle, u32, u32]
        lib.mvu_sim_run.argtypes = [handle, u64, ctypes.POINTER(u64)]
        lib.mvu_sim_run.restype = ctypes.c_int
        lib.mvu_sim_memory_error.argtypes = [handle, ctypes.POINTER(ctypes.c_int)]
        lib.mvu_sim_memory_error.restype = u64
        self.lib = lib


class VerilatorExecutor:
    """Runs programs on the Verilator model of the core, built (once, cached) for ``config``."""

    name = "verilator"

    def __init__(self, config: HardwareConfig, memory_model: MemoryModel = MemoryModel()):
        self.config = config
        self.memory_model = memory_model
        self._lib = _Library(build_model(config)).lib
        self._handle = self._lib.mvu_sim_create(memory_model.latency, float(memory_model.bytes_per_cycle),
                                                memory_model.max_outstanding)
        self._lib.mvu_sim_reset(self._handle)
        magic = self._lib.mvu_sim_csr_read(self._handle, Csr.MAGIC)
        fingerprint = self._lib.mvu_sim_csr_read(self._handle, Csr.CONFIG_FINGERPRINT)
        if magic != MAGIC or fingerprint != config.fingerprint:
            raise SimulationError(f"the model answers magic {magic:#x}, configuration {fingerprint:#x}; "
                                  f"expected {MAGIC:#x}, {config.fingerprint:#x}")

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.mvu_sim_destroy(handle)

    @property
    def memory_bytes_per_cycle(self) -> float:
        return self.memory_model.bytes_per_cycle

    @property
    def memory_bytes(self) -> int | None:
        """The memory the simulated device holds (a board memory's capacity; None: the whole address space)."""
        return self.memory_model.capacity

    def default_cycle_limit(self, program: Program) -> int:
        """Generous: ten times a bandwidth-and-compute bound, plus latency per instruction."""
        cfg, mem = self.config, self.memory_model
        compute = program.macs / cfg.macs_per_cycle
        transfer = program.memory.size / mem.bytes_per_cycle
        return int(10 * (compute + transfer) + program.length * (mem.latency + 4 * (cfg.rows + cfg.cols)) + 10_000)

    def run(self, program: Program, *, max_cycles: int | None = None, check: bool = True) -> RunResult:
        """Run ``program``; its memory image is updated in place with what the core wrote.

        ``check=False`` skips the static checks, to exercise the hardware's own
        error detection.
        """
        if check:
            check_program(self.config, program.memory, program.address, program.length)
        lib, handle = self._lib, self._handle
        started = time.perf_counter()
        image = program.memory.data
        pointer = lib.mvu_sim_memory(handle, image.size)
        memory = np.ctypeslib.as_array(pointer, shape=(image.size,))
        memory[:] = image
        lib.mvu_sim_reset(handle)
        lib.mvu_sim_csr_write(handle, Csr.PROG_ADDR, program.address)
        lib.mvu_sim_csr_write(handle, Csr.PROG_LEN, program.length)
        lib.mvu_sim_csr_write(handle, Csr.CTRL, 1)
        limit = max_cycles if max_cycles is not None else self.default_cycle_limit(program)
        used = ctypes.c_uint64()
        status = lib.mvu_sim_run(handle, limit, ctypes.byref(used))
        wall = time.perf_counter() - started
        if status == 2:
            retired = lib.mvu_sim_csr_read(handle, Csr.RETIRED)
            raise SimulationTimeout(
                f"the program did not finish within {limit} cycles ({retired} of {program.length} "
                f"instructions dispatched): a hang, or raise max_cycles")
        if status == 3:
            kind = ctypes.c_int()
            address = lib.mvu_sim_memory_error(handle, ctypes.byref(kind))
            what = "read" if kind.value == 1 else "write"
            raise SimulationError(f"memory {what} at {address:#x} outside the {image.size}-byte memory")
        if status == 1:
            code = ErrorCode(lib.mvu_sim_csr_read(handle, Csr.ERROR_CODE))
            pc = lib.mvu_sim_csr_read(handle, Csr.ERROR_PC)
            raise SimulationError(f"the core stopped with {code.name} at instruction {pc}")
        image[:] = memory
        counters = {}
        for index, (name, _) in enumerate(COUNTERS):
            low = lib.mvu_sim_csr_read(handle, counter_address(index))
            high = lib.mvu_sim_csr_read(handle, counter_address(index) + 1)
            counters[name] = high << 32 | low
        return RunResult(backend=self.name, wall_seconds=wall, instructions=program.length, counters=counters)
