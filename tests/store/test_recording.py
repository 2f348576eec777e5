"""A live server records what its sessions do: lifecycle with client info, responses and
sensor batches, on SQLite and on PostgreSQL, and keeps streaming while the database is away."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.server.conftest import LiveServer, make_settings, run_server
from tests.store.helpers import counts, eventually, query
from tests.store.proxy import TcpProxy
from tests.support import SqliteLock
from tidegate.protocol.client import Client
from tidegate.protocol.messages import InputSensor, InputText, ResponseDone

pytestmark = pytest.mark.slow


async def _texts(client: Client, prefix: str, n: int) -> None:
    for i in range(n):
        await client.send(InputText(text=f"{prefix}{i}", id=f"{prefix}{i}"))
        await client.wait_for(ResponseDone)


async def test_a_sessions_records_are_all_there(
    database_url: str, backend: str, tmp_path: Path
) -> None:
    """Created, resumed, closed: every lifecycle event, response and sensor batch lands."""
    settings = make_settings(tmp_path, database_url=database_url, sensor_batch_max_readings=4)
    async with run_server(settings) as server:
        origin = f"http://127.0.0.1:{server.port}"  # same-origin: allowed
        async with await server.client(encoding="msgpack", origin=origin) as client:
            created = await client.create_session({"mode": "loopback"})
            sid = created.session_id
            await _texts(client, "a", 3)
        async with await server.client() as client:
            await client.create_session(session_id=sid)
            for i in range(10):
                await client.send(InputSensor(channel="imu", ts=i * 10.0, values=(i, -i)))
            await _texts(client, "b", 2)
            await client.close_session()
        assert await server.runtime.recorder.flush(20)
        assert server.runtime.recorder.stats()["queue"]["rejected"] == 0
    c = await counts(database_url)
    assert (c["tenants"], c["subjects"], c["sessions"]) == (1, 1, 1)
    assert (c["responses"], c["session_events"]) == (5, 3)
    [s] = await query(database_url, "SELECT * FROM sessions")
    assert (s["id"], s["tenant_id"], s["subject"], s["mode"]) == (sid, "acme", "alice", "loopback")
    assert (s["status"], s["resumes"], s["encoding"]) == ("closed", 1, "msgpack")
    assert s["origin"] == f"http://127.0.0.1:{server.port}" and s["user_agent"] is None
    assert s["remote_addr"].startswith("127.0.0.1:")
    assert s["stats"]["lanes"]["responses"] == 5  # the mode lives across the resume
    assert s["stats"]["sensors"]["readings"] == {"imu": 10}
    texts = await query(
        database_url, "SELECT text, status, ref FROM responses ORDER BY created_at_ms"
    )
    assert [t["text"] for t in texts] == ["a0", "a1", "a2", "b0", "b1"]
    assert {t["status"] for t in texts} == {"completed"} and texts[0]["ref"] == "a0"
    batches = await query(database_url, "SELECT count, readings FROM sensor_batches")
    assert sorted(b["count"] for b in batches) == [2, 4, 4]  # two full, one flushed at close
    readings = sorted(x[0] for b in batches for x in b["readings"])
    assert readings == [i * 10.0 for i in range(10)]


async def test_expired_and_shutdown_sessions_are_recorded(tmp_path: Path) -> None:
    """A session never resumed ends 'expired'; one open at shutdown ends 'shutdown'."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    settings = make_settings(tmp_path, database_url=url, session_resume_s=0.2)
    async with run_server(settings) as server:
        async with await server.client() as client:
            gone = (await client.create_session({"mode": "loopback"})).session_id
        await eventually(lambda: server.runtime.registry.get(gone) is None, what="expiry")
        client = await server.client()
        kept = (await client.create_session({"mode": "loopback"})).session_id
    with contextlib.suppress(Exception):
        await client.close()
    rows = await query(url, "SELECT id, status, end_reason FROM sessions")
    status = {r["id"]: (r["status"], r["end_reason"]) for r in rows}
    assert status[gone] == ("expired", "not resumed within 0.2 s")
    assert status[kept] == ("shutdown", "the server shut down")


