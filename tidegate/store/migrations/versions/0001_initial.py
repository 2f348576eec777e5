"""Initial schema: tenants, subjects, sessions and their events, transcripts, responses,
latency summaries, sensor batches.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def _child(name: str, *columns: sa.Column[Any]) -> None:
    """A table of one session's records: id, session_id, tenant_id, then its own columns."""
    op.create_table(
        name,
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        *columns,
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(f"ix_{name}_session_id", name, ["session_id"])


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("first_seen_at_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "subjects",
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("first_seen_at_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "subject"),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("mode", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at_ms", sa.Float(), nullable=False),
        sa.Column("ended_at_ms", sa.Float(), nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.Column("resumes", sa.Integer(), nullable=False),
        sa.Column("last_resumed_at_ms", sa.Float(), nullable=True),
        sa.Column("encoding", sa.String(length=16), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("origin", sa.Text(), nullable=True),
        sa.Column("remote_addr", sa.String(length=128), nullable=True),
        sa.Column("config", JSON, nullable=False),
        sa.Column("stats", JSON, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_sessions_created_at_ms", "sessions", ["created_at_ms"])
    op.create_index("ix_sessions_tenant_created", "sessions", ["tenant_id", "created_at_ms", "id"])
    _child(
        "session_events",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("at_ms", sa.Float(), nullable=False),
        sa.Column("detail", JSON, nullable=False),
    )
    _child(
        "transcript_segments",
        sa.Column("segment_id", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("language", sa.Text(), nullable=True),
        sa.Column("audio_start_ms", sa.Float(), nullable=False),
        sa.Column("audio_end_ms", sa.Float(), nullable=False),
        sa.Column("created_at_ms", sa.Float(), nullable=False),
    )
    _child(
        "responses",
        sa.Column("response_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("spoken_text", sa.Text(), nullable=True),
        sa.Column("ref", sa.Text(), nullable=True),
        sa.Column("created_at_ms", sa.Float(), nullable=False),
    )
    _child(
        "latency_summaries",
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("p50_ms", sa.Float(), nullable=False),
        sa.Column("p90_ms", sa.Float(), nullable=False),
        sa.Column("p99_ms", sa.Float(), nullable=False),
        sa.Column("max_ms", sa.Float(), nullable=False),
        sa.Column("created_at_ms", sa.Float(), nullable=False),
    )
    _child(
        "sensor_batches",
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_ts_ms", sa.Float(), nullable=False),
        sa.Column("last_ts_ms", sa.Float(), nullable=False),
        sa.Column("readings", JSON, nullable=False),
        sa.Column("created_at_ms", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    for name in (
        "sensor_batches",
        "latency_summaries",
        "responses",
        "transcript_segments",
        "session_events",
    ):
        op.drop_index(f"ix_{name}_session_id", table_name=name)
        op.drop_table(name)
    op.drop_index("ix_sessions_tenant_created", table_name="sessions")
    op.drop_index("ix_sessions_created_at_ms", table_name="sessions")
    op.drop_table("sessions")
    op.drop_table("subjects")
    op.drop_table("tenants")
