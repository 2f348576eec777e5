"""Sessions and the registry that holds them.

A session belongs to a tenant and outlives its connection for ``session_resume_s``, so that a
client that lost its WebSocket can resume it (``session.create`` with ``session_id``) and get
the events queued meanwhile. What a session does with its input is its mode's business
(:mod:`tidegate.pipelines.registry`); the session owns the mode, the outbox, the upload credit
it hands back, and every task it starts. A session is complete when constructed: its mode and
its sensor lane are built by the factories it is given, with the session as their port.
Sessions are opened, resumed and closed through :class:`tidegate.sessions.api.Sessions`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from tidegate.pipelines.errors import (
    ForbiddenError,
    NotFoundError,
    OverloadedError,
    RateLimitedError,
)
from tidegate.pipelines.port import ReplyCaches, StageTimesPort
from tidegate.pipelines.records import (
    Record,
    Recorder,
    SessionEnded,
    SessionResumed,
    SessionStarted,
    plain_json,
)
from tidegate.protocol import ClientMessage, ServerMessage
from tidegate.protocol.messages import FlowCredit, Metrics
from tidegate.protocol.realtime.commands import Command

from .outbox import Outbox
from .principal import Principal
from .sensors import SensorSettings

if TYPE_CHECKING:
    from .limits import Limiter
    from .sensors import SensorLane

#: builds a session's mode (or its sensor lane), given the session as the lanes' port
ModeFactory = Callable[["Session"], "Mode"]
SensorsFactory = Callable[["Session"], "SensorLane"]

log = logging.getLogger(__name__)

RESUME_RETRY_AFTER_MS = 1_000.0


class SessionSettings(SensorSettings, Protocol):
    """The settings the session runtime reads (the server's Settings has them)."""

    @property
    def outbox_max_messages(self) -> int: ...
    @property
    def outbox_max_bytes(self) -> int: ...
    @property
    def upload_credit_messages(self) -> int: ...
    @property
    def upload_credit_bytes(self) -> int: ...
    @property
    def session_resume_s(self) -> float: ...
    @property
    def max_sessions(self) -> int: ...
    @property
    def max_sessions_per_tenant(self) -> int: ...
    @property
    def route_id(self) -> str: ...


class Attachment(Protocol):
    """The connection a session is attached to (see :mod:`tidegate.server.control`)."""

    def too_slow(self) -> None: ...

    def superseded(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class Directory(Protocol):
    """Where the sessions of every node are: admission across nodes, registration, release,
    and which node holds a session this one does not."""

    async def admit(self, principal: Principal) -> Any:
        """Reserve a place for a new session (a ticket, or None); refusals as RefusalError."""
        ...

    async def cancel(self, ticket: Any) -> None: ...

    async def register(self, session: Session, ticket: Any) -> None: ...

    async def release(self, session: Session) -> None: ...

    async def wrong_node(self, session_id: str, tenant: str, what: str) -> None:
        """Raise WrongNodeError (a not_found naming the node) when another node holds it."""
        ...

    async def held_elsewhere(self, session_id: str, tenant: str) -> bool: ...


class Mode(Protocol):
    """What a session does with its input. One implementation per session mode."""

    name: str

    async def handle(self, msg: ClientMessage | Command) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class Session:
    """One client session."""

    def __init__(
        self,
        session_id: str,
        principal: Principal,
        config: dict[str, Any],
        settings: SessionSettings,
        *,
        detached_at: float | None = None,
        mode: ModeFactory | None = None,
        sensors: SensorsFactory | None = None,
        recorder: Recorder | None = None,
        caches: ReplyCaches | None = None,
        stage_times: StageTimesPort | None = None,
    ) -> None:
        self.id = session_id
        self.stage_times = stage_times  # the node's latency histograms (/metrics)
        self.principal = principal
        self.config = config
        self.settings = settings
        self.outbox = Outbox(
            max_messages=settings.outbox_max_messages, max_bytes=settings.outbox_max_bytes
        )
        self.last_seq = 0
        self.attachment: Attachment | None = None
        self.detached_at = detached_at  # born detached: expires if never attached
        self.closed = False
        self.recorder = recorder
        self.caches = caches  # the node's TTS and LLM result caches
        self.resumes = 0
        self.dropped_while_detached = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._credit_messages = 0
        self._credit_bytes = 0
        self.mode: Mode | None = None
        self.sensors: SensorLane | None = None  # input.sensor and subscriptions, every mode
        try:
            self.sensors = sensors(self) if sensors is not None else None
            self.mode = mode(self) if mode is not None else None
        except BaseException:  # what its lanes started goes with it
            self.closed = True
            if self.sensors is not None:
                self.sensors.close()
            for task in self._tasks:
                task.cancel()
            raise

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    def record(self, rec: Record) -> bool:
        """Hand a record of this session to the writer (never waits; False: refused)."""
        if self.recorder is None:
            return False
        return self.recorder.record(
            dataclasses.replace(rec, session_id=self.id, tenant=self.tenant)
        )

    # -- events out -----------------------------------------------------------------------------

    def emit(self, msg: ServerMessage) -> None:
        """Queue an event for the client. Never blocks; a client too slow to take it is cut."""
        if self.closed:
            return
        if not self.outbox.push(msg):
            if self.attachment is not None:
                self.attachment.too_slow()
            else:
                self.dropped_while_detached += 1

    def return_credit(self, nbytes: int) -> None:
        """An upload has been consumed: give its credit back (in batches of a quarter)."""
        self._credit_messages += 1
        self._credit_bytes += nbytes
        s = self.settings
        if (
            self._credit_messages * 4 >= s.upload_credit_messages
            or self._credit_bytes * 4 >= s.upload_credit_bytes
        ):
            self.emit(FlowCredit(messages=self._credit_messages, bytes=self._credit_bytes))
            self._credit_messages = 0
            self._credit_bytes = 0

    def initial_credit(self) -> FlowCredit:
        """The credit of a fresh connection: the full grant, less nothing outstanding."""
        self._credit_messages = 0
        self._credit_bytes = 0
        return FlowCredit(
            messages=self.settings.upload_credit_messages, bytes=self.settings.upload_credit_bytes
        )

    # -- tasks ----------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a task owned by this session (cancelled when it closes)."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "session %s: task %s failed", self.id, task.get_name(), exc_info=task.exception()
            )

    # -- lifecycle ------------------------------------------------------------------------------

    def attach(self, attachment: Attachment) -> None:
        old = self.attachment
        self.attachment = attachment
        self.detached_at = None
        if old is not None and old is not attachment:
            old.superseded()

    def detach(self, attachment: Attachment, now_s: float) -> None:
        if self.attachment is attachment:
            self.attachment = None
            self.detached_at = now_s

    async def run_metrics(self, interval_s: float) -> None:
        """Emit a ``metrics`` event every ``interval_s`` while attached."""
        while True:
            await asyncio.sleep(interval_s)
            if self.attachment is not None:
                stats = self.stats()
                if self.caches is not None:  # the node's result caches: hits and misses
                    stats["caches"] = self.caches.stats()
                self.emit(Metrics(stats=stats))

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "session_id": self.id,
            "mode": self.mode.name if self.mode else None,
            "outbox": self.outbox.buffer.stats.as_dict(),
            "dropped_while_detached": self.dropped_while_detached,
        }
        if self.attachment is not None:
            out["connection"] = self.attachment.stats()
        if self.mode is not None:
            out["lanes"] = self.mode.stats()
        if self.sensors is not None:
            out["sensors"] = self.sensors.stats()
        return out

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.sensors is not None:
            self.sensors.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.mode is not None:
            await self.mode.close()


