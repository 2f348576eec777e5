"""The record writer against real SQLite and real PostgreSQL: every record kind, batching,
the bounded queue, the journal, outages, replay without duplicates."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.store.helpers import counts, eventually, make_writer, query
from tests.store.proxy import TcpProxy
from tests.support import SqliteLock
from tidegate.pipelines import records as r
from tidegate.store import store
from tidegate.store.journal import Journal


def session_records(sid: str, tenant: str = "acme", n_responses: int = 3) -> list[r.Record]:
    """One session's life: start, resume, transcripts, responses, latency, sensors, end."""
    recs: list[r.Record] = [
        r.SessionStarted(
            session_id=sid,
            tenant=tenant,
            subject="alice",
            mode="loopback",
            config={"mode": "loopback"},
            client={"encoding": "cbor", "user_agent": "test/1", "remote_addr": "127.0.0.1:5"},
        ),
        r.SessionResumed(session_id=sid, tenant=tenant, subject="alice", resumes=1, client={}),
        r.TranscriptSegment(
            session_id=sid,
            tenant=tenant,
            segment_id="g1",
            text="hello there",
            audio_start_ms=100.0,
            audio_end_ms=940.0,
            language="en",
        ),
        r.LatencySummary(
            session_id=sid,
            tenant=tenant,
            metric="eos_to_final",
            count=4,
            p50_ms=80.0,
            p90_ms=120.0,
            p99_ms=150.0,
            max_ms=151.0,
        ),
        r.SensorBatch(
            session_id=sid,
            tenant=tenant,
            channel="imu",
            readings=[[1.0, [0.1, 0.2]], [2.0, [0.3, 0.4]]],
            first_ts_ms=1.0,
            last_ts_ms=2.0,
        ),
    ]
    for i in range(n_responses):
        recs.append(
            r.Response(
                session_id=sid,
                tenant=tenant,
                response_id=f"r{i}",
                text=f"reply {i}",
                status="interrupted" if i == 0 else "completed",
                spoken_text="rep" if i == 0 else None,
            )
        )
    recs.append(
        r.SessionEnded(
            session_id=sid, tenant=tenant, status="closed", reason="bye", stats={"frames": 3}
        )
    )
    return recs


async def test_every_record_kind_lands_once(database_url: str, tmp_path: Path) -> None:
    """Each record kind becomes its row, with its fields; the session row follows its life."""
    writer = make_writer(database_url, tmp_path / "journal")
    await writer.open()
    task = asyncio.create_task(writer.run())
    try:
        for rec in session_records("s_one"):
            assert writer.record(rec)
        assert await writer.flush(20)
    finally:
        await writer.close()
        await task
    assert await counts(database_url) == {
        "tenants": 1,
        "subjects": 1,
        "sessions": 1,
        "session_events": 3,
        "transcript_segments": 1,
        "responses": 3,
        "latency_summaries": 1,
        "sensor_batches": 1,
    }
    [s] = await query(database_url, "SELECT * FROM sessions")
    assert (s["status"], s["resumes"], s["end_reason"]) == ("closed", 1, "bye")
    assert (s["encoding"], s["user_agent"], s["remote_addr"]) == ("cbor", "test/1", "127.0.0.1:5")
    assert s["ended_at_ms"] >= s["created_at_ms"] > 0
    [t] = await query(database_url, "SELECT * FROM transcript_segments")
    assert (t["text"], t["audio_end_ms"], t["language"]) == ("hello there", 940.0, "en")
    [cut] = await query(database_url, "SELECT * FROM responses WHERE response_id = 'r0'")
    assert (cut["status"], cut["spoken_text"]) == ("interrupted", "rep")
    [lat] = await query(database_url, "SELECT * FROM latency_summaries")
    assert (lat["metric"], lat["count"], lat["p99_ms"]) == ("eos_to_final", 4, 150.0)
    kinds = await query(database_url, "SELECT kind FROM session_events ORDER BY at_ms, id")
    assert sorted(k["kind"] for k in kinds) == ["ended", "resumed", "started"]
    assert writer.stats()["committed"] == len(session_records("x"))


async def test_replay_after_commit_without_mark_inserts_nothing_twice(
    database_url: str, tmp_path: Path
) -> None:
    """A crash after the commit but before the done mark replays committed records: no dupes."""
    recs = session_records("s_dup")
    first = make_writer(database_url, tmp_path / "journal")
    await first.open()
    await asyncio.to_thread(first.journal.append, [r.to_entry(x) for x in recs])
    assert await first._commit(recs, [r.to_entry(x) for x in recs])  # committed, never marked
    await first.close()
    peek = Journal(tmp_path / "journal")
    assert peek.open() == len(recs)  # still pending on disk
    peek.close()

    second = make_writer(database_url, tmp_path / "journal")
    await second.open()
    task = asyncio.create_task(second.run())
    try:
        assert await second.flush(20)
    finally:
        await second.close()
        await task
    assert second.lost_nodes == [first.node_id]  # its slot's last holder: swept, harmlessly
    assert second.replayed == len(recs) + 1  # and the NodeLost record of that sweep
    c = await counts(database_url)
    assert (c["sessions"], c["responses"], c["session_events"]) == (1, 3, 3)


