"""Scenario ``asr``: streaming speech recognition over the public protocol (WS-only
``input.audio``, ``{"mode": "transcribe"}``) against a server running the ``vad`` and
``asr`` engines, with N concurrent streams (``--streams``, default 1, 4, 16).

Every stream sends, paced in real time in ``--chunk-ms`` chunks of 16 kHz s16le: the first
``--clip-s`` of a recorded clip (two_cities.wav), a second of silence, then espeak-ng
sentences built word by word (so that each word's end in the audio is known), and a second
of silence. Streams start staggered over one second. Measured, per stream count:

- ``eos_to_final_ms``: from the moment the client sent the audio at a segment's end of
  speech (the VAD's ``audio_end_ms``; it includes the VAD's silence wait) to the arrival of
  that segment's ``asr.final``; also for segments of at most 5 s (the target's case), and
  from ``vad.speech_stopped`` to ``asr.final`` (the recogniser's share);
- ``partial_latency_ms``: from the end of a word in the espeak part to the first
  ``asr.partial`` whose committed text contains it (words first seen in a final are counted
  in ``words_final_only``);
- ``cpu_s_per_audio_s``: the server process's CPU (``/proc``) over the streaming window,
  per second of audio per stream; ``wer`` of the joined finals on the recorded clip;
- at one stream, ``rtf``: the clip uploaded as fast as credit allows, wall time from the
  first chunk to its last final over the audio's duration.

bench/ imports only the protocol: audio is read with ``wave`` and numpy, speech synthesised
by the ``espeak-ng`` program.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tidegate.protocol.client import Client
from tidegate.protocol.messages import (
    AsrFinal,
    AsrPartial,
    Error,
    FlowLag,
    InputAudio,
    VadSpeechStopped,
)

from ..harness import scenario
from ..load import LoadMeter, real_time_lost_at, session_counts
from ..progress import current
from ..report import distribution, percentiles
from ..target import Target, process_cpu_s
from ..wer import wer, words

RATE_HZ = 16_000
SHORT_UTTERANCE_MS = 5_000.0
# The first 20 s of two_cities.wav (Dickens, A Tale of Two Cities), to a word boundary.
TWO_CITIES_20S = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it "
    "was the season of Light, it was the season of Darkness, it was the spring of hope, it "
    "was the winter of"
)
ESPEAK_SENTENCES = (
    "the weather today is sunny and warm with a light breeze from the west",
    "please open the window in the kitchen before you start cooking dinner",
)
WORD_GAP_S = 0.05  # between espeak words: shorter than the VAD's silence, one segment
TAIL_SILENCE_S = 1.0
FINAL_WAIT_S = 15.0


def _default_data_dir() -> dict[str, str]:
    """Use the prepared models of this checkout (or TIDEGATE_DATA_DIR) if there are any."""
    env = os.environ.get("TIDEGATE_DATA_DIR")
    if env:
        return {"TIDEGATE_DATA_DIR": env}
    here = Path(".cache/data")
    return {"TIDEGATE_DATA_DIR": str(here.resolve())} if here.is_dir() else {}


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip", default=".cache/assets/two_cities.wav", help="recorded speech (wav)")
    p.add_argument("--clip-s", type=float, default=20.0, help="seconds of the clip to stream")
    p.add_argument("--streams", default="1,4,16", help="concurrent stream counts")
    p.add_argument("--ramp", action="store_true", help="1, 2, 4, ... until real time is lost")
    p.add_argument("--ramp-max", type=int, default=64, help="the ramp's last level")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="input.audio chunk length")
    p.add_argument("--sentences", type=int, default=2, help="espeak sentences (0: none)")
    p.add_argument("--no-rtf", action="store_true", help="skip the as-fast-as-credit run")
    p.add_argument(
        "--language",
        default="",
        help="per language instead (de,es,fr,en): WER, detection and CPU per stream for each "
        "model size, in-process on espeak-ng speech (the 'languages' scenario; no server)",
    )
    p.add_argument("--clips", type=int, default=3, help="with --language: sentences per language")
    p.add_argument(
        "--turns",
        action="store_true",
        help="with --language: whole turns cut at their pauses, how often their language is right",
    )
    p.add_argument(
        "--asr-languages", default="", help="with --language: restrict detection (asr_languages)"
    )


# -- audio ------------------------------------------------------------------------------------
def read_wav(path: Path, seconds: float | None = None) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Mono float32 at 16 kHz (a windowed-sinc low-pass before decimating)."""
    with wave.open(str(path)) as w:
        rate, channels, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise SystemExit(f"{path}: 16-bit PCM expected")
    x = np.frombuffer(raw, "<i2").astype(np.float32).reshape(-1, channels).mean(axis=1) / 32768
    if rate != RATE_HZ:
        if rate > RATE_HZ:
            taps = np.arange(-48, 49)
            cut = 0.45 * RATE_HZ / rate
            h = 2 * cut * np.sinc(2 * cut * taps) * np.hamming(len(taps))
            x = np.convolve(x, h / h.sum(), mode="same")
        t = np.arange(round(len(x) * RATE_HZ / rate)) * rate / RATE_HZ
        x = np.interp(t, np.arange(len(x)), x)
    out = np.asarray(x, dtype=np.float32)
    return out if seconds is None else out[: int(seconds * RATE_HZ)]


