"""``/v1/realtime`` end to end with the official ``openai`` SDK: a real server on loopback with
the assistant's engines (Silero VAD, Whisper, the local LLM, Piper), real speech, and a client
that is an unchanged Realtime client but for its base URL and key (tidegate's JWT)."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import pytest_asyncio
import websockets
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeConversationItemUserMessageParam, RealtimeServerEvent
from websockets.typing import Subprotocol

from tests.engines.asr_audio import BECKETT, read_wav
from tests.protocol.realtime.conformance import check_server_event
from tests.support import prepare_models, scaled, wait_ready
from tidegate.bench.wer import wer
from tidegate.media.resample import StreamResampler

from .conftest import LiveServer, make_settings, run_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("silero-vad", "whisper-tiny-en", "smollm2-135m", "piper-joe")
CHUNK_MS = 40
LEAD_MS = 1_000.0  # how far ahead of real time the test streams (the server allows 2.5 s)


@pytest.fixture(scope="module")
def prepared() -> Path:
    return prepare_models(*MODELS)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(
    tmp_path_factory: pytest.TempPathFactory, prepared: Path
) -> AsyncIterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("realtime-ws")
    (tmp / "models").symlink_to(prepared / "models")
    # Speech cuts a reply at once (interrupt_confirm_s 0): these tests are about the Realtime
    # mapping of a cut, which must not depend on how fast and how well the ASR reads a
    # question through the WS-only echo canceller on a loaded machine (the interruption
    # policy is tested in tests/pipelines/test_interruptions.py; a resumed reply seen by a
    # Realtime client in tests/protocol/realtime/test_translator.py).
    settings = make_settings(
        tmp,
        engines=("vad", "asr", "llm", "tts"),
        allowed_origins=(),
        send_timeout_s=2.0,
        interrupt_confirm_s=0.0,
    )
    async with run_server(settings) as server:
        await wait_ready(server.http, timeout_s=120)
        yield server


def openai_client(live: LiveServer, **kw: Any) -> AsyncOpenAI:
    """What an existing Realtime client changes: the base URL and the key, nothing else."""
    return AsyncOpenAI(base_url=f"{live.http}/v1", api_key=live.token(**kw))


def pcm24k(pcm: np.ndarray, rate: int) -> bytes:
    r = StreamResampler(rate, 24_000)
    return np.concatenate([r.process(pcm), r.flush()]).astype("<i2").tobytes()


def speech(text: str, tmp: Path) -> bytes:
    """``text`` spoken by espeak-ng, as 24 kHz s16le, with silence around it."""
    wav = tmp / "q.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), text], check=True)
    with wave.open(str(wav)) as w:
        pcm, rate = np.frombuffer(w.readframes(w.getnframes()), np.int16), w.getframerate()
    pcm = np.concatenate([np.zeros(rate // 2, np.int16), pcm, np.zeros(rate * 2, np.int16)])
    return pcm24k(pcm, rate)


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return speech("What is the capital of France?", tmp_path_factory.mktemp("speech"))


class Events:
    """Everything the SDK's connection received, typed by the SDK and as plain dicts."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.typed: list[RealtimeServerEvent] = []
        self.all: list[dict[str, Any]] = []

    async def read(self) -> None:
        async for event in self.connection:
            self.typed.append(event)
            self.all.append(event.model_dump(exclude_unset=True))

    def of(self, etype: str) -> list[dict[str, Any]]:
        return [e for e in self.all if e["type"] == etype]

    async def until(self, done: Callable[[], Any], timeout_s: float = 120) -> None:
        async with asyncio.timeout(scaled(timeout_s)):
            while not done():
                await asyncio.sleep(0.05)

    def kinds(self) -> list[str]:
        return [e["type"] for e in self.all]


async def stream(connection: Any, pcm: bytes, stop: Callable[[], bool] | None = None) -> None:
    """Append 24 kHz audio in 40 ms events, at most ``LEAD_MS`` ahead of real time."""
    step = 24 * 2 * CHUNK_MS
    t0 = time.monotonic()
    for i in range(0, len(pcm), step):
        if stop is not None and stop():
            return
        media_ms = i / 48.0
        ahead_s = (media_ms - LEAD_MS) / 1000.0 - (time.monotonic() - t0)
        if ahead_s > 0:
            await asyncio.sleep(ahead_s)
        await connection.input_audio_buffer.append(
            audio=base64.b64encode(pcm[i : i + step]).decode()
        )


async def session(
    live: LiveServer,
    body: Callable[[Any, Events], Awaitable[None]],
    **connect: Any,
) -> Events:
    """Connect with the SDK, read every event while ``body`` runs, then leave."""
    client = openai_client(live)
    async with client.realtime.connect(model="gpt-realtime", **connect) as connection:
        events = Events(connection)
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(events.read())
            await events.until(lambda: events.of("session.created"), 30)
            await body(connection, events)
            reader.cancel()
    return events