async def test_torn_last_line_is_cut_and_the_rest_replayed(
    database_url: str, tmp_path: Path
) -> None:
    """A journal whose last append was torn by a crash replays every whole line."""
    folder = tmp_path / "journal"
    folder.mkdir()
    recs = session_records("s_torn", n_responses=2)
    lines = b"".join(orjson.dumps(r.to_entry(x)) + b"\n" for x in recs)
    (folder / "journal.jsonl").write_bytes(lines + b'{"kind": "response", "te')
    writer = make_writer(database_url, folder)
    await writer.open()
    assert writer.journal.torn_bytes > 0 and writer.journal.pending == len(recs)
    task = asyncio.create_task(writer.run())
    try:
        assert await writer.flush(20)
    finally:
        await writer.close()
        await task
    assert (await counts(database_url))["responses"] == 2


async def test_full_queue_refuses_and_counts(database_url: str, tmp_path: Path) -> None:
    """The queue holds db_queue_max_records; past that record() says no at once, counted."""
    writer = make_writer(database_url, tmp_path / "journal", queue_max_records=5)
    accepted = [writer.record(x) for x in session_records("s_full", n_responses=4)]
    assert accepted == [True] * 5 + [False] * 5
    st = writer.stats()["queue"]
    assert (st["depth"], st["rejected"], st["policy"], st["max_items"]) == (5, 5, "reject", 5)
    await writer.open()
    task = asyncio.create_task(writer.run())
    try:
        assert await writer.flush(20)
    finally:
        await writer.close()
        await task
    assert (await counts(database_url))["sessions"] == 1


async def test_a_bad_record_is_quarantined_not_retried(database_url: str, tmp_path: Path) -> None:
    """A record the database refuses for its content goes to rejected.jsonl; the rest land."""
    writer = make_writer(database_url, tmp_path / "journal")
    recs = session_records("s_bad", n_responses=2)
    bad = r.Response(
        session_id="s_bad", tenant="acme", response_id="x" * 200, text="t", status="completed"
    )
    await writer.open()
    task = asyncio.create_task(writer.run())
    try:
        for rec in recs:
            writer.record(rec)
        writer.record(bad)
        ok = await writer.flush(20)
    finally:
        await writer.close()
        await task
    assert ok
    c = await counts(database_url)
    if database_url.startswith("postgresql"):  # SQLite does not enforce VARCHAR lengths
        assert c["responses"] == 2 and writer.journal.rejected == 1
        rejected = (tmp_path / "journal" / "rejected.jsonl").read_bytes().splitlines()
        assert orjson.loads(rejected[0])["entry"]["record_id"] == bad.record_id
    else:
        assert c["responses"] == 3
    assert c["sessions"] == 1 and c["session_events"] == 3


async def _outage_round(
    writer_url: str,
    check_url: str,
    tmp_path: Path,
    cut: Callable[[], None],
    restore: Callable[[], None],
) -> None:
    writer = make_writer(writer_url, tmp_path / "journal", timeout_s=0.5, retry_s=0.1)
    await writer.open()
    task = asyncio.create_task(writer.run())
    try:
        before = session_records("s_before", n_responses=5)
        for rec in before:
            writer.record(rec)
        assert await writer.flush(20)
        cut()
        during = session_records("s_during", n_responses=50)
        for rec in during[:10]:
            writer.record(rec)
        await eventually(lambda: not writer.available, what="the writer saw the outage")
        for rec in during[10:]:
            writer.record(rec)
            await asyncio.sleep(0.002)
        await eventually(
            lambda: writer.journal.pending >= len(during) and not writer.queue,
            what="everything written during the outage is journaled",
        )
        assert not await writer.flush(0.3)
        restore()
        assert await writer.flush(30)
        assert writer.available and writer.outages == 1
    finally:
        await writer.close()
        await task
    c = await counts(check_url)
    assert c["sessions"] == 2
    assert c["responses"] == 55
    assert c["session_events"] == 6
    rows = await query(check_url, "SELECT response_id FROM responses WHERE session_id = 's_during'")
    assert sorted(x["response_id"] for x in rows) == sorted(f"r{i}" for i in range(50))
    [s] = await query(check_url, "SELECT status FROM sessions WHERE id = 's_during'")
    assert s["status"] == "closed"


async def test_postgres_port_cut_then_restored_loses_and_duplicates_nothing(
    pg_proxy: tuple[TcpProxy, str], pg_url: str, tmp_path: Path
) -> None:
    """PostgreSQL unreachable mid-stream: records wait in the journal and land exactly once."""
    proxy, through = pg_proxy
    await _outage_round(through, pg_url, tmp_path, proxy.cut, proxy.restore)
    assert proxy.connections >= 2  # the pool reconnected after the cut


async def test_sqlite_locked_then_released_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """SQLite locked by another writer: records wait in the journal and land exactly once."""
    url = f"sqlite:///{tmp_path / 'records.db'}"
    with SqliteLock(tmp_path / "records.db") as held:
        await _outage_round(url, url, tmp_path, held.lock, held.unlock)


