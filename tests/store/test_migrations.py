"""Migrations from an empty database, on SQLite and PostgreSQL: up, matching the models,
down and up again; `tidegate db upgrade`; and a PostgreSQL cluster the test setup starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

from tests.store.helpers import TABLES, async_url, query
from tests.store.postgres import create_database, drop_database, throwaway_cluster
from tests.support import scaled
from tidegate.store import engine as db_engine


async def _tables(url: str) -> set[str]:
    if url.startswith("sqlite"):
        rows = await query(url, "SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = await query(
            url, "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public'"
        )
    return {r["name"] for r in rows}


async def test_upgrade_from_empty_matches_the_models(database_url: str) -> None:
    """From nothing, upgrade head creates every table, exactly as the models declare them;
    downgrade to base removes them; upgrade again restores them."""
    engine = db_engine.create_engine(async_url(database_url))
    try:
        assert await _tables(database_url) == set()
        async with engine.connect() as conn:
            assert await db_engine.current_revision(conn) is None
        await db_engine.upgrade(engine)
        assert await _tables(database_url) == {*TABLES, "alembic_version"}
        async with engine.connect() as conn:
            assert await db_engine.current_revision(conn) == await db_engine.head_revision(engine)
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), SQLModel.metadata)
            )
        assert diff == []
        await db_engine.downgrade(engine, "base")
        assert await _tables(database_url) == {"alembic_version"}
        await db_engine.upgrade(engine)
        await db_engine.upgrade(engine)  # at head: nothing to do
        assert await _tables(database_url) == {*TABLES, "alembic_version"}
    finally:
        await engine.dispose()


def test_db_upgrade_command(database_url: str, tmp_path: Path) -> None:
    """`tidegate db upgrade` migrates the configured database; `db current` says so."""
    env = {**os.environ, "TIDEGATE_DATA_DIR": str(tmp_path), "TIDEGATE_DATABASE_URL": database_url}
    up = subprocess.run(
        [sys.executable, "-m", "tidegate", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert up.returncode == 0, up.stderr
    current = subprocess.run(
        [sys.executable, "-m", "tidegate", "db", "current"],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert current.returncode == 0, current.stderr
    assert "current: 0003" in current.stdout and "head: 0003" in current.stdout


def test_db_command_names_an_unreachable_database(tmp_path: Path) -> None:
    """An unreachable database is an error naming it, exit status 1, not a traceback."""
    env = {
        **os.environ,
        "TIDEGATE_DATA_DIR": str(tmp_path),
        "TIDEGATE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "TIDEGATE_DB_TIMEOUT_S": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tidegate", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert proc.returncode == 1
    assert "127.0.0.1:1/none" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
async def test_a_throwaway_cluster_where_none_runs() -> None:
    """Where no PostgreSQL answers, the test setup starts its own cluster (initdb, pg_ctl) on
    a free port, and migrations run on it; it is stopped and removed after."""
    with throwaway_cluster() as cluster:
        url = await create_database(cluster.url)
        engine = db_engine.create_engine(async_url(url))
        try:
            await db_engine.upgrade(engine)
        finally:
            await engine.dispose()
        assert "sessions" in await _tables(url)
        await drop_database(cluster.url, url)
        folder = cluster.folder
    assert not folder.exists()
