"""The translator against a real tidegate server: a test shell bridges a Realtime "client"
(this test, speaking JSON events) and a tidegate session over the control channel. Real speech
and real engines (VAD, Whisper, the local LLM, Piper); every event checked against the SDK."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from tests.engines.asr_audio import BECKETT, read_wav
from tests.server.conftest import LiveServer, make_settings, run_server
from tests.support import prepare_models, scaled, wait_ready
from tidegate.bench.wer import wer
from tidegate.media.realtime_audio import RealtimeAudioCodec
from tidegate.media.resample import StreamResampler
from tidegate.protocol.client import Client
from tidegate.protocol.messages import ClientMessage, OutputAudio, ServerMessage, SessionCreate
from tidegate.protocol.realtime import RealtimeTranslator

from .conformance import check_all
from .samples import b64, frame

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[3]
MODELS = ("silero-vad", "whisper-tiny-en", "smollm2-135m", "piper-joe")
CHUNK_MS = 40


@pytest.fixture(scope="module")
def prepared() -> Path:
    return prepare_models(*MODELS)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(
    tmp_path_factory: pytest.TempPathFactory, prepared: Path
) -> AsyncIterator[LiveServer]:
    """One server with the assistant's four engines for the module."""
    tmp = tmp_path_factory.mktemp("realtime")
    (tmp / "models").symlink_to(prepared / "models")
    # Speech cuts a reply at once (interrupt_confirm_s 0): the barge-in test is about the
    # Realtime mapping of a cut, not about how the ASR reads the question (the interruption
    # policy: tests/pipelines/test_interruptions.py). Its microphone carries the question and
    # no echo, so the WS-only echo canceller is off: over the reply, AEC3 sometimes swallowed
    # the question's onset (no speech_started in one run of three; the double-talk loss that
    # `tidegate bench turns` measures, docs/ears.md), which is not what this test is about.
    settings = make_settings(
        tmp,
        engines=("vad", "asr", "llm", "tts"),
        interrupt_confirm_s=0.0,
        audio_echo_cancellation="off",
    )
    async with run_server(settings) as server:
        await wait_ready(server.http, timeout_s=120)
        yield server


class Bridge:
    """The shell a /v1/realtime route will be, over tidegate's Python client for the test."""

    def __init__(self, client: Client, translator: RealtimeTranslator) -> None:
        self.client = client
        self.t = translator
        self.events: list[dict[str, Any]] = []  # what the Realtime client received
        self.tidegate: list[ServerMessage] = []  # what tidegate sent
        self.t0 = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self.t0) * 1000.0

    async def open(self) -> None:
        self.t.start(self.now())
        (create,) = self.t.to_session()
        assert isinstance(create, SessionCreate)
        created = await self.client.create_session(create.config)
        self.t.receive_message(created, self.now())
        self.events += check_all(self.t.data_to_send())

    async def pump(self) -> None:
        for item in self.t.to_session():
            assert isinstance(item, ClientMessage), item  # no command needed in these turns
            await self.client.send(item)

    async def send(self, event: dict[str, Any], now_ms: float | None = None) -> None:
        self.t.receive_text(frame(event), self.now() if now_ms is None else now_ms)
        self.events += check_all(self.t.data_to_send())
        await self.pump()

    async def read(self) -> None:
        async for msg in self.client:
            self.tidegate.append(msg)
            self.t.receive_message(msg, self.now())
            self.events += check_all(self.t.data_to_send())
            await self.pump()

    def of(self, etype: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == etype]

    async def until(self, done: Any, timeout_s: float) -> None:
        async with asyncio.timeout(scaled(timeout_s)):
            while not done():
                await asyncio.sleep(0.05)


