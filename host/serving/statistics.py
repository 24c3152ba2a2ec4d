"""Triton's inference statistics of one model version: requests by outcome and phase, batches by size.

Requests are counted on the event loop, batches on the version's worker thread: each counter has one writer,
so a reader may see one a request ahead of another, never a torn value.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

__all__ = ["ModelStatistics"]

#: Triton's request phases -> the phases of :class:`~mvu.host.serving.tensors.InferenceResult`'s timings.
_PHASES = {"queue": "queue", "compute_input": "preprocess", "compute_infer": "executor"}


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += round(seconds * 1e9)

    def to_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


class ModelStatistics:
    """What ``get_inference_statistics`` reports of one version (the ``ModelStatistics`` message as JSON)."""

    def __init__(self) -> None:
        self.success, self.fail = _Duration(), _Duration()
        self.phases = {phase: _Duration() for phase in (*_PHASES, "compute_output")}
        self.inferences = 0  # images
        self.executions = 0  # batches
        self.batches: defaultdict[int, _Duration] = defaultdict(_Duration)
        self.last_inference_ms = 0

    def request(self, timings_ms: dict[str, float], output_seconds: float, images: int) -> None:
        """A request answered: its phase timings (ms), the time its outputs took to make, how many images."""
        self.success.add(timings_ms["total"] / 1e3)
        for phase, timing in _PHASES.items():
            self.phases[phase].add(timings_ms[timing] / 1e3)
        self.phases["compute_output"].add(output_seconds)
        self.inferences += images
        self.last_inference_ms = int(time.time() * 1e3)

    def failure(self, seconds: float) -> None:
        self.fail.add(seconds)

    def batch(self, size: int, seconds: float) -> None:
        """A batch of ``size`` images that the executor ran in ``seconds``."""
        self.executions += 1
        self.batches[size].add(seconds)

    def to_dict(self, name: str, version: str) -> dict:
        zero = {"count": 0, "ns": 0}
        return {"name": name, "version": version, "last_inference": self.last_inference_ms,
                "inference_count": self.inferences, "execution_count": self.executions,
                "inference_stats": {"success": self.success.to_dict(), "fail": self.fail.to_dict(),
                                    **{phase: duration.to_dict() for phase, duration in self.phases.items()},
                                    "cache_hit": zero, "cache_miss": zero},
                "batch_stats": [{"batch_size": size, "compute_input": zero, "compute_infer": duration.to_dict(),
                                 "compute_output": zero} for size, duration in sorted(self.batches.items())]}
