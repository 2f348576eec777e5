"""A small pool of threads for blocking media work (image decoding, resampling), off the loop.

Bound and policy (STYLE.md, "every buffer is a decision"): ``workers`` threads run calls; at
most ``max_pending`` calls are running or waiting at once, and a call beyond that is refused at
once with :class:`~tidegate.engines.errors.OverloadedError` (policy ``reject``), so a flood of
uploads queues neither memory nor work. A call counts until its thread has finished it, even
when the caller stopped waiting (cancelled), so the bound is the real one. Depth, peak,
done, failed and refused are counted (:meth:`WorkerPool.stats`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import EngineClosedError, OverloadedError

T = TypeVar("T")

RETRY_AFTER_S = 0.1  # a refused call: the pool frees a place within a decode or so
PR_SET_NAME = 15  # prctl(2)


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the OS too (Linux: 15 bytes, seen in /proc, top,
    py-spy), so that CPU per engine worker can be read from outside; a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):  # no libc to ask: the name stays python's
        pass


class WorkerPool:
    """See the module docstring."""

    def __init__(self, name: str, *, workers: int = 2, max_pending: int = 32) -> None:
        if workers < 1 or max_pending < workers:
            raise ValueError(
                f"{name}: need workers >= 1 and max_pending >= workers, got {workers}, "
                f"{max_pending}"
            )
        self.name = name
        self.workers = workers
        self.max_pending = max_pending
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._pending = 0
        self._closed = False
        self.peak = 0
        self.done = 0
        self.failed = 0
        self.refused = 0

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread; refused when ``max_pending`` calls are in hand."""
        with self._lock:
            if self._closed:
                raise EngineClosedError(f"{self.name}: the worker pool is closed")
            if self._pending >= self.max_pending:
                self.refused += 1
                raise OverloadedError(
                    f"{self.name}: {self._pending} calls in hand (max_pending {self.max_pending})",
                    retry_after_s=RETRY_AFTER_S,
                )
            self._pending += 1
            self.peak = max(self.peak, self._pending)
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._finished(None)
            raise
        future.add_done_callback(self._finished)
        return await asyncio.wrap_future(future)

    def _finished(self, future: concurrent.futures.Future[Any] | None) -> None:
        with self._lock:
            self._pending -= 1
            if future is None or future.cancelled() or future.exception() is not None:
                self.failed += 1
            else:
                self.done += 1

    def close(self) -> None:
        """Refuse new calls; calls waiting for a thread are cancelled, running ones finish."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "max_pending": self.max_pending,
            "pending": self._pending,
            "peak": self.peak,
            "done": self.done,
            "failed": self.failed,
            "refused": self.refused,
            "policy": "reject",
        }
