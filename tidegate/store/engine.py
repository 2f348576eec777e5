"""Connecting to the database: URL resolution, the async engine, migrations.

``TIDEGATE_DATABASE_URL`` takes ``postgresql://user@host:port/db`` (driven by asyncpg) or
``sqlite:///path``; unset, the database is the SQLite file ``data_dir/tidegate.db``, in WAL
mode so that the API's readers never wait on the writer. Migrations are Alembic's, run through
the same async engine (``tidegate db upgrade``, or at start-up with ``db_migrate_on_start``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tidegate.protocol.schema import INT64_MAX, INT64_MIN

from .config import ConfigError, StoreSettings

log = logging.getLogger(__name__)

SQLITE_FILE = "tidegate.db"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
DRIVERS = {"postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}


def database_url(settings: StoreSettings) -> URL:
    """The SQLAlchemy URL for the configured database (with its async driver)."""
    raw = settings.database_url or f"sqlite:///{settings.data_dir / SQLITE_FILE}"
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigError(
            "TIDEGATE_DATABASE_URL: cannot parse it; expected postgresql://USER@HOST:PORT/DB "
            "or sqlite:///PATH"
        ) from None
    backend = url.get_backend_name()
    if backend not in DRIVERS:
        raise ConfigError(
            f"TIDEGATE_DATABASE_URL: unsupported database {backend!r}; expected postgresql or "
            "sqlite"
        )
    url = url.set(drivername=DRIVERS[backend])
    if backend == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return url


def _json_int(text: str) -> int | float:
    """An integer read from a JSON column: outside int64 it was a float when written (the
    protocol admits no such integer), printed without an exponent by PostgreSQL's jsonb."""
    value = int(text)
    return value if INT64_MIN <= value <= INT64_MAX else float(value)


def json_loads(text: str | bytes) -> Any:
    """The JSON columns' deserializer: as ``json.loads``, with every number a value the
    protocol's encodings carry (docs/protocol.md, "Numbers and text")."""
    return json.loads(text, parse_int=_json_int)


def create_engine(url: URL, *, timeout_s: float = 5.0, pool_size: int = 5) -> AsyncEngine:
    """An async engine; ``timeout_s`` bounds connecting and each statement."""
    backend = url.get_backend_name()
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "json_deserializer": json_loads}
    if backend == "postgresql":
        kwargs["connect_args"] = {"timeout": timeout_s, "command_timeout": timeout_s}
        kwargs["pool_size"] = pool_size
        kwargs["max_overflow"] = pool_size
        kwargs["pool_timeout"] = timeout_s
    else:
        # sqlite3's `timeout` is its busy timeout: how long a write waits on another's lock.
        kwargs["connect_args"] = {"timeout": timeout_s}
    engine = create_async_engine(url, **kwargs)
    if backend == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def create_sync_engine(url: URL, *, timeout_s: float = 5.0) -> sa.Engine:
    """A synchronous SQLite engine (the standard ``sqlite3`` driver) for the writer's
    database thread: it costs about a third of aiosqlite's CPU per record (docs/persistence.md).
    ``timeout_s`` is SQLite's busy timeout: how long a write waits on another's lock."""
    if url.get_backend_name() != "sqlite":
        raise ValueError(f"a sync engine is for SQLite only, not {url.get_backend_name()}")
    engine = sa.create_engine(
        url.set(drivername="sqlite+pysqlite"),
        connect_args={"timeout": timeout_s},
        pool_pre_ping=True,
        json_deserializer=json_loads,
    )
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def upgrade_sync(engine: sa.Engine, revision: str = "head") -> None:
    """:func:`upgrade` on a synchronous engine."""
    with engine.begin() as conn:
        _upgrade(conn, revision)


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _alembic_config(connection: sa.Connection) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: sa.Connection, revision: str) -> None:
    from alembic import command

    command.upgrade(_alembic_config(connection), revision)


def _downgrade(connection: sa.Connection, revision: str) -> None:
    from alembic import command

    command.downgrade(_alembic_config(connection), revision)


def _current(connection: sa.Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _head(connection: sa.Connection) -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(connection)).get_current_head()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (Alembic ``upgrade``)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the schema back to ``revision`` (``base``: nothing)."""
    async with engine.begin() as conn:
        await conn.run_sync(_downgrade, revision)


async def current_revision(conn: AsyncConnection) -> str | None:
    return await conn.run_sync(_current)


async def head_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_head)


def describe(url: URL) -> str:
    """The URL without its password, for logs and errors."""
    return url.render_as_string(hide_password=True)
