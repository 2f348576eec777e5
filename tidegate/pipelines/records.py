"""What the server keeps: one frozen dataclass per record kind, and the recorder they go to.

A record is created where the event happens (the session, a mode, an engine stream) and handed
to :meth:`Recorder.record`, which never blocks and never raises: the writer task
(:mod:`tidegate.store.writer`) journals it and commits it in a batch. Every record carries a
``record_id`` generated here, so replaying the journal after a failure inserts nothing twice.

A mode records through its session, which fills in ``session_id`` and ``tenant``::

    session.record(TranscriptSegment(segment_id="g1", text="hello", audio_start_ms=0.0,
                                     audio_end_ms=840.0))

This module is pure data: it imports no database code.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

#: how a session ended, as stored in ``sessions.status``
STATUS_OPEN = "open"
END_STATUSES = ("closed", "expired", "shutdown")
#: ``sessions.end_reason`` of a session closed because the process holding it is gone
NODE_LOST = "node_lost"


def new_record_id() -> str:
    """A fresh, client-generated record id (the primary key of the row it becomes)."""
    return secrets.token_hex(12)


def now_ms() -> float:
    """Wall-clock time in epoch milliseconds (the unit of every ``*_at_ms`` column)."""
    return time.time() * 1000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionStarted:
    """A session was created: who, with which config, from which client."""

    KIND: ClassVar[str] = "session_started"
    subject: str
    mode: str
    config: dict[str, Any]
    client: dict[str, Any]
    node_id: str = ""  # the process holding the session; the writer fills it in
    session_id: str = ""
    tenant: str = ""
    record_id: str = field(default_factory=new_record_id)
    at_ms: float = field(default_factory=now_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionResumed:
    """A session was resumed on a new connection; ``resumes`` is its count so far."""

    KIND: ClassVar[str] = "session_resumed"
    subject: str
    resumes: int
    client: dict[str, Any]
    session_id: str = ""
    tenant: str = ""
    record_id: str = field(default_factory=new_record_id)
    at_ms: float = field(default_factory=now_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionEnded:
    """A session ended (``status``: closed, expired or shutdown) with its stats summary."""

    KIND: ClassVar[str] = "session_ended"
    status: str
    reason: str
    stats: dict[str, Any]
    session_id: str = ""
    tenant: str = ""
    record_id: str = field(default_factory=new_record_id)
    at_ms: float = field(default_factory=now_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptSegment:
    """A final transcript of one speech segment (partials are not kept)."""

    KIND: ClassVar[str] = "transcript_segment"
    segment_id: str
    text: str
    audio_start_ms: float
    audio_end_ms: float
    language: str | None = None
    session_id: str = ""
    tenant: str = ""
    record_id: str = field(default_factory=new_record_id)
    at_ms: float = field(default_factory=now_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """A finished response: its text, how it ended, and what had been spoken when it was cut."""

    KIND: ClassVar[str] = "response"
    response_id: str
    text: str
    status: str  # completed, cancelled, interrupted, failed
    spoken_text: str | None = None
    ref: str | None = None
    # the tool calls it made: {call_id, name, arguments, output} each, in order
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    session_id: str = ""
    tenant: str = ""
    record_id: str = field(default_factory=new_record_id)
    at_ms: float = field(default_factory=now_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class LatencySummary:
    """Percentiles of one latency metric of a session (e.g. ``eos_to_final``)."""

    KIND: ClassVar[str] = "latency_summary"
    metric: str
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    session_id: str = ""
    tenant: str = ""
    record_id: str = field(default_factory=new_record_id)
    at_ms: float = field(default_factory=now_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class SensorBatch:
    """Readings of one sensor channel: ``readings`` is a list of ``[ts_ms, [values...]]``."""

    KIND: ClassVar[str] = "sensor_batch"
    channel: str
    readings: list[list[Any]]
    first_ts_ms: float
    last_ts_ms: float
    session_id: str = ""
    tenant: str = ""
    record_id: str = field(default_factory=new_record_id)
    at_ms: float = field(default_factory=now_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionDeleted:
    """A request to delete a session's data; journaled like any record, so it is applied in
    order after every record of that session written before it."""

    KIND: ClassVar[str] = "session_deleted"
    session_id: str = ""
    tenant: str = ""
    record_id: str = field(default_factory=new_record_id)
    at_ms: float = field(default_factory=now_ms)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeLost:
    """The process ``node_id`` is gone (killed, crashed): the sessions it left ``open`` are
    closed with ``reason``. Journaled after everything that node journaled, so it applies
    after its records; it belongs to no session (``session_id`` and ``tenant`` stay empty)."""

    KIND: ClassVar[str] = "node_lost"
    node_id: str
    reason: str = NODE_LOST
    session_id: str = ""
    tenant: str = ""
    record_id: str = field(default_factory=new_record_id)
    at_ms: float = field(default_factory=now_ms)


Record = (
    SessionStarted
    | SessionResumed
    | SessionEnded
    | TranscriptSegment
    | Response
    | LatencySummary
    | SensorBatch
    | SessionDeleted
    | NodeLost
)
RECORD_TYPES: dict[str, type[Any]] = {
    cls.KIND: cls
    for cls in (
        SessionStarted,
        SessionResumed,
        SessionEnded,
        TranscriptSegment,
        Response,
        LatencySummary,
        SensorBatch,
        SessionDeleted,
        NodeLost,
    )
}


class RecordFormatError(ValueError):
    """A journal entry that names no known record kind or has the wrong fields."""


def to_entry(rec: Record) -> dict[str, Any]:
    """The journal form of a record: ``{"kind": ..., **fields}``."""
    out = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}
    out["kind"] = rec.KIND
    return out


def from_entry(entry: Mapping[str, Any]) -> Record:
    """The record a journal entry holds (raises RecordFormatError)."""
    data = dict(entry)
    cls = RECORD_TYPES.get(data.pop("kind", None))
    if cls is None:
        raise RecordFormatError(f"unknown record kind {entry.get('kind')!r}")
    try:
        rec: Record = cls(**data)
    except TypeError as e:
        raise RecordFormatError(f"{cls.KIND}: {e}") from None
    return rec


class Recorder(Protocol):
    """Where records go. ``record`` never blocks and never raises; False means refused (the
    writer's queue was full) and the refusal is counted."""

    def record(self, rec: Record) -> bool: ...


def client_info(scope: Mapping[str, Any], encoding: str) -> dict[str, Any]:
    """What we keep about a client from its ASGI connection scope."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    client = scope.get("client")
    return {
        "encoding": encoding,
        "user_agent": headers.get("user-agent", "")[:512] or None,
        "origin": headers.get("origin", "")[:512] or None,
        "remote_addr": f"{client[0]}:{client[1]}" if client else None,
        "forwarded_for": headers.get("x-forwarded-for", "")[:512] or None,
    }


def plain_json(value: Any) -> Any:
    """``value`` as plain JSON data (dicts, lists, str, numbers, None); others become str."""
    import orjson

    return orjson.loads(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS))


class SensorBatcher:
    """Gathers sensor readings per channel into :class:`SensorBatch` records: a batch is
    handed to ``emit`` when it holds ``max_readings``, when a reading arrives and the batch is
    older than ``max_age_s``, and at :meth:`flush` (session end). Memory is bounded by
    channels x ``max_readings``; the protocol bounds a channel name and a reading's values."""

    def __init__(
        self,
        emit: Any,
        *,
        max_readings: int = 256,
        max_age_s: float = 5.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.emit = emit
        self.max_readings = max_readings
        self.max_age_s = max_age_s
        self.clock = clock
        self._open: dict[str, tuple[float, list[list[Any]]]] = {}
        self.batches = 0

    def add(self, channel: str, ts_ms: float, values: Any) -> None:
        entry = self._open.get(channel)
        if entry is None:
            entry = self._open[channel] = (self.clock(), [])
        started, readings = entry
        readings.append([ts_ms, list(values)])
        if len(readings) >= self.max_readings or self.clock() - started >= self.max_age_s:
            self._emit(channel)

    def flush(self) -> None:
        for channel in list(self._open):
            self._emit(channel)

    def _emit(self, channel: str) -> None:
        _, readings = self._open.pop(channel)
        if readings:
            self.batches += 1
            self.emit(
                SensorBatch(
                    channel=channel,
                    readings=readings,
                    first_ts_ms=float(readings[0][0]),
                    last_ts_ms=float(readings[-1][0]),
                )
            )
