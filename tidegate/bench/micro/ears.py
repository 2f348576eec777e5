"""Microbenchmark of the ears: turn detection batched across sessions, and echo cancelling.

``python -m tidegate.bench.micro.ears --json`` prints one JSON object (``tidegate bench
ears`` runs it as a subprocess and keeps it as its report):

- ``turn``: 16 sessions (``--sessions``) each ask Smart Turn about their last few seconds of
  speech at once; the CPU time of serving them through the :class:`Scheduler` (one batch)
  against 16 batch-1 calls, best of ``--repeats`` rounds each (target: ratio <= 0.3), and
  against 16 batch-1 calls that compute the features over the whole padded window (the
  reference preprocessing); the features' and the model's CPU per request (the model at
  batch 1, 4 and 16: on a CPU a batch costs the sum of its items, docs/ears.md); and
  the model's separation of complete from unfinished sentences (the fraction of
  complete/unfinished pairs ordered right) for each voice available (espeak-ng always;
  the Piper voice when ``piper-joe`` is prepared);
- ``aec``: one :class:`EchoCanceller` per case of the echo set (reply echoed at -6, -12,
  -20 dB with 40, 120, 250 ms delay, plus drift and double-talk cases): ERLE in dB after
  3 s of adaptation, the delay found, and the CPU seconds per session-second (target
  <= 0.02), 20 ms frames fed as a lane would;
- ``aec-paced``: the canceller's CPU as live audio paces it: N sessions (``--paced-sessions``,
  e.g. 1,4,8) each get 20 ms of microphone audio and of reference every 20 ms for
  ``--paced-s`` seconds, and their audio lane's :class:`~tidegate.pipelines.echo.EchoPath`
  cleans it as the lane calls it: once the chunks complete a 32 ms VAD frame (and, for
  comparison, once per chunk, as the lane called it before: the two alternate, in two
  rounds of a quarter of the time each, the second starting with the other); one thread,
  sleeping between
  ticks as a server waiting for packets does; the CPU seconds per session-second the path
  itself counts (what the sessions' ``metrics`` report live). Each call finds the caches
  colder the more idle the machine is between calls (docs/ears.md), so the figure falls as
  sessions share the thread;
- ``echo-words``: the guard against the reply's own words (:func:`~tidegate.pipelines.
  interrupt.echoed`) on what Whisper tiny.en hears: the Piper voice speaks ``ECHO_REPLIES``,
  and at pauses every ``--echo-step-s`` the last second before it comes back at -6 dB over
  a -60 dBFS floor (no canceller: the hardest echo the guard sees); of the echoes heard as
  words, how many it takes for the reply's own (each against what the reply had played in
  ``interrupt_echo_window_s`` before the pause, the word in progress included). And what
  users say over a reply (``ECHO_USER_PHRASES``, espeak-ng, as Whisper hears them) against
  every one of those windows: how many of those it wrongly takes for the reply's;
- ``own-voice``: the same guard by sound (:class:`~tidegate.pipelines.own_voice.OwnVoice`):
  four of those replies paused at 2.5 and 4 s, their echo (a room response, 40/120/250 ms,
  -6/-12/-20 dB, a -60 dBFS floor) heard from 0.35 s before the pause to 0.4 s after its
  end, as the judge hears the microphone (before any canceller) and, to show why, after the
  canceller; a user's question (espeak-ng, at its level and 10 dB
  under) over the same echo from 0.15 s before the pause; and the last second before the
  pause heard again a second later. The likeness of each, and the share at or above the
  threshold (``interrupt_echo_likeness``); and the echo of a WS-only client that played
  each frame 0.2 s before it was due (as it arrived). The judge is made as the assistant
  mode makes it (lags from -0.26 s: the default lead and the stamps' error). And the hold
  (pipelines/interrupt.py, "its own voice, held"): the echo of a reply that plays on, held
  from 1.2 s in and judged as the reply lane judges it to the reply's end (how many holds
  are lost: the reply would pause for its own voice), and a user's question over it from
  2.7 s (how many holds are lost, and how long into the question).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tidegate.bench.micro import default_data_dir
from tidegate.engines import models
from tidegate.engines.audio import EchoCanceller
from tidegate.engines.engine import Ok
from tidegate.engines.scheduler import BatchPolicy, Scheduler
from tidegate.engines.turn import SmartTurn
from tidegate.tools.prepare import prepare_offline

from .. import audio_sets
from ..report import percentiles

SR = audio_sets.SAMPLE_RATE_HZ
FRAME = 320  # 20 ms
SETTLE_S = 3.0
AFTER_SPEECH_S = 0.1  # the VAD's default min silence: when a pause is reported
ECHO_DELAYS_S = (0.04, 0.12, 0.25)
ECHO_LEVELS_DB = (-6.0, -12.0, -20.0)
ECHO_CASES = [(d, lv) for d in ECHO_DELAYS_S for lv in ECHO_LEVELS_DB]
USER_GAINS_DB = (0.0, -10.0)  # a user's question at espeak's level, and under it


def _pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 99)} | {"max": float(a.max())}


# -- turn detection ---------------------------------------------------------------------------
def _turn_requests(n: int) -> list[np.ndarray]:
    """n sessions' recent audio: the paused and complete sets, cut where a pause is seen."""
    clips = []
    for c in audio_sets.paused_set(0) + audio_sets.complete_set():
        stop = c.pause_s[0] if c.pause_s else c.end_s
        clips.append(c.audio[: round((stop + AFTER_SPEECH_S) * SR)])
    return [clips[i % len(clips)] for i in range(n)]