def espeak_words(
    sentences: tuple[str, ...], tmp: Path
) -> tuple[np.ndarray[Any, np.dtype[np.float32]], list[tuple[str, float]]]:
    """The sentences spoken word by word (silence trimmed, short gaps, a pause between
    sentences) and each word's end in the audio (ms)."""
    parts: list[np.ndarray[Any, np.dtype[np.float32]]] = []
    ends: list[tuple[str, float]] = []
    samples = 0
    gap = np.zeros(int(WORD_GAP_S * RATE_HZ), dtype=np.float32)
    pause = np.zeros(int(TAIL_SILENCE_S * RATE_HZ), dtype=np.float32)
    for sentence in sentences:
        for word in sentence.split():
            out = tmp / "word.wav"
            subprocess.run(
                ["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(out), word], check=True
            )
            x = read_wav(out)
            loud = np.flatnonzero(np.abs(x) > 0.01)
            x = x[loud[0] : loud[-1] + 1] if len(loud) else x
            parts += [x, gap]
            samples += len(x)
            ends.append((word, samples * 1000 / RATE_HZ))
            samples += len(gap)
        parts.append(pause)
        samples += len(pause)
    return np.concatenate(parts), ends


# -- one stream -------------------------------------------------------------------------------
@dataclass
class StreamLog:
    """What one stream sent (audio end ms -> client time) and received (client times)."""

    sent: list[tuple[float, float]] = field(default_factory=list)
    finals: list[tuple[AsrFinal, float]] = field(default_factory=list)
    partials: list[tuple[AsrPartial, float]] = field(default_factory=list)
    stopped: list[tuple[VadSpeechStopped, float]] = field(default_factory=list)
    lag_events: int = 0
    errors: list[str] = field(default_factory=list)
    first_sent: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # a final or an end arrived

    def sent_at(self, audio_ms: float) -> float | None:
        """Client time the audio up to ``audio_ms`` had been sent."""
        for end, t in self.sent:
            if end >= audio_ms - 1e-6:
                return t
        return None


def _pcm(x: np.ndarray[Any, np.dtype[np.float32]]) -> bytes:
    pcm: bytes = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    return pcm


async def _reader(client: Client, log: StreamLog) -> None:
    async for ev in client:
        t = time.monotonic()
        if isinstance(ev, AsrFinal):
            log.finals.append((ev, t))
            log.changed.set()
        elif isinstance(ev, AsrPartial):
            log.partials.append((ev, t))
        elif isinstance(ev, VadSpeechStopped):
            log.stopped.append((ev, t))
            log.changed.set()
        elif isinstance(ev, FlowLag):
            log.lag_events += 1
        elif isinstance(ev, Error):
            log.errors.append(f"{ev.code}: {ev.message}")


async def run_stream(
    target: Target,
    audio: np.ndarray[Any, np.dtype[np.float32]],
    *,
    chunk_ms: float,
    delay_s: float,
    real_time: bool,
) -> StreamLog:
    """Stream ``audio`` over one session; wait for the last segment's final."""
    log = StreamLog()
    step = int(chunk_ms * RATE_HZ / 1000)
    # One subject per stream: new sessions are rate-limited per subject.
    token = target.mint(subject=f"bench-asr-{secrets.token_hex(4)}")
    async with await Client.connect(target.control_url, token) as client:
        await client.create_session({"mode": "transcribe"})
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(_reader(client, log))
            await asyncio.sleep(delay_s)
            t0 = log.first_sent = time.monotonic()
            for i in range(0, len(audio), step):
                chunk = audio[i : i + step]
                if real_time:
                    wait = t0 + i / RATE_HZ - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                await client.send(
                    InputAudio(pcm=_pcm(chunk), format="s16le", sample_rate=RATE_HZ, channels=1)
                )
                log.sent.append(((i + len(chunk)) * 1000 / RATE_HZ, time.monotonic()))
            # The tail is silence: wait until every end of speech has its final (or has had
            # none for a while: silence and noise give no text).
            deadline = time.monotonic() + FINAL_WAIT_S
            while not _all_final(log) and (left := deadline - time.monotonic()) > 0:
                log.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(log.changed.wait(), min(left, 1.0))
            await client.close_session()
            reader.cancel()
    return log


def _all_final(log: StreamLog, grace_s: float = 5.0) -> bool:
    now = time.monotonic()
    done = {round(f.audio_end_ms) for f, _ in log.finals}
    return bool(log.stopped) and all(
        round(s.audio_ms) in done or now - t > grace_s for s, t in log.stopped
    )


# -- measures ---------------------------------------------------------------------------------
def _latencies(log: StreamLog) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"eos": [], "eos_short": [], "stopped": []}
    stopped = {round(s.audio_ms): t for s, t in log.stopped}
    for f, t in log.finals:
        sent = log.sent_at(f.audio_end_ms)
        if sent is not None:
            ms = (t - sent) * 1000
            out["eos"].append(ms)
            if f.audio_end_ms - f.audio_start_ms <= SHORT_UTTERANCE_MS:
                out["eos_short"].append(ms)
        t_stop = stopped.get(round(f.audio_end_ms))
        if t_stop is not None:
            out["stopped"].append((t - t_stop) * 1000)
    return out


