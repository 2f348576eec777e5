"""Alembic environment: migrations always run on a connection handed in by
:mod:`tidegate.store.engine` (``config.attributes["connection"]``), never from a URL here."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import tidegate.store.models  # noqa: F401  (registers the tables)

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `tidegate db upgrade`, not the alembic command")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
