"""A queue in front of one model's executor: requests from many clients run in batches on a worker thread.

The executor (a slow RTL simulation, say) runs on its own thread, so the event
loop that answers health checks and parses requests never waits for it.
Batching is greedy: whatever is queued when the executor becomes free runs
together, up to ``max_batch_size`` images. A batch also waits (up to
:data:`ARRIVAL_WAIT`) for requests that have arrived but whose images are still
being decoded, so clients that send together are served together without a
lone client ever waiting; ``max_queue_delay`` > 0 waits that long in any case.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mvu.host.serving.errors import ServingError

__all__ = ["BatchResult", "BatchScheduler"]

log = logging.getLogger("mvu.host.serving")

#: The longest a batch waits for requests still in preprocessing.
ARRIVAL_WAIT = 0.05

#: ``run(images) -> ({output name: array with one row per image}, cycles)``
BatchFunction = Callable[[np.ndarray], tuple[dict[str, np.ndarray], int]]


@dataclass
class BatchResult:
    """One request's share of a batch run."""

    outputs: dict[str, np.ndarray]  # by output name, this request's rows
    queue_seconds: float
    executor_seconds: float  # the whole batch's run
    cycles: int  # the whole batch's
    batch_size: int  # images in that batch


@dataclass
class _Entry:
    images: np.ndarray
    enqueued: float
    future: Future = field(default_factory=Future)


class _Arrival:
    """A request on its way to the queue; closing it (once) tells the scheduler it is there or gone."""

    def __init__(self, scheduler: "BatchScheduler"):
        self._scheduler, self._open = scheduler, True
        scheduler._arriving += 1

    def close(self) -> None:
        if self._open:
            self._open = False
            self._scheduler._arriving -= 1


class BatchScheduler:
    """Runs ``setup()``'s batch function on a worker thread; ``await submit(images)`` from the event loop."""

    def __init__(self, name: str, setup: Callable[[], BatchFunction], *, max_batch_size: int = 8,
                 max_queue_delay: float = 0.0, max_queue_size: int = 64,
                 on_batch: Callable[[int, int, float], None] | None = None):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
        if max_queue_delay < 0:
            raise ValueError(f"max_queue_delay must not be negative, not {max_queue_delay}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be at least 1, not {max_queue_size}")
        self.name, self.max_batch_size = name, max_batch_size
        self.max_queue_delay, self.max_queue_size = max_queue_delay, max_queue_size
        self._setup, self._on_batch = setup, on_batch  # on_batch(images, cycles, seconds) after each run
        self._queue: queue.Queue[_Entry | None] = queue.Queue()
        self._queued_images = 0
        self._lock = threading.Lock()
        self._carry: _Entry | None = None
        self._arriving = 0  # requests being decoded; written by the event loop only
        self.ready = threading.Event()
        self.failed: str | None = None  # why setup failed
        self._thread = threading.Thread(target=self._work, name=f"mvu-executor-{name}", daemon=True)
        self._thread.start()

    @property
    def queued_images(self) -> int:
        return self._queued_images

    @contextlib.contextmanager
    def arriving(self):
        """Wrap a request from arrival to :meth:`submit` (given the yielded token): batches forming
        meanwhile wait for it."""
        token = _Arrival(self)
        try:
            yield token
        finally:
            token.close()

    async def submit(self, images: np.ndarray, timeout: float, arrival: "_Arrival | None" = None) -> BatchResult:
        """Queue ``images`` (one row each) and wait for their outputs; 503 when full, 504 after ``timeout``."""
        if self.failed:
            raise ServingError(503, f"model {self.name!r} failed to load: {self.failed}")
        if not self.ready.is_set():
            raise ServingError(503, f"model {self.name!r} is still loading")
        count = len(images)
        if count > self.max_queue_size:
            raise ServingError(413, f"{count} images in one request; model {self.name!r} queues at most "
                                    f"{self.max_queue_size}")
        with self._lock:
            if self._queued_images + count > self.max_queue_size:
                raise ServingError(503, f"model {self.name!r} is overloaded: {self._queued_images} images queued "
                                        f"(limit {self.max_queue_size}); retry later")
            self._queued_images += count
        entry = _Entry(images, time.perf_counter())
        self._queue.put(entry)
        if arrival is not None:
            arrival.close()
        try:
            return await asyncio.wait_for(asyncio.wrap_future(entry.future), timeout)
        except asyncio.TimeoutError:
            raise ServingError(504, f"model {self.name!r} did not answer within {timeout:g} s") from None

    def close(self) -> None:
        self._queue.put(None)

    # Worker thread ----------------------------------------------------------

    def _work(self) -> None:
        try:
            run = self._setup()
        except Exception as error:  # noqa: BLE001 - reported through readiness, never to a client as a trace
            log.exception("model %s failed to load", self.name)
            self.failed = f"{type(error).__name__}: {error}"
            return
        self.ready.set()
        while (batch := self._next_batch()) is not None:
            self._run(run, batch)

    def _take(self, timeout: float | None) -> _Entry | None:
        if self._carry is not None:
            entry, self._carry = self._carry, None
            return entry
        return self._queue.get(timeout=timeout) if timeout is None or timeout > 0 else self._queue.get_nowait()

    def _next_batch(self) -> list[_Entry] | None:
        first = self._take(None)
        if first is None:
            return None
        batch, size = [first], len(first.images)
        started = time.perf_counter()
        deadline, arrivals_deadline = started + self.max_queue_delay, started + ARRIVAL_WAIT
        while size < self.max_batch_size:
            now = time.perf_counter()
            wait = deadline - now
            if self._arriving:  # look again every millisecond while someone is still decoding
                wait = max(wait, min(arrivals_deadline - now, 0.001))
            try:
                entry = self._take(max(0.0, wait))
            except queue.Empty:
                if self._arriving and time.perf_counter() < arrivals_deadline:
                    continue
                break
            if entry is None:
                self._queue.put(None)  # stop after this batch
                break
            if size + len(entry.images) > self.max_batch_size:
                self._carry = entry
                break
            batch.append(entry)
            size += len(entry.images)
        return batch

    def _run(self, run: BatchFunction, batch: list[_Entry]) -> None:
        with self._lock:
            self._queued_images -= sum(len(e.images) for e in batch)
        live = [e for e in batch if e.future.set_running_or_notify_cancel()]  # timed-out requests drop out
        if not live:
            return
        started = time.perf_counter()
        try:
            outputs, cycles = run(np.concatenate([e.images for e in live]))
        except Exception:  # noqa: BLE001 - the client gets a 500 without internals; the log gets the trace
            log.exception("model %s failed on a batch of %d", self.name, len(live))
            for entry in live:
                entry.future.set_exception(ServingError(500, f"model {self.name!r} failed on this request"))
            return
        executor = time.perf_counter() - started
        size, offset = sum(len(e.images) for e in live), 0
        if self._on_batch:
            self._on_batch(size, cycles, executor)
        for entry in live:
            count = len(entry.images)
            rows = {name: values[offset:offset + count] for name, values in outputs.items()}
            entry.future.set_result(BatchResult(rows, started - entry.enqueued, executor, cycles, size))
            offset += count
