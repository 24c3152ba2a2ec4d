"""The executor each model version runs on: ``mvu serve --backend`` and its options (a board's ``port`` and
``baud``). A board is a device that one process opens once: every version (two during a rolling update) and
every model shares its executor, one program at a time; the other backends build one per version."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from mvu.hdl.contract.config import HardwareConfig
from mvu.hdl.contract.program import Program, RunResult
from mvu.host.executors import Executor, make_executor

__all__ = ["ServingBackend"]

#: Backends whose executor holds a device: one per hardware configuration in the process, shared.
_SHARED = {"board"}


class _OneAtATime:
    """An executor that several worker threads share: one program runs at a time."""

    def __init__(self, executor: Executor):
        self.executor, self.name = executor, executor.name
        self._lock = threading.Lock()

    @property
    def memory_bytes_per_cycle(self) -> float | None:
        return self.executor.memory_bytes_per_cycle

    def run(self, program: Program) -> RunResult:
        with self._lock:
            return self.executor.run(program)


@dataclass
class ServingBackend:
    """Builds the executors of the served model versions (on their worker threads)."""

    name: str = "reference"
    options: dict = field(default_factory=dict)  # make_executor's options: port and baud for a board
    _shared: dict[HardwareConfig, _OneAtATime] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def executor(self, config: HardwareConfig) -> Executor | None:
        """The executor for a version built for ``config`` (None for numpy, which runs no programs)."""
        if self.name not in _SHARED:
            return make_executor(self.name, config, **self.options)
        with self._lock:  # two versions loading at once open the device once
            if config not in self._shared:
                self._shared[config] = _OneAtATime(make_executor(self.name, config, **self.options))
            return self._shared[config]
