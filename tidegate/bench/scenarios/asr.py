"""Scenario ``asr``: streaming speech recognition over the public protocol (WS-only
``input.audio``, ``{"mode": "transcribe"}``) against a server running the ``vad`` and
``asr`` engines, with N concurrent streams (``--streams``, default 1, 4, 16).

Every stream sends, paced in real time in ``--chunk-ms`` (100 ms) chunks of 16 kHz s16le,
eight utterances, each followed by ``--gap-s`` (1.5 s) of silence: the two recorded clips
(beckett.wav, 10 s, and the first 20 s of two_cities.wav: ``--clips``, at most ``--clip-s``
of each), then ``--sentences`` (6) espeak-ng sentences built word by word (so that each
word's end in the audio is known). Streams start staggered over one second. Measured, per
stream count:

- ``eos_to_final_ms``: from the moment the client sent the audio at a segment's end of
  speech (the VAD's ``audio_end_ms``; it includes the VAD's silence wait) to the arrival of
  that segment's ``asr.final``; also for segments of at most 5 s (the target's case), and
  from ``vad.speech_stopped`` to ``asr.final`` (the recogniser's share);
- ``partial_latency_ms``: from the end of a word in the espeak part to the first
  ``asr.partial`` whose committed text contains it (words first seen in a final are counted
  in ``words_final_only``); ``caption_latency_ms``: the same for its committed text and
  tentative words together, what a live caption shows (``caption_words_final_only``);
- ``utterance_end_to_final_ms``: per utterance, from the moment the client sent its last
  speech to the first final that reaches its end (within 0.5 s): the measure the peer is
  compared on;
- ``cpu_s_per_audio_s``: the server process's CPU (``/proc``) over the streaming window,
  per second of audio per stream; ``wer``: of each utterance's finals (the finals that begin
  within its span) against its text, joined over the utterances with a known text (both
  clips at their default lengths and every sentence), also ``wer_clips`` and
  ``wer_sentences``;
- at one stream, ``rtf``: the clip uploaded as fast as credit allows, wall time from the
  first chunk to its last final over the audio's duration.

``--peer whisperlive`` runs WhisperLive (faster-whisper backend, the same tiny.en weights;
:mod:`tidegate.bench.whisperlive`) on the same audio, streams and chunks, alternating with
tidegate at every stream count (``--rounds`` pairs, the first of each pair alternating); its
final is the first ``completed`` segment that reaches the utterance's end. Its figures are
under ``levels[i].peer``.

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
from collections.abc import Callable
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
from ..whisperlive import PeerServer, model_path, run_peer_stream

RATE_HZ = 16_000
SHORT_UTTERANCE_MS = 5_000.0
BECKETT = "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."
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
    "turn left at the next corner and park near the blue door",
    "my sister lives in a small house by the river",
    "can you tell me what time the train leaves tomorrow morning",
    "fail again and then try once more with a little more care",
)
DEFAULT_CLIPS = ".cache/assets/beckett.wav,.cache/assets/two_cities.wav"
WORD_GAP_S = 0.05  # between espeak words: shorter than the VAD's silence, one segment
TAIL_SILENCE_S = 1.0
FINAL_WAIT_S = 15.0
PEER_FINAL_WAIT_S = 30.0
#: a final that begins this much before an utterance (the VAD's pre-roll) is still its own;
#: one that reaches within this of its end finalises it
SPAN_SLACK_MS = 500.0


def _default_data_dir() -> dict[str, str]:
    """Use the prepared models of this checkout (or TIDEGATE_DATA_DIR) if there are any."""
    env = os.environ.get("TIDEGATE_DATA_DIR")
    if env:
        return {"TIDEGATE_DATA_DIR": env}
    here = Path(".cache/data")
    return {"TIDEGATE_DATA_DIR": str(here.resolve())} if here.is_dir() else {}


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clips", default=DEFAULT_CLIPS, help="recorded speech (wav), comma-separated")
    p.add_argument("--clip-s", type=float, default=20.0, help="seconds of each clip, at most")
    p.add_argument("--streams", default="1,4,16", help="concurrent stream counts")
    p.add_argument("--ramp", action="store_true", help="1, 2, 4, ... until real time is lost")
    p.add_argument("--ramp-max", type=int, default=64, help="the ramp's last level")
    p.add_argument("--chunk-ms", type=float, default=100.0, help="input.audio chunk length")
    p.add_argument(
        "--sentences",
        type=int,
        default=6,
        help="espeak sentences (0: none; with --language: per language)",
    )
    p.add_argument("--gap-s", type=float, default=1.5, help="silence after each utterance")
    p.add_argument("--no-rtf", action="store_true", help="skip the as-fast-as-credit run")
    p.add_argument(
        "--peer", choices=("none", "whisperlive"), default="none", help="run a peer alongside"
    )
    p.add_argument("--rounds", type=int, default=1, help="tidegate/peer pairs per stream count")
    p.add_argument(
        "--language",
        default="",
        help="per language instead (de,es,fr,en): WER, detection and CPU per stream for each "
        "model size, in-process on synthetic speech (the 'languages' scenario; no server)",
    )
    p.add_argument(
        "--turns",
        action="store_true",
        help="with --language: whole turns cut at their pauses, how often their language is right",
    )
    p.add_argument(
        "--asr-languages", default="", help="with --language: restrict detection (asr_languages)"
    )
    p.add_argument(
        "--voices",
        default="",
        help="with --language: another voice per language, e.g. de=mb-de2,es=mb-es2",
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


def espeak_sentence(
    sentence: str, tmp: Path
) -> tuple[np.ndarray[Any, np.dtype[np.float32]], list[tuple[str, float]]]:
    """The sentence spoken word by word (silence trimmed, short gaps) and each word's end
    in the audio (ms)."""
    parts: list[np.ndarray[Any, np.dtype[np.float32]]] = []
    ends: list[tuple[str, float]] = []
    samples = 0
    gap = np.zeros(int(WORD_GAP_S * RATE_HZ), dtype=np.float32)
    for k, word in enumerate(sentence.split()):
        out = tmp / "word.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(out), word], check=True)
        x = read_wav(out)
        loud = np.flatnonzero(np.abs(x) > 0.01)
        x = x[loud[0] : loud[-1] + 1] if len(loud) else x
        if k:
            parts.append(gap)
            samples += len(gap)
        parts.append(x)
        samples += len(x)
        ends.append((word, samples * 1000 / RATE_HZ))
    return np.concatenate(parts), ends


def clip_reference(path: Path, seconds: float) -> str | None:
    """The text of a known clip streamed for ``seconds``, if known."""
    if path.name == "beckett.wav" and seconds >= 9.9:  # the whole clip (10.0 s)
        return BECKETT
    if path.name == "two_cities.wav" and abs(seconds - 20.0) < 1e-6:
        return TWO_CITIES_20S
    return None


@dataclass(frozen=True)
class Utterance:
    """One utterance of the stream: its span (ms of stream audio; ``end_ms`` is the end of
    its speech), its text if known, and its kind (``clip`` or ``sentence``)."""

    start_ms: float
    end_ms: float
    text: str | None
    kind: str


@dataclass
class Plan:
    """What every stream sends: the audio, its utterances and the espeak words' ends (ms)."""

    audio: np.ndarray[Any, np.dtype[np.float32]]
    utterances: list[Utterance]
    word_ends: list[tuple[str, float]]
    sentences_start_ms: float

    @property
    def reference(self) -> str:
        return " ".join(u.text for u in self.utterances if u.text)


