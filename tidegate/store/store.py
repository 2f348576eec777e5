"""Records in, rows out: how each record kind is written, and the queries the API runs.

:func:`apply` writes a batch of records in the order given, inside the caller's transaction.
Every write is idempotent, so the journal can replay a batch that was already committed:
inserts are keyed by the record's own id and skip a row that exists (``ON CONFLICT DO
NOTHING``); the lifecycle updates of a session set absolute values (its status, its resume
count), never increments.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from tidegate.pipelines import records as r

from .models import (
    SESSION_TABLES,
    LatencyRow,
    ResponseRow,
    SensorBatchRow,
    SessionEvent,
    SessionRow,
    Subject,
    Tenant,
    TranscriptRow,
)

T_TENANTS = Tenant.__table__  # type: ignore[attr-defined]
T_SUBJECTS = Subject.__table__  # type: ignore[attr-defined]
T_SESSIONS = SessionRow.__table__  # type: ignore[attr-defined]
T_EVENTS = SessionEvent.__table__  # type: ignore[attr-defined]
T_TRANSCRIPTS = TranscriptRow.__table__  # type: ignore[attr-defined]
T_RESPONSES = ResponseRow.__table__  # type: ignore[attr-defined]
T_LATENCY = LatencyRow.__table__  # type: ignore[attr-defined]
T_SENSORS = SensorBatchRow.__table__  # type: ignore[attr-defined]


def _insert_ignore(conn: sa.Connection, table: sa.Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def _event_row(rec: Any, kind: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rec.record_id,
        "session_id": rec.session_id,
        "tenant_id": rec.tenant,
        "kind": kind,
        "at_ms": rec.at_ms,
        "detail": detail,
    }


def _started_rows(rec: r.SessionStarted) -> list[tuple[sa.Table, dict[str, Any]]]:
    c = rec.client
    return [
        (T_TENANTS, {"id": rec.tenant, "first_seen_at_ms": rec.at_ms}),
        (
            T_SUBJECTS,
            {"tenant_id": rec.tenant, "subject": rec.subject, "first_seen_at_ms": rec.at_ms},
        ),
        (
            T_SESSIONS,
            {
                "id": rec.session_id,
                "tenant_id": rec.tenant,
                "subject": rec.subject,
                "mode": rec.mode,
                "status": r.STATUS_OPEN,
                "created_at_ms": rec.at_ms,
                "ended_at_ms": None,
                "end_reason": None,
                "resumes": 0,
                "last_resumed_at_ms": None,
                "encoding": c.get("encoding"),
                "user_agent": c.get("user_agent"),
                "origin": c.get("origin"),
                "remote_addr": c.get("remote_addr"),
                "config": rec.config,
                "stats": None,
                "node_id": rec.node_id or None,
            },
        ),
        (T_EVENTS, _event_row(rec, "started", {"client": c, "config": rec.config})),
    ]


def _child_row(rec: Any) -> tuple[sa.Table, dict[str, Any]]:
    base = {"id": rec.record_id, "session_id": rec.session_id, "tenant_id": rec.tenant}
    if isinstance(rec, r.TranscriptSegment):
        return T_TRANSCRIPTS, {
            **base,
            "segment_id": rec.segment_id,
            "text": rec.text,
            "language": rec.language,
            "audio_start_ms": rec.audio_start_ms,
            "audio_end_ms": rec.audio_end_ms,
            "created_at_ms": rec.at_ms,
        }
    if isinstance(rec, r.Response):
        return T_RESPONSES, {
            **base,
            "response_id": rec.response_id,
            "status": rec.status,
            "text": rec.text,
            "spoken_text": rec.spoken_text,
            "ref": rec.ref,
            "tool_calls": orjson.dumps(rec.tool_calls).decode() if rec.tool_calls else None,
            "created_at_ms": rec.at_ms,
        }
    if isinstance(rec, r.LatencySummary):
        return T_LATENCY, {
            **base,
            "metric": rec.metric,
            "count": rec.count,
            "p50_ms": rec.p50_ms,
            "p90_ms": rec.p90_ms,
            "p99_ms": rec.p99_ms,
            "max_ms": rec.max_ms,
            "created_at_ms": rec.at_ms,
        }
    if isinstance(rec, r.SensorBatch):
        return T_SENSORS, {
            **base,
            "channel": rec.channel,
            "count": len(rec.readings),
            "first_ts_ms": rec.first_ts_ms,
            "last_ts_ms": rec.last_ts_ms,
            "readings": rec.readings,
            "created_at_ms": rec.at_ms,
        }
    raise TypeError(f"not a child record: {type(rec).__name__}")


def apply(conn: sa.Connection, batch: Sequence[r.Record]) -> None:
    """Write ``batch`` in order. Consecutive inserts into one table go out as one statement.
    Synchronous, for the database thread: a sync connection directly, an async one through
    ``await conn.run_sync(apply, batch)``."""
    pending: list[tuple[sa.Table, dict[str, Any]]] = []

    def flush_inserts() -> None:
        # Inserts between two updates do not depend on each other (no foreign keys), so each
        # table's rows go out as one executemany, tables in the order they first appear.
        by_table: dict[sa.Table, list[dict[str, Any]]] = {}
        for table, row in pending:
            by_table.setdefault(table, []).append(row)
        for table, rows in by_table.items():
            conn.execute(_insert_ignore(conn, table), rows)
        pending.clear()

    for rec in batch:
        if isinstance(rec, r.SessionStarted):
            pending.extend(_started_rows(rec))
        elif isinstance(rec, r.NodeLost):
            flush_inserts()
            _apply_node_lost(conn, rec)
        elif isinstance(rec, r.SessionResumed | r.SessionEnded | r.SessionDeleted):
            flush_inserts()  # an update must see the rows inserted before it
            _apply_update(conn, rec)
        else:
            pending.append(_child_row(rec))
    flush_inserts()


def _apply_node_lost(conn: sa.Connection, rec: r.NodeLost) -> None:
    """Close the sessions that node left open (absolute values: replaying it is harmless)."""
    t = T_SESSIONS
    conn.execute(
        sa.update(t)
        .where(t.c.node_id == rec.node_id, t.c.status == r.STATUS_OPEN)
        .values(status="closed", ended_at_ms=rec.at_ms, end_reason=rec.reason)
    )


def _apply_update(
    conn: sa.Connection, rec: r.SessionResumed | r.SessionEnded | r.SessionDeleted
) -> None:
    sid = T_SESSIONS.c.id == rec.session_id
    if isinstance(rec, r.SessionDeleted):
        for model in SESSION_TABLES:
            table = model.__table__  # type: ignore[attr-defined]
            column = table.c.id if table is T_SESSIONS else table.c.session_id
            conn.execute(sa.delete(table).where(column == rec.session_id))
        return
    if isinstance(rec, r.SessionResumed):
        values: dict[str, Any] = {"resumes": rec.resumes, "last_resumed_at_ms": rec.at_ms}
        detail: dict[str, Any] = {"client": rec.client, "resumes": rec.resumes}
        kind = "resumed"
    else:
        values = {
            "status": rec.status,
            "ended_at_ms": rec.at_ms,
            "end_reason": rec.reason,
            "stats": rec.stats,
        }
        detail = {"status": rec.status, "reason": rec.reason}
        kind = "ended"
    conn.execute(sa.update(T_SESSIONS).where(sid).values(**values))
    row = _event_row(rec, kind, detail)
    conn.execute(_insert_ignore(conn, T_EVENTS), [row])


# -- reading (the HTTP API) ---------------------------------------------------------------------


class CursorError(ValueError):
    """A pagination cursor that this server did not hand out."""


def encode_cursor(at_ms: float, row_id: str) -> str:
    raw = f"{at_ms!r}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


CURSOR_AT_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?")  # a float's repr, ASCII


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii")).decode()
        at, _, row_id = raw.partition("|")
        if CURSOR_AT_RE.fullmatch(at) is None:
            raise ValueError(at)
        return float(at), row_id
    except (binascii.Error, UnicodeError, ValueError):
        raise CursorError(
            "cursor: not one this server handed out; use next_cursor as given"
        ) from None


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class SessionFilter:
    """What ``GET /v1/sessions`` may filter on. ``tenant`` None: every tenant (admin only)."""

    tenant: str | None
    subject: str | None = None
    status: str | None = None
    mode: str | None = None
    since_ms: float | None = None
    until_ms: float | None = None


SESSION_COLUMNS = (
    "id",
    "tenant_id",
    "subject",
    "mode",
    "status",
    "created_at_ms",
    "ended_at_ms",
    "end_reason",
    "resumes",
    "last_resumed_at_ms",
    "encoding",
    "user_agent",
    "origin",
    "remote_addr",
    "config",
)


async def list_sessions(
    conn: AsyncConnection, f: SessionFilter, *, limit: int, cursor: str | None
) -> Page:
    """Sessions newest first, keyset-paginated on (created_at_ms, id)."""
    t = T_SESSIONS
    q = sa.select(*(t.c[name] for name in SESSION_COLUMNS))
    if f.tenant is not None:
        q = q.where(t.c.tenant_id == f.tenant)
    if f.subject is not None:
        q = q.where(t.c.subject == f.subject)
    if f.status is not None:
        q = q.where(t.c.status == f.status)
    if f.mode is not None:
        q = q.where(t.c.mode == f.mode)
    if f.since_ms is not None:
        q = q.where(t.c.created_at_ms >= f.since_ms)
    if f.until_ms is not None:
        q = q.where(t.c.created_at_ms < f.until_ms)
    if cursor is not None:
        at, row_id = decode_cursor(cursor)
        q = q.where(
            sa.tuple_(t.c.created_at_ms, t.c.id) < sa.tuple_(sa.literal(at), sa.literal(row_id))
        )
    q = q.order_by(t.c.created_at_ms.desc(), t.c.id.desc()).limit(limit + 1)
    rows = [dict(row._mapping) for row in await conn.execute(q)]
    return _page(rows, limit, "created_at_ms")


async def get_session(
    conn: AsyncConnection, session_id: str, tenant: str | None
) -> dict[str, Any] | None:
    """One session with its stats and record counts; None if absent or another tenant's."""
    t = T_SESSIONS
    q = sa.select(t).where(t.c.id == session_id)
    if tenant is not None:
        q = q.where(t.c.tenant_id == tenant)
    row = (await conn.execute(q)).first()
    if row is None:
        return None
    out = dict(row._mapping)
    counts = {}
    for name, table in CHILD_TABLES.items():
        n = await conn.scalar(
            sa.select(sa.func.count()).select_from(table).where(table.c.session_id == session_id)
        )
        counts[name] = int(n or 0)
    out["counts"] = counts
    return out


