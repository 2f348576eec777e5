"""Sessions name the node (server process) that held them, so that the sessions a killed
process left open can be closed by the process that takes its place.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("node_id", sa.String(length=32), nullable=True))
    op.create_index("ix_sessions_node_id", "sessions", ["node_id"])


def downgrade() -> None:
    op.drop_index("ix_sessions_node_id", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("node_id")
