"""Scenario ``assistant``: voice to voice over the public protocol (WS-only ``input.audio``,
``{"mode": "assistant"}``) against a server running the ``vad``, ``asr``, ``llm`` and ``tts``
engines, with N concurrent sessions (``--sessions``, default 1, 4). ``--turn`` adds the
``turn`` engine (the semantic turn policy; off by default: espeak's flat prosody leaves Smart
Turn near chance, so most of its questions would end by the policy's timeout).

Every session speaks ``--turns`` questions (espeak-ng, one after the other), streamed like a
microphone: in real time, in ``--chunk-ms`` chunks of 16 kHz s16le, with silence between the
questions and while the reply plays, until its ``response.done``. The end of the user's speech
is the moment the client sent the question's last loud sample. Measured from there, per turn:

- ``eos_to_final_ms``: the arrival of the turn's ``asr.final``;
- ``eos_to_turn_end_ms``: the arrival of its ``turn.end`` (the decision: under the semantic
  policy it does not wait for the final, the reply does);
- ``eos_to_first_token_ms``: the first ``response.text.delta``; ``token_interval_ms``: the
  time between one delta's arrival and the next's, within a reply (the server coalesces
  deltas that pile up for a client, so an interval may span several tokens);
- ``eos_to_first_audio_ms``: the first ``output.audio`` whose samples are audible (detected
  in the received audio: a 20 ms frame above ``--audible-dbfs``);
- ``speech_start_to_first_partial_ms``: from the start of the question to the first
  ``asr.partial`` with committed text (its tentative words not counted, as the Realtime
  dialect's transcription deltas carry none; short questions may have none: counted in
  ``turns_without_partial``);
- a per-stage breakdown, each from one clock only: ``vad_wait_ms`` (end of speech sent ->
  ``vad.speech_stopped`` received), ``asr_ms`` (the final's engine time, server clock),
  ``turn_wait_ms`` (final -> ``response.created``), ``llm_first_token_ms`` (the first
  delta's engine_start -> engine_end, server clock), ``tts_first_audio_ms`` (first delta ->
  first audible audio, client clock).
- ``thread_cpu_s``: the server's CPU seconds over the level by thread name (a server the
  harness started): which engine's worker (``engine-asr``, ``engine-llm``, ``engine-tts``,
  ``engine-vad``), the event loop (the process's main thread: media, protocol) or others;
- ``speculation``: the reply lanes' speculative starts, adopted and discarded (docs/assistant.md
  "Speculative start"), from each session's last ``metrics`` event;
- ``audio_gaps``: how often a reply's speech ran dry mid-reply (its next chunk was not ready
  when the audio sent so far had played out) and for how long in all, from the same events:
  the price of a short first chunk (``assistant_first_chunk_words``);
- ``engines``: queueing vs compute per engine over the level, from the server's ``/metrics``
  (deltas of its histograms between the level's start and end): per engine the mean queue
  wait of a request (``wait_ms``), of an urgent one alone (``urgent_wait_ms``: ASR finals, a
  reply's first TTS chunk), the mean batch run (``run_ms``; the LLM: a decode step, and
  ``prefill_ms``), and the counts; ``slow_turns`` lists every turn whose reply was not
  completed or whose first audio came later than ``SLOW_FIRST_AUDIO_S`` (or never), with the
  reply's status, reason and the per-stage times, so a rare stall can be told apart.

``--dialect realtime`` runs the same sessions over ``/v1/realtime`` (OpenAI's Realtime events,
JSON; the questions as 24 kHz ``input_audio_buffer.append``, server VAD, transcription on),
``--dialect tidegate,realtime`` both in one run: the figures come from the Realtime events
that carry the same moments (``speech_stopped``, the transcription's first delta and its
``completed``, ``response.created``, the first transcript delta, the first audible
``response.output_audio.delta``, ``response.done``); the server-clock stages (``asr_ms``,
``llm_first_token_ms``) are tidegate's own fields and absent there. With both dialects the
WS runs alternate question by question (each question over the tidegate dialect, then the same
over the Realtime one, each in its own session of N), so that both sides see the same machine
load; each dialect's figures are its turns of the whole run. Both then send the same samples,
24 kHz s16le (``--tidegate-rate-hz``; 16 kHz otherwise), so the dialect is the only difference:
at 16 kHz the VAD hears the same speech a little differently and may end it a 32 ms frame
apart on some questions. The report's ``dialects.realtime_minus_tidegate_p50_ms`` compares
first audio at p50 (WS only), per session count: the difference of the two p50s, and
``paired_p50_ms``, the p50 of the same turn's difference (``realtime.levels[].
paired_minus_tidegate_ms`` has them all).

Replies must be completed and are checked for an expected word (``answers_ok``). The same
questions come again and again, so a server the harness starts runs with its result caches
off (``--result-caches`` keeps them on: a repeated reply then costs no LLM or TTS time). Per level:
the server's CPU and memory and the generator's CPU (load.LoadMeter); real time is held when
every reply completed, nothing was refused and ``eos_to_first_audio_ms`` p90 stayed under
``--max-latency-ms``; ``--ramp`` doubles the sessions until it is not.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import websockets
from aiortc import RTCConfiguration, RTCPeerConnection

from tidegate.protocol.client import Client
from tidegate.protocol.messages import (
    AsrFinal,
    AsrPartial,
    Error,
    InputAudio,
    Metrics,
    OutputAudio,
    ResponseCreated,
    ResponseDone,
    ResponseTextDelta,
    ServerMessage,
    TurnEnd,
    VadSpeechStopped,
)

from ..harness import scenario
from ..load import LoadMeter, metrics_text, real_time_lost_at, session_counts
from ..progress import current
from ..report import distribution, percentiles
from ..rtc import AudioTap, OpusQueueTrack, connect, encode_opus, loopback_ice, upsample_to_48k
from ..target import Target, open_session, process_cpu_s, thread_cpu_s
from .asr import RATE_HZ, _default_data_dir, _pcm, read_wav

QUESTIONS = (  # and a word a right answer contains
    ("What is the capital of France?", "paris"),
    ("What color is the sky?", "blue"),
    ("How many days are in a week?", "7"),
)
LOUD = 0.01  # a sample above this is speech (espeak output is clean)
GAP_S = 1.5  # silence after each question before the reply is awaited
REPLY_WAIT_S = 30.0
SLOW_FIRST_AUDIO_S = 6.0  # a turn whose first reply audio is later than this is listed
#: the server's engine histograms read per level (seconds, labelled by engine)
ENGINE_HISTOGRAMS = {
    "wait_ms": "tidegate_engine_wait_seconds",
    "urgent_wait_ms": "tidegate_engine_urgent_wait_seconds",
    "run_ms": "tidegate_engine_run_seconds",
}
STAGES = ("vad_wait_ms", "asr_ms", "turn_wait_ms", "llm_first_token_ms", "tts_first_audio_ms")
MEASURES = (
    "eos_to_final_ms",
    "eos_to_turn_end_ms",
    "eos_to_first_token_ms",
    "eos_to_first_audio_ms",
    "speech_start_to_first_partial_ms",
)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sessions", default="1,4", help="concurrent session counts")
    p.add_argument("--turns", type=int, default=3, help="questions per session")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="input.audio chunk length")
    p.add_argument("--audible-dbfs", type=float, default=-40.0, help="reply audio detection")
    p.add_argument("--ramp", action="store_true", help="1, 2, 4, ... until real time is lost")
    p.add_argument("--ramp-max", type=int, default=16, help="the ramp's last level")
    p.add_argument("--transports", default="ws,rtc", help="ws (input.audio), rtc (Opus track)")
    p.add_argument(
        "--dialect",
        default="tidegate",
        help="tidegate (the control channel), realtime (/v1/realtime, WS only), or both",
    )
    p.add_argument(
        "--tidegate-rate-hz",
        type=int,
        default=None,
        help="the tidegate dialect's input.audio rate (default 16000; 24000 when both dialects "
        "run, so that both send the same samples and only the dialect differs)",
    )
    p.add_argument(
        "--result-caches",
        action="store_true",
        help="keep the started server's TTS/LLM result caches on (off: every reply is computed;"
        " the same questions are asked again and again)",
    )
    p.add_argument(
        "--max-latency-ms", type=float, default=3000.0, help="real-time bound (first audio p90)"
    )
    p.add_argument(
        "--turn",
        action="store_true",
        help="the started server also runs the turn engine (the semantic turn policy)",
    )


def speak(text: str, tmp: Path) -> np.ndarray[Any, np.dtype[np.float32]]:
    """``text`` spoken by espeak-ng, 16 kHz, leading and trailing silence trimmed."""
    out = tmp / "q.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(out), text], check=True)
    x = read_wav(out)
    loud = np.flatnonzero(np.abs(x) > LOUD)
    return x[loud[0] : loud[-1] + 1] if len(loud) else x


@dataclass
class Turn:
    """One question and its reply, in client times (``time.monotonic``) and events."""

    expect: str
    speech_start: float = 0.0
    speech_end: float = 0.0
    stopped: float | None = None
    partial: float | None = None
    final: tuple[AsrFinal, float] | None = None
    turn_end: tuple[TurnEnd, float] | None = None
    created: float | None = None
    first_delta: tuple[ResponseTextDelta, float] | None = None
    delta_times: list[float] = field(default_factory=list)
    first_audio: float | None = None
    done: ResponseDone | None = None
    got_done: asyncio.Event = field(default_factory=asyncio.Event)

    def measures(self) -> dict[str, float]:
        out: dict[str, float] = {}
        eos = self.speech_end
        if self.final is not None:
            out["eos_to_final_ms"] = (self.final[1] - eos) * 1000
            t = self.final[0].timing
            if t is not None and t.engine_start is not None and t.engine_end is not None:
                out["asr_ms"] = t.engine_end - t.engine_start
            if self.created is not None:
                out["turn_wait_ms"] = (self.created - self.final[1]) * 1000
        if self.turn_end is not None:
            out["eos_to_turn_end_ms"] = (self.turn_end[1] - eos) * 1000
        if self.stopped is not None:
            out["vad_wait_ms"] = (self.stopped - eos) * 1000
        if self.partial is not None:
            out["speech_start_to_first_partial_ms"] = (self.partial - self.speech_start) * 1000
        if self.first_delta is not None:
            delta, t_delta = self.first_delta
            out["eos_to_first_token_ms"] = (t_delta - eos) * 1000
            t = delta.timing
            if t is not None and t.engine_start is not None and t.engine_end is not None:
                out["llm_first_token_ms"] = t.engine_end - t.engine_start
            if self.first_audio is not None:
                out["tts_first_audio_ms"] = (self.first_audio - t_delta) * 1000
        if self.first_audio is not None:
            out["eos_to_first_audio_ms"] = (self.first_audio - eos) * 1000
        return out


@dataclass
class SessionLog:
    turns: list[Turn] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connect_ms: float | None = None
    open_ms: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)  # the session's last metrics event


def _audible(msg: OutputAudio, threshold: float) -> bool:
    x = np.frombuffer(msg.pcm, "<i2").astype(np.float32) / 32768
    return bool(len(x)) and float(np.sqrt(np.mean(x**2))) > threshold


async def _reader(client: Client, log: SessionLog, threshold: float) -> None:
    async for ev in client:
        t = time.monotonic()
        turn = log.turns[-1] if log.turns else None
        if isinstance(ev, Error):
            log.errors.append(f"{ev.code}: {ev.message}")
        elif isinstance(ev, Metrics):
            log.stats = ev.stats
        if turn is None:
            continue
        _note(turn, ev, t, threshold)


def _note(turn: Turn, ev: ServerMessage, t: float, threshold: float) -> None:
    if isinstance(ev, VadSpeechStopped) and turn.stopped is None:
        turn.stopped = t
    elif isinstance(ev, AsrPartial) and ev.text and turn.partial is None:  # committed words
        turn.partial = t
    elif isinstance(ev, AsrFinal) and ev.text and turn.created is None:
        turn.final = (ev, t)  # the last final with words before the reply starts
    elif isinstance(ev, TurnEnd) and turn.created is None:
        turn.turn_end = (ev, t)  # the last turn.end before the reply starts
    elif isinstance(ev, ResponseCreated) and turn.created is None:
        turn.created = t
    elif isinstance(ev, ResponseTextDelta) and turn.done is None:
        turn.delta_times.append(t)
        if turn.first_delta is None:
            turn.first_delta = (ev, t)
    elif isinstance(ev, OutputAudio) and turn.first_audio is None:
        if _audible(ev, threshold):
            turn.first_audio = t
    elif isinstance(ev, ResponseDone) and turn.done is None:
        turn.done = ev
        turn.got_done.set()


async def run_session(
    target: Target,
    questions: list[tuple[np.ndarray[Any, np.dtype[np.float32]], str]],
    *,
    chunk_ms: float,
    delay_s: float,
    threshold: float,
    rate_hz: int = RATE_HZ,
) -> SessionLog:
    """Speak each question like a microphone (real time, silence between) and wait for its
    reply to be done before the next one; as s16le at ``rate_hz`` (the Realtime dialect's
    24 kHz when the two dialects are compared: the same samples on both sides)."""
    log = SessionLog()
    step = 2 * int(chunk_ms * rate_hz / 1000)  # bytes
    silence = bytes(step)
    subject = f"bench-assistant-{secrets.token_hex(4)}"
    client, log.open_ms = await open_session(target, subject, {"mode": "assistant"})
    async with client, asyncio.TaskGroup() as tg:
        reader = tg.create_task(_reader(client, log, threshold))
        await asyncio.sleep(delay_s)
        clock = time.monotonic()
        sent = 0  # samples

        async def send(pcm: bytes) -> float:
            nonlocal sent
            wait = clock + sent / rate_hz - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await client.send(InputAudio(pcm=pcm, format="s16le", sample_rate=rate_hz, channels=1))
            sent += len(pcm) // 2
            return time.monotonic()

        for audio, expect in questions:
            turn = Turn(expect)
            log.turns.append(turn)
            pcm = _pcm_at(audio, rate_hz)
            for i in range(0, len(pcm), step):
                t = await send(pcm[i : i + step])
                if i == 0:
                    turn.speech_start = t
            turn.speech_end = t
            deadline = time.monotonic() + REPLY_WAIT_S
            while not turn.got_done.is_set() and time.monotonic() < deadline:
                await send(silence)
            for _ in range(int(GAP_S * 1000 / chunk_ms)):
                await send(silence)
        with contextlib.suppress(Exception):
            await client.close_session()
        reader.cancel()
    return log


REALTIME_RATE_HZ = 24_000
REALTIME_MODEL = "tidegate-bench"


def _pcm_at(x: np.ndarray[Any, np.dtype[np.float32]], rate_hz: int) -> bytes:
    """A whole question, 16 kHz float, as s16le at ``rate_hz`` (16 or 24 kHz): band-limited
    (zero-padded spectrum), so that the VAD and ASR hear the same speech at either rate."""
    if rate_hz == RATE_HZ:
        return _pcm(x)
    n_out = len(x) * rate_hz // RATE_HZ
    if not len(x):
        return b""
    spectrum = np.fft.rfft(x)
    padded = np.zeros(n_out // 2 + 1, np.complex128)
    padded[: len(spectrum)] = spectrum
    y = np.fft.irfft(padded, n_out) * (n_out / len(x))
    return bytes((np.clip(y, -1, 1) * 32767).astype("<i2").tobytes())


def _note_realtime(turn: Turn, ev: dict[str, Any], t: float, threshold: float) -> None:
    """The Realtime events that carry the moments the tidegate dialect measures, noted as
    the tidegate events they come from (no server timing: the dialect has none)."""
    kind = ev.get("type")
    if kind == "input_audio_buffer.speech_stopped" and turn.stopped is None:
        turn.stopped = t
    elif kind == "conversation.item.input_audio_transcription.delta" and turn.partial is None:
        turn.partial = t
    elif kind == "conversation.item.input_audio_transcription.completed" and turn.created is None:
        final = AsrFinal(
            segment_id=ev["item_id"], text=ev["transcript"], audio_start_ms=0, audio_end_ms=0
        )
        turn.final = (final, t)
    elif kind == "response.created" and turn.created is None:
        turn.created = t
    elif kind == "response.output_audio_transcript.delta" and turn.done is None:
        turn.delta_times.append(t)
        if turn.first_delta is None:
            delta = ResponseTextDelta(response_id=ev["response_id"], delta=ev["delta"])
            turn.first_delta = (delta, t)
    elif kind == "response.output_audio.delta" and turn.first_audio is None:
        x = np.frombuffer(base64.b64decode(ev["delta"]), "<i2").astype(np.float32) / 32768
        if len(x) and float(np.sqrt(np.mean(x**2))) > threshold:
            turn.first_audio = t
    elif kind == "response.done" and turn.done is None:
        r = ev["response"]
        text = "".join(
            part.get("transcript") or part.get("text") or ""
            for item in r.get("output", ())
            if item.get("type") == "message"
            for part in item.get("content", ())
        )
        status = r["status"] if r["status"] in ("completed", "cancelled", "failed") else "failed"
        turn.done = ResponseDone(response_id=r["id"], status=status, text=text)
        turn.got_done.set()


async def run_session_realtime(
    target: Target,
    questions: list[tuple[np.ndarray[Any, np.dtype[np.float32]], str]],
    *,
    chunk_ms: float,
    delay_s: float,
    threshold: float,
) -> SessionLog:
    """:func:`run_session` over ``/v1/realtime``: the same questions, the same real-time
    pacing, as a Realtime client speaks them (JSON events, 24 kHz PCM, server VAD)."""
    log = SessionLog()
    step = int(chunk_ms * RATE_HZ / 1000)
    subject = f"bench-assistant-rt-{secrets.token_hex(4)}"
    url = target.http_url.replace("http", "ws", 1) + f"/v1/realtime?model={REALTIME_MODEL}"
    headers = {"Authorization": f"Bearer {target.mint(subject=subject)}"}
    t0 = time.perf_counter()
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        created = orjson.loads(await ws.recv())
        if created.get("type") != "session.created":
            raise RuntimeError(f"/v1/realtime: expected session.created, got {created}")
        log.open_ms = (time.perf_counter() - t0) * 1000.0
        update = {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {"input": {"transcription": {"model": "whisper-1"}}},
            },
        }
        await ws.send(orjson.dumps(update).decode())

        async def reader() -> None:
            async for frame in ws:
                t = time.monotonic()
                ev = orjson.loads(frame)
                if ev.get("type") == "error":
                    err = ev.get("error") or {}
                    log.errors.append(f"{err.get('code')}: {err.get('message')}")
                if log.turns:
                    _note_realtime(log.turns[-1], ev, t, threshold)

        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(reader())
            await asyncio.sleep(delay_s)
            clock = time.monotonic()
            sent = 0

            async def send(pcm: bytes) -> float:
                nonlocal sent
                wait = clock + sent / REALTIME_RATE_HZ - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                audio = base64.b64encode(pcm).decode()
                await ws.send(f'{{"type":"input_audio_buffer.append","audio":"{audio}"}}')
                sent += len(pcm) // 2
                return time.monotonic()

            out_step = 2 * step * REALTIME_RATE_HZ // RATE_HZ  # bytes of one chunk at 24 kHz
            silence = bytes(out_step)
            for audio_in, expect in questions:
                turn = Turn(expect)
                log.turns.append(turn)
                pcm = _pcm_at(audio_in, REALTIME_RATE_HZ)
                for i in range(0, len(pcm), out_step):
                    t = await send(pcm[i : i + out_step])
                    if i == 0:
                        turn.speech_start = t
                turn.speech_end = t
                deadline = time.monotonic() + REPLY_WAIT_S
                while not turn.got_done.is_set() and time.monotonic() < deadline:
                    await send(silence)
                for _ in range(int(GAP_S * 1000 / chunk_ms)):
                    await send(silence)
            task.cancel()
    return log


@dataclass(frozen=True)
class SpokenQuestion:
    """A question as 16 kHz samples (WS-only) and as Opus packets (WebRTC), with the packet
    that carries its last loud sample."""

    audio: np.ndarray[Any, np.dtype[np.float32]]
    expect: str
    packets: list[bytes]
    last_loud_packet: int


SILENCE_PACKET: list[bytes] = []  # one 20 ms Opus packet of silence, encoded on first use


def _spoken(audio: np.ndarray[Any, np.dtype[np.float32]], expect: str) -> SpokenQuestion:
    if not SILENCE_PACKET:
        SILENCE_PACKET.append(encode_opus(np.zeros(960 * 10, np.float32))[5])
    x48 = upsample_to_48k(audio, RATE_HZ)
    packets = encode_opus(x48)
    return SpokenQuestion(audio, expect, packets, min(len(packets), len(x48) // 960 + 1) - 1)


async def run_session_rtc(
    target: Target, questions: list[SpokenQuestion], *, delay_s: float, threshold: float
) -> SessionLog:
    """The same conversation over WebRTC: the questions go out as Opus on the client's track
    (silence between them, like a microphone), the reply is heard on the inbound track: its
    first 20 ms frame above the threshold after ``response.created`` is the first audio."""
    log = SessionLog()
    subject = f"bench-assistant-rtc-{secrets.token_hex(4)}"
    client, log.open_ms = await open_session(target, subject, {"mode": "assistant"})
    async with client:
        await asyncio.sleep(delay_s)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        track = OpusQueueTrack(SILENCE_PACKET[0])
        pc.addTransceiver(track, direction="sendrecv")
        try:
            log.connect_ms = await connect(client, pc)

            def heard(pcm: np.ndarray[Any, np.dtype[np.float32]], arrival: float) -> None:
                turn = log.turns[-1] if log.turns else None
                if turn is None or turn.created is None or turn.first_audio is not None:
                    return
                if len(pcm) and float(np.sqrt(np.mean(pcm**2))) > threshold:
                    turn.first_audio = arrival

            AudioTap(heard).install(pc)
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(_reader(client, log, threshold))
                for q in questions:
                    turn = Turn(q.expect)
                    log.turns.append(turn)
                    sent = await asyncio.gather(*track.play(q.packets))
                    turn.speech_start = sent[0]
                    turn.speech_end = sent[q.last_loud_packet]
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(turn.got_done.wait(), REPLY_WAIT_S)
                    await asyncio.sleep(GAP_S)
                with contextlib.suppress(Exception):
                    await client.close_session()
                reader.cancel()
        finally:
            await pc.close()
    return log


async def _engine_sums(target: Target) -> dict[str, tuple[float, float]] | None:
    """``{"asr.run_ms": (sum_s, count), ...}`` from the server's /metrics, or None."""
    text = await metrics_text(target)
    if text is None:
        return None
    sums: dict[str, list[float]] = {}
    names = {v: k for k, v in ENGINE_HISTOGRAMS.items()}
    names["tidegate_llm_prefill_seconds"] = "prefill_ms"
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        key, _, value = line.rpartition(" ")
        base, _, labels = key.partition("{")
        for suffix, i in (("_sum", 0), ("_count", 1)):
            if not base.endswith(suffix) or base[: -len(suffix)] not in names:
                continue
            measure = names[base[: -len(suffix)]]
            engine = "llm"
            if 'engine="' in labels:
                engine = labels.split('engine="', 1)[1].split('"', 1)[0]
            sums.setdefault(f"{engine}.{measure}", [0.0, 0.0])[i] = float(value)
    return {k: (v[0], v[1]) for k, v in sums.items()}