async def test_transcription_session_over_real_speech(live: LiveServer) -> None:
    """A transcription session fed beckett.wav as 24 kHz appends: VAD items, deltas that add
    up to each completed transcript, and transcripts that read the clip."""
    speech = read_wav(ROOT / ".cache" / "assets" / "beckett.wav")
    pcm16k = (
        np.clip(np.concatenate([speech, np.zeros(16_000, np.float32)]), -1, 1) * 32767
    ).astype(np.int16)
    r = StreamResampler(16_000, 24_000)
    pcm24k = np.concatenate([r.process(pcm16k), r.flush()]).astype("<i2").tobytes()
    step = 24 * 2 * CHUNK_MS
    async with await live.client() as client:
        b = Bridge(
            client, RealtimeTranslator(audio=RealtimeAudioCodec(), session_type="transcription")
        )
        await b.open()
        assert b.events[0]["type"] == "session.created"
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(b.read())
            for i in range(0, len(pcm24k), step):
                # Media time is the clock here: appends are never ahead of it; the control
                # channel's credit paces the real sending.
                await b.send(
                    {"type": "input_audio_buffer.append", "audio": b64(pcm24k[i : i + step])},
                    now_ms=i / 48.0,
                )
            await b.until(
                lambda: (
                    b.of("input_audio_buffer.speech_stopped")
                    and len(b.of("conversation.item.input_audio_transcription.completed"))
                    >= len(b.of("input_audio_buffer.speech_stopped"))
                ),
                60,
            )
            reader.cancel()
        await client.close_session()
    assert not b.of("error"), b.of("error")
    completed = b.of("conversation.item.input_audio_transcription.completed")
    text = " ".join(e["transcript"] for e in completed)
    assert wer(BECKETT, text) <= 0.2, text
    committed = {e["item_id"] for e in b.of("input_audio_buffer.committed")}
    for done in completed:
        assert done["item_id"] in committed
        deltas = [
            e["delta"]
            for e in b.of("conversation.item.input_audio_transcription.delta")
            if e["item_id"] == done["item_id"]
        ]
        assert "".join(deltas) == done["transcript"]
        assert done["usage"]["type"] == "duration" and done["usage"]["seconds"] > 0


