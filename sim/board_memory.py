"""Boards' memories as the simulator models them: a :class:`MemoryModel` derived from a board's memory controller.

``ulx3s-sdram`` is the core's memory port on the ULX3S's 32 MB 16-bit SDR SDRAM through
:class:`~mvu.hdl.sdram_controller.SdramController` (CAS latency 2, the chip on the inverted clock:
``read_delay=-1``, the bench's ``ulx3s`` variant). Its numbers are derived from the controller's timing
parameters (:class:`~mvu.hdl.sdram_controller.SdramTiming` in cycles of the clock), not from the bench's
measurements, which they reproduce within 1 % (docs/board-latency.md):

- ``latency``: a row hit's first beat, ``2 + CAS latency + read_delay + words`` cycles after the controller
  takes the request (issuing the READ, the command register, CAS latency, the input register, the beat's
  other words). Sequential traffic, the core's (tile loads and stores, instruction fetch), hits an open row
  on 98 % of its bursts; the next bank's row is opened ahead in free command slots.
- ``bytes_per_cycle``: the 2-byte bus, a word a cycle, less what each auto refresh costs it: closing the
  banks (tRP), the refresh (tRFC) and reopening the row (tRCD), once per refresh interval. Reads and writes
  share it, as they share the bus; a read after a write's turnaround cycle and row misses are not counted.
- ``capacity``: the board's memory (:data:`~mvu.hdl.board_build.BOARDS`).
- ``max_outstanding``: the controller takes one job at a time, a one-beat read every ``words`` cycles,
  each answered ``latency`` cycles after it was taken: that many reads are in flight at most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mvu.hdl.board_build import BOARDS
from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.sdram_controller import WORD_BITS, SdramTiming
from mvu.sim.verilator_executor import MemoryModel

__all__ = ["SdramMemory", "BOARD_MEMORIES", "board_memory_model", "memory_of_board"]

_BUS_BYTES = WORD_BITS // 8


@dataclass(frozen=True)
class SdramMemory:
    """A board's SDR SDRAM behind :class:`~mvu.hdl.sdram_controller.SdramController`."""

    board: str
    description: str
    timing: SdramTiming = SdramTiming()
    read_delay: int = 0

    def memory_model(self, beat_bytes: int, clock_mhz: float) -> MemoryModel:
        """The controller's latency, sustained bandwidth and reads in flight for beats of ``beat_bytes``
        at ``clock_mhz`` (the module's docstring says how each is derived)."""
        cycles = self.timing.cycles(clock_mhz * 1e6)
        words = beat_bytes // _BUS_BYTES
        latency = 2 + cycles.cas_latency + self.read_delay + words
        refresh_cost = cycles.rp + cycles.rfc + cycles.rcd
        bandwidth = _BUS_BYTES * cycles.refresh / (cycles.refresh + refresh_cost)
        return MemoryModel(latency=latency, bytes_per_cycle=bandwidth, max_outstanding=math.ceil(latency / words),
                           capacity=BOARDS[self.board].memory_bytes)


#: Memory name -> the board memory it models.
BOARD_MEMORIES: dict[str, SdramMemory] = {
    "ulx3s-sdram": SdramMemory("ulx3s", "the ULX3S's 32 MB 16-bit SDR SDRAM (hdl/sdram_controller.py), CAS 2",
                               SdramTiming(cas_latency=2), read_delay=-1),
}


def board_memory_model(name: str, config: HardwareConfig, clock_mhz: float) -> MemoryModel:
    """The memory model of ``BOARD_MEMORIES[name]`` for ``config``'s memory port at ``clock_mhz``."""
    if name not in BOARD_MEMORIES:
        raise ValueError(f"no board memory {name!r}; board memories: {', '.join(BOARD_MEMORIES)}")
    return BOARD_MEMORIES[name].memory_model(config.mem_bytes, clock_mhz)


def memory_of_board(board: str) -> str | None:
    """The name of ``board``'s memory in :data:`BOARD_MEMORIES` (None: it has none modelled)."""
    return next((name for name, memory in BOARD_MEMORIES.items() if memory.board == board), None)