def _batch1(engine: SmartTurn, reqs: list[np.ndarray]) -> tuple[float, list[float], list[float]]:
    lat, probs = [], []
    cpu0 = time.process_time()
    for r in reqs:
        t0 = time.perf_counter()
        (o,) = engine.run_batch([r], [None])
        lat.append((time.perf_counter() - t0) * 1000)
        assert isinstance(o, Ok), o
        probs.append(o.value.probability)
    return time.process_time() - cpu0, lat, probs


async def _scheduled(
    sched: Scheduler[Any, Any], reqs: list[np.ndarray]
) -> tuple[float, list[float], list[float], float]:
    lat: list[float] = []

    async def one(r: np.ndarray) -> float:
        t0 = time.perf_counter()
        res = await sched.submit(r, deadline_s=60.0)
        lat.append((time.perf_counter() - t0) * 1000)
        return float(res.probability)

    batches0 = sched.counters.batches
    cpu0 = time.process_time()
    probs = await asyncio.gather(*(one(r) for r in reqs))
    cpu = time.process_time() - cpu0
    return cpu, lat, list(probs), len(reqs) / max(1, sched.counters.batches - batches0)


async def _turn_scheduler_rounds(
    engine: SmartTurn, reqs: list[np.ndarray], repeats: int
) -> list[tuple[float, list[float], list[float], float]]:
    n = len(reqs)
    sched: Scheduler[Any, Any] = Scheduler(
        engine, BatchPolicy(max_batch_items=n, batch_wait_s=0.01, deadline_s=60.0)
    )
    await sched.start()
    try:
        return [await _scheduled(sched, reqs) for _ in range(repeats)]
    finally:
        await sched.close()


def _separation(engine: SmartTurn, voice: audio_sets.Voice | None) -> dict[str, Any]:
    after = audio_sets.silence(AFTER_SPEECH_S)
    lead = audio_sets.silence(0.3)
    heads = [h for h, _ in audio_sets.PAUSED_SENTENCES]
    fulls = [f"{h} {t}." for h, t in audio_sets.PAUSED_SENTENCES]
    fulls += list(audio_sets.COMPLETE_SENTENCES)

    def score(texts: list[str]) -> list[float]:
        clips = [np.concatenate([lead, audio_sets.speech(t, voice), after]) for t in texts]
        out = engine.run_batch(clips, [None] * len(clips))
        return [o.value.probability for o in out if isinstance(o, Ok)]

    cut, done = score(heads), score(fulls)
    return {
        "unfinished": [round(p, 3) for p in cut],
        "complete": [round(p, 3) for p in done],
        "pairs_ordered": float(np.mean([c < d for c in cut for d in done])),
        "median_unfinished": float(np.median(cut)),
        "median_complete": float(np.median(done)),
    }


def _piper(data_dir: Path) -> tuple[audio_sets.Voice, Any] | None:
    if models.verify(data_dir, "piper-joe", deep=False):
        return None
    from tidegate.engines.tts import PiperVoice

    engine = PiperVoice(models.model_dir(data_dir, "piper-joe") / "en_US-joe-medium.onnx")
    engine.scales = np.array([0.0, engine.scales[1], 0.0], np.float32)  # deterministic
    engine.load()

    def speak(text: str) -> np.ndarray:
        (o,) = engine.run_batch([text], [None])
        assert isinstance(o, Ok), o
        return audio_sets.resample(o.value, 48_000)

    return speak, engine


