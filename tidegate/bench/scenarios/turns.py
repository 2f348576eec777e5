"""Scenario ``turns``: the ears of the assistant, against a live server (``vad``, ``asr``,
``llm``, ``tts`` and ``turn`` engines), through the public protocol only.

Two sets (``--parts paused,echo``):

- **paused**: the paused-sentence set (``audio_sets.paused_set``: clearly unfinished phrases,
  a 500-900 ms pause, then their end) and the complete set, spoken by the Piper voice when the
  server's data folder has it (``--voice``; made by ``python -m tidegate.bench.micro.ears
  --clips``, a child process, so that this module imports no engine), each streamed at real
  time as ``input.audio`` into two sessions at once, one per turn policy (``semantic`` and
  ``silence``: same audio, same run). Per policy: false cut-offs (a paused sentence whose
  turn ends in its pause: a ``turn.end`` whose ``audio_ms`` falls before the pause ends),
  complete sentences split in two, and end-of-turn latency p50/p90 (the client's moment of
  the last loud sample, sent once captured, to the arrival of the turn's ``turn.end``); the
  turn engine's run time per semantic session (its batches' wall time from ``/metrics``,
  one intra-op thread: its CPU when the machine is not shared). Replies are cancelled as
  soon as they start (their cost is not measured here).
- **echo**: a kiosk whose speaker the microphone hears. The client plays every reply it gets
  (``output.audio`` frames over WS, the inbound track over WebRTC) onto a speaker timeline as it
  arrives, and streams back in real time its microphone: that playback through a room response
  (``audio_sets.room_response``), ``delay`` later and ``level`` below, over a noise floor
  (``--noise-dbfs``), with ``ts`` (WS) or on the RTP clock (WebRTC, the offer saying the client has
  no echo cancellation). For every delay x level and transport: ``--replies`` replies
  (``input.text`` prompts, ``--replies-per-session`` per session, the server's echo cancellation
  ``auto``) counting false barge-ins (a reply cancelled while the user said nothing), echo heard as
  speech (``vad.speech_started`` during a reply) and replies paused by their echo
  (``response.paused``, then resumed: a gap the user hears; ``pause_ms``); a control reply with the
  canceller ``off`` (the fault the set catches: its echo is heard as the user's speech,
  ``barge_ins``, which pauses the reply; ``cut``: how often that cut it, where the reply lane's
  guard against the reply's own words did not resume it); and after each session's replies one more,
  over which the user asks a question (espeak-ng, another voice than the reply's) ``--talk-after-s``
  into it: the cut latency (on the kiosk's media clock, from the question's first sample to the end
  of the reply's audio on the speaker; over WS the kiosk drops the audio it holds on
  ``response.paused``, as docs/protocol.md asks of a WS-only client; over WebRTC, with
  ``--rtc-pause silence`` (the default) its ``rtc.offer`` gives its jitter buffer as
  ``playout_delay_ms`` and it silences what it holds until the reply resumes or ends, with
  ``play`` its jitter buffer plays out) and the question's WER (its ``asr.final``). From the
  sessions' ``metrics`` events (the audio lane's echo stats): the canceller's CPU seconds per
  session-second and the echo reduction ``10 log10(in / out)`` of the microphone energy (the
  noise floor bounds it). ERLE proper (echo alone, -90 dBFS floor, after 3 s) comes from the
  echo set of ``tidegate bench ears``, run as a child (``--erle``).

Targets (issue #20): 0 false barge-ins in >= 20 replies at every delay and level; false
cut-offs under ``semantic`` at most half of ``silence``'s; end of turn after a complete
sentence p50 <= 300 ms; ERLE >= 20 dB; AEC <= 0.02 CPU-s per session-second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import re
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection

from tidegate.protocol.client import Client, RefusedError
from tidegate.protocol.messages import (
    AsrFinal,
    Error,
    InputAudio,
    InputText,
    Metrics,
    OutputAudio,
    ResponseCancel,
    ResponseCreated,
    ResponseDone,
    ResponsePaused,
    ResponseResumed,
    TurnEnd,
    VadSpeechStarted,
)

from .. import audio_sets
from ..harness import scenario
from ..progress import current
from ..report import distribution, percentiles
from ..rtc import AudioTap, LiveOpusTrack, connect, loopback_ice
from ..target import Target, open_session
from ..wer import wer
from .asr import _default_data_dir
from .engines import _child

RATE = audio_sets.SAMPLE_RATE_HZ
CHUNK = 320  # 20 ms at 16 kHz
CHUNK_S = CHUNK / RATE
LOUD = 0.01
SETTLE_S = 10.0  # at most, after a clip's audio: the semantic timeout and a slow final
REPLY_WAIT_S = 40.0
GAP_S = 0.6  # quiet between replies
PROMPTS = (
    "Tell me about the weather in London in spring.",
    "What can I cook for dinner tonight?",
    "Describe a walk in the mountains.",
    "Tell me a short story about a cat.",
    "What should I pack for a beach holiday?",
)
QUESTIONS = (
    "Stop, I changed my mind.",
    "Wait, what about Friday?",
    "What is the weather like in London tomorrow?",
)
MAX_SPEAKER_S = 600.0
#: WebRTC: the kiosk plays each packet at its RTP time plus this much after the first one's
#: arrival (a device's jitter buffer; played at arrival, every hiccup of this Python client
#: on a loaded machine would move its echo and restart the canceller's adaptation)
PLAYOUT_BUFFER_S = 0.08


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parts", default="paused,echo", help="paused, echo")
    p.add_argument("--voice", default="auto", help="paused set: piper, espeak or auto")
    p.add_argument("--seed", type=int, default=1, help="the paused set's pauses")
    p.add_argument("--paused", type=int, default=6, help="paused sentences (at most 6)")
    p.add_argument("--complete", type=int, default=6, help="complete sentences (at most 6)")
    p.add_argument("--transports", default="ws,rtc", help="echo set: ws and/or rtc")
    p.add_argument("--delays-ms", default="40,120,250", help="speaker -> microphone delays")
    p.add_argument("--levels-db", default="-6,-12,-20", help="echo levels under the playback")
    p.add_argument("--replies", type=int, default=20, help="replies per delay x level")
    p.add_argument("--replies-per-session", type=int, default=5, help="then a new session")
    p.add_argument("--concurrency", type=int, default=3, help="delay x level cases at once")
    p.add_argument("--noise-dbfs", type=float, default=-60.0, help="microphone noise floor")
    p.add_argument("--talk-after-s", type=float, default=1.5, help="double talk: question at")
    p.add_argument("--no-control", action="store_true", help="skip the canceller-off replies")
    p.add_argument("--no-double-talk", action="store_true", help="skip the questions over replies")
    p.add_argument("--warm", default="on", help="on: the replies cached first; off")
    p.add_argument("--erle", default="on", help="on: ERLE from `bench ears`'s echo set; off")
    p.add_argument(
        "--rtc-pause",
        choices=("silence", "play"),
        default="silence",
        help="WebRTC kiosk at response.paused: silence what it holds (its playout delay in "
        "rtc.offer) or play its jitter buffer out (a client that says nothing)",
    )
    p.add_argument("--data-dir", help="the server's data folder (the Piper voice for clips)")
    p.add_argument("--timeout-s", type=float, default=900.0, help="the clip maker's limit")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


OPEN_ATTEMPTS = 20  # a session refused as overloaded is tried again after its hint


async def _open(target: Target, name: str, config: dict[str, Any]) -> Client:
    """A session for ``config``; refused as overloaded (a busy shared machine), it waits for
    the hint and tries again."""
    for attempt in range(OPEN_ATTEMPTS):
        try:
            client, _ = await open_session(target, f"{name}-{secrets.token_hex(4)}", config)
            return client
        except RefusedError as e:
            if e.server_code != "overloaded" or attempt == OPEN_ATTEMPTS - 1:
                raise
            await asyncio.sleep(max(0.25, (e.retry_after_ms or 1000) / 1000))
    raise AssertionError("unreachable")


# -- /metrics -------------------------------------------------------------------------------------
def _engine_run_s(target: Target, engine: str) -> float | None:
    """The sum of an engine's batch run times (``tidegate_engine_run_seconds_sum``)."""
    url = target.metrics_url or target.http_url + "/metrics"
    req = urllib.request.Request(url)
    token = target.admin()
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    m = re.search(
        rf'^tidegate_engine_run_seconds_sum\{{engine="{engine}"\}} (\S+)$', text, re.MULTILINE
    )
    return float(m.group(1)) if m else None


