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
    "control",
    "control-channel round trip and message rate vs a bare echo server",
    add_args=_args,
    # Pings count toward the subject's message budget (docs/protocol.md); the rate run
    # measures the server, not that limit, so a server the harness starts has it lifted.
    server_env={"TIDEGATE_RATE_MESSAGES_PER_S": "0"},
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
        for encoding in ENCODINGS:
            tg, ec = await _measure(target, f"ws://127.0.0.1:{port}", encoding, args)
            results["tidegate"][encoding], results["echo"][encoding] = tg, ec
    finally:
        echo.terminate()
        await echo.wait()
    results["rtt_p50_ratio_vs_echo"] = {
        enc: results["tidegate"][enc]["rtt_ms"]["p50"] / results["echo"][enc]["rtt_ms"]["p50"]
        for enc in ENCODINGS
    }
    results["target"] = {"rtt_p50_ratio_max": 1.3, "codec_us_max": 20.0}
    print(_summary(results), file=sys.stderr)
    return results


async def _measure(
    target: Target, echo_url: str, encoding: str, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Round trips alternate between tidegate and the echo server, one each, so that changes
    in machine load during the run fall on both alike; then each one's message rate."""
    codec = get_codec(encoding)
    echo_payload = codec.encode(Ping(id="p", t_client=0.0).to_wire())
    async with (
        await Client.connect(target.control_url, target.mint(), encoding=encoding) as client,
        websockets.connect(
            echo_url,
            subprotocols=[Subprotocol(subprotocol_for(encoding))],
            compression=None,
            ping_interval=None,
        ) as ws,
    ):
        await client.create_session({"mode": "loopback"})

        async def echo_round_trip() -> float:
            t0 = time.perf_counter()
            await ws.send(codec.encode(Ping(id="p", t_client=time.time() * 1000).to_wire()))
            codec.decode(await ws.recv())
            return (time.perf_counter() - t0) * 1000

        for _ in range(args.warmup):
            await client.ping()
            await echo_round_trip()
        cpu0 = process_cpu_s(target.pid) if target.pid else None
        tg_rtts, echo_rtts = [], []
        for _ in range(args.pings):
            tg_rtts.append((await client.ping()).rtt_ms)
            echo_rtts.append(await echo_round_trip())
        cpu1 = process_cpu_s(target.pid) if target.pid else None

        async def one() -> None:
            await client.request(Ping(id=client.next_id(), t_client=0.0))

        tg_count = await _rate(one, args)
        echo_count = 0
        deadline = time.perf_counter() + args.duration_s
        while time.perf_counter() < deadline:
            for _ in range(args.window):
                await ws.send(echo_payload)
            for _ in range(args.window):
                codec.decode(await ws.recv())
            echo_count += args.window
    tg: dict[str, Any] = {"rtt_ms": percentiles(tg_rtts), "msgs_per_s": tg_count / args.duration_s}
    if cpu0 is not None and cpu1 is not None:
        tg["server_cpu_us_per_round_trip"] = (cpu1 - cpu0) / args.pings * 1e6
    echo_result = {"rtt_ms": percentiles(echo_rtts), "msgs_per_s": echo_count / args.duration_s}
    return tg, echo_result


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