def _model_per_item(path: Path, reqs: list[np.ndarray]) -> dict[str, float]:
    """CPU ms per request of the model call alone (features ready), by batch size."""
    from tidegate.engines.runtime import RuntimeOptions, open_model
    from tidegate.engines.turn import turn_features

    feats = np.stack([turn_features(r) for r in reqs])
    model = open_model(path, RuntimeOptions())
    out: dict[str, float] = {}
    for size in (1, 4, len(reqs)):
        model.run({"input_features": feats[:size]})  # warm this shape
        cpu0 = time.process_time()
        for i in range(0, len(reqs) - size + 1, size):
            model.run({"input_features": feats[i : i + size]})
        done = (len(reqs) // size) * size
        out[str(size)] = round((time.process_time() - cpu0) / done * 1000, 2)
    model.close()
    return out


def bench_turn(data_dir: Path, sessions: int, repeats: int) -> dict[str, Any]:
    path = models.model_dir(data_dir, "smart-turn-v3.2") / "smart-turn-v3.2-cpu.onnx"
    prepare_offline(data_dir, "smart-turn-v3.2")
    engine = SmartTurn(path)
    engine.load()
    engine.warmup()
    reqs = _turn_requests(sessions)
    b1 = [_batch1(engine, reqs) for _ in range(repeats)]
    sch = asyncio.run(_turn_scheduler_rounds(engine, reqs, repeats))
    engine.load()  # the scheduler closed it
    best_b = min(b1, key=lambda r: r[0])
    best_s = min(sch, key=lambda r: r[0])
    # the features alone (one per request, on the worker thread): as computed, and over the
    # whole padded 8 s window (the reference preprocessing, as pipecat does it)
    from tidegate.engines.turn.features import reference_features, turn_features

    cpu0 = time.process_time()
    for r in reqs:
        turn_features(r)
    features_cpu = time.process_time() - cpu0
    cpu0 = time.process_time()
    for r in reqs:
        reference_features(r)
    reference_features_cpu = time.process_time() - cpu0
    # the model alone, per request, at batch 1, 4 and 16 (why batching gives little on a CPU)
    model_ms = _model_per_item(path, reqs)
    # 16 batch-1 calls as the reference preprocesses them: the whole window's features each
    reference_b1 = best_b[0] - features_cpu + reference_features_cpu
    voices: dict[str, Any] = {"espeak": _separation(engine, None)}
    piper = _piper(data_dir)
    if piper is not None:
        voices["piper"] = _separation(engine, piper[0])
        piper[1].close()
    engine.close()
    return {
        "model": "smart-turn-v3.2",
        "sessions": sessions,
        "batch1": {
            "cpu_ms_per_request": best_b[0] / sessions * 1000,
            "latency_ms": _pct(best_b[1]),
        },
        "scheduler": {
            "cpu_ms_per_request": best_s[0] / sessions * 1000,
            "latency_ms": _pct(best_s[1]),
            "mean_batch": best_s[3],
        },
        "cpu_ratio": best_s[0] / best_b[0],
        "cpu_ratio_vs_reference_batch1": best_s[0] / reference_b1,
        "features_cpu_ms_per_request": features_cpu / sessions * 1000,
        "reference_features_cpu_ms_per_request": reference_features_cpu / sessions * 1000,
        "model_cpu_ms_per_request_by_batch": model_ms,
        "identical_probabilities": bool(np.allclose(best_b[2], best_s[2], atol=1e-6)),
        "separation": voices,
    }


# -- echo cancellation ------------------------------------------------------------------------
def _cancel(mic: np.ndarray, far: np.ndarray, ec: EchoCanceller) -> tuple[np.ndarray, float]:
    out = np.zeros_like(mic)
    cpu0 = time.process_time()
    for i in range(0, len(mic) - FRAME + 1, FRAME):
        ec.add_far(far[i : i + FRAME], i)
        out[i : i + FRAME] = ec.process_near(mic[i : i + FRAME], i)
    return out, time.process_time() - cpu0


def _db(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(a**2) / max(float(np.sum(b**2)), 1e-20)))


def bench_aec() -> dict[str, Any]:
    reply = np.concatenate(
        [audio_sets.speech(t) for t in audio_sets.REPLY_SENTENCES] + [audio_sets.silence(0.5)]
    )
    seconds = len(reply) / SR
    settled = slice(round(SETTLE_S * SR), len(reply))
    cases: list[dict[str, Any]] = []
    cpu_per_s: list[float] = []
    for delay in ECHO_DELAYS_S:
        for level in ECHO_LEVELS_DB:
            mic, echo, _ = audio_sets.mic_with_echo(
                reply, delay_s=delay, level_db=level, noise_db=-90.0
            )
            ec = EchoCanceller()
            out, cpu = _cancel(mic, reply, ec)
            cpu_per_s.append(cpu / seconds)
            cases.append(
                {
                    "delay_ms": delay * 1000,
                    "level_db": level,
                    "erle_db": round(_db(echo[settled], out[settled]), 1),
                    "delay_found_ms": round(ec.delay_s * 1000, 1),
                    "cpu_s_per_s": round(cpu / seconds, 5),
                }
            )
    mic, echo, _ = audio_sets.mic_with_echo(
        reply, delay_s=0.05, level_db=-10.0, drift_ppm=3000.0, noise_db=-90.0
    )
    ec = EchoCanceller()
    out, cpu = _cancel(mic, reply, ec)
    drift = {
        "drift_ppm": 3000.0,
        "erle_db": round(_db(echo[settled], out[settled]), 1),
        "delay_found_ms": round(ec.delay_s * 1000, 1),
        "delay_true_end_ms": round((0.05 + len(reply) * 3000e-6 / SR) * 1000, 1),
    }
    near = audio_sets.speech(audio_sets.USER_SENTENCES[1])
    at = round(5.0 * SR)
    double: list[dict[str, Any]] = []
    for level in (-6.0, -12.0):
        mic, echo, user = audio_sets.mic_with_echo(
            reply, delay_s=0.15, level_db=level, near=near, near_at_s=5.0, seed=3
        )
        out, _ = _cancel(mic, reply, EchoCanceller())
        span = slice(at, at + len(near))
        double.append(
            {
                "level_db": level,
                "user_kept_db": round(_db(out[span], user[span]), 1),
                "echo_to_user_before_db": round(_db(echo[span], user[span]), 1),
            }
        )
    erles = [c["erle_db"] for c in cases]
    return {
        "cases": cases,
        "erle_db_min": min(erles),
        "erle_db_median": float(np.median(erles)),
        "cpu_s_per_session_s": _pct(cpu_per_s),
        "drift": drift,
        "double_talk": double,
    }