def _partial_latency(
    log: StreamLog, word_ends: list[tuple[str, float]], offset_ms: float
) -> tuple[list[float], int]:
    """Per espeak word (ends relative to ``offset_ms``): the first partial that contains it;
    returns the latencies and how many words were first seen in a final (or never)."""
    after = offset_ms - 500  # segments of the espeak part (the VAD's pre-roll may precede it)
    events = [(t, e.text, False) for e, t in log.partials if e.audio_start_ms >= after]
    events += [(t, e.text, True) for e, t in log.finals if e.audio_start_ms >= after]
    events.sort(key=lambda e: e[0])
    first_seen: list[tuple[float, bool]] = []  # per word: (client time, seen in a final)
    done = 0  # words of the finals received so far
    for t, text, final in events:
        n = len(words(text))
        total = done + n
        if final:
            done = total
        while len(first_seen) < min(total, len(word_ends)):
            first_seen.append((t, final))
    latencies: list[float] = []
    final_only = len(word_ends) - len(first_seen)
    for (_, end_ms), (t, final) in zip(word_ends, first_seen, strict=False):
        sent = log.sent_at(offset_ms + end_ms)
        if final or sent is None:
            final_only += 1
        else:
            latencies.append((t - sent) * 1000)
    return latencies, final_only


async def _level(
    target: Target,
    n: int,
    audio: np.ndarray[Any, np.dtype[np.float32]],
    args: argparse.Namespace,
    word_ends: list[tuple[str, float]],
    offset_ms: float,
    reference: str | None,
    meter: LoadMeter | None = None,
) -> dict[str, Any]:
    current().stage(f"asr: {n} stream(s)")
    cpu0 = process_cpu_s(target.pid) if target.pid else None
    if meter is not None:
        await meter.start()
    t0 = time.monotonic()
    logs = await asyncio.gather(
        *(
            run_stream(target, audio, chunk_ms=args.chunk_ms, delay_s=i / n, real_time=True)
            for i in range(n)
        )
    )
    wall = time.monotonic() - t0
    cpu1 = process_cpu_s(target.pid) if target.pid else None
    load = await meter.stop(n) if meter is not None else None
    audio_s = len(audio) / RATE_HZ
    lat: dict[str, list[float]] = {"eos": [], "eos_short": [], "stopped": []}
    partial: list[float] = []
    final_only = 0
    wers: list[float] = []
    for log in logs:
        for k, v in _latencies(log).items():
            lat[k] += v
        if word_ends:
            p, f = _partial_latency(log, word_ends, offset_ms)
            partial += p
            final_only += f
        if reference is not None:
            clip_text = " ".join(
                f.text for f, _ in log.finals if f.audio_start_ms < offset_ms - 500
            )
            wers.append(wer(reference, clip_text))
    out: dict[str, Any] = {
        "streams": n,
        "audio_s_per_stream": audio_s,
        "wall_s": wall,
        "eos_to_final_ms": distribution(lat["eos"]),
        "eos_to_final_ms_utterances_le_5s": percentiles(lat["eos_short"]),
        "speech_stopped_to_final_ms": percentiles(lat["stopped"]),
        "partial_latency_ms": distribution(partial),
        "words_final_only": final_only,
        "words_timed": len(word_ends) * n,
        "finals": sum(len(log.finals) for log in logs),
        "partials": sum(len(log.partials) for log in logs),
        "lag_events": sum(log.lag_events for log in logs),
        "errors": [e for log in logs for e in log.errors][:10],
        # real time: the server never reported falling behind (flow.lag) and refused nothing
        "real_time_held": not any(log.lag_events or log.errors for log in logs),
    }
    if load is not None:
        out["load"] = load
    if wers:
        out["wer"] = {"mean": sum(wers) / len(wers), "max": max(wers)}
    if cpu0 is not None and cpu1 is not None:
        out["server_cpu_s"] = cpu1 - cpu0
        out["cpu_s_per_audio_s"] = (cpu1 - cpu0) / (audio_s * n)
    return out


