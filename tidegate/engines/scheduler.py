"""The cross-session batching scheduler: one per engine instance, shared by every session.

Callers (on any event loop) ``submit`` a request; it joins a bounded queue
(:class:`~tidegate.protocol.flow.BoundedBuffer`, policy ``reject``: a full queue refuses at
once with :class:`OverloadedError` and a retry hint). One worker thread per engine gathers
requests into a batch — up to ``max_batch_items``, waiting at most ``batch_wait_s`` after the
oldest request arrived, or less when every open session of a stateful engine is already
waiting — runs it, and hands each outcome back to its caller's loop with one
``call_soon_threadsafe`` per loop and batch. Inference never runs on an event loop.

Per-session state (streaming models): a session's requests run one at a time, in order (a
per-session lock), and the state the engine gives back is kept for the session's next
request. Deadlines: a request whose result is not ready by its deadline fails with
:class:`DeadlineError`; if it was still queued it never runs. Cancelling the awaiting task
withdraws a queued request.

Latency classes: a request submitted ``urgent=True`` (the work a user is waiting on now: an
ASR final, the first audio of a reply) goes ahead of the normal ones. While urgent requests
are queued, the next batch holds only urgent ones (oldest first, up to ``max_batch_items``)
and does not wait to fill; normal requests keep their order and run after. On a CPU a batch
costs about the sum of its items, so an urgent request batched with normal ones would wait
for their compute too. (Normal work can starve only while urgent work keeps the engine busy
without a gap, and its deadline still bounds the wait.)
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tidegate.protocol.flow import BoundedBuffer, Overflow, Push

from .engine import Engine, Failed, Ok, Outcome
from .errors import (
    DeadlineError,
    EngineClosedError,
    EngineError,
    InferenceError,
    OverloadedError,
    SessionError,
)
from .metrics import QueueLoad, SchedulerStats
from .runtime import RuntimeOptions, runtime_unavailable
from .workers import name_os_thread

log = logging.getLogger(__name__)

ReqT = TypeVar("ReqT")
ResT = TypeVar("ResT")

_NEVER = 1 << 62


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """Per-engine batching and queueing limits."""

    max_batch_items: int = 16
    batch_wait_s: float = 0.002
    max_queue_items: int = 256
    deadline_s: float = 1.0
    max_sessions: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_batch_items", "max_queue_items", "max_sessions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_wait_s < 0 or self.deadline_s <= 0:
            raise ValueError("batch_wait_s cannot be negative and deadline_s must be positive")


class _Session:
    __slots__ = ("id", "lock", "state")

    def __init__(self, session_id: str, state: Any) -> None:
        self.id = session_id
        self.state = state
        self.lock = asyncio.Lock()


class _Pending:
    __slots__ = (
        "abandoned",
        "deadline",
        "enqueued",
        "future",
        "loop",
        "request",
        "session",
        "urgent",
    )

    def __init__(
        self,
        request: Any,
        session: _Session | None,
        future: asyncio.Future[Outcome[Any]],
        loop: asyncio.AbstractEventLoop,
        enqueued: float,
        deadline: float,
        urgent: bool = False,
    ) -> None:
        self.request = request
        self.session = session
        self.future = future
        self.loop = loop
        self.enqueued = enqueued
        self.deadline = deadline
        self.abandoned = False  # cancelled or expired by the caller: do not run
        self.urgent = urgent


def _is_urgent(pending: _Pending) -> bool:
    return pending.urgent


def _resolve(pairs: list[tuple[asyncio.Future[Outcome[Any]], Outcome[Any]]]) -> None:
    for fut, outcome in pairs:
        if not fut.done():
            fut.set_result(outcome)


DEADLINE_TICK_S = 0.005  # deadlines are checked at most this late (one timer per loop)


class _DeadlineWatch:
    """Deadlines of one event loop's pending requests: a heap and one timer, armed at the
    earliest deadline (plus a tick, so that a stream of requests costs a timer wake-up per
    tick, not one per request). Used only from its loop's thread."""

    __slots__ = ("_armed_at", "_expire", "_heap", "_loop", "_seq", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[_Pending], None]) -> None:
        self._loop = loop
        self._expire = expire
        self._heap: list[tuple[float, int, _Pending]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def add(self, deadline: float, pending: _Pending) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, pending))
        if deadline + DEADLINE_TICK_S < self._armed_at:
            self._arm(deadline + DEADLINE_TICK_S)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._armed_at = math.inf
        heap, now = self._heap, self._loop.time()
        while heap and heap[0][0] <= now:
            pending = heapq.heappop(heap)[2]
            if not pending.future.done():
                self._expire(pending)
        if heap:
            self._arm(heap[0][0] + DEADLINE_TICK_S)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._heap.clear()


