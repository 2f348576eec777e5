"""Scenario ``db``: the record writer's throughput on SQLite and PostgreSQL, and the media
path's latency with and without a flood of writes (it must not move).

Throughput runs ``python -m tidegate.bench.micro.store`` (a measuring module of the server) in a
subprocess and takes its JSON: records per second through queue, journal and batched commits.

Latency drives a live server (``tidegate serve`` in a child process, on each database) through
the public protocol only: a probe client sends a 20 ms ``input.audio`` chunk every 20 ms and
times its ``output.audio`` echo (loopback mode). First alone, then while flood clients send
``input.text`` at ``--flood-rate`` messages per second in total, each of which the server
records as a response row. The writer's counters come from ``/v1/admin/db``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import urllib.request
from typing import Any

import jwt

from tidegate.protocol.client import Client, ConnectionClosedError
from tidegate.protocol.messages import InputAudio, InputText, OutputAudio

from ..harness import scenario
from ..report import percentiles
from ..target import Target, started_server

CHUNK_MS = 20.0
CHUNK = b"\x01\x00" * 320  # 20 ms of 16 kHz mono s16le
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVER_ENV = {
    # the flood is one subject per client; lift the per-subject limits for the measurement
    "TIDEGATE_RATE_MESSAGES_PER_S": "0",
    "TIDEGATE_RATE_SESSIONS_PER_S": "0",
    "TIDEGATE_RATE_REQUESTS_PER_S": "0",
    "TIDEGATE_METRICS_INTERVAL_S": "0",
}


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--records", type=int, default=20_000, help="records per throughput run")
    p.add_argument("--chunks", type=int, default=500, help="probe audio chunks per latency run")
    p.add_argument(
        "--flood-rate",
        type=float,
        default=500.0,
        help="flood messages (= records) per second in total",
    )
    p.add_argument("--flood-clients", type=int, default=4)
    p.add_argument("--postgres", default=DEFAULT_PG, help="a PostgreSQL server URL ('' skips)")


@scenario(
    "db",
    "record writer throughput per database; media latency with and without a write flood",
    add_args=_args,
    needs_server=False,
)
async def run(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    backends = ["sqlite"] + (["postgresql"] if args.postgres else [])
    results: dict[str, Any] = {"throughput": {}, "latency": {}}
    for backend in backends:
        results["throughput"][backend] = await _measure_module(
            "throughput",
            "--backend",
            backend,
            "--server",
            args.postgres or DEFAULT_PG,
            "--records",
            str(args.records),
        )
    for backend in backends:
        env = dict(SERVER_ENV)
        scratch = None
        if backend == "postgresql":
            scratch = (await _measure_module("create-db", "--server", args.postgres))["url"]
            env["TIDEGATE_DATABASE_URL"] = scratch
        try:
            async with started_server(env) as server:
                results["latency"][backend] = await _latency(server, args)
        finally:
            if scratch is not None:
                await _measure_module("drop-db", "--server", args.postgres, "--url", scratch)
    for lat in results["latency"].values():
        base, flood = lat["baseline"]["rtt_ms"], lat["flood"]["rtt_ms"]
        lat["p50_ratio_flood_vs_baseline"] = flood["p50"] / base["p50"]
        lat["p99_ratio_flood_vs_baseline"] = flood["p99"] / base["p99"]
    results["target"] = {"p50_ratio_max": 1.25, "records_per_s_min": 2000}
    print(_summary(results), file=sys.stderr)
    return results


async def _measure_module(*argv: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidegate.bench.micro.store",
        *argv,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"tidegate.bench.micro.store {argv[0]} exited with {proc.returncode}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


async def _latency(server: Target, args: argparse.Namespace) -> dict[str, Any]:
    baseline = await _probe(server, args.chunks)
    before = await asyncio.to_thread(_db_status, server)
    stop = asyncio.Event()
    floods = [
        asyncio.create_task(_flood(server, args.flood_rate / args.flood_clients, i, stop))
        for i in range(args.flood_clients)
    ]
    try:
        await asyncio.sleep(0.5)  # let the flood reach its rate
        t0 = time.perf_counter()
        flooded = await _probe(server, args.chunks)
        flood_s = time.perf_counter() - t0
        during = await asyncio.to_thread(_db_status, server)
    finally:
        stop.set()
        sent = sum(await asyncio.gather(*floods))
    after = await _settled(server)
    return {
        "baseline": baseline,
        "flood": {
            **flooded,
            "offered_msgs_per_s": args.flood_rate,
            "sent_msgs": sent,
            "records_committed_during_probe_per_s": (during["committed"] - before["committed"])
            / flood_s,
            "db_thread_cpu_share": _cpu_share(before, during, flood_s),
        },
        "writer": {
            "committed": after["committed"],
            "batches": after["batches"],
            "queue_peak": after["queue"]["peak"],
            "queue_rejected": after["queue"]["rejected"],
            "journal_pending": after["journal"]["pending"],
        },
    }


def _cpu_share(before: dict[str, Any], during: dict[str, Any], seconds: float) -> float | None:
    """The share of one core the writer's database thread used between two status reads."""
    a, b = (x.get("handoff", {}).get("cpu_s") for x in (before, during))
    return None if a is None or b is None else (b - a) / seconds


