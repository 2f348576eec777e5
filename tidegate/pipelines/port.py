"""The ports between a lane and its session, and the shape every lane has.

A lane never sees the session object: it is given a :class:`SessionPort` (the session
implements it; a unit test may pass its own) and typed configs. What a lane takes from the
client is a table, message type -> handler, that the mode merges into one dispatch table when
it is built (:mod:`tidegate.pipelines.mode`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

from tidegate.engines.llm import Generation, LlmEngine, SamplingParams
from tidegate.engines.runtime import Array
from tidegate.engines.scheduler import Scheduler
from tidegate.media import MediaPeer
from tidegate.protocol import ServerMessage

from .records import Record

#: a lane's handler of one client message type
Handler = Callable[[Any], Awaitable[None]]


class ReplyCaches(Protocol):
    """The node's result caches (``tidegate.cluster.caches.ResultCaches``): a greedy reply or
    a chunk of speech given before comes back at once."""

    async def synthesize(
        self, tts: Scheduler[Any, Any], text: str, *, voice: str, urgent: bool = False
    ) -> Array: ...

    async def generate(
        self,
        llm: LlmEngine,
        messages: Sequence[Mapping[str, Any]],
        params: SamplingParams,
        *,
        session: str | None = None,
    ) -> Generation: ...

    def stats(self) -> dict[str, Any]: ...


class Observer(Protocol):
    """A latency histogram (ms)."""

    def observe(self, value: float) -> None: ...


class StageTimesPort(Protocol):
    """The node's latency histograms a lane feeds (``/metrics``)."""

    @property
    def voice_to_voice(self) -> Observer: ...


class SessionPort(Protocol):
    """What a lane may do with its session: emit events (never blocks), give upload credit
    back, start owned tasks, hand records to the writer, read the session's config."""

    @property
    def id(self) -> str: ...

    @property
    def config(self) -> dict[str, Any]: ...

    @property
    def caches(self) -> ReplyCaches | None: ...

    @property
    def stage_times(self) -> StageTimesPort | None: ...

    def emit(self, msg: ServerMessage) -> None: ...

    def return_credit(self, nbytes: int) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...

    def record(self, rec: Record) -> bool: ...


class LocalSession:
    """A :class:`SessionPort` for lanes run in process without a server (benches, tests):
    keeps the events, records and credit the lanes give it, and owns the tasks they start
    (:meth:`close` cancels what is left)."""

    def __init__(self, session_id: str = "s_lane") -> None:
        self.id = session_id
        self.config: dict[str, Any] = {}
        self.caches: ReplyCaches | None = None
        self.stage_times: StageTimesPort | None = None
        self.events: list[ServerMessage] = []
        self.records: list[Record] = []
        self.credit_bytes = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    def emit(self, msg: ServerMessage) -> None:
        self.events.append(msg)

    def return_credit(self, nbytes: int) -> None:
        self.credit_bytes += nbytes

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def record(self, rec: Record) -> bool:
        self.records.append(rec)
        return True

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Lane(Protocol):
    """One unit of what a session does (audio, turns, reply, vision, loopback)."""

    name: str

    def handlers(self) -> Mapping[type[Any], Handler]:
        """The client message types this lane takes, and what takes each."""
        ...

    def start_media(self, peer: MediaPeer) -> None:
        """A WebRTC peer was accepted: take what this lane uses of it."""
        ...

    def stats(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...