def _engine_split(
    before: dict[str, tuple[float, float]] | None, after: dict[str, tuple[float, float]] | None
) -> dict[str, dict[str, float]]:
    """Per engine, over one level: mean ms and count of each histogram (queue vs compute)."""
    out: dict[str, dict[str, float]] = {}
    if before is None or after is None:
        return out
    for key, (s1, n1) in sorted(after.items()):
        s0, n0 = before.get(key, (0.0, 0.0))
        engine, measure = key.split(".", 1)
        if n1 - n0 > 0:
            row = out.setdefault(engine, {})
            row[measure] = round((s1 - s0) * 1000 / (n1 - n0), 2)
            row[measure.removesuffix("_ms") + "_n"] = n1 - n0
    return out


SPECULATION_COUNTERS = ("speculations", "speculation_hits", "speculation_discarded")
GAP_COUNTERS = ("audio_gaps", "audio_gap_ms")


def _reply_counters(logs: list[SessionLog], names: tuple[str, ...]) -> dict[str, int]:
    """The reply lanes' counters ``names``, summed over the sessions' last ``metrics``
    events (a turn after the last event is not in them)."""
    out = dict.fromkeys(names, 0)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in out and isinstance(v, int):
                    out[k] += v
                else:
                    walk(v)

    for log in logs:
        walk(log.stats)
    return out