def user_text(text: str) -> RealtimeConversationItemUserMessageParam:
    """A user message item of ``text``, as conversation.item.create takes it."""
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def no_errors(events: Events) -> None:
    assert not events.of("error"), events.of("error")


async def test_text_turn_with_the_sdk(live: LiveServer) -> None:
    """A text item and response.create: a spoken reply (transcript deltas that add up, audio
    deltas of 24 kHz PCM) and response.done completed; session.created names the model."""

    async def body(connection: Any, events: Events) -> None:
        await connection.conversation.item.create(item=user_text("Say hello."))
        await connection.response.create()
        await events.until(lambda: events.of("response.done"))

    events = await session(live, body)
    no_errors(events)
    (created,) = events.of("session.created")
    assert created["session"]["model"] == "gpt-realtime"
    (done,) = events.of("response.done")
    assert done["response"]["status"] == "completed"
    transcript = done["response"]["output"][0]["content"][0]["transcript"]
    deltas = "".join(e["delta"] for e in events.of("response.output_audio_transcript.delta"))
    assert transcript and transcript == deltas
    audio = b"".join(base64.b64decode(e["delta"]) for e in events.of("response.output_audio.delta"))
    assert len(audio) > 24_000  # more than half a second of 24 kHz s16le


async def test_spoken_turn_with_the_sdk(live: LiveServer, question: bytes) -> None:
    """Real speech under server VAD: speech_started/stopped, committed, the transcription
    (deltas and completed), then a spoken response with its transcript, in that order."""

    async def body(connection: Any, events: Events) -> None:
        await connection.session.update(
            session={
                "type": "realtime",
                "audio": {"input": {"transcription": {"model": "whisper-1"}}},
            }
        )
        await stream(connection, question, stop=lambda: bool(events.of("response.done")))
        await events.until(lambda: events.of("response.done"))

    events = await session(live, body)
    no_errors(events)
    kinds = events.kinds()
    for earlier, later in [
        ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"),
        ("input_audio_buffer.speech_stopped", "input_audio_buffer.committed"),
        ("conversation.item.input_audio_transcription.delta", "response.created"),
        ("input_audio_buffer.committed", "conversation.item.input_audio_transcription.completed"),
        ("response.created", "response.output_audio.delta"),
        ("response.output_audio.delta", "response.done"),
    ]:
        assert kinds.index(earlier) < kinds.index(later), (earlier, later)
    (completed,) = events.of("conversation.item.input_audio_transcription.completed")
    assert "capital" in completed["transcript"].lower(), completed["transcript"]
    (done,) = events.of("response.done")
    assert done["response"]["status"] == "completed"
    assert done["response"]["output"][0]["content"][0]["transcript"]


async def test_transcription_session_with_the_sdk(live: LiveServer) -> None:
    """``intent=transcription`` (the SDK's extra_query): beckett.wav streamed at about real
    time is transcribed (WER <= 0.2), each item's deltas adding up to its transcript, and no
    response is made."""
    audio = read_wav(ROOT / ".cache" / "assets" / "beckett.wav")
    pcm = (np.clip(np.concatenate([audio, np.zeros(16_000, np.float32)]), -1, 1) * 32767).astype(
        np.int16
    )
    clip = pcm24k(pcm, 16_000)

    async def body(connection: Any, events: Events) -> None:
        assert events.of("session.created")[0]["session"]["type"] == "transcription"
        await stream(connection, clip)
        await events.until(
            lambda: (
                events.of("input_audio_buffer.speech_stopped")
                and len(events.of("conversation.item.input_audio_transcription.completed"))
                >= len(events.of("input_audio_buffer.speech_stopped"))
            ),
            60,
        )

    events = await session(live, body, extra_query={"intent": "transcription"})
    no_errors(events)
    completed = events.of("conversation.item.input_audio_transcription.completed")
    text = " ".join(e["transcript"] for e in completed)
    assert wer(BECKETT, text) <= 0.2, text
    for done in completed:
        deltas = [
            e["delta"]
            for e in events.of("conversation.item.input_audio_transcription.delta")
            if e["item_id"] == done["item_id"]
        ]
        assert "".join(deltas) == done["transcript"]
    assert not events.of("response.created")