def _echo_stats(stats: dict[str, Any]) -> dict[str, Any] | None:
    lanes = stats.get("lanes") or {}
    echo = lanes.get("echo")
    return echo if isinstance(echo, dict) else None


# -- the paused set -------------------------------------------------------------------------------
@dataclass
class Clip:
    audio: np.ndarray[Any, np.dtype[np.float32]]
    kind: str
    text: str
    end_s: float
    pause_s: tuple[float, float] | None


async def _clips(args: argparse.Namespace) -> tuple[str, list[Clip]]:
    with tempfile.TemporaryDirectory(prefix="tidegate-bench-turns-") as tmp:
        command = [sys.executable, "-m", "tidegate.bench.micro.ears", "--clips", tmp]
        command += ["--voice", args.voice, "--seed", str(args.seed)]
        data_dir = args.data_dir or _default_data_dir().get("TIDEGATE_DATA_DIR")
        if data_dir:
            command += ["--data-dir", data_dir]
        index = await _child(command, args.timeout_s)
        clips = [
            Clip(
                np.load(Path(tmp) / c["file"]),
                c["kind"],
                c["text"],
                c["end_s"],
                tuple(c["pause_s"]) if c["pause_s"] else None,
            )
            for c in index["clips"]
        ]
    paused = [c for c in clips if c.kind == "paused"][: args.paused]
    complete = [c for c in clips if c.kind == "complete"][: args.complete]
    return str(index["voice"]), paused + complete