def _slow_turns(logs: list[SessionLog]) -> list[dict[str, Any]]:
    """The turns a user would call stalled: no completed reply, or no audio within
    ``SLOW_FIRST_AUDIO_S`` of the end of speech."""
    out = []
    for i, log in enumerate(logs):
        for j, t in enumerate(log.turns):
            m = t.measures()
            first = m.get("eos_to_first_audio_ms")
            completed = t.done is not None and t.done.status == "completed"
            if completed and first is not None and first <= SLOW_FIRST_AUDIO_S * 1000:
                continue
            out.append(
                {
                    "session": i,
                    "turn": j,
                    "heard": t.final[0].text if t.final else None,
                    "status": t.done.status if t.done else None,
                    "reason": t.done.reason if t.done else None,
                    "reply": t.done.text[:200] if t.done else None,
                    **{k: round(v, 1) for k, v in m.items()},
                }
            )
    return out


async def _level(
    target: Target,
    n: int,
    questions: list[SpokenQuestion],
    args: argparse.Namespace,
    meter: LoadMeter | None = None,
    transport: str = "ws",
    dialect: str = "tidegate",
) -> dict[str, Any]:
    current().stage(f"assistant {transport} ({dialect}): {n} session(s)")
    if meter is not None:
        await meter.start()
    run = await _sessions(target, n, questions, args, transport, dialect)
    load = await meter.stop(n) if meter is not None else None
    return _figures(run, n, args, transport, dialect, load)


