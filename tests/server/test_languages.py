"""Languages end to end (docs/languages.md): a real server on Whisper base multilingual with
the local LLM and the voices registry; a WS-only client speaks German (SVOX Pico through sox):
the final reports German, the reply is asked in German and spoken by the German voice; a
session that wants no German voice gets its replies in text only, and says why."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest
import pytest_asyncio

from tests.support import prepare_models, scaled, wait_ready
from tidegate.bench.audio_sets import LANGUAGE_VOICES, have_tools, speak
from tidegate.protocol.client import Client, RefusedError
from tidegate.protocol.messages import (
    AsrFinal,
    InputAudio,
    InputText,
    OutputAudio,
    ResponseDone,
    ServerMessage,
)

from .conftest import LiveServer, make_settings, run_server

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(bool(have_tools()), reason=f"missing: {have_tools()}"),
]

MODELS = ("silero-vad", "whisper-base", "smollm2-135m", "piper-joe")
#: detected as German with probability 0.99 (tests/engines/test_asr_languages.py's clip)
GERMAN = "Ich möchte morgen mit dem Zug nach Berlin fahren."
CHUNK_S = 0.04
SPEED = 2.0  # times real time


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    """A server with VAD, Whisper base (auto), the local LLM and Piper (espeak-ng voices for
    other languages); short replies, the silence turn policy."""
    prepared = prepare_models(*MODELS)
    tmp = tmp_path_factory.mktemp("languages")
    (tmp / "models").symlink_to(prepared / "models")
    settings = make_settings(
        tmp,
        engines=("vad", "asr", "llm", "tts"),
        asr_model="whisper-base",
        assistant_max_reply_tokens=16,
        audio_max_ahead_s=0.0,
    )
    async with run_server(settings) as server:
        await wait_ready(server.http, timeout_s=120)
        yield server


@dataclass
class Talk:
    """An assistant session and the events it received."""

    client: Client
    reader: asyncio.Task[None]
    events: list[ServerMessage]


async def session(live: LiveServer, **config: object) -> Talk:
    client = await live.client()
    await client.create_session(
        {"mode": "assistant", "audio": {"echo_cancellation": "off"}, **config}
    )
    events: list[ServerMessage] = []

    async def read() -> None:
        async for ev in client:
            events.append(ev)

    return Talk(client, asyncio.get_running_loop().create_task(read()), events)


async def until_done(events: list[ServerMessage], timeout_s: float = 60.0) -> ResponseDone:
    async with asyncio.timeout(scaled(timeout_s)):
        while not any(isinstance(e, ResponseDone) for e in events):
            await asyncio.sleep(0.05)
    return next(e for e in events if isinstance(e, ResponseDone))


async def close(talk: Talk) -> None:
    try:
        await talk.client.close_session()
    finally:
        talk.reader.cancel()
        await asyncio.gather(talk.reader, return_exceptions=True)
        await talk.client.close()


async def test_a_german_turn_is_answered_in_german(live: LiveServer) -> None:
    """Spoken German under ``auto``: asr.final says de (with its probability) once sure, the
    reply is asked in German and spoken by the registry's German voice (espeak-ng de)."""
    talk = await session(live, language="auto")
    events = talk.events
    try:
        pcm = (speak(GERMAN, voice=LANGUAGE_VOICES["de"]) * 32767).astype("<i2")
        pcm = np.concatenate([pcm, np.zeros(16_000, "<i2")])
        step = int(CHUNK_S * 16_000)
        for i in range(0, len(pcm), step):
            chunk = pcm[i : i + step].tobytes()
            await talk.client.send(
                InputAudio(pcm=chunk, format="s16le", sample_rate=16_000, channels=1)
            )
            await asyncio.sleep(CHUNK_S / SPEED)
        done = await until_done(events)
    finally:
        await close(talk)
    finals = [e for e in events if isinstance(e, AsrFinal)]
    print(
        [
            (
                type(e).__name__,
                getattr(e, "text", None),
                getattr(e, "audio_ms", None),
                getattr(e, "language", None),
            )
            for e in events
            if type(e).__name__.startswith(("Asr", "Vad", "Turn"))
        ]
    )
    # where the VAD cuts the turn at a short pause, a second of speech alone is no sure sign
    # of German: that final reports its guess, unsure; the next detects on the turn so far
    # and the turn is German from there on
    assert finals and finals[-1].language == "de", finals
    for f in finals:
        assert f.language_probability is not None
        assert f.language == "de" or f.language_probability < 0.7, f
    assert finals[-1].language_probability is not None
    assert finals[-1].language_probability > 0.7
    assert done.status == "completed" and done.text, done
    assert (done.language, done.voice, done.text_only) == ("de", "de", None)
    spoken = [e for e in events if isinstance(e, OutputAudio)]
    assert spoken and all(a.response_id == done.response_id for a in spoken)


async def test_no_voice_replies_in_text_only(live: LiveServer) -> None:
    """A session that wants no German voice: a German reply comes as text only, and
    response.done says why; a voice that is not German's is refused naming the choices."""
    talk = await session(live, language="de", voices={"de": "none"})
    events = talk.events
    try:
        await talk.client.send(InputText(text="Wie spät ist es?"))
        done = await until_done(events)
    finally:
        await close(talk)
    assert done.status == "completed" and done.text
    assert done.language == "de" and done.voice is None
    assert done.text_only is not None and "no voice for language 'de'" in done.text_only
    assert not [e for e in events if isinstance(e, OutputAudio)]
    client = await live.client()
    try:
        with pytest.raises(RefusedError, match="expected one of"):
            await client.create_session({"mode": "assistant", "voices": {"de": "fr-fr"}})
    finally:
        await client.close()