class SessionRegistry:
    """The sessions this node holds, with per-node and per-tenant limits and expiry."""

    def __init__(
        self,
        settings: SessionSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        recorder: Recorder | None = None,
        limiter: Limiter | None = None,
        stage_times: StageTimesPort | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.stage_times = stage_times
        self.recorder = recorder
        self.limiter = limiter
        self.cluster: Directory | None = None  # set by the Cluster: the directory learns removals
        self.caches: ReplyCaches | None = None  # set by the Cluster: the node's result caches
        self._sessions: dict[str, Session] = {}
        self._per_tenant: dict[str, int] = {}
        self.created = 0
        self.resumed = 0
        self.expired = 0
        self.refused = 0
        self.removed_hooks: list[Callable[[Session], None]] = []  # e.g. metrics' totals

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Any:
        return iter(list(self._sessions.values()))

    def create(
        self,
        principal: Principal,
        config: dict[str, Any],
        client: dict[str, Any] | None = None,
        *,
        mode: ModeFactory | None = None,
        sensors: SensorsFactory | None = None,
    ) -> Session:
        """A new session, complete (its mode and sensor lane built), held by this node."""
        s = self.settings
        if len(self._sessions) >= s.max_sessions:
            self.refused += 1
            raise OverloadedError(
                f"this node holds {len(self._sessions)} sessions, its limit; try again later",
                retry_after_ms=RESUME_RETRY_AFTER_MS,
            )
        held = self._per_tenant.get(principal.tenant, 0)
        if held >= s.max_sessions_per_tenant:
            self.refused += 1
            raise RateLimitedError(
                f"tenant holds {held} sessions, its quota on this node; close one first",
                retry_after_ms=RESUME_RETRY_AFTER_MS,
            )
        if self.limiter is not None:
            self.limiter.sessions.check(principal)
        # Behind NGINX the id names this node, so that resumes and offers route back here.
        route = f"{s.route_id}." if s.route_id else ""
        session_id = f"s_{route}{secrets.token_urlsafe(12)}"
        # Born detached: a session whose connection fails before attaching it still expires.
        session = Session(
            session_id,
            principal,
            config,
            s,
            detached_at=self.clock(),
            mode=mode,
            sensors=sensors,
            recorder=self.recorder,
            caches=self.caches,
            stage_times=self.stage_times,
        )
        self._sessions[session_id] = session
        self._per_tenant[principal.tenant] = held + 1
        self.created += 1
        session.record(
            SessionStarted(
                subject=principal.subject,
                mode=str(config.get("mode")),
                config=plain_json(config),
                client=client or {},
            )
        )
        return session

    def resume(
        self, session_id: str, principal: Principal, client: dict[str, Any] | None = None
    ) -> Session:
        session = self._sessions.get(session_id)
        # Another tenant's session looks exactly like a missing one: no existence oracle.
        if session is None or session.closed or session.tenant != principal.tenant:
            raise NotFoundError(f"no session {session_id!r} to resume (closed, expired or unknown)")
        if session.principal.subject != principal.subject and not principal.is_admin:
            raise ForbiddenError("this session belongs to another subject of your tenant")
        self.resumed += 1
        session.resumes += 1
        session.record(
            SessionResumed(subject=principal.subject, resumes=session.resumes, client=client or {})
        )
        return session

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    async def remove(
        self, session: Session, status: str = "closed", reason: str = "closed by the client"
    ) -> None:
        """Close a session; ``status`` (closed, expired, shutdown) and ``reason`` are recorded."""
        held = self._sessions.pop(session.id, None) is not None
        if held:
            n = self._per_tenant.get(session.tenant, 1) - 1
            if n > 0:
                self._per_tenant[session.tenant] = n
            else:
                self._per_tenant.pop(session.tenant, None)
        await session.close()
        if held and self.cluster is not None:
            await self.cluster.release(session)
        if held:
            session.record(
                SessionEnded(status=status, reason=reason, stats=plain_json(session.stats()))
            )
            for hook in self.removed_hooks:
                hook(session)

    async def expire(self) -> int:
        """Close detached sessions whose resume window has passed; returns how many."""
        now = self.clock()
        window = self.settings.session_resume_s
        stale = [
            s
            for s in self._sessions.values()
            if s.attachment is None and s.detached_at is not None and now - s.detached_at >= window
        ]
        for session in stale:
            await self.remove(session, "expired", f"not resumed within {window:g} s")
        self.expired += len(stale)
        return len(stale)

    async def run_reaper(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.expire()
            except Exception:  # never let the reaper die; log and go on
                log.exception("session reaper failed")

    async def close_all(self) -> None:
        for session in list(self._sessions.values()):
            await self.remove(session, "shutdown", "the server shut down")

    def stats(self) -> dict[str, int]:
        return {
            "sessions": len(self._sessions),
            "attached": sum(1 for s in self._sessions.values() if s.attachment is not None),
            "created": self.created,
            "resumed": self.resumed,
            "expired": self.expired,
            "refused": self.refused,
        }