@dataclass
class _Run:
    """What N sessions' run gave: their logs, the wall time, and what the server spent meanwhile
    (process CPU s, CPU s per thread, engine histogram sums and counts), as differences."""

    logs: list[SessionLog]
    wall: float
    cpu: float | None
    threads: dict[str, float] | None
    engines: dict[str, tuple[float, float]] | None

    def __add__(self, other: _Run) -> _Run:
        def add(a: dict[str, Any] | None, b: dict[str, Any] | None, zero: Any) -> Any:
            if a is None or b is None:
                return None
            return {k: _plus(a.get(k, zero), b.get(k, zero)) for k in {*a, *b}}

        return _Run(
            self.logs + other.logs,
            self.wall + other.wall,
            None if self.cpu is None or other.cpu is None else self.cpu + other.cpu,
            add(self.threads, other.threads, 0.0),
            add(self.engines, other.engines, (0.0, 0.0)),
        )


def _plus(a: Any, b: Any) -> Any:
    return (a[0] + b[0], a[1] + b[1]) if isinstance(a, tuple) else a + b


async def _sessions(
    target: Target,
    n: int,
    questions: list[SpokenQuestion],
    args: argparse.Namespace,
    transport: str,
    dialect: str,
) -> _Run:
    """N sessions speaking ``questions``, and what the server spent meanwhile."""
    cpu0 = process_cpu_s(target.pid) if target.pid else None
    threads0 = thread_cpu_s(target.pid) if target.pid else None
    sums0 = await _engine_sums(target)
    t0 = time.monotonic()
    threshold = 10 ** (args.audible_dbfs / 20)
    logs = await asyncio.gather(
        *(
            run_session_rtc(target, questions, delay_s=i / n, threshold=threshold)
            if transport == "rtc"
            else (run_session_realtime if dialect == "realtime" else run_session)(
                target,
                [(q.audio, q.expect) for q in questions],
                chunk_ms=args.chunk_ms,
                delay_s=i / n,
                threshold=threshold,
                **({} if dialect == "realtime" else {"rate_hz": args.tidegate_rate_hz}),
            )
            for i in range(n)
        )
    )
    wall = time.monotonic() - t0
    cpu1 = process_cpu_s(target.pid) if target.pid else None
    threads1 = thread_cpu_s(target.pid) if target.pid else None
    sums1 = await _engine_sums(target)
    threads = None
    if threads0 is not None and threads1 is not None:
        threads = {k: v - threads0.get(k, 0.0) for k, v in threads1.items()}
    engines = None
    if sums0 is not None and sums1 is not None:
        engines = {
            k: (v[0] - sums0.get(k, (0.0, 0.0))[0], v[1] - sums0.get(k, (0.0, 0.0))[1])
            for k, v in sums1.items()
        }
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return _Run(list(logs), wall, cpu, threads, engines)