async def _policy_session(
    target: Target,
    policy: str,
    clip: Clip,
    t0_box: list[float],
    ready: asyncio.Barrier,
    go: asyncio.Event,
) -> list[tuple[float, TurnEnd]]:
    """Stream ``clip`` (then quiet) into a session under ``policy``; the turn ends it got,
    with their arrival times. Replies are cancelled as they start."""
    config: dict[str, Any] = {"mode": "assistant", "turn": {"policy": policy}}
    config["audio"] = {"echo_cancellation": "off"}
    client = await _open(target, "bench-turns", config)
    ends: list[tuple[float, TurnEnd]] = []
    async with client, asyncio.TaskGroup() as tg:

        async def read() -> None:
            async for ev in client:
                if isinstance(ev, TurnEnd):
                    ends.append((time.monotonic(), ev))
                elif isinstance(ev, ResponseCreated):
                    with contextlib.suppress(Exception):
                        await client.send(ResponseCancel(response_id=ev.response_id))

        reader = tg.create_task(read())
        await ready.wait()  # both policies start together
        await go.wait()
        t0 = t0_box[0]
        audio = np.concatenate([clip.audio, np.zeros(round(SETTLE_S * RATE), np.float32)])
        settled_at: float | None = None
        for n in range(len(audio) // CHUNK):
            due = t0 + (n + 1) * CHUNK_S  # a chunk leaves once captured
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            x = audio[n * CHUNK : (n + 1) * CHUNK]
            pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
            await client.send(
                InputAudio(
                    pcm=pcm, format="s16le", sample_rate=RATE, channels=1, ts=n * CHUNK_S * 1000
                )
            )
            last = ends[-1][1].audio_ms if ends else None
            if settled_at is None and last is not None and last >= clip.end_s * 1000 - 200:
                settled_at = time.monotonic()
            if settled_at is not None and time.monotonic() > settled_at + 0.3:
                break
        with contextlib.suppress(Exception):
            await client.close_session()
        reader.cancel()
    return ends


async def run_paused(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    voice, clips = await _clips(args)
    policies = ("semantic", "silence")
    cut = dict.fromkeys(policies, 0)
    split = dict.fromkeys(policies, 0)
    latency: dict[str, list[float]] = {p: [] for p in policies}
    reasons: dict[str, dict[str, int]] = {p: {} for p in policies}
    probs: dict[str, list[float]] = {p: [] for p in policies}
    rows: list[dict[str, Any]] = []
    turn_s0 = await asyncio.to_thread(_engine_run_s, target, "turn")
    for i, clip in enumerate(clips):
        current().stage(f"turns paused: clip {i + 1}/{len(clips)}")
        t0_box = [0.0]
        ready, go = asyncio.Barrier(len(policies) + 1), asyncio.Event()
        # one session per policy, owned by the group: a session that fails cancels the others
        # (and the wait for them all to be ready) instead of leaving them running
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(_policy_session(target, p, clip, t0_box, ready, go))
                for p in policies
            ]
            await ready.wait()
            t0_box[0] = time.monotonic()
            go.set()
        got = {p: t.result() for p, t in zip(policies, tasks, strict=True)}
        row: dict[str, Any] = {"kind": clip.kind, "text": clip.text}
        # the end of speech: when the chunk holding the last loud sample left (once captured)
        eos = t0_box[0] + math.ceil(clip.end_s / CHUNK_S) * CHUNK_S
        for p, ends in got.items():
            ms = [e.audio_ms for _, e in ends]
            for _, e in ends:
                reasons[p][e.reason] = reasons[p].get(e.reason, 0) + 1
                if e.probability is not None:
                    probs[p].append(e.probability)
            final = [(t, e) for t, e in ends if (e.audio_ms or 0) >= clip.end_s * 1000 - 200]
            row[p] = {"turn_ends_ms": ms, "reasons": [e.reason for _, e in ends]}
            if clip.pause_s is not None:
                early = [m for m in ms if m is not None and m < clip.pause_s[1] * 1000]
                cut[p] += bool(early)
                row[p]["cut_off"] = bool(early)
            else:
                split[p] += len(ends) > 1
            if final and clip.pause_s is None:
                latency[p].append((final[0][0] - eos) * 1000)
                row[p]["end_of_turn_ms"] = round(latency[p][-1], 1)
        rows.append(row)
    turn_s1 = await asyncio.to_thread(_engine_run_s, target, "turn")
    n_paused = sum(c.pause_s is not None for c in clips)
    out: dict[str, Any] = {
        "voice": voice,
        "paused": n_paused,
        "complete": len(clips) - n_paused,
        "policies": {
            p: {
                "false_cutoffs": cut[p],
                "complete_split": split[p],
                "end_of_turn_ms": distribution(latency[p]),
                "reasons": reasons[p],
                "probability": percentiles(probs[p]),
            }
            for p in policies
        },
        "clips": rows,
    }
    if turn_s0 is not None and turn_s1 is not None:
        out["turn_engine_run_s_per_session"] = (turn_s1 - turn_s0) / max(1, len(clips))
        out["turn_engine_run_s"] = turn_s1 - turn_s0
    sem, sil = cut["semantic"], cut["silence"]
    out["targets"] = {
        "false_cutoffs_semantic_at_most_half_of_silence": sem <= sil / 2 if sil else None,
        "end_of_turn_p50_ms_max": 300.0,
        "end_of_turn_p50_ms": percentiles(latency["semantic"]).get("p50"),
    }
    return out


# -- the echo set ---------------------------------------------------------------------------------
@dataclass
class Reply:
    """One reply as the kiosk saw it."""

    prompt: str
    status: str | None = None
    speech_during: int = 0  # vad.speech_started while it ran
    pauses: int = 0  # response.paused (each resumed, unless the reply was cut)
    paused_ms: list[float] = field(default_factory=list)  # each resumed pause's length
    first_sample: int | None = None  # where its audio starts on the speaker
    last_sample: int | None = None  # and ends
    onset: int | None = None  # double talk: where the question starts on the mic
    question: str | None = None
    heard: list[str] = field(default_factory=list)  # the question's finals
    sounding: asyncio.Event = field(default_factory=asyncio.Event)  # its audio began (or done)


class Kiosk:
    """One session's speaker and microphone on one 16 kHz clock (``t0`` = sample 0). The
    speaker plays what arrives, in order; the microphone hears it ``delay`` later through a
    room response at ``level``, plus noise and, for double talk, the user's question."""

    def __init__(self, delay_s: float, level_db: float, noise_dbfs: float, seed: int) -> None:
        self.t0 = time.monotonic()
        self.speaker = np.zeros(round(MAX_SPEAKER_S * RATE), np.float32)
        self.play_end = 0
        self.delay = round(delay_s * RATE)
        self.gain = audio_sets.db_gain(level_db)
        self.noise = audio_sets.db_gain(noise_dbfs)
        self.h = audio_sets.room_response(seed)
        self.rng = np.random.default_rng(seed)
        self.user = np.zeros(0, np.float32)
        self.user_at = 0
        self.down = audio_sets.Downsample(48_000)
        self.reply: Reply | None = None
        self.synced = False  # WebRTC: t0 taken from the microphone track's clock
        self.rtp_base: tuple[int, int] | None = None  # (speaker sample, RTP timestamp)
        self.muted = False  # WebRTC: silenced at response.paused until resumed or done

    def now_sample(self) -> int:
        return round((time.monotonic() - self.t0) * RATE)

    def play_timed(self, pcm48: np.ndarray[Any, Any], rtp_ts: int) -> None:
        """WebRTC: a packet (48 kHz) played at its RTP time, ``PLAYOUT_BUFFER_S`` after the
        first packet's arrival (late ones when they arrive)."""
        if self.rtp_base is None:
            self.rtp_base = (self.now_sample() + round(PLAYOUT_BUFFER_S * RATE), rtp_ts)
        if self.muted:
            return
        at = self.rtp_base[0] + ((rtp_ts - self.rtp_base[1]) & 0xFFFFFFFF) // 3
        self.play(pcm48, max(at, self.now_sample()))

    def play(self, pcm48: np.ndarray[Any, Any], at: int | None = None) -> None:
        """Audio (48 kHz) that arrived now: played at ``at`` (a sample), else when the
        speaker is free."""
        x = self.down(pcm48)
        if at is None:
            at = max(self.play_end, self.now_sample())
        n = max(0, min(len(x), len(self.speaker) - at))
        self.speaker[at : at + n] = x[:n]
        self.play_end = max(self.play_end, at + n)
        r = self.reply
        if r is None or r.status is not None or not n:
            return
        if r.first_sample is None and float(np.sqrt(np.mean(x**2))) > LOUD:
            r.first_sample = at
            r.sounding.set()
        if r.first_sample is not None:
            r.last_sample = at + n

    def stop(self) -> None:
        """A WS-only client's answer to ``response.paused`` (and a WebRTC client's that gave
        its playout delay): the audio it holds and has not played yet is dropped (the server
        sends it again if the reply resumes)."""
        now = self.now_sample()
        if self.play_end > now:
            self.speaker[now : self.play_end] = 0.0
            self.play_end = now
        r = self.reply
        if r is not None and r.last_sample is not None:
            r.last_sample = min(r.last_sample, now)

    def say(self, speech: np.ndarray[Any, Any], at: int) -> None:
        self.user, self.user_at = speech, at

    def mic(self, start: int, n: int = CHUNK) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The microphone's samples ``[start, start + n)``."""
        k = len(self.h)
        first = start - self.delay - (k - 1)
        src = np.zeros(n + k - 1, np.float32)
        a, b = max(0, first), max(0, min(len(self.speaker), start - self.delay + n))
        if b > a:
            src[a - first : b - first] = self.speaker[a:b]
        x = np.convolve(src, self.h, mode="valid") * self.gain
        x += self.rng.standard_normal(n).astype(np.float32) * self.noise
        u0, u1 = max(start, self.user_at), min(start + n, self.user_at + len(self.user))
        if u1 > u0:
            x[u0 - start : u1 - start] += self.user[u0 - self.user_at : u1 - self.user_at]
        return np.clip(x, -1, 1).astype(np.float32)


@dataclass
class EchoSession:
    """What one kiosk session did."""

    echo: str
    replies: list[Reply] = field(default_factory=list)
    metrics: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def _kiosk_session(
    target: Target,
    transport: str,
    echo: str,
    kiosk: Kiosk,
    prompts: list[str],
    question: tuple[str, np.ndarray[Any, Any]] | None,
    args: argparse.Namespace,
) -> EchoSession:
    """Ask each prompt (``input.text``) and hear the reply out; with ``question``, one more
    reply over which the user asks it. The microphone streams all along."""
    log = EchoSession(echo)
    config = {"mode": "assistant", "audio": {"echo_cancellation": echo}}
    client = await _open(target, "bench-echo", config)
    done = asyncio.Event()
    cancelled: set[str] = set()
    paused: dict[str, float] = {}  # WS: a paused reply's frames from this ts on are dropped
    pc: RTCPeerConnection | None = None
    async with client, asyncio.TaskGroup() as tg:
        if transport == "rtc":
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

            def source(start: int) -> np.ndarray[Any, np.dtype[np.float32]]:
                if not kiosk.synced and track.t0 is not None:  # one clock: the track's
                    kiosk.t0, kiosk.synced = track.t0, True
                return kiosk.mic(start)

            track = LiveOpusTrack(source)
            pc.addTransceiver(track, direction="sendrecv")
            silence = args.rtc_pause == "silence"
            delay_ms = PLAYOUT_BUFFER_S * 1000 if silence else None
            await connect(client, pc, echo_cancellation=False, playout_delay_ms=delay_ms)
            tap = AudioTap(lambda pcm, arrival: None, lambda pcm, _, ts: kiosk.play_timed(pcm, ts))
            tap.install(pc)

        async def read() -> None:
            async for ev in client:
                r = kiosk.reply
                if isinstance(ev, ResponseResumed | ResponseDone):
                    kiosk.muted = False  # the reply plays on, or it ended
                if isinstance(ev, Error):
                    log.errors.append(f"{ev.code}: {ev.message}")
                elif isinstance(ev, Metrics):
                    log.metrics.append((time.monotonic(), ev.stats))
                elif isinstance(ev, ResponsePaused):
                    if r is not None and r.status is None:
                        r.pauses += 1
                    if transport == "ws":
                        paused[ev.response_id] = ev.played_ms  # as docs/protocol.md asks
                        kiosk.stop()
                    elif args.rtc_pause == "silence":  # as its rtc.offer said it would
                        kiosk.muted = True
                        kiosk.stop()
                elif isinstance(ev, ResponseResumed):
                    paused.pop(ev.response_id, None)
                    if r is not None and r.status is None:
                        r.paused_ms.append(ev.paused_ms)
                elif isinstance(ev, OutputAudio) and ev.response_id not in cancelled:
                    held = paused.get(ev.response_id or "")
                    if held is None or ev.ts is None or ev.ts < held:
                        kiosk.play(np.frombuffer(ev.pcm, "<i2"))
                elif r is None:
                    continue
                elif isinstance(ev, VadSpeechStarted) and r.status is None:
                    r.speech_during += 1
                elif isinstance(ev, AsrFinal) and ev.text and r.onset is not None:
                    r.heard.append(ev.text)
                elif isinstance(ev, ResponseCreated) and r.onset is not None and r.status:
                    cancelled.add(ev.response_id)  # the answer to the question: not needed
                    with contextlib.suppress(Exception):
                        await client.send(ResponseCancel(response_id=ev.response_id))
                elif isinstance(ev, ResponseDone) and r.status is None:
                    r.status = ev.status
                    r.sounding.set()
                    done.set()

        async def microphone() -> None:
            for n in itertools.count():
                due = kiosk.t0 + (n + 1) * CHUNK_S
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                pcm = (kiosk.mic(n * CHUNK) * 32767).astype("<i2").tobytes()
                msg = InputAudio(
                    pcm=pcm, format="s16le", sample_rate=RATE, channels=1, ts=n * CHUNK_S * 1000
                )
                await client.send(msg)

        reader = tg.create_task(read())
        mic: asyncio.Task[None] | None = None
        if transport == "ws":
            kiosk.t0 = time.monotonic()
            mic = tg.create_task(microphone())
        t_start = time.monotonic()
        asks: list[tuple[str, tuple[str, np.ndarray[Any, Any]] | None]] = [
            (p, None) for p in prompts
        ]
        if question is not None:
            asks.append((prompts[0], question))
        for prompt, q in asks:
            r = Reply(prompt)
            kiosk.reply = r
            log.replies.append(r)
            done.clear()
            await client.send(InputText(id=client.next_id(), text=prompt))
            if q is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(r.sounding.wait(), REPLY_WAIT_S)
                if r.first_sample is not None:
                    r.onset = r.first_sample + kiosk.delay + round(args.talk_after_s * RATE)
                    r.question = q[0]
                    kiosk.say(q[1], r.onset)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), REPLY_WAIT_S)
            if q is not None and r.onset is not None:  # the question's final(s)
                end = r.onset + len(q[1]) + 3 * RATE
                await asyncio.sleep(max(0.0, (end - kiosk.now_sample()) / RATE))
            await asyncio.sleep(GAP_S)
        await asyncio.sleep(0.8)  # one more metrics event (the started server sends 2/s)
        log.seconds = time.monotonic() - t_start
        with contextlib.suppress(Exception):
            await client.close_session()
        reader.cancel()
        if mic is not None:
            mic.cancel()
    if pc is not None:
        await pc.close()
    return log