async def _probe(server: Target, chunks: int) -> dict[str, Any]:
    """Send a 20 ms chunk every 20 ms; time each echo."""
    sent_at: dict[float, float] = {}
    rtts: list[float] = []
    async with await Client.connect(server.control_url, server.mint(subject="probe")) as client:
        await client.create_session({"mode": "loopback"})

        async def receive() -> None:
            while len(rtts) < chunks:
                msg = await client.recv(10)
                if isinstance(msg, OutputAudio) and msg.ts in sent_at:
                    rtts.append((time.perf_counter() - sent_at.pop(msg.ts)) * 1000)

        reader = asyncio.create_task(receive())
        start = time.perf_counter()
        try:
            for i in range(chunks):
                delay = start + i * CHUNK_MS / 1000 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                ts = i * CHUNK_MS
                sent_at[ts] = time.perf_counter()
                await client.send(
                    InputAudio(pcm=CHUNK, format="s16le", sample_rate=16000, channels=1, ts=ts)
                )
            await asyncio.wait_for(reader, 30)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        await client.close_session()
    return {"rtt_ms": percentiles(rtts)}


async def _flood(server: Target, rate: float, n: int, stop: asyncio.Event) -> int:
    """Send input.text at ``rate`` per second until ``stop``; every one becomes a record."""
    sent = 0
    async with await Client.connect(server.control_url, server.mint(subject=f"flood{n}")) as client:
        await client.create_session({"mode": "loopback"})

        async def drain() -> None:
            while True:
                await client.recv(None)

        reader = asyncio.create_task(drain())
        start = time.perf_counter()
        try:
            while not stop.is_set():
                due = int((time.perf_counter() - start) * rate)
                while sent < due:
                    await client.send(InputText(text=f"flood {n} message {sent}"))
                    sent += 1
                await asyncio.sleep(0.005)
        except ConnectionClosedError:
            pass  # the server cut a flood client that fell behind (4408): it stops flooding
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
    return sent


async def _settled(server: Target, timeout_s: float = 30.0) -> dict[str, Any]:
    """The writer's counters once everything queued is committed (or after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = await asyncio.to_thread(_db_status, server)
        done = st["queue"]["depth"] == 0 and st["journal"]["pending"] == 0
        if done or time.monotonic() > deadline:
            return st
        await asyncio.sleep(0.1)


def _db_status(server: Target) -> dict[str, Any]:
    """The writer's counters from /v1/admin/db (with an admin token for our own server)."""
    assert server.mint_key is not None, "the db scenario starts its own servers"
    now = int(time.time())
    claims = {
        "sub": "bench",
        "tenant": "bench",
        "scope": "session admin",
        "aud": "tidegate",
        "iat": now,
        "exp": now + 600,
    }
    token = jwt.encode(claims, server.mint_key, algorithm="HS256")
    req = urllib.request.Request(
        server.http_url + "/v1/admin/db", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read())["writer"])


def _summary(r: dict[str, Any]) -> str:
    lines = ["database    records/s   echo p50/p99 ms alone   with flood   p50 ratio"]
    for backend, t in r["throughput"].items():
        lat = r["latency"].get(backend, {})
        b, f = lat["baseline"]["rtt_ms"], lat["flood"]["rtt_ms"]
        lines.append(
            f"{backend:10}  {t['records_per_s']:9.0f}   {b['p50']:.3f} / {b['p99']:.3f}"
            f"         {f['p50']:.3f} / {f['p99']:.3f}   {lat['p50_ratio_flood_vs_baseline']:.2f}"
        )
    return "\n".join(lines)