def _figures(
    run: _Run,
    n: int,
    args: argparse.Namespace,
    transport: str,
    dialect: str,
    load: dict[str, Any] | None,
) -> dict[str, Any]:
    """One level's report from its sessions' run."""
    logs, wall = run.logs, run.wall
    values: dict[str, list[float]] = {k: [] for k in (*MEASURES, *STAGES)}
    turns = [t for log in logs for t in log.turns]
    intervals: list[float] = []
    for turn in turns:
        for k, v in turn.measures().items():
            values[k].append(v)
        times = turn.delta_times
        intervals += [(b - a) * 1000 for a, b in itertools.pairwise(times)]
    completed = sum(t.done is not None and t.done.status == "completed" for t in turns)
    errors = [e for log in logs for e in log.errors]
    out: dict[str, Any] = {
        "dialect": dialect,
        "sessions": n,
        "turns": len(turns),
        "wall_s": wall,
        **{k: distribution(values[k]) for k in MEASURES},
        "token_interval_ms": distribution(intervals),
        "stages": {k: percentiles(values[k]) for k in STAGES},
        "engines": _engine_split({}, run.engines),
        "slow_turns": _slow_turns(logs),
        "speculation": _reply_counters(logs, SPECULATION_COUNTERS),
        # replies whose speech ran dry mid-reply (next chunk not ready): what a shorter first
        # chunk (assistant_first_chunk_words) may cost
        "audio_gaps": _reply_counters(logs, GAP_COUNTERS),
        "completed": completed,
        "answers_ok": sum(
            t.done is not None and t.expect in t.done.text.lower().replace("seven", "7")
            for t in turns
        ),
        "turns_without_partial": sum(t.partial is None for t in turns),
        "heard_and_replied": [
            [t.final[0].text if t.final else None, t.done.text if t.done else None]
            for t in (t for log in logs[::n] for t in log.turns)  # the first session's
        ],
        "errors": errors[:10],
        # real time: every reply completed, nothing refused, and the first reply audio came
        # within --max-latency-ms of the end of speech (p90)
        "real_time_held": completed == len(turns)
        and not errors
        and values["eos_to_first_audio_ms"] != []
        and percentiles(values["eos_to_first_audio_ms"])["p90"] <= args.max_latency_ms,
    }
    if load is not None:
        out["load"] = load
    out["session_open_ms"] = percentiles([x.open_ms for x in logs if x.open_ms is not None])
    if transport == "rtc":
        out["connect_ms"] = percentiles([x.connect_ms for x in logs if x.connect_ms is not None])
    if run.cpu is not None:
        out["server_cpu_s"] = run.cpu
    if run.threads is not None:
        out["thread_cpu_s"] = {
            k: round(v, 2)
            for k, v in sorted(run.threads.items(), key=lambda kv: -kv[1])
            if v >= 0.01
        }
    return out


