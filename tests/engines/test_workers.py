"""The media worker pool: blocking work off the event loop, bounded, refusing beyond its bound."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tidegate.engines.errors import EngineClosedError, OverloadedError
from tidegate.engines.workers import WorkerPool


async def test_work_runs_off_the_loop_thread() -> None:
    """A call runs on one of the pool's threads and its result comes back to the loop."""
    pool = WorkerPool("media", workers=2, max_pending=4)
    try:
        name = await pool.run(lambda: threading.current_thread().name)
        assert name.startswith("media") and name != threading.current_thread().name
        assert pool.stats()["done"] == 1
    finally:
        pool.close()


async def test_calls_beyond_the_bound_are_refused_until_work_finishes() -> None:
    """With max_pending calls in hand, the next is refused (overloaded, counted); a caller
    that stopped waiting still holds its place until its thread finishes the work; a call
    cancelled before a thread took it frees its place at once."""
    pool = WorkerPool("media", workers=1, max_pending=2)
    gate = threading.Event()
    started = threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(30)

    try:
        running = asyncio.ensure_future(pool.run(hold))
        waiting = asyncio.ensure_future(pool.run(hold))
        await asyncio.to_thread(started.wait, 10)
        with pytest.raises(OverloadedError):
            await pool.run(int, "1")
        running.cancel()
        waiting.cancel()
        await asyncio.gather(running, waiting, return_exceptions=True)
        assert pool.pending == 1  # the running call holds its place; the waiting one left
        blocked = asyncio.ensure_future(pool.run(int, "2"))
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError):
            await pool.run(int, "1")
        gate.set()
        assert await blocked == 2
        assert await pool.run(int, "7") == 7
        st = pool.stats()
        assert (st["refused"], st["peak"], st["policy"]) == (2, 2, "reject")
    finally:
        gate.set()
        pool.close()


async def test_errors_come_back_and_a_closed_pool_refuses() -> None:
    """An exception in the work reaches the caller (counted as failed); after close, calls
    are refused with EngineClosedError."""
    pool = WorkerPool("media", workers=1, max_pending=1)
    with pytest.raises(ValueError, match="invalid literal"):
        await pool.run(int, "x")
    assert pool.stats()["failed"] == 1
    pool.close()
    with pytest.raises(EngineClosedError):
        await pool.run(int, "1")


def test_bounds_must_make_sense() -> None:
    """No threads, or fewer places than threads, is a ValueError."""
    with pytest.raises(ValueError, match="workers >= 1"):
        WorkerPool("media", workers=0, max_pending=1)
    with pytest.raises(ValueError, match="max_pending >= workers"):
        WorkerPool("media", workers=2, max_pending=1)
