"""Scenario ``control``: control-channel round trip and message rate per encoding, against a
bare ``websockets`` echo server measured in the same run; plus codec cost per event.

Round trip: a ``ping`` answered by ``pong``, one at a time, through the public client.
Rate: pings kept ``--window`` in flight for ``--duration-s``. The echo baseline sends the same
encoded ping bytes to an echo server and waits for them to come back.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import timeit
from typing import Any

import websockets
from websockets.typing import Subprotocol

from tidegate.protocol import Direction, get_codec, parse_message, subprotocol_for
from tidegate.protocol.client import Client
from tidegate.protocol.messages import AsrPartial, Ping, Timing

from ..harness import scenario
from ..report import percentiles
from ..target import Target, free_port, process_cpu_s

ENCODINGS = ("cbor", "msgpack", "json")


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pings", type=int, default=2000, help="round trips per encoding")
    p.add_argument("--warmup", type=int, default=200, help="round trips discarded first")
    p.add_argument("--duration-s", type=float, default=2.0, help="length of each rate run")
    p.add_argument("--window", type=int, default=32, help="pings in flight in the rate run")


@scenario(
    "control", "control-channel round trip and message rate vs a bare echo server", add_args=_args
)
async def run(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    results: dict[str, Any] = {"codec_us": codec_cost(), "tidegate": {}, "echo": {}}
    port = free_port()
    echo = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidegate.bench.echo_server",
        str(port),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert echo.stdout is not None
        await asyncio.wait_for(echo.stdout.readline(), 30)
        echo_url = f"ws://127.0.0.1:{port}"
        for encoding in ENCODINGS:
            # Alternate the two servers so that drift in machine load hits both alike.
            results["echo"][encoding] = await _echo_run(echo_url, encoding, args)
            results["tidegate"][encoding] = await _tidegate_run(target, encoding, args)
    finally:
        echo.terminate()
        await echo.wait()
    ratios = {
        enc: results["tidegate"][enc]["rtt_ms"]["p50"] / results["echo"][enc]["rtt_ms"]["p50"]
        for enc in ENCODINGS
    }
    results["rtt_p50_ratio_vs_echo"] = ratios
    results["target"] = {"rtt_p50_ratio_max": 1.3, "codec_us_max": 20.0}
    print(_summary(results), file=sys.stderr)
    return results


async def _tidegate_run(target: Target, encoding: str, args: argparse.Namespace) -> dict[str, Any]:
    async with await Client.connect(target.control_url, target.mint(), encoding=encoding) as client:
        await client.create_session({"mode": "loopback"})
        for _ in range(args.warmup):
            await client.ping()
        cpu0 = process_cpu_s(target.pid) if target.pid else None
        rtts = [(await client.ping()).rtt_ms for _ in range(args.pings)]
        cpu1 = process_cpu_s(target.pid) if target.pid else None

        async def one() -> None:
            await client.request(Ping(id=client.next_id(), t_client=0.0))

        count = await _rate(one, args)
    out: dict[str, Any] = {"rtt_ms": percentiles(rtts), "msgs_per_s": count / args.duration_s}
    if cpu0 is not None and cpu1 is not None:
        out["server_cpu_us_per_round_trip"] = (cpu1 - cpu0) / args.pings * 1e6
    return out


async def _echo_run(url: str, encoding: str, args: argparse.Namespace) -> dict[str, Any]:
    codec = get_codec(encoding)
    async with websockets.connect(
        url,
        subprotocols=[Subprotocol(subprotocol_for(encoding))],
        compression=None,
        ping_interval=None,
    ) as ws:

        async def round_trip() -> float:
            t0 = time.perf_counter()
            await ws.send(codec.encode(Ping(id="p", t_client=time.time() * 1000).to_wire()))
            codec.decode(await ws.recv())
            return (time.perf_counter() - t0) * 1000

        for _ in range(args.warmup):
            await round_trip()
        rtts = [await round_trip() for _ in range(args.pings)]
        payload = codec.encode(Ping(id="p", t_client=0.0).to_wire())
        count = 0
        deadline = time.perf_counter() + args.duration_s
        while time.perf_counter() < deadline:
            for _ in range(args.window):
                await ws.send(payload)
            for _ in range(args.window):
                codec.decode(await ws.recv())
            count += args.window
    return {"rtt_ms": percentiles(rtts), "msgs_per_s": count / args.duration_s}


async def _rate(one: Any, args: argparse.Namespace) -> int:
    count = 0
    deadline = time.perf_counter() + args.duration_s
    while time.perf_counter() < deadline:
        await asyncio.gather(*(one() for _ in range(args.window)))
        count += args.window
    return count


def codec_cost(number: int = 20_000) -> dict[str, float]:
    """Microseconds to encode and decode (with validation) a typical ``asr.partial``."""
    msg = AsrPartial(
        segment_id="seg-1",
        text="the quick brown fox jumps over the lazy dog",
        audio_start_ms=1200.0,
        audio_end_ms=3400.0,
        timing=Timing(received=1.7e12, engine_start=1.7e12 + 1, engine_end=1.7e12 + 9),
    )
    out = {}
    for name in ENCODINGS:
        codec = get_codec(name)

        def round_trip(codec: Any = codec) -> None:
            data = codec.encode(msg.to_wire(7, 1.7e12 + 10))
            parse_message(
                codec.decode(data),
                Direction.SERVER,
                strict=False,
                binary_decoder=codec.binary_decoder,
            )

        round_trip()
        best = min(timeit.repeat(round_trip, number=number, repeat=5))
        out[name] = best / number * 1e6
    return out


def _summary(r: dict[str, Any]) -> str:
    lines = ["encoding   tidegate p50/p99 ms   echo p50/p99 ms   ratio p50   msgs/s tg / echo"]
    for enc in ENCODINGS:
        t, e = r["tidegate"][enc], r["echo"][enc]
        lines.append(
            f"{enc:9}  {t['rtt_ms']['p50']:.3f} / {t['rtt_ms']['p99']:.3f}      "
            f"{e['rtt_ms']['p50']:.3f} / {e['rtt_ms']['p99']:.3f}     "
            f"{r['rtt_p50_ratio_vs_echo'][enc]:.2f}        "
            f"{t['msgs_per_s']:.0f} / {e['msgs_per_s']:.0f}"
        )
    lines.append(
        "codec encode+decode us: " + ", ".join(f"{k} {v:.1f}" for k, v in r["codec_us"].items())
    )
    return "\n".join(lines)