async def _alternated(
    target: Target,
    n: int,
    questions: list[SpokenQuestion],
    args: argparse.Namespace,
    dialects: list[str],
) -> dict[str, dict[str, Any]]:
    """Each question over every dialect in turn (N sessions each), WS only; per dialect its
    level from all its turns (wall time and the server's spending summed over its rounds)."""
    runs: dict[str, _Run | None] = dict.fromkeys(dialects)
    for i, question in enumerate(questions):
        for dialect in dialects:
            current().stage(f"assistant ws ({dialect}): {n} session(s), question {i + 1}")
            got = await _sessions(target, n, [question], args, "ws", dialect)
            before = runs[dialect]
            runs[dialect] = got if before is None else before + got
    levels = {d: _figures(r, n, args, "ws", d, None) for d, r in runs.items() if r is not None}
    tide, real = runs.get("tidegate"), runs.get("realtime")
    if tide is not None and real is not None and "realtime" in levels:
        levels["realtime"]["paired_minus_tidegate_ms"] = _paired(tide, real)
    return levels


def _paired(tidegate: _Run, realtime: _Run) -> dict[str, Any]:
    """First audio of the same question by the same session slot over /v1/realtime less over
    the control channel, turn by turn (the runs alternate question by question): their
    distribution, which cancels what a question itself costs."""
    diffs = []
    for a, b in zip(tidegate.logs, realtime.logs, strict=True):
        for ta, tb in zip(a.turns, b.turns, strict=True):
            ma, mb = ta.measures(), tb.measures()
            if "eos_to_first_audio_ms" in ma and "eos_to_first_audio_ms" in mb:
                diffs.append(mb["eos_to_first_audio_ms"] - ma["eos_to_first_audio_ms"])
    return distribution(diffs)