def _case_figures(sessions: list[EchoSession], control: EchoSession | None) -> dict[str, Any]:
    replies = [r for s in sessions for r in s.replies if r.onset is None]
    talk = [r for s in sessions for r in s.replies if r.onset is not None]
    out: dict[str, Any] = {
        "replies": len(replies),
        "completed": sum(r.status == "completed" for r in replies),
        "false_barge_ins": sum(r.status == "cancelled" for r in replies),
        "unanswered": sum(r.status is None for r in replies),
        "echo_heard_as_speech": sum(r.speech_during > 0 for r in replies),
        # paused by a sound (its echo) and resumed: a hiccup, not a cut
        "paused_by_echo": sum(r.pauses > 0 for r in replies),
        "pauses": sum(r.pauses for r in replies),
        "pause_ms": distribution([ms for r in replies for ms in r.paused_ms]),
        "errors": [e for s in sessions for e in s.errors][:5],
    }
    # the canceller, from each session's last metrics before the user's question (echo alone)
    cpu = seconds = e_in = e_out = 0.0
    last: dict[str, Any] | None = None
    for s in sessions:
        onset = min((r.onset for r in s.replies if r.onset is not None), default=None)
        echo = None
        for _, m in s.metrics:
            e = _echo_stats(m)
            if e is not None and (onset is None or e["near_blocks"] * 160 <= onset):
                echo = e
        if echo is None:
            continue
        last = echo
        cpu += echo["cpu_s"]
        seconds += echo["near_blocks"] * 0.01
        e_in += echo["energy_in"]
        e_out += echo["energy_out"]
    if last is not None:
        out["echo_stats"] = last  # the last session's, before its question
    media = (
        next(
            (m["lanes"].get("media") for _, m in reversed(sessions[-1].metrics) if "lanes" in m),
            None,
        )
        if sessions and sessions[-1].metrics
        else None
    )
    if media:
        out["media_stats"] = media
    if seconds:
        out["aec_cpu_s_per_session_s"] = round(cpu / seconds, 5)
        out["echo_reduction_db"] = round(10 * math.log10(e_in / max(e_out, 1e-12)), 1)
    if talk:
        after = [  # reply audio on the speaker after the question's first sample
            (r.last_sample - r.onset) / RATE * 1000
            for r in talk
            if r.status == "cancelled" and r.last_sample is not None and r.onset is not None
        ]
        cuts = [ms for ms in after if ms >= 0]
        wers = [wer(r.question or "", " ".join(r.heard)) for r in talk if r.onset is not None]
        out["double_talk"] = {
            "questions": len(talk),
            "cut": len(cuts),
            "cut_before_question": len(after) - len(cuts),  # by its echo: a false barge-in
            "cut_latency_ms": distribution(cuts),
            "wer": distribution(wers),
            "heard": [[r.question, " ".join(r.heard)] for r in talk][:6],
        }
    if control is not None:
        out["control_off"] = {
            "replies": len(control.replies),
            "barge_ins": sum(r.speech_during > 0 for r in control.replies),
            "cut": sum(r.status == "cancelled" for r in control.replies),
        }
    return out