async def test_text_turn_speaks_back_in_g711(live: LiveServer) -> None:
    """A text item and response.create get a spoken reply: transcript deltas, mu-law audio of
    exactly the duration tidegate produced, and response.done with the transcript."""
    async with await live.client() as client:
        b = Bridge(client, RealtimeTranslator(audio=RealtimeAudioCodec()))
        await b.open()
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(b.read())
            await b.send(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "audio": {"output": {"format": {"type": "audio/pcmu"}}},
                    },
                }
            )
            await b.send(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "Say hello."}],
                    },
                }
            )
            await b.send({"type": "response.create", "event_id": "go"})
            await b.until(lambda: b.of("response.done"), 120)
            reader.cancel()
        await client.close_session()
    assert not b.of("error"), b.of("error")
    assert b.of("session.updated")[0]["session"]["audio"]["output"]["format"] == {
        "type": "audio/pcmu"
    }
    (done,) = b.of("response.done")
    assert done["response"]["status"] == "completed"
    (message,) = done["response"]["output"]
    transcript = message["content"][0]["transcript"]
    assert transcript and transcript == "".join(
        e["delta"] for e in b.of("response.output_audio_transcript.delta")
    )
    audio = b"".join(base64.b64decode(e["delta"]) for e in b.of("response.output_audio.delta"))
    spoken_48k = sum(len(m.pcm) // 2 for m in b.tidegate if isinstance(m, OutputAudio))
    assert spoken_48k > 0
    assert len(audio) == -(-spoken_48k // 6)  # 8 kHz mu-law: one byte per sample, exactly


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, int]:
    """A question spoken by espeak-ng: int16 mono samples and their rate."""
    wav = tmp_path_factory.mktemp("speech") / "q.wav"
    subprocess.run(
        ["espeak-ng", "-s", "150", "-w", str(wav), "What is the capital of France?"], check=True
    )
    with wave.open(str(wav)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16), w.getframerate()


async def test_spoken_turn(live: LiveServer, question: tuple[np.ndarray, int]) -> None:
    """A spoken question (espeak-ng, resampled to 24 kHz) under server VAD: the user item is
    committed and transcribed, then a response speaks back with its transcript; the
    assistant item follows the user's."""
    pcm, rate = question
    pcm = np.concatenate([np.zeros(rate // 2, np.int16), pcm, np.zeros(rate * 2, np.int16)])
    r = StreamResampler(rate, 24_000)
    pcm24k = np.concatenate([r.process(pcm), r.flush()]).astype("<i2").tobytes()
    step = 24 * 2 * CHUNK_MS
    async with await live.client() as client:
        b = Bridge(client, RealtimeTranslator(audio=RealtimeAudioCodec()))
        await b.open()
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(b.read())
            await b.send(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                    },
                }
            )
            for i in range(0, len(pcm24k), step):
                await b.send(
                    {"type": "input_audio_buffer.append", "audio": b64(pcm24k[i : i + step])},
                    now_ms=i / 48.0,
                )
            await b.until(lambda: b.of("response.done"), 120)
            reader.cancel()
        await client.close_session()
    assert not b.of("error"), b.of("error")
    kinds = [e["type"] for e in b.events]
    for earlier, later in [
        ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"),
        ("input_audio_buffer.speech_stopped", "input_audio_buffer.committed"),
        ("input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed"),
        ("conversation.item.input_audio_transcription.completed", "response.created"),
        ("response.created", "response.output_audio.delta"),
        ("response.output_audio.delta", "response.done"),
    ]:
        assert kinds.index(earlier) < kinds.index(later), (earlier, later)
    (completed,) = b.of("conversation.item.input_audio_transcription.completed")
    assert "capital" in completed["transcript"].lower(), completed["transcript"]
    user = completed["item_id"]
    added = [e for e in b.of("conversation.item.added") if e["item"]["role"] == "assistant"]
    assert added[0]["previous_item_id"] == user
    (done,) = b.of("response.done")
    assert done["response"]["status"] == "completed"
    assert done["response"]["output"][0]["content"][0]["transcript"]


async def test_barge_in_then_truncate(live: LiveServer, question: tuple[np.ndarray, int]) -> None:
    """Speaking over a reply: speech_started, response.done cancelled (turn_detected) with an
    incomplete item whose transcript is a prefix of what was generated; truncating it at the
    audio received is accepted."""
    pcm, rate = question
    r = StreamResampler(rate, 24_000)
    pcm24k = (
        np.concatenate([r.process(pcm), r.flush(), np.zeros(24_000, np.int16)])
        .astype("<i2")
        .tobytes()
    )
    silence = bytes(24 * 2 * CHUNK_MS)
    step = len(silence)
    async with await live.client() as client:
        b = Bridge(client, RealtimeTranslator(audio=RealtimeAudioCodec()))
        await b.open()
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(b.read())
            await b.send(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "Tell me a long story about a cat."}
                        ],
                    },
                }
            )
            await b.send({"type": "response.create"})
            media_ms = 0.0
            # Silence (a live microphone) until the reply is heard for a while, then speech.
            while len(b.of("response.output_audio.delta")) < 25:
                await b.send(
                    {"type": "input_audio_buffer.append", "audio": b64(silence)}, now_ms=media_ms
                )
                media_ms += CHUNK_MS
                await asyncio.sleep(CHUNK_MS / 1000)
            for i in range(0, len(pcm24k), step):
                await b.send(
                    {"type": "input_audio_buffer.append", "audio": b64(pcm24k[i : i + step])},
                    now_ms=media_ms,
                )
                media_ms += CHUNK_MS
                if b.of("response.done"):
                    break
                await asyncio.sleep(CHUNK_MS / 1000)
            await b.until(lambda: b.of("response.done"), 60)
            item = b.of("response.done")[0]["response"]["output"][0]
            heard_ms = (
                sum(
                    len(base64.b64decode(e["delta"]))
                    for e in b.of("response.output_audio.delta")
                    if e["item_id"] == item["id"]
                )
                / 48
            )
            await b.send(
                {
                    "type": "conversation.item.truncate",
                    "item_id": item["id"],
                    "content_index": 0,
                    "audio_end_ms": int(heard_ms) - 100,
                }
            )
            reader.cancel()
        await client.close_session()
    kinds = [e["type"] for e in b.events]
    first_done = kinds.index("response.done")
    assert "input_audio_buffer.speech_started" in kinds[:first_done]
    done = b.events[first_done]["response"]
    assert done["status"] == "cancelled", done["status"]
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert item["status"] == "incomplete"
    generated = "".join(e["delta"] for e in b.of("response.output_audio_transcript.delta"))
    assert generated.startswith(item["content"][0]["transcript"])
    assert len(item["content"][0]["transcript"]) < len(generated)
    (truncated,) = b.of("conversation.item.truncated")
    assert truncated["item_id"] == item["id"]
    assert not b.of("error"), b.of("error")
