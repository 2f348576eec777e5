"""The database thread: where the writer's database and journal work runs, off the event loop.

SQLAlchemy's statement building, JSON column serialisation and the driver's per-row work are
CPU work in Python; the journal's fsync is blocking I/O. Neither may run on the event loop that
carries the media (DESIGN: the media path never waits on the database). :class:`DbThread` owns
one thread with a private asyncio loop of its own; the writer's engine (asyncpg driven by that
loop, or the sync ``sqlite3`` driver) is created on, and only ever used from, that thread.

The event loop hands work over with :meth:`DbThread.call`: a bounded hand-off
(``max_jobs`` jobs in flight, policy ``reject``: one more raises :class:`DbHandoffFullError`
at once, counted; the caller never waits for room). The result (or exception) comes back to the
caller's loop through ``call_soon_threadsafe``. The writer awaits each job before it hands over
the next, so in practice at most one job is in flight; the bound makes that a stated fact.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class DbHandoffFullError(RuntimeError):
    """More jobs offered to the database thread than ``max_jobs`` (a bug in the caller)."""


class DbThread:
    """One worker thread running a private event loop; jobs are coroutine functions."""

    def __init__(self, name: str = "db-writer", *, max_jobs: int = 2) -> None:
        self.name = name
        self.max_jobs = max_jobs
        self.in_flight = 0
        self.peak = 0
        self.rejected = 0
        self.jobs = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread and its loop (returns once the loop runs)."""
        if self._thread is not None:
            return
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=main, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the database thread's loop; await its result here."""
        loop, caller = self._loop, asyncio.get_running_loop()
        if loop is None or self._thread is None or not self._thread.is_alive():
            raise RuntimeError(f"{self.name}: the database thread is not running")
        if self.in_flight >= self.max_jobs:
            self.rejected += 1
            raise DbHandoffFullError(
                f"{self.name}: {self.max_jobs} jobs already in flight (policy reject)"
            )
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        self.jobs += 1
        result: asyncio.Future[T] = caller.create_future()

        def settle(cf: concurrent.futures.Future[T]) -> None:  # on the caller's loop
            self.in_flight -= 1
            if result.done():
                return
            if cf.cancelled():
                result.cancel()
            elif (exc := cf.exception()) is not None:
                result.set_exception(exc)
            else:
                result.set_result(cf.result())

        def hand_back(cf: concurrent.futures.Future[T]) -> None:  # on the database thread
            with contextlib.suppress(RuntimeError):  # the caller's loop is already closed
                caller.call_soon_threadsafe(settle, cf)

        cf = asyncio.run_coroutine_threadsafe(_as_coroutine(fn, args), loop)
        cf.add_done_callback(hand_back)
        return await result

    async def stop(self) -> None:
        """Stop the loop and join the thread (jobs still running finish first)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        self._thread = None
        self._loop = None

    def cpu_s(self) -> float | None:
        """CPU time the thread has used so far (Linux: its own CPU clock), None if unknown."""
        thread = self._thread
        if thread is None or thread.ident is None or not thread.is_alive():
            return None
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (AttributeError, OSError):
            return None

    def stats(self) -> dict[str, Any]:
        return {
            "cpu_s": self.cpu_s(),
            "max_jobs": self.max_jobs,
            "policy": "reject",
            "in_flight": self.in_flight,
            "peak": self.peak,
            "rejected": self.rejected,
            "jobs": self.jobs,
        }


async def _as_coroutine(fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
    return await fn(*args)