async def _echo_case(
    target: Target,
    transport: str,
    delay_s: float,
    level_db: float,
    args: argparse.Namespace,
    questions: list[tuple[str, np.ndarray[Any, Any]]],
) -> dict[str, Any]:
    seed = round(delay_s * 1000) + 7 * round(-level_db)
    control = None
    if not args.no_control:
        kiosk = Kiosk(delay_s, level_db, args.noise_dbfs, seed)
        control = await _kiosk_session(target, transport, "off", kiosk, [PROMPTS[0]], None, args)
    sessions: list[EchoSession] = []
    k = max(1, args.replies_per_session)
    left = args.replies
    for i in itertools.count():
        if left <= 0:
            break
        prompts = list(PROMPTS[: min(k, left)])
        left -= len(prompts)
        kiosk = Kiosk(delay_s, level_db, args.noise_dbfs, seed + i)
        q = None if args.no_double_talk else questions[i % len(questions)]
        sessions.append(await _kiosk_session(target, transport, "auto", kiosk, prompts, q, args))
    out = {"delay_ms": round(delay_s * 1000), "level_db": level_db}
    return out | _case_figures(sessions, control)


async def _warm(target: Target, args: argparse.Namespace) -> None:
    """Ask the prompts once, in the kiosks' order, so that the server's result caches hold
    the replies (greedy: the same history gives the same reply) before sessions run at once."""
    k = max(1, min(args.replies_per_session, args.replies))
    client = await _open(target, "bench-echo-warm", {"mode": "assistant"})
    async with client:
        for prompt in [*PROMPTS[:k], PROMPTS[0]]:
            await client.send(InputText(id=client.next_id(), text=prompt))
            await client.wait_for(ResponseDone, timeout_s=REPLY_WAIT_S * 3)
        with contextlib.suppress(Exception):
            await client.close_session()


