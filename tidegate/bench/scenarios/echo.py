"""Scenario ``echo``: WebRTC loopback sessions, driven from the outside.

What it measures, against a server it reaches only through the public protocol (the control
channel for signalling and metrics, WebRTC for media):

- connect time: from sending ``rtc.offer`` to the client's peer connection being connected;
- audio round trip: the client sends marked tone bursts (100 ms of 1 kHz, once a second) and
  the server echoes them; the round trip is from the send of a burst's first packet to the
  burst's first sample in the echo (sample-exact onset detection on the decoded echo, at the
  packet's arrival). The client decodes the echo straight off the wire, with no playout
  buffer of its own: this is the server's share of voice-to-voice latency plus the network;
- server CPU-seconds per session-second (``/proc`` of the server process), for one echo
  session and for N receive-only sessions;
- N concurrent receive-only sessions (1, 5, 10, 20, 40, 100; each its own tenant, so the
  per-tenant session quota does not cap them): whether the server kept real time,
  from its own ``metrics`` events: every session's consumer took at least 95 % of the audio
  the client sent in the window, with less than ``--max-lag-ms`` queued and no ``flow.lag``.

The load generator replays Opus packets encoded once at start-up, so a client session costs
little more than aiortc's RTP/SRTP send path. Every packet stays on 127.0.0.1: the client's
ICE agent gathers on loopback only, and the server it starts does too (NETWORK.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import itertools
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

from tidegate.media._aiortc import tap_rtp
from tidegate.protocol.client import Client, ClientError
from tidegate.protocol.messages import FlowLag, Metrics

from ..harness import scenario
from ..load import LoadMeter, real_time_lost_at, session_counts
from ..progress import current
from ..report import distribution, percentiles
from ..rtc import connect, loopback_ice
from ..target import Target, process_cpu_s

SAMPLE_RATE_HZ = 48_000
FRAME_SAMPLES = 960  # 20 ms
FRAME_S = 0.020
CYCLE_FRAMES = 50  # one burst per second
BURST_FRAMES = 5  # 100 ms of tone
BURST_HZ = 1_000.0
BURST_LEVEL = 0.5
ONSET_LEVEL = 0.1
QUIET_FRAMES_BEFORE_ONSET = 10
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE_HZ)
SESSION_COUNTS = (1, 5, 10, 20, 40, 100)
_subjects = itertools.count(1)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rtt-s", type=float, default=12.0, help="length of the round-trip run")
    p.add_argument("--window-s", type=float, default=5.0, help="measured window per N")
    p.add_argument(
        "--sessions",
        default=",".join(map(str, SESSION_COUNTS)),
        help="comma-separated session counts for the receive-only runs",
    )
    p.add_argument("--max-lag-ms", type=float, default=200.0, help="real-time bound on lag")
    p.add_argument("--ramp", action="store_true", help="1, 2, 4, ... until real time is lost")
    p.add_argument("--ramp-max", type=int, default=256, help="the ramp's last level")


def encode_cycle() -> list[bytes]:
    """One second of Opus packets (48 kHz mono): a 100 ms 1 kHz burst, then silence. Encoded
    twice, keeping the second pass, so the encoder is in its steady state."""
    t = np.arange(BURST_FRAMES * FRAME_SAMPLES) / SAMPLE_RATE_HZ
    burst = BURST_LEVEL * np.sin(2 * np.pi * BURST_HZ * t)
    pcm = np.zeros(CYCLE_FRAMES * FRAME_SAMPLES)
    pcm[: len(burst)] = burst
    samples = (np.concatenate([pcm, pcm]) * 32767).astype(np.int16)
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = SAMPLE_RATE_HZ
    enc.layout = "mono"
    enc.format = "s16"
    enc.bit_rate = 32_000
    enc.options = {"application": "voip"}
    enc.time_base = TIME_BASE
    packets: list[bytes] = []
    for i in range(2 * CYCLE_FRAMES):
        chunk = samples[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE_HZ
        frame.pts = i * FRAME_SAMPLES
        packets += [bytes(p) for p in enc.encode(frame)]
    packets += [bytes(p) for p in enc.encode(None)]
    # libopus delays by its lookahead: keep 50 consecutive packets aligned with the cycle.
    return packets[CYCLE_FRAMES : 2 * CYCLE_FRAMES]


class ReplayTrack(MediaStreamTrack):
    """Replays pre-encoded Opus packets, one per 20 ms, and notes when each burst left."""

    kind = "audio"

    def __init__(self, packets: list[bytes]) -> None:
        super().__init__()
        self.packets = packets
        self.n = 0
        self.t0: float | None = None
        self.burst_sent: list[float] = []

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.perf_counter()
        if self.t0 is None:
            self.t0 = now
        due = self.t0 + self.n * FRAME_S
        if due > now:
            await asyncio.sleep(due - now)
        i = self.n
        self.n += 1
        packet = av.Packet(self.packets[i % CYCLE_FRAMES])
        packet.pts = i * FRAME_SAMPLES
        packet.time_base = TIME_BASE
        if i % CYCLE_FRAMES == 0:
            self.burst_sent.append(time.perf_counter())
        return packet


class OnsetTap:
    """Decodes echoed packets as they arrive and times each burst's first sample."""

    def __init__(self, track: ReplayTrack) -> None:
        self.track = track
        self.dec = av.CodecContext.create("libopus", "r")
        self.dec.sample_rate = SAMPLE_RATE_HZ
        self.dec.layout = "mono"
        self.quiet = 0
        self.rtts_ms: list[float] = []

    async def __call__(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        arrival = time.perf_counter()
        pcm = np.concatenate(
            [
                f.to_ndarray().reshape(-1).astype(np.float32) / 32768
                if f.format.name == "s16"
                else f.to_ndarray().reshape(-1)
                for f in self.dec.decode(av.Packet(packet.payload))
            ]
            or [np.zeros(0, np.float32)]
        )
        loud = np.flatnonzero(np.abs(pcm) > ONSET_LEVEL)
        if not len(loud):
            self.quiet += 1
            return
        if self.quiet >= QUIET_FRAMES_BEFORE_ONSET and self.track.burst_sent:
            sent = self.track.burst_sent[-1]
            # The packet's last sample is "now"; the onset sample came len - idx before it,
            # and the burst's first sample left with its packet, 20 ms of audio after capture.
            onset = arrival - (len(pcm) - loud[0]) / SAMPLE_RATE_HZ
            self.rtts_ms.append((onset - (sent - FRAME_S)) * 1000.0)
        self.quiet = 0


@dataclass
class EchoSession:
    client: Client
    pc: RTCPeerConnection
    track: ReplayTrack
    connect_ms: float
    metrics: list[Metrics] = field(default_factory=list)
    lag_events: int = 0
    reader: asyncio.Task[None] | None = None

    async def read_events(self) -> None:
        with contextlib.suppress(Exception):
            async for event in self.client:
                if isinstance(event, Metrics):
                    self.metrics.append(event)
                elif isinstance(event, FlowLag):
                    self.lag_events += 1

    def audio_ms(self) -> tuple[float, float]:
        """(server time ms, audio ms the server's consumer took) of the latest metrics."""
        if not self.metrics:
            return 0.0, 0.0
        m = self.metrics[-1]
        return m.t, float(m.stats["lanes"]["rtc"]["audio_ms"])

    def media(self) -> dict[str, Any]:
        if not self.metrics:
            return {}
        return dict(self.metrics[-1].stats["lanes"]["media"])

    async def close(self) -> None:
        await self.pc.close()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        with contextlib.suppress(Exception):  # free the session now, not after resume_s
            await self.client.close_session(timeout_s=5)
        await self.client.close()


async def open_session(target: Target, packets: list[bytes], *, echo: bool) -> EchoSession:
    """A loopback session with WebRTC audio: sendrecv (echo) or sendonly (receive-only)."""
    # One subject and tenant per session: neither the per-subject session rate limit nor the
    # per-tenant session quota (max_sessions_per_tenant, 64) is what is measured.
    subject = f"echo-{next(_subjects)}"
    token = target.mint(subject=subject, tenant=subject)
    client = await Client.connect(target.control_url, token)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await client.create_session({"mode": "loopback"})
        track = ReplayTrack(packets)
        pc.addTransceiver(track, direction="sendrecv" if echo else "sendonly")
        session = EchoSession(client, pc, track, await connect(client, pc))
    except BaseException:  # refused or failed half way: nothing of it stays open
        await pc.close()
        await client.close()
        raise
    session.reader = asyncio.get_running_loop().create_task(session.read_events())
    return session


#: the session and connection limits of a server the scenario starts itself (``server_env``)
LOCAL_MAX_SESSIONS = 2048
_LIMITS = ("MAX_SESSIONS", "MAX_SESSIONS_PER_TENANT", "MAX_CONNECTIONS_PER_ADDRESS")


async def open_sessions(target: Target, packets: list[bytes], n: int) -> list[EchoSession]:
    """``n`` receive-only sessions opened at once; when any is refused, those that opened are
    closed and the first error is raised."""
    opened = await asyncio.gather(
        *(open_session(target, packets, echo=False) for _ in range(n)), return_exceptions=True
    )
    sessions = [s for s in opened if isinstance(s, EchoSession)]
    errors = [e for e in opened if isinstance(e, BaseException)]
    if errors:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        raise errors[0]
    return sessions


async def run_echo(target: Target, packets: list[bytes], duration_s: float) -> dict[str, Any]:
    s = await open_session(target, packets, echo=True)
    try:
        tap = OnsetTap(s.track)
        tap_rtp(s.pc.getTransceivers()[0].receiver, tap)
        await asyncio.sleep(1.0)  # settle
        cpu0 = process_cpu_s(target.pid) if target.pid else None
        t0 = time.perf_counter()
        await asyncio.sleep(duration_s)
        wall = time.perf_counter() - t0
        cpu1 = process_cpu_s(target.pid) if target.pid else None
        out: dict[str, Any] = {
            "connect_ms": s.connect_ms,
            "rtt_ms": distribution(tap.rtts_ms),
            "server_media": s.media(),
        }
        if cpu0 is not None and cpu1 is not None:
            out["server_cpu_s_per_s"] = (cpu1 - cpu0) / wall
        return out
    finally:
        await s.close()


async def run_load(
    target: Target,
    packets: list[bytes],
    n: int,
    window_s: float,
    max_lag_ms: float,
    meter: LoadMeter | None = None,
) -> dict[str, Any]:
    current().stage(f"echo: {n} receive-only session(s)")
    sessions: list[EchoSession] = []
    try:
        try:
            sessions = await open_sessions(target, packets, n)
        except (ClientError, OSError, TimeoutError) as e:  # a limit of the server's, reported
            return {"sessions": n, "refused": f"{type(e).__name__}: {e}", "real_time_held": False}
        await asyncio.sleep(1.5)  # every session past its first metrics event
        start = [s.audio_ms() for s in sessions]
        sent0 = [s.track.n for s in sessions]
        lag0 = sum(s.lag_events for s in sessions)
        cpu0 = process_cpu_s(target.pid) if target.pid else None
        if meter is not None:
            await meter.start()
        t0 = time.perf_counter()
        await asyncio.sleep(window_s)
        wall = time.perf_counter() - t0
        cpu1 = process_cpu_s(target.pid) if target.pid else None
        load = await meter.stop(n) if meter is not None else None
        sent = [(s.track.n - n0) * FRAME_S * 1000.0 for s, n0 in zip(sessions, sent0, strict=True)]
        end = [s.audio_ms() for s in sessions]
        # The server's consumer rate, by its own clock, between two of its metrics events.
        rate = [
            (b[1] - a[1]) / (b[0] - a[0]) if b[0] > a[0] else 0.0
            for a, b in zip(start, end, strict=True)
        ]
        sent_rate = [x / (wall * 1000.0) for x in sent]
        lags = [float(s.media().get("audio_in", {}).get("peak_ms", 0.0)) for s in sessions]
        late = sum(
            int(s.media().get("audio_rtp", {}).get("jitter_buffer", {}).get("late", 0))
            for s in sessions
        )
        lag_events = sum(s.lag_events for s in sessions) - lag0
        # Real time held: each consumer took what its client sent, as fast as it was sent,
        # with a bounded queue and no lag reported.
        kept = [r / max(x, 1e-9) for r, x in zip(rate, sent_rate, strict=True)]
        kept_min = round(min(kept), 4)  # the verdict uses the figure the report shows
        held = kept_min >= 0.95 and max(lags) < max_lag_ms and lag_events == 0
        out: dict[str, Any] = {
            "sessions": n,
            "connect_ms": percentiles([s.connect_ms for s in sessions]),
            "client_send_rate_min": round(min(sent_rate), 4),
            "server_consume_rate_min": round(min(rate), 4),
            "server_consume_rate_mean": round(sum(rate) / n, 4),
            "consumed_vs_sent_min": kept_min,
            "peak_queued_ms_max": max(lags),
            "late_packets": late,
            "flow_lag_events": lag_events,
            "real_time_held": held,
        }
        if load is not None:
            out["load"] = load
        if cpu0 is not None and cpu1 is not None:
            cpu = cpu1 - cpu0
            out["server_cpu_s_per_s"] = cpu / wall
            out["server_cpu_s_per_session_s"] = cpu / wall / n
        return out
    finally:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)