class Scheduler(Generic[ReqT, ResT]):
    """Batches requests from all sessions onto one engine instance."""

    def __init__(
        self,
        engine: Engine[ReqT, ResT, Any],
        policy: BatchPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.policy = policy or BatchPolicy()
        self._clock = clock
        self._queue: BoundedBuffer[_Pending] = BoundedBuffer(
            f"engine.{engine.name}.queue",
            max_items=self.policy.max_queue_items,
            policy=Overflow.REJECT,
        )
        self._cond = threading.Condition()
        self._wake_at = _NEVER  # queue length at which a submitter wakes the worker
        self._urgent_queued = 0  # urgent requests in the queue (under _cond)
        self._closing = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._sessions: dict[str, _Session] = {}
        self._watches: dict[asyncio.AbstractEventLoop, _DeadlineWatch] = {}
        self.counters = SchedulerStats(self.policy.max_batch_items)
        self.ready = False

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Load and warm up the engine (in a thread), then start the worker thread."""
        if self._thread is not None:
            return
        await asyncio.to_thread(self.engine.load)
        await asyncio.to_thread(self.engine.warmup)
        self._thread = threading.Thread(
            target=self._worker, name=f"engine-{self.engine.name}", daemon=True
        )
        self._thread.start()
        self.ready = True

    async def close(self) -> None:
        """Refuse new requests, fail queued ones (:class:`EngineClosedError`), let the running
        batch finish, stop the worker and close the engine."""
        if self._closed:
            return
        self._closed = True
        self.ready = False
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        self._fail_queued()
        for loop, watch in self._watches.items():
            if loop is asyncio.get_running_loop():
                watch.cancel()
            elif not loop.is_closed():
                loop.call_soon_threadsafe(watch.cancel)
        self._watches.clear()
        await asyncio.to_thread(self.engine.close)
        self._sessions.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- sessions -----------------------------------------------------------------------------
    def open_session(self, session_id: str) -> None:
        """Give ``session_id`` its own state on this engine (stateful engines)."""
        if self._closing:
            raise EngineClosedError(f"{self.engine.name}: the engine is closed")
        if session_id in self._sessions:
            raise SessionError(f"{self.engine.name}: session {session_id!r} is already open")
        options = getattr(self.engine, "runtime_options", None)
        if isinstance(options, RuntimeOptions):
            reason = runtime_unavailable(options)
            if reason:
                raise SessionError(f"{self.engine.name}: {reason}; retry later")
        if len(self._sessions) >= self.policy.max_sessions:
            raise SessionError(
                f"{self.engine.name}: {self.policy.max_sessions} sessions already open "
                "(max_sessions); retry later"
            )
        self._sessions[session_id] = _Session(session_id, self.engine.new_state())

    def close_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def reset_session(self, session_id: str) -> None:
        """Start the session's state afresh (e.g. after a gap in its stream)."""
        sess = self._sessions.get(session_id)
        if sess is None:
            raise SessionError(f"{self.engine.name}: unknown session {session_id!r}")
        sess.state = self.engine.new_state()

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    # -- submitting ---------------------------------------------------------------------------
    async def submit(
        self,
        request: ReqT,
        *,
        session: str | None = None,
        deadline_s: float | None = None,
        urgent: bool = False,
    ) -> ResT:
        """Run ``request`` in the next batch and return its result; raises the request's own
        :class:`EngineError` (bad input, model failure, deadline, refusal) otherwise.
        ``urgent``: a user waits on it now; it goes ahead of normal requests (module doc)."""
        if self._closing:
            raise EngineClosedError(f"{self.engine.name}: the engine is closed")
        if not self.engine.stateful:
            return await self._submit(request, None, deadline_s, urgent)
        if session is None:
            raise SessionError(f"{self.engine.name} is stateful: a request needs a session")
        sess = self._sessions.get(session)
        if sess is None:
            raise SessionError(f"{self.engine.name}: unknown session {session!r} (open it first)")
        async with sess.lock:
            return await self._submit(request, sess, deadline_s, urgent)

    async def _submit(
        self, request: ReqT, sess: _Session | None, deadline_s: float | None, urgent: bool
    ) -> ResT:
        if self._thread is None:
            raise EngineError(f"{self.engine.name}: the scheduler is not started")
        loop = asyncio.get_running_loop()
        wait_s = self.policy.deadline_s if deadline_s is None else deadline_s
        now = self._clock()
        fut: asyncio.Future[Outcome[ResT]] = loop.create_future()
        pending = _Pending(request, sess, fut, loop, now, now + wait_s, urgent)
        with self._cond:
            if self._closing:
                raise EngineClosedError(f"{self.engine.name}: the engine is closed")
            if self._queue.push(pending) is not Push.ACCEPTED:
                self.counters.refused += 1
                raise OverloadedError(
                    f"{self.engine.name}: queue full ({self.policy.max_queue_items} requests "
                    "waiting); request refused",
                    retry_after_s=self._retry_hint_s(),
                )
            self.counters.submitted += 1
            if urgent:
                self.counters.urgent += 1
                self._urgent_queued += 1
            if len(self._queue) >= self._wake_at or (urgent and self._wake_at < _NEVER):
                self._cond.notify()
        watch = self._watches.get(loop)
        if watch is None:
            watch = self._watches[loop] = _DeadlineWatch(loop, self._expire)
        watch.add(loop.time() + wait_s, pending)
        try:
            outcome = await fut
        except asyncio.CancelledError:
            pending.abandoned = True
            self.counters.cancelled += 1
            raise
        if isinstance(outcome, Failed):
            raise outcome.error
        return outcome.value

    def _expire(self, pending: _Pending) -> None:
        if not pending.future.done():
            pending.abandoned = True
            self.counters.deadline_missed += 1
            pending.future.set_result(
                Failed(DeadlineError(f"{self.engine.name}: no result within the deadline"))
            )

    def _retry_hint_s(self) -> float:
        run = self.counters.run_ms
        mean_run_s = run.sum / run.count / 1000 if run.count else self.policy.batch_wait_s
        batches = math.ceil(len(self._queue) / self.policy.max_batch_items)
        return round(max(self.policy.batch_wait_s, batches * mean_run_s), 4)

    # -- the worker thread --------------------------------------------------------------------
    def _target(self) -> int:
        """Batch size worth waiting for: every open session, for a stateful engine."""
        if self.engine.stateful and self._sessions:
            return max(1, min(self.policy.max_batch_items, len(self._sessions)))
        return self.policy.max_batch_items

    def _worker(self) -> None:
        name_os_thread(f"engine-{self.engine.name}")
        queue, cond, policy = self._queue, self._cond, self.policy
        while True:
            with cond:
                while not queue and not self._closing:
                    self._wake_at = 1
                    cond.wait()
                if self._closing:
                    self._wake_at = _NEVER
                    return
                fill_until = queue.peek().enqueued + policy.batch_wait_s
                target = self._target()
                while len(queue) < target and not self._closing and not self._urgent_queued:
                    remaining = fill_until - self._clock()
                    if remaining <= 0:
                        break
                    self._wake_at = target
                    cond.wait(remaining)
                    target = self._target()
                self._wake_at = _NEVER
                if self._closing:
                    return  # close() fails what is still queued
                if self._urgent_queued:  # urgent work first, in a batch of its own
                    batch = queue.take(_is_urgent, policy.max_batch_items)
                    self._urgent_queued -= len(batch)
                else:
                    n = min(len(queue), policy.max_batch_items)
                    batch = [queue.pop() for _ in range(n)]
            try:
                self._run(batch)
            except Exception:  # the worker must outlive any bug in one batch
                log.exception("%s: batch failed", self.engine.name)
                self._deliver(
                    [
                        (p, Failed(InferenceError(f"{self.engine.name}: batch failed")))
                        for p in batch
                    ]
                )

    def _run(self, batch: list[_Pending]) -> None:
        now = self._clock()
        live: list[_Pending] = []
        expired: list[tuple[_Pending, Outcome[Any]]] = []
        for p in batch:
            if p.abandoned:
                continue
            if now >= p.deadline:
                expired.append((p, Failed(DeadlineError(f"{self.engine.name}: deadline passed"))))
                continue
            self.counters.queue_wait_ms.observe((now - p.enqueued) * 1000)
            if p.urgent:
                self.counters.urgent_queue_wait_ms.observe((now - p.enqueued) * 1000)
            live.append(p)
        if expired:
            self._deliver(expired)
        if not live:
            return
        states = [p.session.state if p.session is not None else None for p in live]
        t0 = self._clock()
        outcomes = self.engine.run_batch([p.request for p in live], states)
        t1 = self._clock()
        c = self.counters
        c.batches += 1
        c.batch_size.observe(len(live))
        c.run_ms.observe((t1 - t0) * 1000)
        pairs: list[tuple[_Pending, Outcome[Any]]] = []
        for p, outcome in zip(live, outcomes, strict=True):
            if isinstance(outcome, Ok):
                if p.session is not None:
                    p.session.state = outcome.state
                c.completed += 1
            else:
                c.failed += 1
            pairs.append((p, outcome))
        self._deliver(pairs)

    def _deliver(self, pairs: list[tuple[_Pending, Outcome[Any]]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, Outcome[Any]]]] = {}
        for p, outcome in pairs:
            by_loop.setdefault(p.loop, []).append((p.future, outcome))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    def _fail_queued(self) -> None:
        with self._cond:
            queued = [self._queue.pop() for _ in range(len(self._queue))]
            self._urgent_queued = 0
        self._deliver(
            [
                (p, Failed(EngineClosedError(f"{self.engine.name}: the engine closed")))
                for p in queued
            ]
        )

    # -- metrics ------------------------------------------------------------------------------
    def load_fraction(self) -> float:
        """How full the queue is (0..1): the server refuses new sessions near 1."""
        return len(self._queue) / self.policy.max_queue_items

    def queue_load(self) -> QueueLoad:
        """The queue's depth and its oldest request's wait, now (takes the queue's lock for
        a moment)."""
        with self._cond:
            depth = len(self._queue)
            oldest = self._queue.peek().enqueued if depth else None
            hint = self._retry_hint_s()
        wait = 0.0 if oldest is None else max(0.0, self._clock() - oldest)
        p = self.policy
        return QueueLoad(self.engine.name, depth, p.max_queue_items, wait, p.deadline_s, hint)

    def stats(self) -> dict[str, Any]:
        return {
            "engine": self.engine.name,
            "ready": self.ready,
            "sessions": len(self._sessions),
            "queue": self._queue.stats.as_dict(),
            **self.counters.as_dict(),
        }