def build_plan(args: argparse.Namespace) -> Plan:
    parts: list[np.ndarray[Any, np.dtype[np.float32]]] = []
    utterances: list[Utterance] = []
    word_ends: list[tuple[str, float]] = []
    gap = np.zeros(int(args.gap_s * RATE_HZ), dtype=np.float32)
    samples = 0

    def add(x: np.ndarray[Any, np.dtype[np.float32]], text: str | None, kind: str) -> float:
        nonlocal samples
        loud = np.flatnonzero(np.abs(x) > 0.02)
        speech_end = (loud[-1] + 1) if len(loud) else len(x)
        start = samples * 1000 / RATE_HZ
        utterances.append(Utterance(start, (samples + speech_end) * 1000 / RATE_HZ, text, kind))
        parts.extend([x, gap])
        samples += len(x) + len(gap)
        return start

    for name in [c for c in args.clips.split(",") if c.strip()]:
        path = Path(name.strip())
        clip = read_wav(path, args.clip_s)
        add(clip, clip_reference(path, len(clip) / RATE_HZ), "clip")
    sentences_start_ms = samples * 1000 / RATE_HZ
    if args.sentences > 0:
        if shutil.which("espeak-ng") is None:
            raise SystemExit("espeak-ng is not installed (make setup does); or --sentences 0")
        n = args.sentences
        sentences = (ESPEAK_SENTENCES * (n // len(ESPEAK_SENTENCES) + 1))[:n]
        with tempfile.TemporaryDirectory(prefix="tidegate-bench-asr-") as tmp:
            for sentence in sentences:
                speech, ends = espeak_sentence(sentence, Path(tmp))
                start = add(speech, sentence, "sentence")
                word_ends += [(w, start + ms) for w, ms in ends]
    return Plan(np.concatenate(parts), utterances, word_ends, sentences_start_ms)


def attribute(hyps: list[tuple[float, str]], utterances: list[Utterance]) -> list[str]:
    """Each utterance's text: the hypotheses (start ms, text) that begin within its span
    (from ``SPAN_SLACK_MS`` before it to that much before the next one), in order."""
    out: list[list[str]] = [[] for _ in utterances]
    for start, text in sorted(hyps):
        for k, u in enumerate(utterances):
            nxt = utterances[k + 1].start_ms if k + 1 < len(utterances) else float("inf")
            if u.start_ms - SPAN_SLACK_MS <= start < nxt - SPAN_SLACK_MS:
                out[k].append(text.strip())
                break
    return [" ".join(t) for t in out]


def wer_figures(hyps: list[tuple[float, str]], utterances: list[Utterance]) -> dict[str, float]:
    """WER over the utterances with a known text: all of them, the clips, the sentences."""
    known = [(u, t) for u, t in zip(utterances, attribute(hyps, utterances), strict=True) if u.text]
    out: dict[str, float] = {}
    for key, kinds in (
        ("wer", ("clip", "sentence")),
        ("wer_clips", ("clip",)),
        ("wer_sentences", ("sentence",)),
    ):
        pairs = [(u.text or "", t) for u, t in known if u.kind in kinds]
        if pairs:
            out[key] = wer(" ".join(r for r, _ in pairs), " ".join(t for _, t in pairs))
    return out


def utterance_latencies(
    arrivals: list[tuple[float, float]],
    sent_at: Callable[[float], float | None],
    utterances: list[Utterance],
) -> tuple[list[float], int]:
    """Per utterance, from the client's sending its end of speech to the first final
    (``arrivals``: the final's end in ms of audio, client time) that reaches it (within
    ``SPAN_SLACK_MS``); and how many utterances got none."""
    out: list[float] = []
    missing = 0
    for u in utterances:
        times = [t for end, t in arrivals if end >= u.end_ms - SPAN_SLACK_MS]
        sent = sent_at(u.end_ms)
        if not times or sent is None:
            missing += 1
        else:
            out.append((min(times) - sent) * 1000)
    return out, missing


# -- one stream -------------------------------------------------------------------------------
@dataclass
class StreamLog:
    """What one stream sent (audio end ms -> client time) and received (client times)."""

    sent: list[tuple[float, float]] = field(default_factory=list)
    finals: list[tuple[AsrFinal, float]] = field(default_factory=list)  # those with words
    ended: set[int] = field(default_factory=set)  # every final's audio end (ms, rounded)
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
            if ev.text:  # one without words only closes its segment (a cough, a scrap)
                log.finals.append((ev, t))
            log.ended.add(round(ev.audio_end_ms))
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
    return bool(log.stopped) and all(
        round(s.audio_ms) in log.ended or now - t > grace_s for s, t in log.stopped
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


def _shown(partial: AsrPartial, caption: bool) -> str:
    """A partial's committed text, and with ``caption`` its tentative words after it."""
    return " ".join(x for x in (partial.text, partial.tentative if caption else "") if x)


def _partial_latency(
    log: StreamLog,
    word_ends: list[tuple[str, float]],
    sentences_start_ms: float,
    *,
    caption: bool = False,
) -> tuple[list[float], int]:
    """Per espeak word (its end, ms of stream audio): the first partial that contains it
    (its committed text; with ``caption`` its tentative words too, as a caption shows them);
    returns the latencies and how many words were first seen in a final (or never). Words
    are matched by count (the n-th word of the sentences is shown once n words are)."""
    after = sentences_start_ms - SPAN_SLACK_MS  # the VAD's pre-roll may precede it
    events = [(t, _shown(e, caption), False) for e, t in log.partials if e.audio_start_ms >= after]
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
        sent = log.sent_at(end_ms)
        if final or sent is None:
            final_only += 1
        else:
            latencies.append((t - sent) * 1000)
    return latencies, final_only


async def _level(
    target: Target,
    n: int,
    plan: Plan,
    args: argparse.Namespace,
    meter: LoadMeter | None = None,
) -> dict[str, Any]:
    current().stage(f"asr: {n} stream(s)")
    cpu0 = process_cpu_s(target.pid) if target.pid else None
    if meter is not None:
        await meter.start()
    t0 = time.monotonic()
    logs = await asyncio.gather(
        *(
            run_stream(target, plan.audio, chunk_ms=args.chunk_ms, delay_s=i / n, real_time=True)
            for i in range(n)
        )
    )
    wall = time.monotonic() - t0
    cpu1 = process_cpu_s(target.pid) if target.pid else None
    load = await meter.stop(n) if meter is not None else None
    audio_s = len(plan.audio) / RATE_HZ
    lat: dict[str, list[float]] = {"eos": [], "eos_short": [], "stopped": []}
    partial: list[float] = []
    caption: list[float] = []
    utterance: list[float] = []
    missing = 0
    final_only = caption_final_only = 0
    figures: list[dict[str, float]] = []
    for log in logs:
        for k, v in _latencies(log).items():
            lat[k] += v
        if plan.word_ends:
            p, f = _partial_latency(log, plan.word_ends, plan.sentences_start_ms)
            partial += p
            final_only += f
            p, f = _partial_latency(log, plan.word_ends, plan.sentences_start_ms, caption=True)
            caption += p
            caption_final_only += f
        u, m = utterance_latencies(
            [(f.audio_end_ms, t) for f, t in log.finals], log.sent_at, plan.utterances
        )
        utterance += u
        missing += m
        figures.append(
            wer_figures([(f.audio_start_ms, f.text) for f, _ in log.finals], plan.utterances)
        )
    out: dict[str, Any] = {
        "streams": n,
        "audio_s_per_stream": audio_s,
        "wall_s": wall,
        "eos_to_final_ms": distribution(lat["eos"]),
        "eos_to_final_ms_utterances_le_5s": percentiles(lat["eos_short"]),
        "speech_stopped_to_final_ms": percentiles(lat["stopped"]),
        "utterance_end_to_final_ms": distribution(utterance),
        "utterances_without_final": missing,
        "partial_latency_ms": distribution(partial),
        "words_final_only": final_only,
        "caption_latency_ms": distribution(caption),
        "caption_words_final_only": caption_final_only,
        "words_timed": len(plan.word_ends) * n,
        "finals": sum(len(log.finals) for log in logs),
        "partials": sum(len(log.partials) for log in logs),
        "lag_events": sum(log.lag_events for log in logs),
        "errors": [e for log in logs for e in log.errors][:10],
        # real time: the server never reported falling behind (flow.lag) and refused nothing
        "real_time_held": not any(log.lag_events or log.errors for log in logs),
    }
    if load is not None:
        out["load"] = load
    out.update(_mean_wer(figures))
    if logs:  # what the first stream heard, per utterance (to read the errors)
        first = [(f.audio_start_ms, f.text) for f, _ in logs[0].finals]
        out["heard"] = attribute(first, plan.utterances)
    if cpu0 is not None and cpu1 is not None:
        out["server_cpu_s"] = cpu1 - cpu0
        out["cpu_s_per_audio_s"] = (cpu1 - cpu0) / (audio_s * n)
    return out


def _mean_wer(figures: list[dict[str, float]]) -> dict[str, Any]:
    """Per WER figure, the mean and max over the streams."""
    out: dict[str, Any] = {}
    for key in ("wer", "wer_clips", "wer_sentences"):
        values = [f[key] for f in figures if key in f]
        if values:
            out[key] = {"mean": sum(values) / len(values), "max": max(values)}
    return out


async def _peer_level(
    peer: PeerServer, n: int, plan: Plan, args: argparse.Namespace
) -> dict[str, Any]:
    """The same streams against WhisperLive."""
    current().stage(f"asr: {n} stream(s), whisperlive")
    cpu0 = process_cpu_s(peer.process.pid)
    t0 = time.monotonic()
    model = model_path()
    last_end_s = plan.utterances[-1].end_ms / 1000 if plan.utterances else 0.0
    logs = await asyncio.gather(
        *(
            run_peer_stream(
                peer.url,
                plan.audio,
                model,
                chunk_ms=args.chunk_ms,
                delay_s=i / n,
                last_end_s=last_end_s,
                final_wait_s=PEER_FINAL_WAIT_S,
            )
            for i in range(n)
        )
    )
    wall = time.monotonic() - t0
    cpu1 = process_cpu_s(peer.process.pid)
    audio_s = len(plan.audio) / RATE_HZ
    utterance: list[float] = []
    missing = 0
    figures: list[dict[str, float]] = []
    for log in logs:
        done = log.completed()
        u, m = utterance_latencies(
            [(end * 1000, t) for end, t, _ in done.values()], log.sent_at, plan.utterances
        )
        utterance += u
        missing += m
        figures.append(
            wer_figures(
                [(start * 1000, text) for start, (_, _, text) in done.items()], plan.utterances
            )
        )
    out: dict[str, Any] = {
        "peer": "whisperlive",
        "streams": n,
        "wall_s": wall,
        "utterance_end_to_final_ms": distribution(utterance),
        "utterances_without_final": missing,
        "completed_segments": sum(len(log.completed()) for log in logs),
        "errors": [e for log in logs for e in log.errors][:10],
        "server_cpu_s": cpu1 - cpu0,
        "cpu_s_per_audio_s": (cpu1 - cpu0) / (audio_s * n),
    }
    out.update(_mean_wer(figures))
    if logs:
        first = [(start * 1000, text) for start, (_, _, text) in logs[0].completed().items()]
        out["heard"] = attribute(first, plan.utterances)
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
    "streaming ASR: end of speech to final, partial latency, CPU per stream, N streams "
    "(--peer whisperlive: WhisperLive alongside)",
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
        command += ["--language", args.language, "--clips", str(args.sentences)]
        if args.asr_languages:
            command += ["--asr-languages", args.asr_languages]
        if args.voices:
            command += ["--voices", args.voices]
        if args.turns:
            command.append("--turns")
        return await _child(command, 1800.0)
    plan = build_plan(args)
    results: dict[str, Any] = {
        "clips": args.clips,
        "clip_s": args.clip_s,
        "chunk_ms": args.chunk_ms,
        "gap_s": args.gap_s,
        "utterances": [
            {"start_ms": u.start_ms, "end_ms": u.end_ms, "kind": u.kind, "text": u.text}
            for u in plan.utterances
        ],
        "peer": args.peer,
        "levels": [],
    }
    meter = LoadMeter(target)
    results["idle"] = await meter.baseline()
    if not args.no_rtf and plan.utterances:
        current().stage("asr: a clip as fast as credit allows")
        first = plan.utterances[0]
        clip = plan.audio[int(first.start_ms * RATE_HZ / 1000) : int(first.end_ms * RATE_HZ / 1000)]
        results["fast_upload"] = await _rtf(target, clip, args.chunk_ms)
    counts = session_counts(
        args.streams, ramp=args.ramp, ramp_max=args.ramp_max, option="--streams"
    )
    peer: PeerServer | None = None
    if args.peer == "whisperlive":
        current().stage("asr: starting whisperlive (its venv first, if missing)")
        peer = await asyncio.to_thread(PeerServer.start, max(counts) if counts else 1)
    try:
        for k, n in enumerate(counts):
            mine: list[dict[str, Any]] = []
            peers: list[dict[str, Any]] = []
            for r in range(max(1, args.rounds) if peer is not None else 1):
                peer_first = (k + r) % 2 == 1  # A/B, then B/A: neither always goes first
                if peer is not None and peer_first:
                    peers.append(await _peer_level(peer, n, plan, args))
                mine.append(await _level(target, n, plan, args, meter))
                if peer is not None and not peer_first:
                    peers.append(await _peer_level(peer, n, plan, args))
            level = mine[0]
            if len(mine) > 1:
                level["more_rounds"] = mine[1:]
            if peers:
                level["peer"] = peers[0]
                if len(peers) > 1:
                    level["peer"]["more_rounds"] = peers[1:]
            results["levels"].append(level)
            print(_summary(level), file=sys.stderr)
            if args.ramp and not level["real_time_held"]:
                break
    finally:
        if peer is not None:
            peer.stop()
    results["real_time_lost_at"] = real_time_lost_at(results["levels"], "streams")
    results["target"] = {
        "eos_to_final_p50_ms_max": 400.0,
        "eos_to_final_p50_ms_max_at_16": 500.0,
        "wer_max": "the peer's, same run",
        "cpu_s_per_audio_s_max": 0.5,
    }
    return results


def _summary(r: dict[str, Any]) -> str:
    def p(d: dict[str, float]) -> str:
        return f"{d['p50']:.0f}/{d['p90']:.0f}" if d.get("n") else "-"

    line = (
        f"streams {r['streams']}: eos->final p50/p90 {p(r['eos_to_final_ms'])} ms "
        f"(<=5 s: {p(r['eos_to_final_ms_utterances_le_5s'])}), stopped->final "
        f"{p(r['speech_stopped_to_final_ms'])} ms, utterance end->final "
        f"{p(r['utterance_end_to_final_ms'])} ms, partial {p(r['partial_latency_ms'])} ms, "
        f"caption {p(r['caption_latency_ms'])} ms, "
        f"cpu/audio {r.get('cpu_s_per_audio_s', float('nan')):.3f}, "
        f"wer {r.get('wer', {}).get('mean', float('nan')):.3f}, lag events {r['lag_events']}"
    )
    peer = r.get("peer")
    if isinstance(peer, dict) and "utterance_end_to_final_ms" in peer:
        line += (
            f"; whisperlive: utterance end->final {p(peer['utterance_end_to_final_ms'])} ms, "
            f"wer {peer.get('wer', {}).get('mean', float('nan')):.3f}, "
            f"cpu/audio {peer['cpu_s_per_audio_s']:.3f}, "
            f"no final {peer['utterances_without_final']}"
        )
    return line