async def test_manual_turn_commit_clear_and_per_response_options(
    live: LiveServer, question: bytes
) -> None:
    """turn_detection null with text output: audio that is cleared makes no item; committed
    speech becomes a user item with its transcript and no reply by itself; response.create
    with its own instructions answers it in text only, with real token counts in usage."""

    async def body(connection: Any, events: Events) -> None:
        await connection.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["text"],
                "audio": {
                    "input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}
                },
            }
        )
        await events.until(lambda: events.of("session.updated") or events.of("error"), 30)
        await stream(connection, question[: len(question) // 3])
        await connection.input_audio_buffer.clear()
        await events.until(lambda: events.of("input_audio_buffer.cleared"), 30)
        await stream(connection, question)
        await connection.input_audio_buffer.commit()
        await events.until(lambda: events.of("conversation.item.done"), 60)
        assert not events.of("response.created")  # a commit does not answer by itself
        await connection.response.create(
            response={"instructions": "You are a geography teacher. Answer in one sentence."}
        )
        await events.until(lambda: events.of("response.done"))

    events = await session(live, body)
    no_errors(events)
    (updated,) = events.of("session.updated")
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    assert not events.of("input_audio_buffer.speech_started")  # no VAD events when manual
    (committed,) = events.of("input_audio_buffer.committed")
    (completed,) = events.of("conversation.item.input_audio_transcription.completed")
    assert completed["item_id"] == committed["item_id"]
    assert "capital" in completed["transcript"].lower(), completed["transcript"]
    (done,) = events.of("response.done")
    response = done["response"]
    assert response["status"] == "completed" and response["output_modalities"] == ["text"]
    text = response["output"][0]["content"][0]["text"]
    assert text and text == "".join(e["delta"] for e in events.of("response.output_text.delta"))
    assert not events.of("response.output_audio.delta")
    usage = response["usage"]
    assert usage["input_tokens"] > 20 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_server_vad_without_create_response(live: LiveServer, question: bytes) -> None:
    """server_vad with create_response false and a silence_duration_ms: the spoken turn is
    committed and transcribed but answers nothing until response.create, which answers it;
    max_output_tokens bounds the reply (usage counts it)."""

    async def body(connection: Any, events: Events) -> None:
        await connection.session.update(
            session={
                "type": "realtime",
                "output_modalities": ["text"],
                "max_output_tokens": 5,
                "audio": {
                    "input": {
                        "transcription": {"model": "whisper-1"},
                        "turn_detection": {
                            "type": "server_vad",
                            "create_response": False,
                            "silence_duration_ms": 300,
                        },
                    }
                },
            }
        )
        await events.until(lambda: events.of("session.updated") or events.of("error"), 30)
        await stream(connection, question)
        await events.until(
            lambda: events.of("conversation.item.input_audio_transcription.completed"), 60
        )
        await asyncio.sleep(1.0)  # longer than the turn's wait: no response came by itself
        assert not events.of("response.created")
        await connection.response.create()
        await events.until(lambda: events.of("response.done"))

    events = await session(live, body)
    no_errors(events)
    (completed,) = events.of("conversation.item.input_audio_transcription.completed")
    assert "capital" in completed["transcript"].lower(), completed["transcript"]
    (done,) = events.of("response.done")
    assert done["response"]["status"] == "completed"
    assert 0 < done["response"]["usage"]["output_tokens"] <= 5


async def test_transcription_language_is_the_asr_language(live: LiveServer) -> None:
    """audio.input.transcription.language is the session's ASR language, checked against the
    model: the English-only Whisper refuses 'de' naming why, and takes 'en'."""

    def update(language: str, event_id: str) -> dict[str, Any]:
        transcription = {"model": "whisper-1", "language": language}
        return {
            "session": {"type": "realtime", "audio": {"input": {"transcription": transcription}}},
            "event_id": event_id,
        }

    async def body(connection: Any, events: Events) -> None:
        await connection.session.update(**update("de", "de1"))
        await events.until(lambda: events.of("error"), 30)
        await connection.session.update(**update("en", "en1"))
        await events.until(lambda: events.of("session.updated"), 30)

    events = await session(live, body)
    (error,) = events.of("error")
    assert error["error"]["event_id"] == "de1" and "English-only" in error["error"]["message"]
    (updated,) = events.of("session.updated")
    # session.updated follows the runtime's confirmation: the ASR language took
    assert updated["session"]["audio"]["input"]["transcription"]["language"] == "en"


async def test_openai_voices_are_the_default_and_unknown_ones_are_refused(
    live: LiveServer,
) -> None:
    """An OpenAI voice name (``alloy``: what a client written for the hosted API sends) is
    the server's default voice, and session.updated shows the name given; a voice that is
    neither OpenAI's nor the server's is refused naming it and the voices there are, with the
    event's id; the session goes on."""

    async def body(connection: Any, events: Events) -> None:
        await connection.session.update(
            session={"type": "realtime", "audio": {"output": {"voice": "alloy"}}},
            event_id="v0",
        )
        await events.until(lambda: events.of("session.updated") or events.of("error"), 30)
        await connection.session.update(
            session={"type": "realtime", "audio": {"output": {"voice": "nightingale"}}},
            event_id="v1",
        )
        await events.until(lambda: events.of("error"), 30)

    events = await session(live, body)
    (updated,) = events.of("session.updated")
    assert updated["session"]["audio"]["output"]["voice"] == "alloy"
    (error,) = events.of("error")
    assert error["error"]["event_id"] == "v1"
    message = error["error"]["message"]
    assert "'nightingale'" in message and "piper-joe" in message, message


async def ask(live: LiveServer, text: str, instructions: str | None = None) -> Events:
    """One text turn, written not spoken and at most 40 tokens (what the test compares is
    the words: no speech to synthesize), after a session.update of ``instructions`` when
    given."""

    async def body(connection: Any, events: Events) -> None:
        update: dict[str, Any] = {
            "type": "realtime",
            "output_modalities": ["text"],
            "max_output_tokens": 40,
        }
        if instructions is not None:
            update["instructions"] = instructions
        await connection.session.update(session=update)
        await events.until(lambda: events.of("session.updated") or events.of("error"), 30)
        await connection.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            }
        )
        await connection.response.create()
        await events.until(lambda: events.of("response.done"))

    return await session(live, body)


