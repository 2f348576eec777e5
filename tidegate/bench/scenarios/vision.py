"""Scenario ``vision``: frame to detection, over WS-only ``input.frame`` and over WebRTC video,
for N concurrent assistant sessions (``--sessions``, default 1, 2, 4; or ``--ramp``), against a
server running the assistant's engines and ``vision``.

Every frame carries its index in its pixels: the astronaut's head (skimage's photo) sits in
one of six places of a 640x480 picture (three columns, two rows), place = index mod 6. The
vision engine's own detection box says where the face was, so each ``vision.result`` is
checked against the frame its ``frame_ts`` names (``code_ok``): a mismatch would mean the
frame times (or the frame the server looked at) are not what the client thinks.

- WS: JPEG frames encoded once at start-up, sent as ``input.frame`` at ``--fps`` with
  ``ts`` = index x frame interval, so ``frame_ts`` names the frame exactly.
- WebRTC: a 3-second cycle of VP8 frames encoded once (a keyframe first), replayed by the
  client's track at ``--fps`` with RTP time = index x frame interval; the server's
  ``frame_ts`` counts from its first decoded frame (index 0).

Per result, in client time (clocks mapped through the ping exchange, ``sync_clock``):

- ``frame_to_detection_ms``: from the frame leaving the client to its ``vision.result``
  arriving (samples kept, for the CDF);
- ``stages``: ``to_engine_ms`` (frame sent -> engine start: transport, decode, and any wait
  for the engine; the lane looks at a frame when it arrives, at most one look per
  ``assistant_vision_interval_s`` on average: frames it skips have no result), ``engine_ms``
  (engine start -> end, server clock only), ``result_to_client_ms`` (engine end -> arrival);
  over WS also ``uplink_ms`` (sent -> received by the server).

Load: per level the server's CPU and memory (load.LoadMeter: ``/metrics`` or ``/proc``) and
the generator's CPU; real time is held when no ``error`` or ``flow.lag`` arrived, every
session got results, and ``frame_to_detection_ms`` p90 stayed under ``--max-latency-ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tidegate.protocol.client import Client, now_ms
from tidegate.protocol.messages import (
    Error,
    FlowLag,
    InputFrame,
    VisionResult,
)

from ..harness import scenario
from ..load import LoadMeter, real_time_lost_at, run_level, session_counts
from ..progress import current
from ..report import distribution, percentiles
from ..rtc import connect, loopback_ice
from ..target import open_session
from .asr import _default_data_dir

WIDTH, HEIGHT = 640, 480
COLS, ROWS = 3, 2
PLACES = COLS * ROWS
HEAD_PX = 200
HEAD_CROP = (20, 240, 115, 335)  # rows, columns of astronaut.png around the face
VIDEO_CLOCK_HZ = 90_000
CYCLE_FRAMES = 30  # a keyframe every cycle (3 s at 10 fps)
RESULT_WAIT_S = 3.0
STAGES = ("to_engine_ms", "engine_ms", "result_to_client_ms", "uplink_ms")
RgbArray = np.ndarray[Any, np.dtype[np.uint8]]


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--photo", default=".cache/assets/astronaut.png", help="skimage's astronaut")
    p.add_argument("--sessions", default="1,2,4", help="concurrent session counts")
    p.add_argument("--ramp", action="store_true", help="1, 2, 4, ... until real time is lost")
    p.add_argument("--ramp-max", type=int, default=64, help="the ramp's last level")
    p.add_argument("--transports", default="ws,rtc", help="ws (input.frame), rtc (video)")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second per session")
    p.add_argument("--duration-s", type=float, default=6.0, help="sending time per level")
    p.add_argument(
        "--interval-s",
        type=float,
        default=0.2,
        help="assistant_vision_interval_s of a server the harness starts",
    )
    p.add_argument("--max-latency-ms", type=float, default=1500.0, help="real-time bound (p90)")


def _env(args: argparse.Namespace) -> dict[str, str]:
    return {"TIDEGATE_ASSISTANT_VISION_INTERVAL_S": str(args.interval_s)}


# -- the frames -------------------------------------------------------------------------------
def read_rgb(path: Path) -> RgbArray:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return np.asarray(frame.to_ndarray(format="rgb24"), np.uint8)


def _resize(img: RgbArray, w: int, h: int) -> RgbArray:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
    return np.asarray(frame.reformat(width=w, height=h).to_ndarray(format="rgb24"), np.uint8)


def place_of(index: int) -> int:
    return index % PLACES


def picture(head: RgbArray, place: int) -> RgbArray:
    """A grey 640x480 picture with the head in ``place`` (column-major order: place mod 3 is
    the column, place // 3 the row)."""
    img = np.full((HEIGHT, WIDTH, 3), 96, np.uint8)
    col, row = place % COLS, place // COLS
    x = 20 + col * (WIDTH - 40 - HEAD_PX) // (COLS - 1)
    y = 10 + row * (HEIGHT - 20 - HEAD_PX) // (ROWS - 1)
    img[y : y + HEAD_PX, x : x + HEAD_PX] = head
    return img


def read_place(box: tuple[float, float, float, float]) -> int:
    """The place a detection box's centre falls in."""
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    col = min(COLS - 1, max(0, int(cx // (WIDTH / COLS))))
    row = min(ROWS - 1, max(0, int(cy // (HEIGHT / ROWS))))
    return row * COLS + col


def pictures(photo: Path) -> list[RgbArray]:
    img = read_rgb(photo)
    r0, r1, c0, c1 = HEAD_CROP
    head = _resize(img[r0:r1, c0:c1], HEAD_PX, HEAD_PX)
    return [picture(head, p) for p in range(PLACES)]


def encode_jpegs(pics: list[RgbArray]) -> list[bytes]:
    out = []
    for img in pics:
        enc = av.CodecContext.create("mjpeg", "w")
        enc.width, enc.height, enc.pix_fmt = WIDTH, HEIGHT, "yuvj420p"
        enc.time_base = fractions.Fraction(1, 30)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuvj420p")
        frame.pts = 0
        out.append(b"".join(bytes(p) for p in [*enc.encode(frame), *enc.encode(None)]))
    return out


def encode_vp8_cycle(pics: list[RgbArray], fps: float) -> list[bytes]:
    """``CYCLE_FRAMES`` VP8 frames (a keyframe first, then deltas), frame i showing place
    i mod 6; replayed in a loop, each cycle starts afresh at its keyframe."""
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    enc.time_base = fractions.Fraction(1, VIDEO_CLOCK_HZ)
    enc.bit_rate = 800_000
    enc.gop_size = CYCLE_FRAMES
    enc.options = {"deadline": "realtime", "lag-in-frames": "0", "cpu-used": "8"}
    step = round(VIDEO_CLOCK_HZ / fps)
    packets: list[bytes] = []
    for i in range(CYCLE_FRAMES):
        frame = av.VideoFrame.from_ndarray(pics[place_of(i)], format="rgb24").reformat(
            format="yuv420p"
        )
        frame.pts = i * step
        if i == 0:
            frame.pict_type = av.video.frame.PictureType.I
        packets += [bytes(p) for p in enc.encode(frame)]
    packets += [bytes(p) for p in enc.encode(None)]
    if len(packets) != CYCLE_FRAMES:
        raise RuntimeError(f"libvpx gave {len(packets)} packets for {CYCLE_FRAMES} frames")
    return packets


class VideoReplayTrack(MediaStreamTrack):
    """Replays pre-encoded VP8 frames at ``fps``; notes when each frame left (wall ms)."""

    kind = "video"

    def __init__(self, packets: list[bytes], fps: float) -> None:
        super().__init__()
        self.packets = packets
        self.fps = fps
        self.step = round(VIDEO_CLOCK_HZ / fps)
        self.n = 0
        self.t0: float | None = None
        self.sent: list[float] = []
        self.stopped = False

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        due = self.t0 + self.n / self.fps
        if due > now:
            await asyncio.sleep(due - now)
        while self.stopped:  # the level is over: send nothing more, stay open until closed
            await asyncio.sleep(0.1)
            if self.readyState != "live":
                raise MediaStreamError
        i = self.n
        self.n += 1
        packet = av.Packet(self.packets[i % len(self.packets)])
        packet.pts = i * self.step
        packet.time_base = fractions.Fraction(1, VIDEO_CLOCK_HZ)
        self.sent.append(now_ms())
        return packet


# -- one session ------------------------------------------------------------------------------
@dataclass
class VisionLog:
    sent: list[float] = field(default_factory=list)  # per frame index: client wall ms
    results: list[tuple[VisionResult, float]] = field(default_factory=list)
    lag_events: int = 0
    errors: list[str] = field(default_factory=list)
    clock_rtt_ms: float = 0.0
    connect_ms: float | None = None
    open_ms: float = 0.0


async def _reader(client: Client, log: VisionLog) -> None:
    async for ev in client:
        t = now_ms()
        if isinstance(ev, VisionResult):
            log.results.append((ev, t))
            current().update(results=len(log.results))
        elif isinstance(ev, FlowLag):
            log.lag_events += 1
        elif isinstance(ev, Error):
            log.errors.append(f"{ev.code}: {ev.message}")


async def _connect_rtc(client: Client, track: VideoReplayTrack) -> tuple[RTCPeerConnection, float]:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver(track, direction="sendonly")
    vp8 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.name in ("VP8", "rtx")]
    transceiver.setCodecPreferences(vp8)
    return pc, await connect(client, pc)


async def run_session(
    target: Any,
    transport: str,
    media: list[bytes],
    args: argparse.Namespace,
    delay_s: float,
    started: asyncio.Event,
    stop: asyncio.Event,
) -> tuple[VisionLog, Client]:
    log = VisionLog()
    subject = f"bench-vision-{secrets.token_hex(4)}"
    client, log.open_ms = await open_session(target, subject, {"mode": "assistant"})
    pc: RTCPeerConnection | None = None
    try:
        log.clock_rtt_ms = (await client.sync_clock()).rtt_ms
        await asyncio.sleep(delay_s)
        track = VideoReplayTrack(media, args.fps)
        if transport == "rtc":  # before the reader starts: signalling reads the events
            log.sent = track.sent
            pc, log.connect_ms = await _connect_rtc(client, track)
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(_reader(client, log))
            if transport == "rtc":
                started.set()
                await stop.wait()
                track.stopped = True
            else:
                started.set()
                frame_ms = 1000.0 / args.fps
                t0 = time.monotonic()
                i = 0
                while not stop.is_set():
                    wait = t0 + i / args.fps - time.monotonic()
                    if wait > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), wait)
                        if stop.is_set():
                            break
                    log.sent.append(now_ms())
                    await client.send(
                        InputFrame(image=media[place_of(i)], encoding="jpeg", ts=i * frame_ms)
                    )
                    i += 1
            await asyncio.sleep(args.interval_s * 2 + 0.3)  # the last looks' results
            if not log.results:
                await asyncio.sleep(RESULT_WAIT_S)
            reader.cancel()
    finally:
        if pc is not None:
            await pc.close()
        with contextlib.suppress(Exception):
            await client.close_session(timeout_s=5)
        await client.close()
    return log, client


# -- measures ---------------------------------------------------------------------------------
def _measures(log: VisionLog, client: Client, frame_ms: float) -> dict[str, Any]:
    out: dict[str, Any] = {k: [] for k in ("latency", *STAGES)}
    code_ok = faces = unmatched = 0
    for res, arrival in log.results:
        index = round(res.frame_ts / frame_ms)
        if not 0 <= index < len(log.sent):
            unmatched += 1
            continue
        sent = log.sent[index]
        out["latency"].append(arrival - sent)
        if res.detections:
            faces += 1
            best = max(res.detections, key=lambda d: d.score)
            code_ok += read_place(best.box) == place_of(index)
        t = res.timing
        if t is not None and t.engine_start is not None and t.engine_end is not None:
            out["to_engine_ms"].append(client.to_client_time(t.engine_start) - sent)
            out["engine_ms"].append(t.engine_end - t.engine_start)
            out["result_to_client_ms"].append(arrival - client.to_client_time(t.engine_end))
            if t.received is not None and log.connect_ms is None:  # WS: the frame's arrival
                out["uplink_ms"].append(client.to_client_time(t.received) - sent)
    out["counts"] = {"faces": faces, "code_ok": code_ok, "unmatched": unmatched}
    return out


async def _level(
    target: Any,
    transport: str,
    n: int,
    media: list[bytes],
    args: argparse.Namespace,
    meter: LoadMeter,
) -> dict[str, Any]:
    current().stage(f"vision {transport}: {n} session(s)")
    done, load, _ = await run_level(
        lambda i, started, stop: run_session(
            target, transport, media, args, i * 0.05, started, stop
        ),
        n,
        meter,
        args.duration_s,
    )
    frame_ms = 1000.0 / args.fps
    values: dict[str, list[float]] = {k: [] for k in ("latency", *STAGES)}
    counts = {"faces": 0, "code_ok": 0, "unmatched": 0}
    per_session_results = []
    for log, client in done:
        m = _measures(log, client, frame_ms)
        for k in values:
            values[k] += m[k]
        for k in counts:
            counts[k] += m["counts"][k]
        per_session_results.append(len(log.results))
    logs = [log for log, _ in done]
    latency = distribution(values["latency"])
    errors = [e for log in logs for e in log.errors]
    lag = sum(log.lag_events for log in logs)
    held = (
        not errors
        and lag == 0
        and min(per_session_results) > 0
        and latency.get("p90", float("inf")) <= args.max_latency_ms
    )
    out: dict[str, Any] = {
        "sessions": n,
        "frames_sent": sum(len(log.sent) for log in logs),
        "results": len(values["latency"]) + counts["unmatched"],
        "results_per_session_min": min(per_session_results),
        "results_with_a_face": counts["faces"],
        "code_ok": counts["code_ok"],
        "results_unmatched": counts["unmatched"],
        "frame_to_detection_ms": latency,
        "stages": {k: percentiles(values[k]) for k in STAGES if k != "uplink_ms" or values[k]},
        "session_open_ms": percentiles([log.open_ms for log in logs]),
        "clock_sync_rtt_ms": percentiles([log.clock_rtt_ms for log in logs]),
        "lag_events": lag,
        "errors": errors[:10],
        "real_time_held": held,
        "load": load,
    }
    if transport == "rtc":
        out["connect_ms"] = percentiles([log.connect_ms for log in logs if log.connect_ms])
    return out


@scenario(
    "vision",
    "frame to detection over input.frame and WebRTC video, N assistant sessions",
    add_args=_args,
    server_env={"TIDEGATE_ENGINES": "vad,asr,llm,tts,vision", **_default_data_dir()},
    env_from_args=_env,
)
async def run(args: argparse.Namespace, target: Any) -> dict[str, Any]:
    loopback_ice()
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    bad = sorted(set(transports) - {"ws", "rtc"})
    if bad or not transports:
        raise SystemExit(f"--transports: expected ws and/or rtc, got {args.transports!r}")
    counts = session_counts(args.sessions, ramp=args.ramp, ramp_max=args.ramp_max)
    pics = await asyncio.to_thread(pictures, Path(args.photo))
    media = {
        "ws": await asyncio.to_thread(encode_jpegs, pics),
        "rtc": await asyncio.to_thread(encode_vp8_cycle, pics, args.fps),
    }
    meter = LoadMeter(target)
    results: dict[str, Any] = {
        "fps": args.fps,
        "duration_s": args.duration_s,
        "vision_interval_s": args.interval_s if target.pid else None,
        "idle": await meter.baseline(),
    }
    for transport in transports:
        levels: list[dict[str, Any]] = []
        for n in counts:
            level = await _level(target, transport, n, media[transport], args, meter)
            levels.append(level)
            print(_summary(transport, level), file=sys.stderr)
            if args.ramp and not level["real_time_held"]:
                break
        results[transport] = {"levels": levels, "real_time_lost_at": real_time_lost_at(levels)}
    return results


def _summary(transport: str, r: dict[str, Any]) -> str:
    def p(d: dict[str, Any]) -> str:
        return f"{d['p50']:.0f}/{d['p90']:.0f}/{d['p99']:.0f}" if d.get("n") else "-"

    load = r["load"]
    return (
        f"vision {transport} sessions {r['sessions']}: frame->detection p50/p90/p99 "
        f"{p(r['frame_to_detection_ms'])} ms over {r['results']} results "
        f"({r['code_ok']} with the right place), to engine {p(r['stages']['to_engine_ms'])}, "
        f"engine {p(r['stages']['engine_ms'])} ms; server CPU "
        f"{load.get('server_cpu_s_per_s', float('nan')):.3f} s/s, generator "
        f"{load['generator_cpu_s_per_s']:.3f} s/s; real time {r['real_time_held']}"
    )