async def _stream_through_outage(
    server: LiveServer, cut: Callable[[], None], restore: Callable[[], None]
) -> tuple[str, int]:
    """Stream texts and sensor readings; cut the database partway, keep going, restore."""
    recorder = server.runtime.recorder
    async with await server.client() as client:
        sid = (await client.create_session({"mode": "loopback"})).session_id
        await _texts(client, "pre", 10)
        assert await recorder.flush(20)
        cut()
        await _texts(client, "mid", 10)
        await eventually(lambda: not recorder.available, what="the writer saw the outage")
        for i in range(30):
            await client.send(InputSensor(channel="t", ts=float(i), values=(float(i),)))
        await _texts(client, "out", 20)  # the media path does not wait on the database
        assert recorder.journal.pending > 0 and not recorder.available
        restore()
        await _texts(client, "post", 10)
        await client.close_session()
    assert await recorder.flush(30)
    assert recorder.outages == 1 and recorder.stats()["queue"]["rejected"] == 0
    return sid, 50


async def _check_exactly_once(url: str, sid: str, n_texts: int) -> None:
    c = await counts(url)  # asserts count(*) == count(DISTINCT id) in every table
    assert c["sessions"] == 1 and c["session_events"] == 2
    rows = await query(url, "SELECT text FROM responses WHERE session_id = :s", s=sid)
    expected = [
        f"{p}{i}"
        for p, n in (("pre", 10), ("mid", 10), ("out", 20), ("post", 10))
        for i in range(n)
    ]
    assert len(expected) == n_texts
    assert sorted(r["text"] for r in rows) == sorted(expected)
    batches = await query(url, "SELECT readings FROM sensor_batches")
    assert sorted(x[0] for b in batches for x in b["readings"]) == [float(i) for i in range(30)]
    [s] = await query(url, "SELECT status FROM sessions")
    assert s["status"] == "closed"


async def test_postgres_cut_mid_stream_every_record_once(
    pg_proxy: tuple[TcpProxy, str], pg_url: str, tmp_path: Path
) -> None:
    """PostgreSQL's port is cut mid-session: streaming goes on; afterwards every record is
    present exactly once."""
    proxy, through = pg_proxy
    settings = make_settings(tmp_path, database_url=through, db_timeout_s=0.5, db_retry_s=0.1)
    async with run_server(settings) as server:
        sid, n = await _stream_through_outage(server, proxy.cut, proxy.restore)
    await _check_exactly_once(pg_url, sid, n)


async def test_sqlite_locked_mid_stream_every_record_once(tmp_path: Path) -> None:
    """SQLite is locked by another writer mid-session: the same guarantee."""
    path = tmp_path / "r.db"
    url = f"sqlite:///{path}"
    settings = make_settings(tmp_path, database_url=url, db_timeout_s=0.3, db_retry_s=0.1)
    with SqliteLock(path) as held:
        async with run_server(settings) as server:
            sid, n = await _stream_through_outage(server, held.lock, held.unlock)
    await _check_exactly_once(url, sid, n)


async def test_server_starts_and_streams_while_postgres_is_down(
    pg_proxy: tuple[TcpProxy, str], pg_url: str, tmp_path: Path
) -> None:
    """Started with its database unreachable, the server serves sessions, journals them, and
    migrates and replays once the database comes."""
    proxy, through = pg_proxy
    proxy.cut()
    settings = make_settings(tmp_path, database_url=through, db_timeout_s=0.5, db_retry_s=0.1)
    async with run_server(settings) as server:
        async with await server.client() as client:
            await client.create_session({"mode": "loopback"})
            await _texts(client, "x", 5)
            await client.close_session()
        await eventually(lambda: server.runtime.recorder.journal.pending >= 7, what="journaled")
        assert not server.runtime.recorder.schema_ready
        proxy.restore()
        assert await server.runtime.recorder.flush(30)
    c = await counts(pg_url)
    assert (c["sessions"], c["responses"], c["session_events"]) == (1, 5, 2)


async def test_no_database_configured_refuses_unknown_scheme(tmp_path: Path) -> None:
    """An unsupported database URL is a configuration error naming the setting."""
    from tidegate.server.errors import ConfigError

    settings = make_settings(tmp_path, database_url="mysql://root@127.0.0.1/x")
    with pytest.raises(ConfigError, match="TIDEGATE_DATABASE_URL"):
        async with run_server(settings):
            pass
