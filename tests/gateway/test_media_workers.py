"""MediaWorkers: threads pinned to the given cores, the caller's own mask left alone, and cores
this process may not use refused at construction."""
from __future__ import annotations

import asyncio
import os

import pytest

from execution.media_workers import MediaWorkers


def test_work_runs_on_the_given_cores_and_the_caller_keeps_its_own():
    own = os.sched_getaffinity(0)
    core = max(own)
    workers = MediaWorkers([core])
    try:
        assert asyncio.run(workers.run(os.sched_getaffinity, 0)) == {core}
        assert os.sched_getaffinity(0) == own
    finally:
        workers.close()


def test_cores_that_cannot_be_used_are_refused_at_once():
    own = os.sched_getaffinity(0)
    with pytest.raises(ValueError, match=r"media cores \[4095\] cannot be used here"):
        MediaWorkers([4095])
    assert os.sched_getaffinity(0) == own
    with pytest.raises(ValueError, match="at least one core"):
        MediaWorkers([])


def test_waiting_work_does_not_hold_up_the_rest():
    """A transcription waits in its thread: two such waits on one core still run together."""
    import threading

    both = threading.Barrier(2, timeout=10)
    workers = MediaWorkers([max(os.sched_getaffinity(0))])

    async def two():
        return await asyncio.gather(workers.run(both.wait), workers.run(both.wait))

    try:
        assert sorted(asyncio.run(two())) == [0, 1]
    finally:
        workers.close()