@scenario(
    "assistant",
    "voice to voice: end of speech to final, first token and first reply audio, N sessions",
    add_args=_args,
    server_env={"TIDEGATE_ENGINES": "vad,asr,llm,tts", **_default_data_dir()},
    env_from_args=lambda args: {
        "TIDEGATE_RESULT_CACHES": "on" if args.result_caches else "off",
        **({"TIDEGATE_ENGINES": "vad,asr,llm,tts,turn"} if args.turn else {}),
    },
)
async def run(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed (make setup does)")
    with tempfile.TemporaryDirectory(prefix="tidegate-bench-assistant-") as tmp:
        chosen = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.turns)]
        questions = [_spoken(speak(q, Path(tmp)), expect) for q, expect in chosen]
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if not transports or set(transports) - {"ws", "rtc"}:
        raise SystemExit(f"--transports: expected ws and/or rtc, got {args.transports!r}")
    dialects = [d.strip() for d in args.dialect.split(",") if d.strip()]
    if not dialects or set(dialects) - {"tidegate", "realtime"}:
        raise SystemExit(f"--dialect: expected tidegate and/or realtime, got {args.dialect!r}")
    loopback_ice()
    results: dict[str, Any] = {
        "chunk_ms": args.chunk_ms,
        "turns": args.turns,
        # a started server's setting; a server given by --url keeps its own
        "result_caches": args.result_caches if target.pid else None,
    }
    meter = LoadMeter(target)
    results["idle"] = await meter.baseline()
    counts = session_counts(args.sessions, ramp=args.ramp, ramp_max=args.ramp_max)
    alternate = "ws" in transports and len(dialects) > 1
    if args.tidegate_rate_hz is None:
        args.tidegate_rate_hz = REALTIME_RATE_HZ if alternate else RATE_HZ
    elif args.tidegate_rate_hz not in (RATE_HZ, REALTIME_RATE_HZ):
        raise SystemExit(f"--tidegate-rate-hz: 16000 or 24000, got {args.tidegate_rate_hz}")
    results["input_rate_hz"] = {"tidegate": args.tidegate_rate_hz, "realtime": REALTIME_RATE_HZ}
    if alternate:  # both dialects, question by question, on the same load
        per: dict[str, list[dict[str, Any]]] = {d: [] for d in dialects}
        for n in counts:
            for dialect, level in (await _alternated(target, n, questions, args, dialects)).items():
                per[dialect].append(level)
                print(f"ws ({dialect}): {_summary(level)}", file=sys.stderr)
        results["alternated"] = True
        results["levels"] = per["tidegate"]
        results["real_time_lost_at"] = real_time_lost_at(per["tidegate"])
        results["realtime"] = {
            "levels": per["realtime"],
            "real_time_lost_at": real_time_lost_at(per["realtime"]),
        }
    runs = [] if alternate else [("ws", d) for d in dialects if "ws" in transports]
    runs += [("rtc", "tidegate")] if "rtc" in transports and "tidegate" in dialects else []
    for transport, dialect in runs:
        levels: list[dict[str, Any]] = []
        for n in counts:
            level = await _level(target, n, questions, args, meter, transport, dialect)
            levels.append(level)
            print(f"{transport} ({dialect}): {_summary(level)}", file=sys.stderr)
            if args.ramp and not level["real_time_held"]:
                break
        lost = real_time_lost_at(levels)
        if dialect == "realtime":
            results["realtime"] = {"levels": levels, "real_time_lost_at": lost}
        elif transport == "ws":  # the WS-only figures keep their place of earlier reports
            results["levels"], results["real_time_lost_at"] = levels, lost
        else:
            results["rtc"] = {"levels": levels, "real_time_lost_at": lost}
    if "levels" in results and "realtime" in results:
        results["dialects"] = _compare_dialects(results["levels"], results["realtime"]["levels"])
    results["target"] = {
        "eos_to_first_audio_p50_ms_max": 1200.0,
        "realtime_minus_tidegate_p50_ms_max": 10.0,
    }
    return results