CHILD_TABLES: dict[str, sa.Table] = {
    "events": T_EVENTS,
    "transcript": T_TRANSCRIPTS,
    "responses": T_RESPONSES,
    "latency": T_LATENCY,
    "sensors": T_SENSORS,
}
_ORDER_COLUMN = {"events": "at_ms"}


async def list_children(
    conn: AsyncConnection,
    kind: str,
    session_id: str,
    tenant: str | None,
    *,
    limit: int,
    cursor: str | None,
) -> Page | None:
    """One session's records of ``kind`` oldest first; None if the session is not visible."""
    s = T_SESSIONS
    visible = sa.select(s.c.id).where(s.c.id == session_id)
    if tenant is not None:
        visible = visible.where(s.c.tenant_id == tenant)
    if (await conn.execute(visible)).first() is None:
        return None
    t = CHILD_TABLES[kind]
    order = t.c[_ORDER_COLUMN.get(kind, "created_at_ms")]
    q = sa.select(*(c for c in t.c if c.name not in ("tenant_id",))).where(
        t.c.session_id == session_id
    )
    if cursor is not None:
        at, row_id = decode_cursor(cursor)
        q = q.where(sa.tuple_(order, t.c.id) > sa.tuple_(sa.literal(at), sa.literal(row_id)))
    q = q.order_by(order, t.c.id).limit(limit + 1)
    rows = [dict(row._mapping) for row in await conn.execute(q)]
    return _page(rows, limit, order.name)


def _page(rows: list[dict[str, Any]], limit: int, order: str) -> Page:
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1][order], rows[-1]["id"]) if more and rows else None
    return Page(rows, nxt)


async def session_owner(conn: AsyncConnection, session_id: str) -> str | None:
    """The tenant of a stored session (None: no such session)."""
    row = (
        await conn.execute(sa.select(T_SESSIONS.c.tenant_id).where(T_SESSIONS.c.id == session_id))
    ).first()
    return None if row is None else str(row[0])


async def count_rows(conn: AsyncConnection) -> dict[str, int]:
    """Rows per table (tests and the bench)."""
    out = {}
    for table in (T_TENANTS, T_SUBJECTS, T_SESSIONS, *CHILD_TABLES.values()):
        out[table.name] = int(await conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)
    return out
