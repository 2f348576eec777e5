"""Cluster bench (docs/cluster.md): two measurements of what Redis adds between nodes.

``tidegate bench cluster [--redis-url URL] [--out reports]`` starts the nodes itself
(``tidegate serve`` child processes on loopback, sharing one Redis under a key prefix of this
run) and writes ``reports/cluster-<time>.json``:

- ``sensor``: a publisher session on node A sends ``input.sensor`` at ``--rate-hz`` for
  ``--duration-s``, each reading's values ``[sequence, send time (wall ms)]``; subscribers on
  node B (across Redis) and on node A (in process, the baseline) measure send -> arrival of
  ``sensor.reading``. Both clients run here, so one clock. Target: cross-node p50 <= 5 ms.
- ``greeting``: an assistant node (VAD, ASR, LLM, TTS; prepared models from .cache/data or
  TIDEGATE_DATA_DIR) is asked ``--greetings`` different short prompts with
  ``response.create``, each twice in fresh sessions: the first reply is generated and
  synthesized, the second comes from the result caches (greedy LLM completion and TTS audio).
  Measured: ``response.created`` -> first ``output.audio`` (target for the cached one:
  <= 20 ms) and request -> first audio. ``--shared`` asks the second time on another node
  (the caches' Redis tier instead of the process's).

Only the public protocol is used (bench/ imports protocol/ and its client, nothing else).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tidegate.protocol.client import Client, now_ms
from tidegate.protocol.messages import (
    Error,
    InputSensor,
    OutputAudio,
    ResponseCreate,
    ResponseCreated,
    ResponseDone,
    SensorReading,
    SensorSubscribe,
)

from ..harness import scenario
from ..report import distribution
from ..target import Target, started_server

GREETINGS = (
    "Say hello to a visitor.",
    "Greet a guest at the front desk.",
    "Welcome someone to the museum.",
    "Say good morning to a customer.",
    "Greet a caller on the phone.",
    "Welcome a new user to the app.",
    "Say hi to a friend.",
    "Greet a student in class.",
)
SETTLE_S = 0.5


def _node_env(redis_url: str, prefix: str, node_id: str, **more: str) -> dict[str, str]:
    return {
        "TIDEGATE_REDIS_URL": redis_url,
        "TIDEGATE_REDIS_KEY_PREFIX": prefix,
        "TIDEGATE_NODE_ID": node_id,
        "TIDEGATE_METRICS_INTERVAL_S": "0",
        "TIDEGATE_RATE_SESSIONS_PER_S": "0",
        **more,
    }


@contextlib.asynccontextmanager
async def _session(target: Target, subject: str, config: dict[str, Any]) -> AsyncIterator[Client]:
    client = await Client.connect(target.control_url, target.mint(subject=subject))
    try:
        await client.create_session(config)
        yield client
    finally:
        await client.close()


# -- sensor fan-out ---------------------------------------------------------------------------
async def _collect(
    client: Client, into: list[float], errors: list[str], coalesced: list[int]
) -> None:
    async for ev in client:
        if isinstance(ev, SensorReading):
            if ev.channel == "m":  # the measured channel (not the warm-up's)
                into.append(now_ms() - ev.values[1])
                coalesced.append(ev.dropped)
            else:
                into.append(-1.0)  # a sign of life
        elif isinstance(ev, Error):
            errors.append(f"{ev.code}: {ev.message}")


async def bench_sensor(a: Target, b: Target, rate_hz: float, duration_s: float) -> dict[str, Any]:
    remote: list[float] = []
    local: list[float] = []
    errors: list[str] = []
    remote_coalesced: list[int] = []
    local_coalesced: list[int] = []
    async with (
        _session(a, "kiosk", {"mode": "loopback"}) as pub,
        _session(b, "dash-b", {"mode": "loopback"}) as sub_b,
        _session(a, "dash-a", {"mode": "loopback"}) as sub_a,
    ):
        assert pub.session is not None
        for sub in (sub_b, sub_a):
            await sub.send(SensorSubscribe(session_id=pub.session.session_id))
        readers = [
            asyncio.create_task(_collect(sub_b, remote, errors, remote_coalesced)),
            asyncio.create_task(_collect(sub_a, local, errors, local_coalesced)),
        ]
        try:
            seq = 0
            # warm up: until node B's listener has subscribed and a reading crossed
            deadline = time.monotonic() + 10
            while not remote and time.monotonic() < deadline:
                seq += 1
                await pub.send(InputSensor(channel="w", ts=float(seq), values=(seq, now_ms())))
                await asyncio.sleep(0.02)
            await asyncio.sleep(SETTLE_S)
            for xs in (remote, local, remote_coalesced, local_coalesced):
                xs.clear()
            interval = 1.0 / rate_hz
            start = time.monotonic()
            sent = 0
            while time.monotonic() - start < duration_s:
                seq += 1
                await pub.send(InputSensor(channel="m", ts=float(seq), values=(seq, now_ms())))
                sent += 1
                next_at = start + sent * interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.sleep(SETTLE_S)
        finally:
            for t in readers:
                t.cancel()
            for t in readers:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
    return {
        "rate_hz": rate_hz,
        "sent": sent,
        "cross_node_delivery_ms": distribution(remote),
        "same_node_delivery_ms": distribution(local),
        "cross_node_delivered_fraction": round(len(remote) / max(1, sent), 4),
        "cross_node_coalesced": sum(remote_coalesced),
        "same_node_coalesced": sum(local_coalesced),
        "errors": errors[:10],
        "target": "cross-node p50 <= 5 ms",
        "target_met": bool(remote) and sorted(remote)[(len(remote) - 1) // 2] <= 5.0,
    }


# -- cached greeting --------------------------------------------------------------------------
async def _first_audio(target: Target, subject: str, text: str) -> dict[str, float]:
    async with _session(target, subject, {"mode": "assistant"}) as c:
        sent = time.monotonic()
        await c.send(ResponseCreate(text=text))
        created = audio = None
        while True:
            ev = await c.recv(timeout_s=120)
            now = time.monotonic()
            if isinstance(ev, ResponseCreated) and created is None:
                created = now
            elif isinstance(ev, OutputAudio) and audio is None:
                audio = now
            elif isinstance(ev, Error):
                raise RuntimeError(f"{ev.code}: {ev.message}")
            elif isinstance(ev, ResponseDone):
                break
        if created is None or audio is None:
            raise RuntimeError("the reply had no audio")
        return {
            "after_created_ms": (audio - created) * 1000,
            "after_request_ms": (audio - sent) * 1000,
        }


async def bench_greeting(first: Target, second: Target, greetings: int) -> dict[str, Any]:
    fresh: dict[str, list[float]] = {"after_created_ms": [], "after_request_ms": []}
    cached: dict[str, list[float]] = {"after_created_ms": [], "after_request_ms": []}
    for i in range(greetings):
        text = GREETINGS[i % len(GREETINGS)] + ("" if i < len(GREETINGS) else f" ({i})")
        for key, v in (await _first_audio(first, f"g{i}a", text)).items():
            fresh[key].append(v)
        for key, v in (await _first_audio(second, f"g{i}b", text)).items():
            cached[key].append(v)
    cached_p50 = sorted(cached["after_created_ms"])[(greetings - 1) // 2]
    return {
        "greetings": greetings,
        "synthesized": {k: distribution(v) for k, v in fresh.items()},
        "cached": {k: distribution(v) for k, v in cached.items()},
        "target": "cached: first audio within 20 ms of response.created (p50)",
        "target_met": cached_p50 <= 20.0,
    }


def _pcts(block: Any) -> str:
    """p50/p90/p99 of a distribution block (or of a dict of them), for the console; the report
    has everything."""
    if not isinstance(block, dict):
        return str(block)
    if "p50" not in block:
        return "; ".join(f"{name}: {_pcts(b)}" for name, b in block.items())
    return " ".join(f"{k} {block[k]:.2f}" for k in ("p50", "p90", "p99") if k in block) + " ms"


def _data_dir() -> str | None:
    env = os.environ.get("TIDEGATE_DATA_DIR")
    if env:
        return env
    here = Path(".cache/data")
    return str(here.resolve()) if here.is_dir() else None


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="the shared Redis")
    p.add_argument("--rate-hz", type=float, default=100.0, help="sensor readings per second")
    p.add_argument("--duration-s", type=float, default=5.0, help="sensor sending time")
    p.add_argument("--greetings", type=int, default=5, help="prompts, each asked twice")
    p.add_argument("--shared", action="store_true", help="ask the second time on node 2")
    p.add_argument("--skip-sensor", action="store_true")
    p.add_argument("--skip-greeting", action="store_true")


@scenario(
    "cluster",
    "two nodes over Redis: cross-node sensor delivery, first audio of a cached greeting",
    add_args=_args,
    needs_server=False,
)
async def run(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    """Starts its own nodes (``target`` is unused); see the module docstring."""
    prefix = f"tgbench:{secrets.token_hex(4)}:"
    results: dict[str, Any] = {"redis_url": args.redis_url}
    if not args.skip_sensor:
        async with (
            started_server(_node_env(args.redis_url, prefix, "bench-a", TIDEGATE_ENGINES="")) as a,
            started_server(_node_env(args.redis_url, prefix, "bench-b", TIDEGATE_ENGINES="")) as b,
        ):
            results["sensor"] = await bench_sensor(a, b, args.rate_hz, args.duration_s)
        print(
            f"sensor: cross-node {_pcts(results['sensor']['cross_node_delivery_ms'])}",
            file=sys.stderr,
        )
    if not args.skip_greeting:
        data = _data_dir()
        engines = {"TIDEGATE_ENGINES": "vad,asr,llm,tts"}
        if data:
            engines["TIDEGATE_DATA_DIR"] = data
        async with started_server(_node_env(args.redis_url, prefix, "bench-g1", **engines)) as g1:
            if args.shared:
                async with started_server(
                    _node_env(args.redis_url, prefix, "bench-g2", **engines)
                ) as g2:
                    results["greeting"] = await bench_greeting(g1, g2, args.greetings)
            else:
                results["greeting"] = await bench_greeting(g1, g1, args.greetings)
        second = "another node (Redis tier)" if args.shared else "same node (process tier)"
        results["greeting"]["second_on"] = second
        print(f"greeting: cached {_pcts(results['greeting']['cached'])}", file=sys.stderr)
    return results
