"""One bad value never stops persistence (issue 17, item 1): a reading the protocol used to let
through, a record the journal cannot hold, a writer whose loop fails, and what DELETE's 202
promises — on a live server, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cbor2
import httpx
import orjson
import pytest

from tests.server.conftest import LiveServer, make_settings, run_server
from tests.store.helpers import eventually, make_writer, query
from tests.store.test_writer import session_records
from tidegate.pipelines import records as r
from tidegate.protocol.messages import InputSensor

pytestmark = pytest.mark.slow

POISON = -(2**64)  # CBOR major type 1 with an 8-byte argument: below int64


def _auth(server: LiveServer, tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token(tenant=tenant)}"}


async def _poisoned_reading(server: LiveServer) -> str:
    """A session of tenant acme that sends input.sensor with -2^64 as raw CBOR; its id."""
    async with await server.client(token=server.token(tenant="acme")) as client:
        sid = (await client.create_session({"mode": "loopback"})).session_id
        wire = {"type": "input.sensor", "channel": "t", "ts": 1.0, "values": [POISON, 2.5]}
        await client.send_raw(cbor2.dumps(wire))
        await client.ping()  # handled in order: the reading is in by now
        await client.close_session()
    return sid


async def _healthy_session(server: LiveServer, tenant: str, n: int) -> str:
    async with await server.client(token=server.token(tenant=tenant)) as client:
        sid = (await client.create_session({"mode": "loopback"})).session_id
        for i in range(n):
            await client.send(InputSensor(channel="imu", ts=float(i), values=(i, -i)))
        await client.close_session()
    return sid


async def test_an_out_of_range_integer_does_not_stop_persistence(
    database_url: str, tmp_path: Path
) -> None:
    """-2^64 in input.sensor is stored as a float; every tenant's records after it land."""
    settings = make_settings(tmp_path, database_url=database_url, sensor_batch_max_readings=1)
    async with run_server(settings) as server:
        poisoned = await _poisoned_reading(server)
        other = await _healthy_session(server, "umbrella", 5)
        writer = server.runtime.recorder
        assert await writer.flush(20), writer.stats()
        assert writer.running and writer.stats()["quarantined"] == {
            "journal": 0,
            "database": 0,
            "writer": 0,
        }
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
            assert (await http.get("/readyz")).status_code == 200
            got = await http.get(f"/v1/sessions/{poisoned}/sensors", headers=_auth(server, "acme"))
            assert got.status_code == 200
            [batch] = got.json()["items"]
            assert batch["readings"] == [[1.0, [-1.8446744073709552e19, 2.5]]]
            got = await http.get(f"/v1/sessions/{other}/sensors", headers=_auth(server, "umbrella"))
            assert sorted(b["readings"][0][0] for b in got.json()["items"]) == [0, 1, 2, 3, 4]
            # the writer is alive, so a deletion commits: 204, not a 202 that journaled nothing
            deleted = await http.delete(f"/v1/sessions/{other}", headers=_auth(server, "umbrella"))
            assert deleted.status_code == 204
    assert await query(database_url, "SELECT id FROM sessions WHERE id = :i", i=other) == []


async def test_a_record_the_journal_cannot_hold_is_dead_lettered_and_the_rest_commit(
    database_url: str, tmp_path: Path
) -> None:
    """A batch holding a 2^70 integer: that record goes to rejected.jsonl, logged and counted;
    the others of its batch and every later batch commit, and the writer keeps running."""
    writer = make_writer(database_url, tmp_path / "journal")
    await writer.open()
    task = asyncio.get_running_loop().create_task(writer.run())
    try:
        bad = r.SensorBatch(
            session_id="s1",
            tenant="acme",
            channel="t",
            readings=[[1.0, [2**70]]],
            first_ts_ms=1.0,
            last_ts_ms=1.0,
        )
        for rec in [*session_records("s1", "acme")[:2], bad, *session_records("s2", "acme")]:
            assert writer.record(rec)
        assert await writer.flush(20), writer.stats()
        assert writer.running and writer.quarantined["journal"] == 1
        for rec in session_records("s3", "umbrella"):
            assert writer.record(rec)
        assert await writer.flush(20)
        rows = await query(database_url, "SELECT id FROM sensor_batches")
        assert bad.record_id not in {row["id"] for row in rows}
        assert {s["id"] for s in await query(database_url, "SELECT id FROM sessions")} == {
            "s1",
            "s2",
            "s3",
        }
        [dead] = [
            orjson.loads(x)
            for x in (tmp_path / "journal" / "rejected.jsonl").read_bytes().splitlines()
        ]
        assert (dead["session_id"], dead["kind"]) == ("s1", "sensor_batch")
        assert "cannot be journaled" in dead["error"] and "2**70" not in dead["error"]
        assert str(2**70) in dead["entry_text"]
    finally:
        await writer.close()
        await task