def transcript(events: Events) -> str:
    (done,) = events.of("response.done")
    return str(done["response"]["output"][0]["content"][0]["text"])


async def test_session_update_changes_instructions(live: LiveServer) -> None:
    """session.update with instructions: session.updated echoes them, and the reply to the
    same question differs from the one without them (the local LLM decodes greedily: the
    same prompt gives the same reply, so only the instructions can change it)."""
    question = "Who are you?"
    plain = await ask(live, question)
    pirate = "You are Captain Barnacle, a pirate. Always say your name and talk like a pirate."
    changed = await ask(live, question, instructions=pirate)
    no_errors(plain)
    no_errors(changed)
    (updated,) = changed.of("session.updated")
    assert updated["session"]["instructions"] == pirate
    assert transcript(plain) == transcript(await ask(live, question))  # greedy: repeatable
    assert transcript(changed) != transcript(plain), transcript(plain)


async def test_barge_in_and_truncate(live: LiveServer, question: bytes) -> None:
    """Speech over a spoken reply: speech_started, the reply done ``cancelled``
    (turn_detected) with its item incomplete, and a truncation within the audio sent is
    answered conversation.item.truncated."""

    async def body(connection: Any, events: Events) -> None:
        await connection.conversation.item.create(
            item=user_text("Tell me a long story about a cat.")
        )
        await connection.response.create()
        await events.until(lambda: events.of("response.output_audio.delta"))
        await stream(connection, question, stop=lambda: bool(events.of("response.done")))
        await events.until(lambda: events.of("response.done"))
        (first,) = events.of("response.done")[:1]
        item = first["response"]["output"][0]
        audio = b"".join(
            base64.b64decode(e["delta"])
            for e in events.of("response.output_audio.delta")
            if e["item_id"] == item["id"]
        )
        heard_ms = min(200, len(audio) // 48)
        await connection.conversation.item.truncate(
            item_id=item["id"], content_index=0, audio_end_ms=heard_ms
        )
        await events.until(lambda: events.of("conversation.item.truncated") or events.of("error"))

    events = await session(live, body)
    no_errors(events)
    done = events.of("response.done")[0]
    assert done["response"]["status"] == "cancelled", done["response"]["status"]
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    assert done["response"]["output"][0]["status"] == "incomplete"
    kinds = events.kinds()
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index("response.done")
    (truncated,) = events.of("conversation.item.truncated")
    assert truncated["item_id"] == done["response"]["output"][0]["id"]


async def test_an_out_of_band_response_runs_beside_the_conversation(live: LiveServer) -> None:
    """While the conversation's spoken reply is in progress, ``response.create`` with
    ``conversation: "none"`` and an ``input`` referring to the user's item runs beside it:
    both complete, the out-of-band one in text, with ``conversation_id`` null, its item in no
    conversation (``conversation.item.retrieve`` does not find it)."""

    async def body(connection: Any, events: Events) -> None:
        await connection.conversation.item.create(
            item=user_text("Tell me a short story about a cat.")
        )
        await events.until(lambda: events.of("conversation.item.added"), 30)
        user_item = events.of("conversation.item.added")[0]["item"]["id"]
        await connection.response.create()
        await events.until(lambda: events.of("response.output_audio.delta"))
        await connection.response.create(
            response={
                "conversation": "none",
                "instructions": "Say in one word what the user asked for.",
                "metadata": {"job": "topic"},
                "input": [{"type": "item_reference", "id": user_item}],
            }
        )
        await events.until(lambda: len(events.of("response.done")) >= 2)
        oob = next(
            d for d in events.of("response.done") if d["response"]["conversation_id"] is None
        )
        await connection.send(
            {
                "type": "conversation.item.retrieve",
                "event_id": "find-oob",
                "item_id": oob["response"]["output"][0]["id"],
            }
        )
        await events.until(lambda: events.of("error"), 30)

    events = await session(live, body)
    done = {d["response"]["conversation_id"]: d["response"] for d in events.of("response.done")}
    assert set(done) == {"conv_1", None}
    assert done["conv_1"]["status"] == "completed" and done[None]["status"] == "completed"
    oob = done[None]
    assert oob["output_modalities"] == ["text"] and oob["metadata"] == {"job": "topic"}
    assert oob["output"][0]["content"][0]["type"] == "output_text"
    assert oob["output"][0]["content"][0]["text"]
    added = [e["item"]["id"] for e in events.of("conversation.item.added")]
    assert oob["output"][0]["id"] not in added
    (error,) = events.of("error")
    assert error["error"]["code"] == "item_not_found" and error["error"]["event_id"] == "find-oob"


async def test_response_tools_on_an_llm_without_tools_are_refused(live: LiveServer) -> None:
    """A response's own ``tools`` on the bundled LLM (which calls none) is refused naming the
    reason, with the client's event_id; no response starts."""

    async def body(connection: Any, events: Events) -> None:
        tool = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}
        await connection.send(
            {"type": "response.create", "event_id": "rc-1", "response": {"tools": [tool]}}
        )
        await events.until(lambda: events.of("error"), 30)

    events = await session(live, body)
    (error,) = events.of("error")
    assert error["error"]["event_id"] == "rc-1"
    assert "calls no tools" in error["error"]["message"], error
    assert not events.of("response.created")


