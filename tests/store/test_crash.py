"""Kill -9 the server between journal write and commit, restart it: nothing is lost.

The server runs as a child process (``python -m tidegate serve``). The database is made
unreachable (PostgreSQL: its port cut by a proxy; SQLite: locked by another writer), so that
the server journals what the session records but cannot commit it; the test sees that through
``/v1/admin/db``, kills the process with SIGKILL, gives the database back and starts the
server again on the same data folder: it replays the journal, and every record is there once.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.store.helpers import counts, eventually, execute, query
from tests.store.postgres import free_port
from tests.store.proxy import TcpProxy
from tests.support import SqliteLock, scaled, wait_ready
from tidegate.protocol.client import Client
from tidegate.protocol.messages import InputSensor, InputText, ResponseDone
from tidegate.server.auth import mint_token

pytestmark = pytest.mark.slow


class Child:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, key: str) -> None:
        self.proc = proc
        self.port = port
        self.key = key

    def token(self, *, admin: bool = False) -> str:
        scopes = ("session", "admin") if admin else ("session",)
        return mint_token(self.key.encode(), subject="alice", tenant="acme", scopes=scopes)

    async def db_status(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as http:
            resp = await http.get(
                "/v1/admin/db", headers={"Authorization": f"Bearer {self.token(admin=True)}"}
            )
            resp.raise_for_status()
            return dict(resp.json()["writer"])


@asynccontextmanager
async def child_server(data_dir: Path, database_url: str, key: str) -> AsyncIterator[Child]:
    port = free_port()
    env = {
        **os.environ,
        "TIDEGATE_HOST": "127.0.0.1",
        "TIDEGATE_PORT": str(port),
        "TIDEGATE_DATA_DIR": str(data_dir),
        "TIDEGATE_JWT_SECRET": key,
        "TIDEGATE_DATABASE_URL": database_url,
        "TIDEGATE_DB_TIMEOUT_S": "0.5",
        "TIDEGATE_DB_RETRY_S": "0.1",
        "TIDEGATE_LOG_LEVEL": "warning",
        "TIDEGATE_ENGINES": "",
        "TIDEGATE_METRICS_INTERVAL_S": "0",
    }
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tidegate", "serve", env=env)
    child = Child(proc, port, key)
    try:
        await wait_ready(f"http://127.0.0.1:{port}", timeout_s=60, exited=lambda: proc.returncode)
        yield child
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), scaled(15))
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _crash_and_recover(
    tmp_path: Path, url: str, check_url: str, cut: Callable[[], None], restore: Callable[[], None]
) -> None:
    key = secrets.token_hex(32)
    data = tmp_path / "data"
    async with child_server(data, url, key) as first:
        client = await Client.connect(f"ws://127.0.0.1:{first.port}/v1/control", first.token())
        sid = (await client.create_session({"mode": "loopback"})).session_id
        for i in range(5):
            await client.send(InputText(text=f"pre{i}"))
            await client.wait_for(ResponseDone)

        async def committed() -> bool:
            st = await first.db_status()
            return bool(st["committed"] >= 6 and st["journal"]["pending"] == 0)

        await eventually(committed, what="the first records are committed")
        first_node = (await first.db_status())["node_id"]
        cut()
        for i in range(20):
            await client.send(InputText(text=f"lost?{i}"))
            await client.wait_for(ResponseDone)
        for i in range(8):
            await client.send(InputSensor(channel="t", ts=float(i), values=(float(i),)))
        await client.send(InputText(text="last"))
        await client.wait_for(ResponseDone)

        async def journaled() -> bool:
            st = await first.db_status()
            return bool(not st["available"] and st["journal"]["pending"] >= 21)

        await eventually(journaled, what="the records are journaled, not committed")
        first.proc.kill()  # SIGKILL: no shutdown, no flush, no last commit
        await first.proc.wait()
        await client.close()
    assert (await counts(check_url))["responses"] == 5  # only what was committed before
    journal = (data / "journal" / "journal.jsonl").read_bytes()
    assert journal.count(b'"kind":"response"') >= 21

    restore()
    # A session held by another node that shares this database (it is alive, as far as this
    # data folder knows): the restarted server must leave it open.
    await execute(
        check_url,
        "INSERT INTO sessions (id, tenant_id, subject, mode, status, created_at_ms, resumes,"
        " config, node_id) VALUES ('s_other', 'acme', 'bob', 'loopback', 'open', 1.0, 0,"
        " '{}', 'othernode')",
    )
    async with child_server(data, url, key) as second:

        async def replayed() -> bool:
            st = await second.db_status()
            return bool(st["available"] and st["journal"]["pending"] == 0 and st["replayed"])

        await eventually(replayed, what="the journal is replayed")
        st = await second.db_status()
        assert st["lost_nodes"] == [first_node] and st["node_id"] != first_node
    c = await counts(check_url)  # asserts every id once in every table
    assert (c["responses"], c["sessions"], c["session_events"]) == (26, 2, 1)
    rows = await query(check_url, "SELECT text FROM responses WHERE session_id = :s", s=sid)
    expected = [f"pre{i}" for i in range(5)] + [f"lost?{i}" for i in range(20)] + ["last"]
    assert sorted(r["text"] for r in rows) == sorted(expected)
    # What was still in memory when the process died is gone, as documented: the sensor
    # batch not yet full, and the session's end. The restarted server took the dead one's
    # journal slot, so it knows that node is gone and closes the session it left open.
    assert c["sensor_batches"] == 0
    [s] = await query(check_url, "SELECT * FROM sessions WHERE id = :s", s=sid)
    assert (s["status"], s["end_reason"], s["node_id"]) == ("closed", "node_lost", first_node)
    assert s["ended_at_ms"] > s["created_at_ms"]
    [other] = await query(check_url, "SELECT status FROM sessions WHERE id = 's_other'")
    assert other["status"] == "open"


async def test_kill_between_journal_and_commit_postgres(
    pg_proxy: tuple[TcpProxy, str], pg_url: str, tmp_path: Path
) -> None:
    """PostgreSQL cut, records journaled, server killed, database back, restart: all there."""
    proxy, through = pg_proxy
    await _crash_and_recover(tmp_path, through, pg_url, proxy.cut, proxy.restore)


async def test_kill_between_journal_and_commit_sqlite(tmp_path: Path) -> None:
    """SQLite locked, records journaled, server killed, lock released, restart: all there."""
    path = tmp_path / "records.db"
    url = f"sqlite:///{path}"
    with SqliteLock(path) as held:
        await _crash_and_recover(tmp_path, url, url, held.lock, held.unlock)