async def _rtf(
    target: Target, clip: np.ndarray[Any, np.dtype[np.float32]], chunk_ms: float
) -> dict[str, Any]:
    audio = np.concatenate([clip, np.zeros(int(TAIL_SILENCE_S * RATE_HZ), np.float32)])
    log = await run_stream(target, audio, chunk_ms=chunk_ms, delay_s=0.0, real_time=False)
    if not log.finals:
        return {"rtf": None}
    wall = log.finals[-1][1] - log.first_sent
    return {"rtf": wall / (len(clip) / RATE_HZ), "wall_s": wall, "audio_s": len(clip) / RATE_HZ}


@scenario(
    "asr",
    "streaming ASR: end of speech to final, partial latency, CPU per stream, N streams",
    add_args=_args,
    # No real-time pacing on the server it starts: the fast_upload run measures the engines.
    server_env={
        "TIDEGATE_ENGINES": "vad,asr",
        "TIDEGATE_AUDIO_MAX_AHEAD_S": "0",
        **_default_data_dir(),
    },
    local_when=lambda args: bool(args.language),
)
async def run(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    if args.language:  # per language and model size: the languages microbenchmark
        from .engines import _child

        command = [sys.executable, "-m", "tidegate.bench.micro.languages", "--json"]
        command += ["--language", args.language, "--clips", str(args.clips)]
        if args.asr_languages:
            command += ["--asr-languages", args.asr_languages]
        if args.turns:
            command.append("--turns")
        return await _child(command, 1800.0)
    clip = read_wav(Path(args.clip), args.clip_s)
    silence = np.zeros(int(TAIL_SILENCE_S * RATE_HZ), dtype=np.float32)
    parts = [clip, silence]
    word_ends: list[tuple[str, float]] = []
    offset_ms = len(clip) * 1000 / RATE_HZ + TAIL_SILENCE_S * 1000
    if args.sentences > 0:
        if shutil.which("espeak-ng") is None:
            raise SystemExit("espeak-ng is not installed (make setup does); or --sentences 0")
        with tempfile.TemporaryDirectory(prefix="tidegate-bench-asr-") as tmp:
            sentences = (ESPEAK_SENTENCES * args.sentences)[: args.sentences]
            speech, word_ends = espeak_words(sentences, Path(tmp))
        parts.append(speech)
    audio = np.concatenate(parts)
    reference = (
        TWO_CITIES_20S if Path(args.clip).name == "two_cities.wav" and args.clip_s == 20.0 else None
    )
    results: dict[str, Any] = {
        "clip": str(args.clip),
        "clip_s": len(clip) / RATE_HZ,
        "chunk_ms": args.chunk_ms,
        "levels": [],
    }
    meter = LoadMeter(target)
    results["idle"] = await meter.baseline()
    if not args.no_rtf:
        current().stage("asr: the clip as fast as credit allows")
        results["fast_upload"] = await _rtf(target, clip, args.chunk_ms)
    for n in session_counts(
        args.streams, ramp=args.ramp, ramp_max=args.ramp_max, option="--streams"
    ):
        level = await _level(target, n, audio, args, word_ends, offset_ms, reference, meter)
        results["levels"].append(level)
        print(_summary(level), file=sys.stderr)
        if args.ramp and not level["real_time_held"]:
            break
    results["real_time_lost_at"] = real_time_lost_at(results["levels"], "streams")
    results["target"] = {
        "eos_to_final_p50_ms_max": 500.0,
        "wer_max": 0.10,
        "cpu_s_per_audio_s_max": 0.5,
    }
    return results


def _summary(r: dict[str, Any]) -> str:
    def p(d: dict[str, float]) -> str:
        return f"{d['p50']:.0f}/{d['p90']:.0f}" if d.get("n") else "-"

    return (
        f"streams {r['streams']}: eos->final p50/p90 {p(r['eos_to_final_ms'])} ms "
        f"(<=5 s: {p(r['eos_to_final_ms_utterances_le_5s'])}), stopped->final "
        f"{p(r['speech_stopped_to_final_ms'])} ms, partial {p(r['partial_latency_ms'])} ms, "
        f"cpu/audio {r.get('cpu_s_per_audio_s', float('nan')):.3f}, "
        f"wer {r.get('wer', {}).get('mean', float('nan')):.3f}, lag events {r['lag_events']}"
    )