async def run_echo(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if not transports or set(transports) - {"ws", "rtc"}:
        raise SystemExit(f"--transports: expected ws and/or rtc, got {args.transports!r}")
    questions = [(q, audio_sets.speech(q)) for q in QUESTIONS]
    if args.warm == "on":
        current().stage("turns echo: replies into the result caches")
        await _warm(target, args)
    cases = [(d / 1000, lvl) for d in _floats(args.delays_ms) for lvl in _floats(args.levels_db)]
    out: dict[str, Any] = {
        "noise_dbfs": args.noise_dbfs,
        "rtc_pause": args.rtc_pause,  # what the WebRTC kiosk does at response.paused
        "rtc_playout_buffer_ms": PLAYOUT_BUFFER_S * 1000,
        "transports": {},
    }
    gate = asyncio.Semaphore(max(1, args.concurrency))
    for transport in transports:

        async def one(delay_s: float, level_db: float, transport: str = transport) -> Any:
            async with gate:
                current().stage(f"turns echo {transport}: {delay_s * 1000:.0f} ms {level_db} dB")
                return await _echo_case(target, transport, delay_s, level_db, args, questions)

        results = await asyncio.gather(*(one(d, lvl) for d, lvl in cases))
        out["transports"][transport] = {"cases": list(results), **_echo_summary(list(results))}
    return out


def _echo_summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    cpu = [c["aec_cpu_s_per_session_s"] for c in cases if "aec_cpu_s_per_session_s" in c]
    red = [c["echo_reduction_db"] for c in cases if "echo_reduction_db" in c]
    cuts = [
        x
        for c in cases
        for x in c.get("double_talk", {}).get("cut_latency_ms", {}).get("samples", [])
    ]
    wers = [x for c in cases for x in c.get("double_talk", {}).get("wer", {}).get("samples", [])]
    return {
        "false_barge_ins": sum(c["false_barge_ins"] for c in cases),
        "min_replies_per_case": min((c["replies"] for c in cases), default=0),
        "control_barge_ins": sum(c.get("control_off", {}).get("barge_ins", 0) for c in cases),
        "paused_by_echo": sum(c["paused_by_echo"] for c in cases),
        "aec_cpu_s_per_session_s": percentiles(cpu),
        "echo_reduction_db_min": min(red) if red else None,
        "double_talk_cut_latency_ms": percentiles(cuts),
        "double_talk_wer_mean": float(np.mean(wers)) if wers else None,
    }


@scenario(
    "turns",
    "end of turn (semantic vs silence on paused sentences) and kiosk echo (false barge-ins,"
    " ERLE, AEC CPU) over WS and WebRTC",
    add_args=_args,
    server_env={
        "TIDEGATE_ENGINES": "vad,asr,llm,tts,turn",
        "TIDEGATE_RESULT_CACHES": "on",  # the same prompts again and again: replies cached
        "TIDEGATE_METRICS_INTERVAL_S": "0.5",
        **_default_data_dir(),
    },
)
async def run(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    missing = audio_sets.have_tools()
    if missing or shutil.which("espeak-ng") is None:
        raise SystemExit(f"bench turns needs {missing or 'espeak-ng'} (make setup installs it)")
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"paused", "echo"}:
        raise SystemExit(f"--parts: expected paused and/or echo, got {args.parts!r}")
    loopback_ice()
    results: dict[str, Any] = {}
    if "paused" in parts:
        results["paused"] = await run_paused(target, args)
    if "echo" in parts:
        results["echo"] = await run_echo(target, args)
        if args.erle == "on":
            command = [sys.executable, "-m", "tidegate.bench.micro.ears", "--json"]
            ears = await _child([*command, "--parts", "aec"], args.timeout_s)
            aec = ears["aec"]
            results["echo"]["erle"] = {
                "erle_db_min": aec["erle_db_min"],
                "erle_db_median": aec["erle_db_median"],
                "cases": aec["cases"],
                "cpu_s_per_session_s": aec["cpu_s_per_session_s"],
            }
    echo = results.get("echo", {})
    results["targets"] = {
        "false_barge_ins_max": 0,
        "false_barge_ins": {t: v["false_barge_ins"] for t, v in echo.get("transports", {}).items()},
        "erle_db_min": 20.0,
        "erle_db": echo.get("erle", {}).get("erle_db_min"),
        "aec_cpu_s_per_session_s_max": 0.02,
        "aec_cpu_s_per_session_s": {
            t: v["aec_cpu_s_per_session_s"].get("p50")
            for t, v in echo.get("transports", {}).items()
        },
    }
    return results
