"""Executors run programs: the reference interpreter and the RTL; ``BACKENDS`` names every way a model's
products can run, and :func:`make_executor` builds one by name.

``numpy`` is the one backend without an executor: it computes each product from its definition
(:func:`mvu.host.gemm.golden_gemm`), with the same results, to evaluate models quickly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.program import Program, RunResult

__all__ = ["Executor", "Backend", "BACKENDS", "FIXED_WEIGHTS", "make_executor"]

#: A key of :attr:`Program.notes <mvu.hdl.contract.program.Program.notes>`: ``True`` where the program's owner
#: promises that its weights (the bytes its weight LOADs read) stay as they are from run to run, because it writes
#: nothing into the program's memory between runs but the inputs (the runner, for the programs it builds). An
#: executor may then check or copy them on the first run only; without the note, it must read them on every run.
FIXED_WEIGHTS = "fixed weights"


class Executor(Protocol):
    """Runs a program in its memory image, changing that memory as the hardware would."""

    #: The backend's name, as :data:`BACKENDS` knows it.
    name: str

    @property
    def memory_bytes_per_cycle(self) -> float | None:
        """The memory bandwidth that programs for this executor are tiled for (None: the port's width)."""

    def run(self, program: Program) -> RunResult:
        """Runs ``program`` to its FINISH; returns the counters it read."""

    #: An executor may also state ``memory_bytes``, the memory its device holds (a board's); without it, programs
    #: may use the memory port's whole address space.


def _reference(config: HardwareConfig, **_options) -> Executor:
    from mvu.host.executors.reference import ReferenceExecutor

    return ReferenceExecutor(config)


def _verilator(config: HardwareConfig, *, latency: int = 40, bytes_per_cycle: float | None = None,
               **_options) -> Executor:
    from mvu.sim.verilator_executor import MemoryModel, VerilatorExecutor

    bandwidth = float(bytes_per_cycle if bytes_per_cycle is not None else config.mem_bytes)
    return VerilatorExecutor(config, MemoryModel(latency=latency, bytes_per_cycle=bandwidth))


def _board(config: HardwareConfig, *, port: str | None = None, baud: int = 3_000_000, **_options) -> Executor:
    from mvu.host.executors.board import BoardExecutor
    from mvu.host.executors.link import LinkError

    if not port:
        raise LinkError("the board backend needs the board's serial port (--port /dev/ttyUSB0)")
    return BoardExecutor(config, port, baud=baud)


@dataclass(frozen=True)
class Backend:
    """One way to run a model's products."""

    name: str
    description: str
    #: Builds the executor from the configuration and options (``latency`` and ``bytes_per_cycle`` model the
    #: simulator's memory; ``port`` and ``baud`` find a board); None for a backend that runs no programs.
    make: Callable[..., Executor] | None
    #: Seconds per layer: worth showing progress, and worth building programs only when asked for.
    slow: bool = False


BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (
    Backend("reference", "the instruction set's bit-exact interpreter", _reference),
    Backend("verilator", "the RTL, simulated by Verilator", _verilator, slow=True),
    Backend("board", "an FPGA board over its serial host link (--port)", _board, slow=True),
    Backend("numpy", "each product from its definition, without programs (same results)", None),
)}


def make_executor(backend: str, config: HardwareConfig, **options) -> Executor | None:
    """The executor of ``backend`` for ``config`` (None for ``numpy``); ``options`` go to its maker."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(map(repr, BACKENDS))}")
    make = BACKENDS[backend].make
    return None if make is None else make(config, **options)