def _compare_dialects(
    tidegate: list[dict[str, Any]], realtime: list[dict[str, Any]]
) -> dict[str, Any]:
    """Per session count run over both dialects: first audio p50 over /v1/realtime less the
    same over the control channel (ms; the target is within 10)."""
    out: dict[str, Any] = {}
    by_n = {level["sessions"]: level for level in tidegate}
    for level in realtime:
        other = by_n.get(level["sessions"])
        a, b = level["eos_to_first_audio_ms"], (other or {}).get("eos_to_first_audio_ms", {})
        if other is not None and a.get("n") and b.get("n"):
            out[str(level["sessions"])] = {
                "realtime_minus_tidegate_p50_ms": a["p50"] - b["p50"],
                "realtime_p50_ms": a["p50"],
                "tidegate_p50_ms": b["p50"],
                # alternated runs: the same turn's difference (see _paired)
                "paired_p50_ms": (level.get("paired_minus_tidegate_ms") or {}).get("p50"),
            }
    return {"realtime_minus_tidegate_p50_ms": out}


def _summary(r: dict[str, Any]) -> str:
    def p(d: dict[str, float]) -> str:
        return f"{d['p50']:.0f}/{d['p90']:.0f}" if d.get("n") else "-"

    stages = ", ".join(f"{k} {p(v)}" for k, v in r["stages"].items())
    sp = r.get("speculation") or dict.fromkeys(SPECULATION_COUNTERS, 0)
    gaps = r.get("audio_gaps") or dict.fromkeys(GAP_COUNTERS, 0)
    engines = "; ".join(
        f"{name} " + " ".join(f"{k} {v:g}" for k, v in row.items() if k.endswith("_ms"))
        for name, row in r.get("engines", {}).items()
    )
    return (
        f"sessions {r['sessions']}: eos->final {p(r['eos_to_final_ms'])} ms, first token "
        f"{p(r['eos_to_first_token_ms'])} ms, first audio {p(r['eos_to_first_audio_ms'])} ms "
        f"(p50/p90); {stages}; completed {r['completed']}/{r['turns']}, answers ok "
        f"{r['answers_ok']}; engines (mean ms): {engines}; slow turns {len(r['slow_turns'])}; "
        f"speculative starts adopted {sp['speculation_hits']}/{sp['speculations']}; "
        f"audio gaps {gaps['audio_gaps']} ({gaps['audio_gap_ms']} ms)"
    )