@scenario(
    "echo",
    "WebRTC loopback: connect time, audio round trip, server CPU, concurrent sessions",
    add_args=_args,
    # the server it starts measures capacity, not the limits that protect a deployed one: the
    # defaults (256 connections per address, 256 sessions) would refuse the levels above them
    server_env={
        "TIDEGATE_METRICS_INTERVAL_S": "1",
        "TIDEGATE_ICE_HOSTS": "127.0.0.1",
        **{f"TIDEGATE_{k}": str(LOCAL_MAX_SESSIONS) for k in _LIMITS},
    },
)
async def run(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    loopback_ice()
    packets = encode_cycle()
    results: dict[str, Any] = {}
    if target.pid:
        cpu0 = process_cpu_s(target.pid)
        await asyncio.sleep(1.0)
        results["server_idle_cpu_s_per_s"] = process_cpu_s(target.pid) - cpu0
    meter = LoadMeter(target)
    results["idle"] = await meter.baseline()
    current().stage("echo: round trips")
    results["echo"] = await run_echo(target, packets, args.rtt_s)
    results["receive_only"] = []
    for n in session_counts(str(args.sessions), ramp=args.ramp, ramp_max=args.ramp_max):
        level = await run_load(target, packets, n, args.window_s, args.max_lag_ms, meter)
        results["receive_only"].append(level)
        if args.ramp and not level["real_time_held"]:
            break
    results["real_time_lost_at"] = real_time_lost_at(results["receive_only"])
    results["target"] = {
        "rtt_ms_p50_max": 70.0,
        "echo_server_cpu_s_per_s_max": 0.05,
        "receive_only_sessions_min": 100,
    }
    print(_summary(results), file=sys.stderr)
    return results


def _summary(r: dict[str, Any]) -> str:
    e = r["echo"]
    rtt = e["rtt_ms"]
    lines = [
        f"echo: connect {e['connect_ms']:.1f} ms; round trip p50 {rtt.get('p50', float('nan')):.1f}"
        f" p90 {rtt.get('p90', float('nan')):.1f} ms (n={rtt['n']}); server CPU "
        f"{e.get('server_cpu_s_per_s', float('nan')):.4f} CPU-s/s",
        "receive-only: N  connect p50 ms  CPU-s/s  CPU-s/session-s  sent min  taken/sent min"
        "  real time",
    ]
    for x in r["receive_only"]:
        if "refused" in x:
            lines.append(f"  {x['sessions']:3d}  refused: {x['refused']}")
            continue
        lines.append(
            f"  {x['sessions']:3d}  {x['connect_ms']['p50']:8.1f}  "
            f"{x.get('server_cpu_s_per_s', float('nan')):8.3f}  "
            f"{x.get('server_cpu_s_per_session_s', float('nan')):10.4f}  "
            f"{x['client_send_rate_min']:8.3f}  {x['consumed_vs_sent_min']:8.3f}  "
            f"{x['real_time_held']}"
        )
    return "\n".join(lines)