async def test_journal_compacts_once_everything_is_done(tmp_path: Path) -> None:
    """Past db_journal_compact_bytes, a fully committed journal is truncated."""
    url = f"sqlite:///{tmp_path / 'records.db'}"
    writer = make_writer(url, tmp_path / "journal", journal_compact_bytes=2_000)
    await writer.open()
    task = asyncio.create_task(writer.run())
    try:
        for i in range(5):
            for rec in session_records(f"s_c{i}"):
                writer.record(rec)
            assert await writer.flush(20)
    finally:
        await writer.close()
        await task
    assert writer.journal.compactions >= 1
    assert (tmp_path / "journal" / "journal.jsonl").stat().st_size < 10_000
    assert (await counts(url))["sessions"] == 5


def test_records_round_trip_through_journal_entries() -> None:
    """Every record kind survives to_entry/from_entry; an unknown kind is refused."""
    for rec in [*session_records("s_rt"), r.SessionDeleted(session_id="s_rt", tenant="acme")]:
        assert r.from_entry(orjson.loads(orjson.dumps(r.to_entry(rec)))) == rec
    with pytest.raises(r.RecordFormatError):
        r.from_entry({"kind": "nope"})
    with pytest.raises(r.RecordFormatError):
        r.from_entry({"kind": "response", "unknown_field": 1})


async def test_delete_removes_every_row_of_the_session(database_url: str, tmp_path: Path) -> None:
    """SessionDeleted removes the session and all its records, and nothing of others."""
    writer = make_writer(database_url, tmp_path / "journal")
    await writer.open()
    task = asyncio.create_task(writer.run())
    try:
        for rec in [*session_records("s_a"), *session_records("s_b")]:
            writer.record(rec)
        writer.record(r.SessionDeleted(session_id="s_a", tenant="acme"))
        assert await writer.flush(20)
    finally:
        await writer.close()
        await task
    for table in ("sessions", "session_events", "responses", "sensor_batches"):
        column = "id" if table == "sessions" else "session_id"
        rows = await query(database_url, f"SELECT DISTINCT {column} AS s FROM {table}")
        assert [x["s"] for x in rows] == ["s_b"], table


def test_sensor_batcher_batches_by_count_age_and_flush() -> None:
    """Readings become one batch per channel at max_readings, at max_age_s, and at flush."""
    out: list[r.SensorBatch] = []
    now = [0.0]
    b = r.SensorBatcher(out.append, max_readings=3, max_age_s=10.0, clock=lambda: now[0])
    for i in range(4):
        b.add("imu", float(i), (i, i + 1))
    b.add("gps", 0.0, (5.0,))
    assert [(x.channel, len(x.readings)) for x in out] == [("imu", 3)]
    now[0] = 11.0
    b.add("gps", 1.0, (6.0,))  # the gps batch is now older than max_age_s
    assert [(x.channel, len(x.readings)) for x in out][-1] == ("gps", 2)
    b.flush()
    assert [(x.channel, x.first_ts_ms, x.last_ts_ms) for x in out][-1] == ("imu", 3.0, 3.0)
    assert sum(len(x.readings) for x in out) == 6


def test_cursor_round_trip_and_garbage() -> None:
    """A cursor decodes to what was encoded; garbage is a CursorError."""
    assert store.decode_cursor(store.encode_cursor(1.7e12 + 0.25, "s_x")) == (1.7e12 + 0.25, "s_x")
    with pytest.raises(store.CursorError):
        store.decode_cursor("!!!")


async def test_processes_sharing_a_data_folder_get_own_journals_and_adopt_orphans(
    tmp_path: Path,
) -> None:
    """Writers sharing a data folder each take a journal slot; a slot left with records by a
    process that is gone is adopted (and committed) by the next writer that opens."""
    url = f"sqlite:///{tmp_path / 'records.db'}"
    base = tmp_path / "journal"
    holders = [make_writer(url, base), make_writer(url, base)]
    for h in holders:
        await h.open()
    assert [h.journal.folder.name for h in holders] == ["journal", "journal.1"]
    gone = make_writer(url, base)
    await gone.open()
    assert gone.journal.folder.name == "journal.2"
    recs = session_records("s_orphan")
    await asyncio.to_thread(gone.journal.append, [r.to_entry(x) for x in recs])
    await gone.close()  # died with records journaled, never committed
    await holders[1].close()  # frees slot 1

    heir = make_writer(url, base)
    await heir.open()
    assert heir.journal.folder.name == "journal.1"
    # adopted from journal.2, then one NodeLost per node gone: slot 1's last holder and slot 2's
    assert sorted(heir.lost_nodes) == sorted([holders[1].node_id, gone.node_id])
    assert heir.journal.pending == len(recs) + 2
    task = asyncio.create_task(heir.run())
    try:
        assert await heir.flush(20)
    finally:
        await heir.close()
        await task
        await holders[0].close()
    assert (await counts(url))["responses"] == 3
    orphan = Journal(tmp_path / "journal.2")
    assert orphan.open() == 0
    orphan.close()