async def test_unsupported_event_is_refused_and_the_session_goes_on(live: LiveServer) -> None:
    """``output_audio_buffer.clear`` over a WebSocket (it belongs to WebRTC calls) is refused
    with unsupported_event naming the client's event_id; the connection stays usable."""

    async def body(connection: Any, events: Events) -> None:
        await connection.send({"type": "output_audio_buffer.clear", "event_id": "clear-1"})
        await events.until(lambda: events.of("error"), 30)
        await connection.session.update(session={"type": "realtime", "instructions": "Be brief."})
        await events.until(lambda: events.of("session.updated"), 30)

    events = await session(live, body)
    (error,) = events.of("error")
    assert error["error"]["code"] == "unsupported_event"
    assert error["error"]["event_id"] == "clear-1"
    assert events.of("session.updated")[0]["session"]["instructions"] == "Be brief."


async def raw_refusal(live: LiveServer, **connect: Any) -> tuple[dict[str, Any], int | None]:
    """Connect without the SDK (to set any header or subprotocol): the error and close code."""
    url = f"ws://127.0.0.1:{live.port}/v1/realtime?model=gpt-realtime"
    async with websockets.connect(url, **connect) as ws:
        event = orjson.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        return event, ws.close_code


async def test_bad_token_is_refused(live: LiveServer) -> None:
    """A key that is not a valid tidegate JWT: an authentication error event, then 4401."""
    event, code = await raw_refusal(live, additional_headers={"Authorization": "Bearer nope"})
    assert event["type"] == "error"
    assert event["error"]["type"] == "authentication_error"
    assert code == 4401


async def test_bad_origin_is_refused(live: LiveServer) -> None:
    """A browser's foreign origin is refused (permission error, 4403) even with a good token
    offered the browsers' way (subprotocols)."""
    event, code = await raw_refusal(
        live,
        subprotocols=["realtime", f"openai-insecure-api-key.{live.token()}"],
        origin="https://evil.example",
    )
    assert event["error"]["type"] == "permission_error"
    assert code == 4403


async def test_browser_subprotocol_key_is_accepted(live: LiveServer) -> None:
    """The browsers' form: the JWT in the subprotocols, answered ``realtime`` (never the key),
    and session.created follows."""
    url = f"ws://127.0.0.1:{live.port}/v1/realtime?model=gpt-realtime"
    protocols = [Subprotocol("realtime"), Subprotocol(f"openai-insecure-api-key.{live.token()}")]
    async with websockets.connect(url, subprotocols=protocols) as ws:
        assert ws.subprotocol == "realtime"
        event = orjson.loads(await ws.recv())
    assert event["type"] == "session.created"


async def test_a_client_that_stops_reading_is_cut_and_its_session_closed(
    live: LiveServer,
) -> None:
    """A Realtime client that stops reading while its events pile up (each session.update
    answered by a whole session object, its 15 kB instructions included) is cut as too slow
    (4408: the send watchdog, send_timeout_s), and its session is closed with it at once,
    not left to expire."""
    import socket

    before = live.runtime.counters["too_slow"]
    expired = live.runtime.registry.expired
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", live.port))
    url = f"ws://127.0.0.1:{live.port}/v1/realtime?model=gpt-realtime"
    headers = {"Authorization": f"Bearer {live.token(subject='slow')}"}
    ws = await websockets.connect(url, sock=sock, additional_headers=headers, max_queue=1)
    ws.transport.set_write_buffer_limits(0)
    ws.transport.pause_reading()
    session = {"type": "realtime", "instructions": "x" * 15_000}  # echoed in each answer
    update = orjson.dumps({"type": "session.update", "session": session}).decode()
    for _ in range(900):
        if live.runtime.counters["too_slow"] > before:
            break
        try:
            async with asyncio.timeout(2.0):
                await ws.send(update)
        except (TimeoutError, websockets.ConnectionClosed, OSError):
            break
    async with asyncio.timeout(scaled(20)):
        while live.runtime.counters["too_slow"] == before:
            await asyncio.sleep(0.05)
        while any(s.principal.subject == "slow" for s in live.runtime.registry):
            await asyncio.sleep(0.05)
        while live.runtime.channels:
            await asyncio.sleep(0.05)
    assert live.runtime.registry.expired == expired  # closed with its connection
    ws.transport.abort()


