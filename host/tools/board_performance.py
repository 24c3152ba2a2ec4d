"""Modelled performance on a board: the board's memory in the simulator, and the clock its cycles are timed at.

``--memory`` names the simulated memory: ``simulator`` (the simulator's generic model: 40 cycles latency, a
beat per cycle), a board memory of :data:`~mvu.sim.board_memory.BOARD_MEMORIES` (``ulx3s-sdram``), or
``auto``: the board's memory when the configuration is a board's preset (``--config ulx3s-85f``), else
``simulator``. With a board memory, cycles are timed at the achieved Fmax of the board's cached build for
the current design (``mvu build --board``, ``~/.cache/mvu/bitstreams``) when there is one, else at the
configuration's ``clock_mhz``; the memory model is derived at that same clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mvu.hdl.board_build import BOARDS, cached_build
from mvu.hdl.contract.config import HardwareConfig
from mvu.sim.board_memory import BOARD_MEMORIES, board_memory_model, memory_of_board
from mvu.sim.verilator_executor import MemoryModel

__all__ = ["MEMORY_CHOICES", "BoardClock", "SimulatedMemory", "board_clock", "board_of", "simulated_memory"]

#: What ``--memory`` takes.
MEMORY_CHOICES = ("auto", "simulator", *BOARD_MEMORIES)


@dataclass(frozen=True)
class BoardClock:
    """The clock that cycles are timed at, and where it comes from."""

    mhz: float
    source: str


@dataclass(frozen=True)
class SimulatedMemory:
    """The memory the simulator models (``model`` None: the verilator backend's default) and the clock."""

    name: str
    model: MemoryModel | None
    clock: BoardClock

    def to_dict(self) -> dict:
        model = self.model and {"latency_cycles": self.model.latency, "bytes_per_cycle": self.model.bytes_per_cycle,
                                "max_outstanding": self.model.max_outstanding}
        return {"name": self.name, "model": model, "clock_mhz": self.clock.mhz, "clock_source": self.clock.source}


def board_of(config: HardwareConfig) -> str | None:
    """The board whose preset ``config`` is (None: no board's)."""
    return next((name for name, board in BOARDS.items() if board.config() == config), None)


def board_clock(board: str, config: HardwareConfig) -> BoardClock:
    """The achieved Fmax (the slowest clock's) of ``board``'s cached build of ``config`` for the current
    ``hdl/`` sources, else ``config.clock_mhz``."""
    build = cached_build(board, config)
    if build is None:
        return BoardClock(config.clock_mhz, f"the configuration's clock_mhz: no cached {board} build of the "
                                            f"current design (mvu build --board {board})")
    achieved = min(clock["achieved"] for clock in build["fmax"].values())
    return BoardClock(achieved, f"the achieved Fmax of the cached {board} build in {Path(build['bitstream']).parent}")


def simulated_memory(memory: str, config: HardwareConfig) -> SimulatedMemory:
    """What ``--memory`` ``memory`` means for ``config`` (see the module's docstring)."""
    if memory not in MEMORY_CHOICES:
        raise ValueError(f"no memory {memory!r}; choose one of {', '.join(MEMORY_CHOICES)}")
    board = board_of(config)
    if memory == "auto":
        memory = (board and memory_of_board(board)) or "simulator"
    if memory == "simulator":
        return SimulatedMemory(memory, None, BoardClock(config.clock_mhz, "the configuration's clock_mhz"))
    clock = board_clock(BOARD_MEMORIES[memory].board, config)
    return SimulatedMemory(memory, board_memory_model(memory, config, clock.mhz), clock)
