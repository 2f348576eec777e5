"""Measures the record writer's throughput on a real database and prints one JSON object.

Run by the ``db`` bench scenario as a subprocess (bench/ may import only the protocol)::

    python -m tidegate.bench.micro.store throughput --backend sqlite --records 20000
    python -m tidegate.bench.micro.store throughput --backend postgresql \\
        --server postgresql://postgres@127.0.0.1:5432/postgres
    python -m tidegate.bench.micro.store create-db --server URL   # prints a scratch DB's URL
    python -m tidegate.bench.micro.store drop-db --server URL --url DB_URL

Throughput is records committed per second, from the first ``record()`` to the end of the
flush, through the whole path: bounded queue, journal (fsync per batch), batched commit. The
producer offers records as fast as the queue takes them (it yields to the writer when the queue
is full, so nothing is refused).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import make_url

from tidegate.pipelines import records as r
from tidegate.store import engine as db_engine
from tidegate.store.writer import RecordWriter


def _records(n: int, sessions: int) -> list[r.Record]:
    """A realistic mix: per session a start, responses, transcripts, sensor batches, an end."""
    out: list[r.Record] = []
    per = max(1, n // sessions)
    for s in range(sessions):
        sid = f"s_bench{s}_{secrets.token_hex(3)}"
        out.append(
            r.SessionStarted(
                session_id=sid,
                tenant="bench",
                subject="bench",
                mode="loopback",
                config={"mode": "loopback"},
                client={"encoding": "cbor"},
            )
        )
        for i in range(per - 2):
            kind = i % 3
            if kind == 0:
                out.append(
                    r.Response(
                        session_id=sid,
                        tenant="bench",
                        response_id=f"r{i}",
                        text="a reply of a few words " * 4,
                        status="completed",
                    )
                )
            elif kind == 1:
                out.append(
                    r.TranscriptSegment(
                        session_id=sid,
                        tenant="bench",
                        segment_id=f"g{i}",
                        text="what the user said, a sentence long",
                        audio_start_ms=i * 1000.0,
                        audio_end_ms=i * 1000.0 + 800.0,
                    )
                )
            else:
                out.append(
                    r.SensorBatch(
                        session_id=sid,
                        tenant="bench",
                        channel="imu",
                        readings=[[float(k), [0.1, 0.2, 0.3]] for k in range(16)],
                        first_ts_ms=0.0,
                        last_ts_ms=15.0,
                    )
                )
        out.append(
            r.SessionEnded(session_id=sid, tenant="bench", status="closed", reason="", stats={})
        )
    return out


async def throughput(
    url: str, records: int, batch: int, fsync: bool, sessions: int
) -> dict[str, Any]:
    recs = _records(records, sessions)
    u = make_url(url)
    u = u.set(drivername=db_engine.DRIVERS[u.get_backend_name()])
    with tempfile.TemporaryDirectory(prefix="tidegate-dbbench-") as tmp:
        writer = RecordWriter(
            u,
            Path(tmp) / "journal",
            queue_max_records=10_000,
            batch_max_records=batch,
            journal_fsync=fsync,
        )
        await writer.open()
        task = asyncio.get_running_loop().create_task(writer.run())
        try:
            t0 = time.perf_counter()
            for rec in recs:
                # Full: yield to the writer, so that nothing is refused.
                while writer.queue.is_full():  # noqa: ASYNC110
                    await asyncio.sleep(0)
                writer.record(rec)
            ok = await writer.flush(600)
            elapsed = time.perf_counter() - t0
        finally:
            await writer.close()
            await task
    st = writer.stats()
    return {
        "backend": u.get_backend_name(),
        "records": len(recs),
        "flushed": ok,
        "seconds": elapsed,
        "records_per_s": len(recs) / elapsed,
        "batches": st["batches"],
        "mean_batch": st["committed"] / max(1, st["batches"]),
        "batch_max_records": batch,
        "journal_fsync": fsync,
        "queue_peak": st["queue"]["peak"],
        "queue_rejected": st["queue"]["rejected"],
    }


async def _create_db(server: str) -> str:
    import asyncpg

    name = f"tidegate_bench_{secrets.token_hex(5)}"
    conn = await asyncpg.connect(server, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.rsplit("/", 1)[0] + "/" + name


async def _drop_db(server: str, url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


async def _main(args: argparse.Namespace) -> Any:
    if args.cmd == "create-db":
        return {"url": await _create_db(args.server)}
    if args.cmd == "drop-db":
        await _drop_db(args.server, args.url)
        return {"dropped": args.url}
    if args.backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="tidegate-dbbench-") as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            return await throughput(url, args.records, args.batch, not args.no_fsync, args.sessions)
    url = await _create_db(args.server)
    try:
        return await throughput(url, args.records, args.batch, not args.no_fsync, args.sessions)
    finally:
        await _drop_db(args.server, url)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tidegate.bench.micro.store")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput", help="records/s through the writer")
    t.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    t.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    t.add_argument("--records", type=int, default=20_000)
    t.add_argument("--sessions", type=int, default=20)
    t.add_argument("--batch", type=int, default=500, help="db_batch_max_records")
    t.add_argument("--no-fsync", action="store_true", help="db_journal_fsync off")
    for name in ("create-db", "drop-db"):
        c = sub.add_parser(name)
        c.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
        if name == "drop-db":
            c.add_argument("--url", required=True)
    args = p.parse_args(argv)
    result = asyncio.run(_main(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