async def test_realtime_sessions_are_recorded_and_timed(live: LiveServer) -> None:
    """After the turns above, /metrics has stage histograms of the realtime dialect and
    no Realtime session left open (each ended with its connection)."""
    admin = {"Authorization": f"Bearer {live.token(scopes=('session', 'admin'))}"}
    async with httpx.AsyncClient(base_url=live.http) as http:
        text = (await http.get("/metrics", headers=admin)).text
    assert 'dialect="realtime"' in text
    line = next(
        x
        for x in text.splitlines()
        if x.startswith("tidegate_event_stage_seconds_count")
        and 'dialect="realtime"' in x
        and 'type="response.text.delta"' in x
        and 'stage="total"' in x
    )
    assert float(line.rsplit(" ", 1)[1]) > 0
    assert len(live.runtime.registry) == 0


class RealtimeCall:
    """A Realtime WebRTC client as the GA API has it: a real aiortc peer (loopback only) with
    a microphone track and the ``oai-events`` data channel, offered by ``POST
    /v1/realtime/calls``; the events it receives are checked against the SDK's types."""

    def __init__(self, live: LiveServer) -> None:
        from aiortc import RTCPeerConnection

        from tidegate.media import AudioOutTrack, IcePolicy, apply_ice_policy

        ice = IcePolicy()  # loopback host candidates only, no STUN (NETWORK.md)
        self.live = live
        self.pc = RTCPeerConnection(ice.configuration())
        self.mic = AudioOutTrack()
        self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("oai-events")
        self.events: list[dict[str, Any]] = []
        self.heard: list[np.ndarray] = []
        self.channel.on("message", self._message)
        self.pc.on("track", self._track)
        self._tasks: list[asyncio.Task[Any]] = []
        self._ice = (apply_ice_policy, ice)

    def _message(self, text: str) -> None:
        self.events.append(check_server_event(text))  # the SDK's types, no extra field

    def _track(self, track: Any) -> None:
        async def listen() -> None:
            while True:
                frame = await track.recv()
                x = frame.to_ndarray().reshape(-1).astype(np.float32)
                if len(frame.layout.channels) == 2:
                    x = x.reshape(-1, 2).mean(axis=1)
                self.heard.append(x)

        self._tasks.append(asyncio.get_running_loop().create_task(listen()))

    def of(self, etype: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == etype]

    async def until(self, done: Callable[[], Any], timeout_s: float = 120) -> None:
        try:
            async with asyncio.timeout(scaled(timeout_s)):
                while not done():
                    await asyncio.sleep(0.05)
        except TimeoutError:
            kinds = [e["type"] for e in self.events]
            raise AssertionError(
                f"timed out ({self.pc.connectionState}); events: {kinds}"
            ) from None

    async def offer(self, **headers: str) -> httpx.Response:
        apply, ice = self._ice
        apply(self.pc, ice)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient() as http:
            return await http.post(
                f"{self.live.http}/v1/realtime/calls?model=gpt-realtime",
                content=self.pc.localDescription.sdp,
                headers={
                    "Authorization": f"Bearer {self.live.token()}",
                    "Content-Type": "application/sdp",
                    **headers,
                },
            )

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(orjson.dumps(event).decode())

    async def speak(self, pcm24k: bytes) -> None:
        """Play 24 kHz s16le into the microphone track, in real time."""
        r = StreamResampler(24_000, 16_000)  # int16 in, int16 out
        x = np.frombuffer(pcm24k, "<i2")
        speech = np.concatenate([r.process(x), r.flush()]).astype(np.float32) / np.float32(32768)
        step = int(0.2 * 16_000)
        for i in range(0, len(speech), step):
            self.mic.write(speech[i : i + step])
            while self.mic.queued_ms > 400:
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()


