"""Scenario ``sensors``: sensor readings from a publishing session to a subscribing session of
the same tenant, for N publisher/subscriber pairs (``--sessions``, default 1, 2, 4, 8; or
``--ramp``), against a server in loopback mode (no engine needed).

Each publisher sends ``input.sensor`` on ``--channels`` channels at ``--rate-hz`` each (the
readings of one tick go out back to back), ``ts`` = its media time, and the reading's values
``[sequence number, send time (wall ms), ...]``. Its subscriber (``sensor.subscribe`` to the
publisher's session id) receives ``sensor.reading``. Both run in this process, so the send
time in the values is on the subscriber's clock: no clock mapping is needed. Measured:

- ``delivery_ms``: send -> ``sensor.reading`` arrival, per delivered reading (samples kept);
- ``send_ms``: how long the publisher's ``send`` took (upload credit wait and socket write);
- ``delivered_per_s``: readings delivered per second, all subscribers together, and what
  fraction of those sent arrived (``delivered_fraction``); ``coalesced``: the sum of the
  readings' ``dropped`` (latest-wins replaced them for a slow subscriber); ``missing``:
  sent, neither delivered nor counted as coalesced (in flight at the end, or refused);
- ``readings_persisted``: the readings of the publishers' sessions in the database (the
  sensor batches, ``GET /v1/sessions/{id}/sensors``) once the sessions have closed, and
  ``persist_wait_ms``: from the last session's close until all of them were there (None when
  some never arrived within 15 s);
- per level the server's CPU and memory and the generator's CPU (load.LoadMeter).

Real time is held when no ``error`` arrived, nothing was coalesced, at least 99 % of the
readings arrived and ``delivery_ms`` p90 stayed under ``--max-latency-ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from tidegate.protocol.client import Client, now_ms
from tidegate.protocol.messages import (
    Error,
    InputSensor,
    SensorReading,
    SensorSubscribe,
)

from ..harness import scenario
from ..load import LoadMeter, real_time_lost_at, run_level, session_counts
from ..progress import current
from ..report import distribution, percentiles
from ..target import Target, get_json, open_session

SETTLE_S = 1.0  # after the last reading, for the last deliveries
PERSIST_WAIT_S = 15.0  # for the sessions' sensor batches to reach the database
PERSIST_POLL_S = 0.25


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sessions", default="1,2,4,8", help="publisher/subscriber pair counts")
    p.add_argument("--ramp", action="store_true", help="1, 2, 4, ... until real time is lost")
    p.add_argument("--ramp-max", type=int, default=128, help="the ramp's last level")
    p.add_argument("--rate-hz", type=float, default=50.0, help="readings per second per channel")
    p.add_argument("--channels", type=int, default=2, help="channels per publisher")
    p.add_argument("--values", type=int, default=3, help="values per reading (at least 2)")
    p.add_argument("--duration-s", type=float, default=5.0, help="sending time per level")
    p.add_argument("--max-latency-ms", type=float, default=100.0, help="real-time bound (p90)")


@dataclass
class PairLog:
    sent: int = 0
    send_ms: list[float] = field(default_factory=list)
    delivery_ms: list[float] = field(default_factory=list)
    delivered: int = 0
    coalesced: int = 0
    open_ms: list[float] = field(default_factory=list)
    publisher_subject: str = ""
    publisher_session: str = ""
    errors: list[str] = field(default_factory=list)


async def _subscriber_reader(client: Client, log: PairLog) -> None:
    async for ev in client:
        if isinstance(ev, SensorReading):
            log.delivery_ms.append(now_ms() - ev.values[1])
            log.delivered += 1
            log.coalesced += ev.dropped
        elif isinstance(ev, Error):
            log.errors.append(f"subscriber {ev.code}: {ev.message}")


async def _publisher_reader(client: Client, log: PairLog) -> None:
    async for ev in client:
        if isinstance(ev, Error):
            log.errors.append(f"publisher {ev.code}: {ev.message}")


async def run_pair(
    target: Target,
    args: argparse.Namespace,
    delay_s: float,
    started: asyncio.Event,
    stop: asyncio.Event,
) -> PairLog:
    log = PairLog()
    tag = secrets.token_hex(4)
    log.publisher_subject = f"pub-{tag}"
    pub, open_pub = await open_session(target, log.publisher_subject, {"mode": "loopback"})
    sub, open_sub = await open_session(target, f"sub-{tag}", {"mode": "loopback"})
    log.open_ms = [open_pub, open_sub]
    async with pub, sub:
        assert pub.session is not None
        created = pub.session
        log.publisher_session = created.session_id
        # No reply on success (an error on failure, which the reader logs); a ping after it
        # comes back once the server has handled the subscription.
        await sub.send(SensorSubscribe(id=sub.next_id(), session_id=created.session_id))
        await sub.ping()
        channels = [f"bench.{c}" for c in range(args.channels)]
        padding = [0.0] * max(0, args.values - 2)
        async with asyncio.TaskGroup() as tg:
            readers = [
                tg.create_task(_subscriber_reader(sub, log)),
                tg.create_task(_publisher_reader(pub, log)),
            ]
            await asyncio.sleep(delay_s)
            started.set()
            t0 = time.monotonic()
            tick = 0
            while not stop.is_set():
                wait = t0 + tick / args.rate_hz - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), wait)
                    if stop.is_set():
                        break
                ts = tick * 1000.0 / args.rate_hz
                for channel in channels:
                    t_send = now_ms()
                    values = (float(log.sent), t_send, *padding)
                    await pub.send(InputSensor(channel=channel, ts=ts, values=values))
                    log.send_ms.append(now_ms() - t_send)
                    log.sent += 1
                tick += 1
                if tick % 10 == 0:
                    current().update(sent=log.sent, delivered=log.delivered)
            await asyncio.sleep(SETTLE_S)
            for r in readers:
                r.cancel()
        with contextlib.suppress(Exception):
            await pub.close_session(timeout_s=5)
        with contextlib.suppress(Exception):
            await sub.close_session(timeout_s=5)
    return log


async def _persisted(target: Target, logs: list[PairLog]) -> tuple[int, float | None]:
    """Readings the publishers' sessions have in the database (``GET
    /v1/sessions/{id}/sensors``), polled until every reading sent is there or
    ``PERSIST_WAIT_S`` has passed; and how long after the sessions closed that took (None if
    never)."""
    t0 = time.monotonic()
    want = sum(x.sent for x in logs)
    got = 0
    while True:
        counts = await asyncio.gather(*(_persisted_one(target, x) for x in logs))
        got = sum(counts)
        if got >= want:
            return got, round((time.monotonic() - t0) * 1000, 1)
        if time.monotonic() - t0 > PERSIST_WAIT_S:
            return got, None
        await asyncio.sleep(PERSIST_POLL_S)


async def _persisted_one(target: Target, log: PairLog) -> int:
    if not log.publisher_session:
        return 0
    token = target.mint(subject=log.publisher_subject)
    total, cursor = 0, None
    while True:
        url = f"{target.http_url}/v1/sessions/{log.publisher_session}/sensors?limit=200"
        if cursor:
            url += f"&cursor={cursor}"
        try:
            doc = await asyncio.to_thread(get_json, url, token)
        except (OSError, ValueError):
            return total  # not there yet (or the API refused): counted as not persisted
        total += sum(int(b.get("count", 0)) for b in doc.get("items", []))
        cursor = doc.get("next_cursor")
        if not cursor:
            return total


async def _level(
    target: Target, n: int, args: argparse.Namespace, meter: LoadMeter
) -> dict[str, Any]:
    current().stage(f"sensors: {n} pair(s)")
    logs, load, wall = await run_level(
        lambda i, started, stop: run_pair(target, args, i * 0.02, started, stop),
        n,
        meter,
        args.duration_s,
    )
    persisted, persist_wait_ms = await _persisted(target, logs)
    sent = sum(x.sent for x in logs)
    delivered = sum(x.delivered for x in logs)
    coalesced = sum(x.coalesced for x in logs)
    errors = [e for x in logs for e in x.errors]
    delivery = distribution([v for x in logs for v in x.delivery_ms])
    fraction = delivered / sent if sent else 0.0
    held = (
        not errors
        and coalesced == 0
        and fraction >= 0.99
        and delivery.get("p90", float("inf")) <= args.max_latency_ms
    )
    return {
        "sessions": n,
        "readings_sent": sent,
        "readings_delivered": delivered,
        "delivered_fraction": round(fraction, 4),
        "coalesced": coalesced,
        "missing": max(0, sent - delivered - coalesced),
        "sent_per_s": round(sent / wall, 1),
        "delivered_per_s": round(delivered / wall, 1),
        "delivery_ms": delivery,
        "send_ms": percentiles([v for x in logs for v in x.send_ms]),
        "session_open_ms": percentiles([v for x in logs for v in x.open_ms]),
        "readings_persisted": persisted,
        "persist_wait_ms": persist_wait_ms,
        "errors": errors[:10],
        "real_time_held": held,
        "load": load,
    }


@scenario(
    "sensors",
    "sensor readings publisher -> subscriber: delivery latency, throughput, drops, N pairs",
    add_args=_args,
    server_env={"TIDEGATE_RATE_SESSIONS_PER_S": "0"},
)
async def run(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    if args.values < 2:
        raise SystemExit("--values: at least 2 (a sequence number and the send time)")
    counts = session_counts(args.sessions, ramp=args.ramp, ramp_max=args.ramp_max)
    meter = LoadMeter(target)
    results: dict[str, Any] = {
        "rate_hz_per_channel": args.rate_hz,
        "channels": args.channels,
        "values_per_reading": args.values,
        "duration_s": args.duration_s,
        "idle": await meter.baseline(),
        "levels": [],
    }
    for n in counts:
        level = await _level(target, n, args, meter)
        results["levels"].append(level)
        print(_summary(level), file=sys.stderr)
        if args.ramp and not level["real_time_held"]:
            break
    results["real_time_lost_at"] = real_time_lost_at(results["levels"])
    return results


def _summary(r: dict[str, Any]) -> str:
    d = r["delivery_ms"]
    lat = f"{d['p50']:.1f}/{d['p90']:.1f}/{d['p99']:.1f}" if d.get("n") else "-"
    load = r["load"]
    return (
        f"sensors {r['sessions']} pair(s): delivery p50/p90/p99 {lat} ms, "
        f"{r['delivered_per_s']:.0f} readings/s delivered ({r['delivered_fraction']:.2%} of "
        f"sent), coalesced {r['coalesced']}, server CPU "
        f"{load.get('server_cpu_s_per_s', float('nan')):.3f} s/s, generator "
        f"{load['generator_cpu_s_per_s']:.3f} s/s; real time {r['real_time_held']}"
    )
