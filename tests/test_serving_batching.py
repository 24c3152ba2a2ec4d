"""The batch scheduler with a stand-in executor: batching, limits, timeouts, failures."""

import asyncio
import time

import numpy as np
import pytest

from mvu.host.serving.batching import BatchScheduler
from mvu.host.serving.errors import ServingError


def scheduler(run_seconds=0.05, fail=False, **limits):
    """A scheduler whose executor doubles its input rows after ``run_seconds``; records batch sizes."""
    sizes = []

    def setup():
        def run(images):
            sizes.append(len(images))
            time.sleep(run_seconds)
            if fail:
                raise RuntimeError("secret internals")
            return {"double": images * 2, "negated": -images}, 10 * len(images)
        return run

    s = BatchScheduler("stand-in", setup, **limits)
    assert s.ready.wait(5)
    return s, sizes


def rows(*values):
    return np.array(values, np.float32).reshape(-1, 1)


def test_results_return_to_their_requests_and_queued_requests_share_a_batch():
    s, sizes = scheduler(max_batch_size=8)

    async def main():
        first = asyncio.create_task(s.submit(rows(1), 5))
        await asyncio.sleep(0.01)  # the first batch is running: the next three queue behind it
        rest = [asyncio.create_task(s.submit(rows(v, v), 5)) for v in (2, 3, 4)]
        return await first, await asyncio.gather(*rest)

    first, rest = asyncio.run(main())
    assert first.outputs["double"].tolist() == [[2]] and first.batch_size == 1
    assert [r.outputs["double"].ravel().tolist() for r in rest] == [[4, 4], [6, 6], [8, 8]]
    assert [r.outputs["negated"].ravel().tolist() for r in rest] == [[-2, -2], [-3, -3], [-4, -4]]
    assert sizes == [1, 6] and all(r.batch_size == 6 and r.cycles == 60 for r in rest)
    assert all(r.queue_seconds > 0.02 for r in rest)


def test_a_batch_never_exceeds_its_size_and_the_rest_carries_over():
    s, sizes = scheduler(max_batch_size=4)

    async def main():
        blocker = asyncio.create_task(s.submit(rows(0), 5))
        await asyncio.sleep(0.01)
        parts = [asyncio.create_task(s.submit(rows(*range(3)), 5)) for _ in range(3)]
        await blocker
        return await asyncio.gather(*parts)

    asyncio.run(main())
    assert sizes == [1, 3, 3, 3]


def test_a_lone_request_does_not_wait_but_arriving_ones_are_waited_for():
    s, sizes = scheduler(run_seconds=0.0, max_batch_size=8)

    async def main():
        started = time.perf_counter()
        await s.submit(rows(1), 5)
        lone = time.perf_counter() - started
        with s.arriving() as late:  # a second request is still decoding when the first is queued
            first = asyncio.create_task(s.submit(rows(2), 5))
            await asyncio.sleep(0.01)
            second = await s.submit(rows(3), 5, late)
        await first
        return lone, second

    lone, second = asyncio.run(main())
    assert lone < 0.02
    assert sizes == [1, 2] and second.batch_size == 2


def test_limits_timeouts_and_failures_are_clear():
    s, sizes = scheduler(run_seconds=0.2, max_queue_size=4)

    async def main():
        with pytest.raises(ServingError) as too_big:
            await s.submit(rows(*range(5)), 5)
        running = asyncio.create_task(s.submit(rows(1), 5))
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(s.submit(rows(*range(4)), 5))
        await asyncio.sleep(0.01)
        with pytest.raises(ServingError) as full:
            await s.submit(rows(1), 5)
        return too_big.value, full.value, await running, await queued

    too_big, full, running, queued = asyncio.run(main())
    assert too_big.status == 413 and "at most 4" in too_big.message
    assert full.status == 503 and "overloaded" in full.message
    assert running.outputs["double"].tolist() == [[2]] and queued.outputs["double"].ravel().tolist() == [0, 2, 4, 6]


def test_a_timed_out_request_is_dropped_before_it_runs():
    s, sizes = scheduler(run_seconds=0.2)

    async def main():
        running = asyncio.create_task(s.submit(rows(1), 5))
        await asyncio.sleep(0.01)
        with pytest.raises(ServingError) as late:
            await s.submit(rows(2), 0.05)
        await running
        await asyncio.sleep(0.05)
        return late.value

    late = asyncio.run(main())
    assert late.status == 504 and "within 0.05 s" in late.message
    assert sizes == [1]  # the timed-out request never reached the executor


def test_executor_failures_are_500s_without_internals_and_load_failures_are_503s():
    s, _ = scheduler(fail=True)
    with pytest.raises(ServingError) as failed:
        asyncio.run(s.submit(rows(1), 5))
    assert failed.value.status == 500 and "secret" not in failed.value.message

    def broken():
        raise OSError("no model here")

    loading = BatchScheduler("broken", broken)
    for _ in range(100):
        if loading.failed:
            break
        time.sleep(0.01)
    with pytest.raises(ServingError) as error:
        asyncio.run(loading.submit(rows(1), 5))
    assert error.value.status == 503 and "no model here" in error.value.message
    with pytest.raises(ValueError, match="max_batch_size must be at least 1, not 0"):
        BatchScheduler("bad", broken, max_batch_size=0)