async def test_webrtc_call_with_the_oai_events_channel(live: LiveServer, question: bytes) -> None:
    """POST /v1/realtime/calls with an SDP offer (audio + the oai-events data channel) is
    answered with SDP (201, Location); session.created arrives on the channel, a
    session.update over it is confirmed, a spoken question on the microphone track is
    transcribed and answered: the reply's events on the channel, its speech on the track
    (not as output_audio deltas). Closing the peer ends the call and its session."""
    call = RealtimeCall(live)
    sessions_before = len(live.runtime.registry)
    try:
        answer = await call.offer()
        assert answer.status_code == 201, answer.text
        assert answer.headers["content-type"].startswith("application/sdp")
        assert answer.headers["location"].startswith("/v1/realtime/calls/s_")
        from aiortc import RTCSessionDescription

        await call.pc.setRemoteDescription(RTCSessionDescription(answer.text, "answer"))
        await call.until(lambda: call.of("session.created"), 30)
        call.send(
            {
                "type": "session.update",
                "event_id": "u1",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"transcription": {"model": "whisper-1"}}},
                },
            }
        )
        await call.until(lambda: call.of("session.updated") or call.of("error"), 30)
        await call.speak(question)
        await call.until(lambda: call.of("response.done"))
        await asyncio.sleep(0.3)
    finally:
        await call.close()
    assert not call.of("error"), call.of("error")
    (completed,) = call.of("conversation.item.input_audio_transcription.completed")
    assert "capital" in completed["transcript"].lower(), completed["transcript"]
    (done,) = call.of("response.done")
    assert done["response"]["status"] == "completed"
    assert done["response"]["output"][0]["content"][0]["transcript"]
    assert done["response"]["usage"]["output_tokens"] > 0
    assert not call.of("response.output_audio.delta")  # the speech is on the track
    kinds = [e["type"] for e in call.events]  # the track's buffer brackets the reply's audio
    assert kinds.count("output_audio_buffer.started") == 1
    assert kinds.count("output_audio_buffer.stopped") == 1
    assert (
        kinds.index("response.content_part.added")
        < kinds.index("output_audio_buffer.started")
        < kinds.index("response.done")
        < kinds.index("output_audio_buffer.stopped")
    )
    (started,) = call.of("output_audio_buffer.started")
    assert started["response_id"] == done["response"]["id"]
    heard = np.concatenate(call.heard) if call.heard else np.zeros(0, np.float32)
    loud = np.abs(heard) > 1000  # s16 samples at 48 kHz: the reply's speech, not silence
    assert loud.sum() > 48_000 * 0.3, loud.sum()
    async with asyncio.timeout(scaled(10)):  # the call's end closes its session
        while len(live.runtime.registry) > sessions_before:
            await asyncio.sleep(0.05)


async def test_webrtc_calls_reply_is_cut_by_output_audio_buffer_clear(live: LiveServer) -> None:
    """The Agents SDK's ``interrupt()`` on a call, once the reply is heard on the track:
    ``response.cancel`` then ``output_audio_buffer.clear``. One cut (``client_cancelled``),
    ``output_audio_buffer.cleared`` before its ``response.done``, no error, and the track
    falls silent."""
    call = RealtimeCall(live)
    try:
        answer = await call.offer()
        assert answer.status_code == 201, answer.text
        from aiortc import RTCSessionDescription

        await call.pc.setRemoteDescription(RTCSessionDescription(answer.text, "answer"))
        await call.until(lambda: call.of("session.created"), 30)
        call.send(
            {
                "type": "conversation.item.create",
                "item": user_text("Tell me a long story about a cat."),
            }
        )
        call.send({"type": "response.create"})
        await call.until(lambda: call.of("output_audio_buffer.started"))
        await call.until(lambda: len(call.heard) >= 10)  # 0.2 s of the reply heard
        call.send({"type": "response.cancel", "event_id": "cancel-1"})
        call.send({"type": "output_audio_buffer.clear", "event_id": "clear-1"})
        await call.until(lambda: call.of("response.done"))
        await asyncio.sleep(0.3)  # what was on its way (the track leads by a frame or two)
        cut_at = len(call.heard)
        await asyncio.sleep(1.5)
    finally:
        await call.close()
    assert not call.of("error"), call.of("error")
    (done,) = call.of("response.done")
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    kinds = [e["type"] for e in call.events]
    assert kinds.count("output_audio_buffer.cleared") == 1
    assert "output_audio_buffer.stopped" not in kinds
    assert (
        kinds.index("output_audio_buffer.started")
        < kinds.index("output_audio_buffer.cleared")
        < kinds.index("response.done")
    )
    (cleared,) = call.of("output_audio_buffer.cleared")
    assert cleared["response_id"] == done["response"]["id"]
    # the track falls silent (with nothing queued it sends nothing, as Opus DTX)
    after = call.heard[cut_at:]
    loud = (np.abs(np.concatenate(after)) > 1000).sum() if after else 0
    assert loud < 48_000 * 0.02, (len(after), loud)


async def raw_sideband(live: LiveServer, call_id: str, **token: Any) -> tuple[Any, int | None]:
    """A sideband the server refuses: its one event (SDK-checked) and the close code."""
    url = f"ws://127.0.0.1:{live.port}/v1/realtime?call_id={call_id}"
    headers = {"Authorization": f"Bearer {live.token(**token)}"}
    async with websockets.connect(url, additional_headers=headers) as ws:
        event = check_server_event(str(await ws.recv()))
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        return event, ws.close_code


