"""A load level starts all its sessions or fails at once with the first session's error."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import scaled
from tidegate.bench.load import session_counts, wait_started


async def test_a_failing_session_fails_the_level_at_once() -> None:
    """The first session error is raised (not a timeout) and the other sessions are cancelled."""
    started = [asyncio.Event(), asyncio.Event()]

    async def sending(ev: asyncio.Event) -> None:
        ev.set()
        await asyncio.sleep(30)

    async def refused(ev: asyncio.Event) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("overloaded")

    tasks = [asyncio.ensure_future(sending(started[0])), asyncio.ensure_future(refused(started[1]))]
    with pytest.raises(RuntimeError, match="overloaded"):
        await wait_started(started, tasks, timeout_s=scaled(20))
    assert tasks[0].cancelled()


async def test_started_sessions_keep_running_and_a_stuck_one_times_out() -> None:
    """Once every session has started they run on; a session that never starts times out."""
    ev = asyncio.Event()

    async def session() -> int:
        ev.set()
        await asyncio.sleep(0.05)
        return 7

    task = asyncio.ensure_future(session())
    await wait_started([ev], [task], timeout_s=scaled(5))
    assert await task == 7
    stuck = asyncio.ensure_future(asyncio.sleep(30))
    with pytest.raises(TimeoutError):
        await wait_started([asyncio.Event()], [stuck], timeout_s=0.1)
    assert stuck.cancelled()


def test_session_counts() -> None:
    """A list as given, a ramp by doubling, and a clear error naming the option."""
    assert session_counts("1,2,4,8", ramp=False, ramp_max=0) == [1, 2, 4, 8]
    assert session_counts("", ramp=True, ramp_max=20) == [1, 2, 4, 8, 16]
    with pytest.raises(SystemExit, match="--streams"):
        session_counts("1,x", ramp=False, ramp_max=0, option="--streams")
