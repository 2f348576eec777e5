"""Reading what landed in a database, straight from it (not through the code under test's
queries), and building writers on a fresh database."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.support import scaled
from tidegate.protocol.client import Client, RefusedError
from tidegate.protocol.messages import InputText, ResponseDone
from tidegate.store import engine as db_engine
from tidegate.store.writer import RecordWriter

JSON_COLUMNS = {"config", "stats", "detail", "readings"}
TABLES = (
    "tenants",
    "subjects",
    "sessions",
    "session_events",
    "transcript_segments",
    "responses",
    "latency_summaries",
    "sensor_batches",
)


def async_url(url: str) -> sa.URL:
    u = make_url(url)
    return u.set(drivername=db_engine.DRIVERS[u.get_backend_name()])


def make_writer(url: str, journal_dir: Path, **kw: Any) -> RecordWriter:
    opts: dict[str, Any] = {"timeout_s": 1.0, "retry_s": 0.1, "journal_fsync": False}
    opts.update(kw)
    return RecordWriter(async_url(url), journal_dir, **opts)


async def query(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = db_engine.create_engine(async_url(url), timeout_s=5.0)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(sa.text(sql), params)
            rows = [dict(row._mapping) for row in result]
    finally:
        await engine.dispose()
    for row in rows:  # SQLite hands JSON columns back as text when read with raw SQL
        for key in JSON_COLUMNS.intersection(row):
            if isinstance(row[key], str):
                row[key] = json.loads(row[key])
    return rows


async def execute(url: str, sql: str, **params: Any) -> None:
    """Run one statement straight on the database (committed)."""
    engine = db_engine.create_engine(async_url(url), timeout_s=5.0)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(sql), params)
    finally:
        await engine.dispose()


async def counts(url: str) -> dict[str, int]:
    out = {}
    for table in TABLES:
        key = "tenant_id || '/' || subject" if table == "subjects" else "id"
        rows = await query(url, f"SELECT count(*) AS n, count(DISTINCT {key}) AS d FROM {table}")
        assert rows[0]["n"] == rows[0]["d"]
        out[table] = int(rows[0]["n"])
    return out


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 20.0, what: str = ""
) -> None:
    """Wait until ``check()`` is true (polling); fail after ``timeout_s``."""
    deadline = time.monotonic() + scaled(timeout_s)
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {scaled(timeout_s)} s: {what}")
        await asyncio.sleep(0.05)


async def check_draining(
    http: str, connect: Callable[[], Awaitable[Client]], open_: Client
) -> None:
    """A node after SIGTERM (the serve and the container tests; beside ``eventually`` and
    ``query``, which both use): /readyz turns 503 ``draining``, a new session is refused
    ``overloaded``, and the session ``open_`` still gets its replies."""

    async def draining() -> bool:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{http}/readyz")
        return r.status_code == 503 and r.json()["status"] == "draining"

    await eventually(draining, 10, "/readyz says draining")
    other = await connect()
    try:
        with pytest.raises(RefusedError) as refused:
            await other.create_session({"mode": "loopback"})
        assert refused.value.server_code == "overloaded"
    finally:
        await other.close()
    await open_.send(InputText(id="during", text="during the drain"))
    assert (await open_.wait_for(ResponseDone)).text == "during the drain"