def bench_aec_paced(sessions: list[int], seconds: float) -> dict[str, Any]:
    """See the module docstring (``aec-paced``)."""
    from tidegate.engines.vad import FRAME_SAMPLES
    from tidegate.engines.workers import WorkerPool
    from tidegate.pipelines.echo import EchoPath

    reply = np.concatenate([audio_sets.speech(t) for t in audio_sets.REPLY_SENTENCES])
    mic, _, _ = audio_sets.mic_with_echo(reply, delay_s=0.08, level_db=-10.0)
    # each cadence runs half of ``seconds``, in two quarters
    quarter = max(1, round(seconds / (FRAME / SR)) // 4)
    out: dict[str, Any] = {"seconds_per_cadence": 2 * quarter * FRAME / SR, "by_sessions": {}}

    def paced(n: int, per_frame: bool, ticks: int) -> float:
        """CPU seconds of ``n`` sessions' echo paths over ``ticks`` of 20 ms, called per
        chunk or, as the audio lane calls them, once the chunks complete a VAD frame."""
        pool = WorkerPool("aec-paced", workers=1)  # EchoPath needs one; _run is called inline
        paths = [EchoPath(pool) for _ in range(n)]
        t0 = time.monotonic()
        start, vad_rest = 0, 0  # the first sample not yet cleaned; cleaned short of a frame
        for k in range(ticks):
            end = (k + 1) * FRAME
            if not per_frame or vad_rest + end - start >= FRAME_SAMPLES:
                vad_rest = (vad_rest + end - start) % FRAME_SAMPLES
                i, m = start % (len(reply) - (end - start)), end - start
                for path in paths:
                    played = path.origin + i / SR
                    far = [(reply[i : i + m], SR, played)]
                    path._run(far, mic[i : i + m], path.sample_at(played), None)
                start = end
            time.sleep(max(0.0, t0 + (k + 1) * FRAME / SR - time.monotonic()))
        pool.close()
        return sum(p.cpu_s for p in paths)

    # the two cadences alternate, in two rounds of a quarter of the time each (the second
    # round starting with the other): the machine's drift falls on both
    for n in sessions:
        cpu = {True: 0.0, False: 0.0}
        for order in ((True, False), (False, True)):
            for per_frame in order:
                cpu[per_frame] += paced(n, per_frame, quarter)
        session_s = n * out["seconds_per_cadence"]
        out["by_sessions"][str(n)] = {
            "cpu_s_per_session_s": round(cpu[True] / session_s, 5),
            "per_chunk_cpu_s_per_session_s": round(cpu[False] / session_s, 5),
        }
    return out


# -- the turns scenario's clips ----------------------------------------------------------------
def write_clips(data_dir: Path, out: Path, *, seed: int, voice: str) -> dict[str, Any]:
    """The paused and complete sets (``audio_sets``) as 16 kHz float32 ``.npy`` files in
    ``out``, for ``tidegate bench turns`` (whose scenario module imports no engine): spoken by
    the Piper voice when ``voice`` is ``piper``, or ``auto`` and ``piper-joe`` is prepared
    (Smart Turn reads prosody, which espeak's flat voice does not carry), else by espeak-ng.
    Returns the index: voice, and per clip its file, kind, text, end and pause."""
    piper = _piper(data_dir) if voice in ("auto", "piper") else None
    if voice == "piper" and piper is None:
        raise SystemExit("--voice piper: piper-joe is not prepared (tidegate models prepare)")
    speak = piper[0] if piper is not None else None
    out.mkdir(parents=True, exist_ok=True)
    clips: list[dict[str, Any]] = []
    try:
        sets = [("paused", c) for c in audio_sets.paused_set(seed, voice=speak)]
        sets += [("complete", c) for c in audio_sets.complete_set(voice=speak)]
        for i, (kind, c) in enumerate(sets):
            name = f"{kind}-{i:02d}.npy"
            np.save(out / name, c.audio.astype(np.float32))
            clips.append(
                {"file": name, "kind": kind, "text": c.text, "end_s": c.end_s, "pause_s": c.pause_s}
            )
    finally:
        if piper is not None:
            piper[1].close()
    return {"voice": "piper" if piper is not None else "espeak", "seed": seed, "clips": clips}


# -- the guard against the reply's own words ---------------------------------------------------
#: replies the Piper voice speaks for the echo-words part
ECHO_REPLIES = (
    "The city of Paris has a long and storied history, marked by numerous landmarks and "
    "milestones. Paris was founded by the",
    "The capital of France is Paris, a city known for its art, fashion, and culture along the "
    "Seine river.",
    "Sure, I can help you with that. The weather today is sunny with a high of twenty degrees "
    "and a light breeze from the west.",
    "London is the capital of England and the United Kingdom, and it has been a major "
    "settlement for nearly two thousand years.",
    "Here is a joke: why did the scarecrow win an award? Because he was outstanding in his field.",
    "I would be happy to book a table for you. How many people will be joining, and what time "
    "would you prefer?",
    "Photosynthesis is the process by which green plants use sunlight to make food from carbon "
    "dioxide and water.",
    "The train to Berlin leaves at half past nine from platform four, and the journey takes "
    "about six hours.",
)
#: what users say over a reply, for the echo-words part
ECHO_USER_PHRASES = (
    "Wait, what about Friday?", "What is the capital of France?", "Stop, I changed my mind.",
    "Tell me more about the history.", "No, that's wrong.", "Hold on a second.",
    "Actually, can you tell me about London instead?", "Sorry, I didn't catch that.",
    "Can you repeat that?", "What time is it?", "I'd like a table for four.",
    "How about tomorrow?", "That's not what I asked.", "Never mind.", "Let me think about it.",
    "Okay stop talking.", "What's the weather like?", "Play some music.", "Tell me a joke.",
    "Hang on, wait a minute.", "Who founded it?", "And what about Rome?",
    "How long did that take?", "When was it built?", "Is it far from here?", "Cancel that.",
    "Go back.", "Say that again.", "Louder please.", "Excuse me.", "Make it a table for two.",
    "How much does it cost?", "Where is the station?", "Can you speak slower?",
    "I need a taxi at nine.", "Is it going to rain tomorrow?", "Book it for seven people.",
    "What about the Eiffel Tower?", "Tell me about Berlin.", "How old is the city?",
    "Thanks, that's enough.", "Skip that part.", "One more question.",
    "Could you book a train instead?",
)  # fmt: skip
ECHO_S = 1.0  # of the reply that comes back before each pause
ECHO_LEVEL_DB = -6.0


def _played_before(text: str, duration_s: float, t: float, window_s: float) -> str:
    """What of ``text`` (spoken in ``duration_s``) a reply paused at ``t`` had played in the
    ``window_s`` before: letters in proportion to time (as the reply lane reckons within a
    chunk), the word in progress included."""
    end = min(len(text), int(len(text) * t / duration_s))
    while end < len(text) and text[end].isalnum():
        end += 1
    return text[max(0, int(len(text) * (t - window_s) / duration_s)) : end]


def bench_echo_words(data_dir: Path, step_s: float, replies: int | None = None) -> dict[str, Any]:
    """The echo-words part (module doc)."""
    from tidegate.engines.asr.request import AsrRequest
    from tidegate.engines.asr.whisper_onnx import WhisperOnnx
    from tidegate.pipelines.interrupt import (
        DEFAULT_BACKCHANNELS,
        ECHO_WINDOW_S,
        WordRule,
        echoed,
    )

    rule = WordRule(DEFAULT_BACKCHANNELS)
    for name in ("whisper-tiny-en", "piper-joe"):
        prepare_offline(data_dir, name)
    piper = _piper(data_dir)
    assert piper is not None
    asr = WhisperOnnx(models.model_dir(data_dir, "whisper-tiny-en"))
    asr.load()
    rng = np.random.default_rng(0)
    pad = np.zeros(int(0.3 * SR), np.float32)

    def hear(audio: np.ndarray[Any, Any]) -> str:
        x = np.concatenate([pad, audio.astype(np.float32), pad])
        x += (rng.standard_normal(len(x)) * audio_sets.db_gain(-60.0)).astype(np.float32)
        (out,) = asr.run_batch([AsrRequest(audio=x, final=True)], [None])
        assert isinstance(out, Ok), out
        return str(out.value.text)

    echoes: list[dict[str, Any]] = []
    try:
        for text in ECHO_REPLIES[:replies]:
            speech = piper[0](text)
            duration = len(speech) / SR
            for t in np.arange(ECHO_S + 0.2, duration + 1e-6, step_s):
                cut = speech[int((t - ECHO_S) * SR) : int(t * SR)]
                heard = hear(cut * audio_sets.db_gain(ECHO_LEVEL_DB))
                if not rule.interrupts(heard, min_words=1, backchannels="ignore"):
                    continue  # no words: nothing for the guard to judge
                played = _played_before(text, duration, float(t), ECHO_WINDOW_S)
                echoes.append({"heard": heard, "played": played, "own": echoed(heard, played)})
        users = [hear(audio_sets.speech(p)) for p in ECHO_USER_PHRASES]
    finally:
        piper[1].close()
        asr.close()
    windows = sorted({e["played"] for e in echoes})
    wrong = [(u, w) for u in users for w in windows if echoed(u, w)]
    own = sum(e["own"] for e in echoes)
    return {
        "echoes_with_words": len(echoes),
        "echoes_judged_own": own,
        "echo_recall": round(own / len(echoes), 3) if echoes else None,
        "missed": [{"heard": e["heard"], "played": e["played"]} for e in echoes if not e["own"]],
        "user_phrases": len(users),
        "user_pairs": len(users) * len(windows),
        "user_pairs_judged_own": len(wrong),
        "user_phrases_judged_own": sorted({u for u, _ in wrong}),
    }


def _likeness(
    played: np.ndarray[Any, Any],
    mic: np.ndarray[Any, Any],
    since_s: float,
    until_s: float,
    ahead_s: float = 0.0,
) -> float | None:
    """An OwnVoice as the assistant mode makes it (the default 0.2 s lead) told of ``played``
    (16 kHz) from t=0 and of ``mic`` up to ``until_s``, arriving 30 ms after capture, judging
    [since_s, until_s). ``ahead_s``: the client played each frame that long before it was
    due (a WS-only client playing output.audio as it arrives)."""
    from tidegate.pipelines.own_voice import MAX_EARLY_S, OwnVoice

    voice = OwnVoice(early_s=0.2 + MAX_EARLY_S)
    for i in range(0, len(played) - FRAME + 1, FRAME):
        voice.played(played[i : i + FRAME], SR, i / SR + ahead_s)
    for j in range(0, min(len(mic), round(until_s * SR)) - FRAME + 1, FRAME):
        voice.heard(mic[j : j + FRAME], j / SR + 0.03)
    return voice.likeness(since_s, until_s)


def _hold(
    played: np.ndarray[Any, Any], mic: np.ndarray[Any, Any], hold_s: float, until_s: float
) -> float | None:
    """A sound held over a reply that plays on (pipelines/interrupt.py, "its own voice,
    held"), judged as the reply lane judges it: ``played`` and ``mic`` (16 kHz, t=0 the
    reply's start, the microphone's frames arriving 30 ms after capture, the reply's told
    0.2 s ahead) fed frame by frame, the hold from ``hold_s`` judged every
    ``HOLD_CHECK_S`` to ``until_s``: when it was lost (the reply would pause), or None if it
    held throughout."""
    from tidegate.pipelines.own_voice import (
        HOLD_CHECK_S,
        HOLD_JUDGE_S,
        MAX_EARLY_S,
        OWN_VOICE_LIKENESS,
        OwnVoice,
    )

    voice = OwnVoice(early_s=0.2 + MAX_EARLY_S)
    lead = round(0.2 * SR / FRAME)
    judged, next_check = False, hold_s
    for k in range(round(until_s * SR / FRAME)):
        i = (k + lead) * FRAME
        if i + FRAME <= len(played):
            voice.played(played[i : i + FRAME], SR, i / SR)
        j = k * FRAME
        if j + FRAME <= len(mic):
            voice.heard(mic[j : j + FRAME], j / SR + 0.03)
        now = (k + 1) * FRAME / SR + 0.03
        if now < next_check:
            continue
        next_check = now + HOLD_CHECK_S
        own, _ = voice.judge_hold(hold_s, now, OWN_VOICE_LIKENESS, judged=judged)
        judged = judged or bool(own)
        if not own and not (own is None and (judged or now < hold_s + HOLD_JUDGE_S)):
            return now
    return None


def _user_over_echo(
    far: np.ndarray[Any, Any],
    delay_s: float,
    level_db: float,
    user: np.ndarray[Any, Any],
    gain_db: float,
    at_s: float,
    seed: int,
) -> np.ndarray[Any, Any]:
    """The microphone: ``far``'s echo, and ``user`` (``gain_db`` from espeak's level) from
    ``at_s``."""
    near = user * audio_sets.db_gain(gain_db)
    mic, _, _ = audio_sets.mic_with_echo(
        far, delay_s=delay_s, level_db=level_db, near=near, near_at_s=at_s, seed=seed
    )
    return mic


def _rounded(block: dict[str, float]) -> dict[str, float]:
    return {k: v if k == "n" else round(v, 3) for k, v in block.items()}


#: a group of the own-voice part heard through the canceller: not what the judge hears (the
#: microphone before it), measured to show why
AFTER = "%s, after the canceller (not judged)"


def bench_own_voice(data_dir: Path, replies: int = 4) -> dict[str, Any]:
    """The own-voice part (module doc), on the first ``replies`` of ``ECHO_REPLIES``."""
    from tidegate.pipelines.own_voice import OWN_VOICE_LIKENESS

    prepare_offline(data_dir, "piper-joe")
    piper = _piper(data_dir)
    assert piper is not None
    try:
        speech = [piper[0](t) for t in ECHO_REPLIES[:replies]]
    finally:
        piper[1].close()
    users = [audio_sets.speech(p) for p in ECHO_USER_PHRASES[:12]]
    groups: dict[str, list[float | None]] = {}

    def add(name: str, value: float | None) -> None:
        groups.setdefault(name, []).append(value)

    def cancelled(mic: np.ndarray[Any, Any], far: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return _cancel(mic, far, EchoCanceller())[0]

    for k, reply in enumerate(speech):
        rng = np.random.default_rng(k)
        for pause_s in (2.5, 4.0):
            p = round(pause_s * SR)
            far = reply.copy()
            far[p:] = 0.0  # paused: nothing plays after
            for n, (delay, level) in enumerate(ECHO_CASES):
                echo, _, _ = audio_sets.mic_with_echo(far, delay_s=delay, level_db=level, seed=k)
                span = (pause_s - 0.35, pause_s + delay + 0.4)
                add("echo", _likeness(far[:p], echo, *span))
                add("echo played 0.2 s early", _likeness(far[:p], echo, *span, 0.2))
                add(AFTER % "echo", _likeness(far[:p], cancelled(echo, far), *span))
                user = users[(2 * k + n + p) % len(users)]
                for gain_db in USER_GAINS_DB:
                    mic = _user_over_echo(far, delay, level, user, gain_db, pause_s - 0.15, k)
                    span = (pause_s - 0.35, pause_s - 0.15 + len(user) / SR + 0.1)
                    add(
                        f"user {gain_db:+.0f} dB over echo",
                        _likeness(far[:p], mic, *span),
                    )
                    add(
                        AFTER % f"user {gain_db:+.0f} dB over echo",
                        _likeness(far[:p], cancelled(mic, far), *span),
                    )
            start = p - round(0.2 * SR)
            mic = (rng.standard_normal(len(far)) * audio_sets.db_gain(-60.0)).astype(np.float32)
            mic[start : start + SR] += reply[start - SR : start] * audio_sets.db_gain(-6.0)
            add(
                "replayed a second later",
                _likeness(far[:p], mic, start / SR - 0.1, start / SR + 1.1),
            )
    # held: a sound over a reply that plays on, judged from 1.2 s into it (the echo then
    # sounding) to its end; a user's question from 1.5 s after the hold began
    holds: dict[str, list[float | None]] = {}
    for k, reply in enumerate(speech):
        end_s = len(reply) / SR
        for n, (delay, level) in enumerate(ECHO_CASES):
            echo, _, _ = audio_sets.mic_with_echo(reply, delay_s=delay, level_db=level, seed=k)
            at = _hold(reply, echo, 1.2, end_s)
            holds.setdefault("echo held", []).append(None if at is None else at - 1.2)
            user = users[(3 * k + n) % len(users)]
            for gain_db in USER_GAINS_DB:
                mic = _user_over_echo(reply, delay, level, user, gain_db, 2.7, k)
                at = _hold(reply, mic, 1.2, min(end_s, 2.7 + len(user) / SR))
                holds.setdefault(f"user {gain_db:+.0f} dB over held echo", []).append(
                    None if at is None else at - 2.7
                )
    out: dict[str, Any] = {"threshold": OWN_VOICE_LIKENESS, "groups": {}, "held": {}}
    for name, values in holds.items():
        lost = [v for v in values if v is not None]
        out["held"][name] = {
            "n": len(values),
            "lost": len(lost),  # the reply would pause
            # ... this long after the hold began (the echo), after the question began (users)
            "lost_after_s": _rounded(percentiles(lost)),
        }
    for name, values in groups.items():
        got = [v for v in values if v is not None]
        out["groups"][name] = {
            "n": len(values),
            "no_verdict": len(values) - len(got),
            "own": sum(v >= OWN_VOICE_LIKENESS for v in got),
            "likeness": _rounded(percentiles(got)),
        }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"cpu_count": os.cpu_count()}
    if "turn" in args.parts:
        report["turn"] = bench_turn(args.data_dir, args.sessions, args.repeats)
    if "aec" in args.parts:
        report["aec"] = bench_aec()
    if "aec-paced" in args.parts:
        counts = [int(n) for n in args.paced_sessions.split(",")]
        report["aec_paced"] = bench_aec_paced(counts, args.paced_s)
    if "own-voice" in args.parts:
        report["own_voice"] = bench_own_voice(args.data_dir)
    if "echo-words" in args.parts:
        report["echo_words"] = bench_echo_words(args.data_dir, args.echo_step_s)
    turn, aec = report.get("turn"), report.get("aec")
    report["targets"] = {
        "turn_cpu_ratio_max": 0.3,
        "turn_cpu_ratio": turn["cpu_ratio"] if turn else None,
        "aec_erle_db_min": 20.0,
        "aec_erle_db": aec["erle_db_min"] if aec else None,
        "aec_cpu_s_per_session_s_max": 0.02,
        "aec_cpu_s_per_session_s": aec["cpu_s_per_session_s"]["p50"] if aec else None,
    }
    return report


def summary(report: dict[str, Any]) -> str:
    lines = []
    t = report.get("turn")
    if t:
        lines.append(
            f"turn: {t['sessions']} sessions  batch-1 {t['batch1']['cpu_ms_per_request']:.1f} "
            f"CPU-ms/request  scheduler {t['scheduler']['cpu_ms_per_request']:.1f} "
            f"(batch {t['scheduler']['mean_batch']:.1f})  ratio {t['cpu_ratio']:.2f}  "
            f"features {t['features_cpu_ms_per_request']:.1f} ms (whole window "
            f"{t['reference_features_cpu_ms_per_request']:.1f})  ratio vs reference batch-1 "
            f"{t['cpu_ratio_vs_reference_batch1']:.2f}  model ms/request by batch "
            f"{t['model_cpu_ms_per_request_by_batch']}"
        )
        for name, s in t["separation"].items():
            lines.append(
                f"  {name}: pairs ordered {s['pairs_ordered']:.2f}  median complete "
                f"{s['median_complete']:.2f} unfinished {s['median_unfinished']:.2f}"
            )
    paced = report.get("aec_paced")
    if paced:
        lines.append(
            "aec paced (one thread), per VAD frame / per 20 ms chunk: "
            + "  ".join(
                f"{n} sessions {v['cpu_s_per_session_s']:.4f} / "
                f"{v['per_chunk_cpu_s_per_session_s']:.4f}"
                for n, v in paced["by_sessions"].items()
            )
            + " CPU-s per session-second"
        )
    w = report.get("echo_words")
    if w:
        lines.append(
            f"echo words: {w['echoes_judged_own']} of {w['echoes_with_words']} echoes heard as "
            f"words taken for the reply's own ({w['echo_recall']}); users' phrases taken for "
            f"it: {len(w['user_phrases_judged_own'])} of {w['user_phrases']} "
            f"({w['user_pairs_judged_own']} of {w['user_pairs']} phrase x window pairs)"
        )
    o = report.get("own_voice")
    if o:
        lines.append(f"own voice by sound (threshold {o['threshold']}):")
        for name, g in o["groups"].items():
            lk = g["likeness"]
            if lk["n"]:
                lines.append(
                    f"  {name}: {g['own']} of {lk['n']} at or above (no verdict "
                    f"{g['no_verdict']})  min {lk['min']:.2f} p50 {lk['p50']:.2f} "
                    f"max {lk['max']:.2f}"
                )
            else:
                lines.append(f"  {name}: no verdict in {g['n']}")
        for name, h in o["held"].items():
            after = ""
            if h["lost"]:
                p50, most = h["lost_after_s"]["p50"] * 1000, h["lost_after_s"]["max"] * 1000
                after = f", {p50:.0f} ms p50 and {most:.0f} ms at most after it began"
            lines.append(f"  {name}: hold lost (reply paused) in {h['lost']} of {h['n']}{after}")
    a = report.get("aec")
    if a:
        lines.append(
            f"aec: ERLE min {a['erle_db_min']:.1f} dB median {a['erle_db_median']:.1f} dB  "
            f"CPU {a['cpu_s_per_session_s']['p50']:.4f} s per session-second  drift ERLE "
            f"{a['drift']['erle_db']:.1f} dB"
        )
        for c in a["cases"]:
            lines.append(
                f"  {c['delay_ms']:5.0f} ms {c['level_db']:5.0f} dB: ERLE {c['erle_db']:5.1f} dB "
                f"delay found {c['delay_found_ms']:.0f} ms"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tidegate.bench.micro.ears", description=__doc__)
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="prepared models")
    p.add_argument(
        "--parts", default="turn,aec", help="turn, aec, aec-paced, echo-words, own-voice"
    )
    p.add_argument("--echo-step-s", type=float, default=0.2, help="echo-words: pause spacing")
    p.add_argument("--paced-sessions", default="1,4,8", help="aec-paced: sessions per run")
    p.add_argument("--paced-s", type=float, default=8.0, help="aec-paced: seconds per run")
    p.add_argument("--sessions", type=int, default=16, help="concurrent turn requests")
    p.add_argument("--repeats", type=int, default=3, help="rounds per way; the best is kept")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument(
        "--clips", type=Path, help="write the paused and complete sets here instead (bench turns)"
    )
    p.add_argument("--voice", default="auto", help="--clips: piper, espeak or auto")
    p.add_argument("--seed", type=int, default=1, help="--clips: the paused set's pauses")
    args = p.parse_args(argv)
    args.parts = set(args.parts.split(","))
    missing = audio_sets.have_tools()
    if missing:
        print(f"ears bench: needs {missing}", file=sys.stderr)
        return 2
    if args.clips is not None:
        index = write_clips(args.data_dir, args.clips, seed=args.seed, voice=args.voice)
        print(json.dumps(index))
        return 0
    report = run(args)
    print(summary(report), file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