async def test_a_failed_writer_is_not_ready_then_restarts(tmp_path: Path) -> None:
    """The journal's file fails under the writer: /readyz answers 503 and the metric says
    down; the writer starts again by itself with its journal reopened, and records land."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    settings = make_settings(tmp_path, database_url=url, db_retry_s=1.0)
    async with (
        run_server(settings) as server,
        httpx.AsyncClient(base_url=server.http, timeout=10) as http,
    ):
        writer = server.runtime.recorder
        assert (await http.get("/readyz")).status_code == 200
        writer.journal._fh.close()  # the disk under the journal fails: the next append raises
        lost = session_records("gone", "acme")[0]
        assert writer.record(lost)
        await eventually(lambda: not writer.running, what="the writer is seen down")
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "degraded"
        assert writer.quarantined["writer"] == 1
        await eventually(lambda: writer.running, what="the writer restarted")
        assert writer.restarts == 1
        assert (await http.get("/readyz")).status_code == 200
        sid = await _healthy_session(server, "acme", 3)
        assert await writer.flush(20)
        rows = await query(
            url, "SELECT count(*) AS n FROM sensor_batches WHERE session_id = :s", s=sid
        )
        assert rows[0]["n"] >= 1
        [dead] = [orjson.loads(x) for x in writer.journal.rejected_path.read_bytes().splitlines()]
        assert dead["entry"]["record_id"] == lost.record_id


async def test_record_journaled_is_false_while_the_writer_does_not_run(tmp_path: Path) -> None:
    """202 means journaled: with no writer loop running, record_journaled answers False."""
    writer = make_writer(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "journal")
    await writer.open()
    try:
        rec = r.SessionDeleted(session_id="s1", tenant="acme")
        assert not await writer.record_journaled(rec, 0.3)
        task = asyncio.get_running_loop().create_task(writer.run())
        assert await writer.record_journaled(r.SessionDeleted(session_id="s2", tenant="a"), 10)
    finally:
        await writer.close()
    await task
    lines = (tmp_path / "journal" / "journal.jsonl").read_bytes().splitlines()
    assert [orjson.loads(x)["session_id"] for x in lines] == ["s1", "s2"]


async def test_delete_is_refused_not_accepted_while_the_writer_is_down(tmp_path: Path) -> None:
    """DELETE while the writer is down answers 503 overloaded with a retry hint, never a 202
    "journaled" for a deletion that is in no journal; it stays queued and lands once the
    writer is back."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    settings = make_settings(
        tmp_path, database_url=url, db_retry_s=3.0, db_timeout_s=0.5, rate_requests_per_s=0.0
    )
    async with (
        run_server(settings) as server,
        httpx.AsyncClient(base_url=server.http, timeout=10) as http,
    ):
        sid = await _healthy_session(server, "acme", 1)
        writer = server.runtime.recorder
        assert await writer.flush(20)
        writer.journal._fh.close()  # the disk under the journal fails: the next append raises
        assert writer.record(session_records("other", "acme")[0])
        await eventually(lambda: not writer.running, what="the writer is seen down")
        refused = await http.delete(f"/v1/sessions/{sid}", headers=_auth(server, "acme"))
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "overloaded"
        await eventually(lambda: writer.running, what="the writer restarted")
        assert await writer.flush(20)  # the deletion stayed queued: it lands now
        again = await http.delete(f"/v1/sessions/{sid}", headers=_auth(server, "acme"))
        assert again.status_code == 404, again.text  # retrying is safe
    assert await query(url, "SELECT id FROM sessions WHERE id = :i", i=sid) == []