async def test_a_server_steers_a_call_through_its_sideband(live: LiveServer) -> None:
    """The SDK's ``realtime.connect(call_id=...)`` attaches a server to a browser's WebRTC
    call: it gets the session as it is (``session.created``), its ``session.update`` and
    ``response.create`` are handled as the client's, every event reaches both, the reply
    speaks on the call's track. A second sideband may attach; a third, an unknown call and
    another tenant's call are refused; a sideband leaving ends nothing; the call's end closes
    its sidebands (1000)."""
    call = RealtimeCall(live)
    try:
        answer = await call.offer()
        assert answer.status_code == 201, answer.text
        call_id = answer.headers["location"].rsplit("/", 1)[-1]
        from aiortc import RTCSessionDescription

        await call.pc.setRemoteDescription(RTCSessionDescription(answer.text, "answer"))
        await call.until(lambda: call.of("session.created"), 30)
        client = openai_client(live)
        async with client.realtime.connect(call_id=call_id) as sideband:
            events = Events(sideband)
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(events.read())
                await events.until(lambda: events.of("session.created"), 30)
                await sideband.session.update(
                    session={"type": "realtime", "instructions": "Answer in one short sentence."}
                )
                await events.until(lambda: events.of("session.updated"), 30)
                await sideband.conversation.item.create(
                    item=user_text("What is the capital of France?")
                )
                await sideband.response.create()
                await events.until(lambda: events.of("response.done"))
                await call.until(lambda: call.of("response.done"), 30)
                # a second sideband attaches; a third is one too many
                async with client.realtime.connect(call_id=call_id) as second:
                    first = await second.recv()
                    assert first.type == "session.created"
                    third, code = await raw_sideband(live, call_id)
                    assert third["error"]["code"] == "rate_limited" and code == 4429
                refused, code = await raw_sideband(live, "s_nosuchcall")
                assert refused["error"]["code"] == "forbidden" and code == 4403
                refused, code = await raw_sideband(live, call_id, tenant="globex")
                assert refused["error"]["code"] == "forbidden" and code == 4403
                reader.cancel()
        # the sidebands have left: the call goes on
        call.send(
            {
                "type": "conversation.item.create",
                "item": user_text("And of Italy?"),
            }
        )
        call.send({"type": "response.create", "event_id": "after"})
        await call.until(lambda: len(call.of("response.done")) >= 2)
        # the call's end closes a sideband still attached
        async with client.realtime.connect(call_id=call_id) as last:
            assert (await last.recv()).type == "session.created"
            await call.close()
            with pytest.raises(websockets.ConnectionClosedOK):
                while True:
                    await last.recv()
    finally:
        await call.close()
    assert not call.of("error") and not events.of("error"), (call.of("error"), events.of("error"))
    session = events.of("session.created")[0]["session"]
    assert session["type"] == "realtime" and session["model"] == "gpt-realtime"
    updated = events.of("session.updated")[0]["session"]
    assert updated["instructions"] == "Answer in one short sentence."
    assert call.of("session.updated")[0]["session"] == updated  # the call's client saw it too
    (done,) = events.of("response.done")
    assert done["response"]["status"] == "completed"
    assert call.of("response.done")[0]["response"]["id"] == done["response"]["id"]
    assert call.of("output_audio_buffer.started")  # it spoke on the call's track
    assert "paris" in done["response"]["output"][0]["content"][0]["transcript"].lower()


async def test_webrtc_call_offers_are_checked(live: LiveServer) -> None:
    """An offer without the data channel is refused (bad_sdp) and opens no session for long;
    a body that is not SDP is refused naming the Content-Type; no token: 401."""
    sessions_before = len(live.runtime.registry)
    from aiortc import RTCPeerConnection

    from tidegate.media import AudioOutTrack, IcePolicy, apply_ice_policy

    pc = RTCPeerConnection(IcePolicy().configuration())
    try:
        pc.addTrack(AudioOutTrack())
        apply_ice_policy(pc, IcePolicy())
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient() as http:
            url = f"{live.http}/v1/realtime/calls"
            auth = {"Authorization": f"Bearer {live.token()}"}
            r = await http.post(
                url,
                content=pc.localDescription.sdp,
                headers={**auth, "Content-Type": "application/sdp"},
            )
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_sdp", r.text
            assert "m=application" in r.json()["error"]["message"]
            # the GA multipart form: the sdp part is read (the same refusal), a session part
            # must be a JSON object, and a form without sdp is refused naming it
            form = {
                "sdp": (None, pc.localDescription.sdp),
                "session": (None, '{"type": "realtime"}'),
            }
            r = await http.post(url, files=form, headers=auth)
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_sdp", r.text
            r = await http.post(url, files={**form, "session": (None, "[1]")}, headers=auth)
            assert r.status_code == 400 and "'session' part" in r.json()["error"]["message"]
            r = await http.post(url, files={"session": (None, "{}")}, headers=auth)
            assert r.status_code == 400 and "'sdp' part" in r.json()["error"]["message"]
            r = await http.post(url, json={"sdp": "v=0"}, headers=auth)
            assert r.status_code == 400 and "Content-Type" in r.json()["error"]["message"]
            r = await http.post(url, content="v=0", headers={"Content-Type": "application/sdp"})
            assert r.status_code == 401
    finally:
        await pc.close()
    assert len(live.runtime.registry) == sessions_before
