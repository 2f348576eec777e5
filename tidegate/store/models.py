"""The schema (SQLModel tables). Migrations in ``migrations/versions`` create exactly this;
a test compares the two on SQLite and PostgreSQL.

Times are epoch milliseconds (``*_at_ms``, double precision), like the protocol's ``t``.
Every child row carries ``tenant_id`` as well as ``session_id``, so that every query a tenant
makes is filtered on an indexed column of the table it reads. Child rows have no foreign key to
``sessions``: deletion removes a session's rows from every table in one transaction, and the
writer never has to order inserts across tables for a constraint's sake.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

JSON_TYPE = sa.JSON().with_variant(JSONB(), "postgresql")


def _json(nullable: bool = False) -> Any:
    return Field(sa_column=sa.Column(JSON_TYPE, nullable=nullable))


def _text(nullable: bool = False) -> Any:
    return Field(sa_column=sa.Column(sa.Text, nullable=nullable))


class Tenant(SQLModel, table=True):
    """A tenant, as named by the ``tenant`` claim of a token; created on its first session."""

    __tablename__ = "tenants"
    id: str = Field(primary_key=True, max_length=128)
    first_seen_at_ms: float


class Subject(SQLModel, table=True):
    """A subject (``sub`` claim) of a tenant; created on its first session."""

    __tablename__ = "subjects"
    tenant_id: str = Field(primary_key=True, max_length=128)
    subject: str = Field(sa_column=sa.Column(sa.Text, primary_key=True))
    first_seen_at_ms: float


class SessionRow(SQLModel, table=True):
    """A session: lifecycle, client, config and the stats summary taken when it ended."""

    __tablename__ = "sessions"
    __table_args__ = (sa.Index("ix_sessions_tenant_created", "tenant_id", "created_at_ms", "id"),)
    id: str = Field(primary_key=True, max_length=64)
    tenant_id: str = Field(max_length=128)
    subject: str = _text()
    mode: str = Field(max_length=32)
    status: str = Field(max_length=16)  # open, closed, expired, shutdown
    created_at_ms: float = Field(index=True)
    ended_at_ms: float | None = None
    end_reason: str | None = _text(nullable=True)
    resumes: int = 0
    last_resumed_at_ms: float | None = None
    encoding: str | None = Field(default=None, max_length=16)
    user_agent: str | None = _text(nullable=True)
    origin: str | None = _text(nullable=True)
    remote_addr: str | None = Field(default=None, max_length=128)
    config: dict[str, Any] = _json()
    stats: dict[str, Any] | None = _json(nullable=True)
    node_id: str | None = Field(default=None, max_length=32, index=True)


class SessionEvent(SQLModel, table=True):
    """One lifecycle event of a session (started, resumed, ended), in the order it happened."""

    __tablename__ = "session_events"
    id: str = Field(primary_key=True, max_length=32)
    session_id: str = Field(index=True, max_length=64)
    tenant_id: str = Field(max_length=128)
    kind: str = Field(max_length=16)
    at_ms: float
    detail: dict[str, Any] = _json()


class TranscriptRow(SQLModel, table=True):
    """A final transcript segment."""

    __tablename__ = "transcript_segments"
    id: str = Field(primary_key=True, max_length=32)
    session_id: str = Field(index=True, max_length=64)
    tenant_id: str = Field(max_length=128)
    segment_id: str = _text()
    text: str = _text()
    language: str | None = _text(nullable=True)
    audio_start_ms: float
    audio_end_ms: float
    created_at_ms: float


class ResponseRow(SQLModel, table=True):
    """A finished response: its text, status and the part spoken before it was cut."""

    __tablename__ = "responses"
    id: str = Field(primary_key=True, max_length=32)
    session_id: str = Field(index=True, max_length=64)
    tenant_id: str = Field(max_length=128)
    response_id: str = Field(max_length=64)
    status: str = Field(max_length=16)
    text: str = _text()
    spoken_text: str | None = _text(nullable=True)
    ref: str | None = _text(nullable=True)
    tool_calls: str | None = _text(nullable=True)  # JSON list of {call_id, name, arguments, output}
    created_at_ms: float


class LatencyRow(SQLModel, table=True):
    """Latency percentiles of one metric of a session."""

    __tablename__ = "latency_summaries"
    id: str = Field(primary_key=True, max_length=32)
    session_id: str = Field(index=True, max_length=64)
    tenant_id: str = Field(max_length=128)
    metric: str = _text()
    count: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    created_at_ms: float


class SensorBatchRow(SQLModel, table=True):
    """A batch of readings of one sensor channel."""

    __tablename__ = "sensor_batches"
    id: str = Field(primary_key=True, max_length=32)
    session_id: str = Field(index=True, max_length=64)
    tenant_id: str = Field(max_length=128)
    channel: str = _text()
    count: int
    first_ts_ms: float
    last_ts_ms: float
    readings: list[Any] = _json()
    created_at_ms: float


#: tables that hold one session's data, children first
SESSION_TABLES: tuple[type[SQLModel], ...] = (
    SessionEvent,
    TranscriptRow,
    ResponseRow,
    LatencyRow,
    SensorBatchRow,
    SessionRow,
)
