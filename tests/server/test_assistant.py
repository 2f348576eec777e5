"""The assistant mode end to end: a real server with the VAD, ASR, LLM and TTS engines, WS-only
clients speaking recorded questions (espeak-ng) as ``input.audio`` and typing ``input.text``;
replies stream as text and as speech (``output.audio``), and speech over a reply cuts it."""

from __future__ import annotations

import asyncio
import subprocess
import time
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import pytest_asyncio

from tests.support import prepare_models, scaled, wait_ready
from tidegate.bench.wer import ler
from tidegate.engines import models
from tidegate.engines.asr.request import AsrRequest
from tidegate.engines.asr.whisper_onnx import WhisperOnnx
from tidegate.engines.engine import Ok
from tidegate.engines.tts.piper import resample
from tidegate.pipelines.reply import Reply, ReplyLane, SpokenChunk
from tidegate.protocol.client import Client, RefusedError
from tidegate.protocol.messages import (
    AsrFinal,
    InputAudio,
    InputText,
    OutputAudio,
    ResponseCancel,
    ResponseCreated,
    ResponseDone,
    ResponsePaused,
    ResponseResumed,
    ResponseTextDelta,
    ServerMessage,
    TurnEnd,
    VadSpeechStarted,
    VadSpeechStopped,
)

from ..media.imagefiles import png_bomb, still, video
from ..memory import PeakRss
from .conftest import LiveServer, make_settings, run_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

M = TypeVar("M", bound=ServerMessage)

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
MODELS = ("silero-vad", "whisper-tiny-en", "smollm2-135m", "piper-joe", "blazeface")
QUESTION = "What is the capital of France?"
STORY = "Tell me a short story about a cat."
LONG_QUESTION = (
    "Please tell me what the weather will be like tomorrow morning in the city of Paris "
    "and whether I should bring an umbrella with me"
)
CHUNK_S = 0.04
SPEED = 2.0  # times real time


@pytest.fixture(scope="module")
def prepared() -> Path:
    """The data folder with the four engines' models prepared (by make setup, or here)."""
    return prepare_models(*MODELS)


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, int]:
    """QUESTION spoken by espeak-ng: int16 mono samples and their rate."""
    path = tmp_path_factory.mktemp("speech") / "question.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), QUESTION], check=True)
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    return pcm, rate


@pytest.fixture(scope="module")
def long_question(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, int]:
    """LONG_QUESTION spoken by espeak-ng (one breath, about 6 s): int16 samples, rate."""
    path = tmp_path_factory.mktemp("speech") / "long.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), LONG_QUESTION], check=True)
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    return pcm, rate


@pytest.fixture(scope="module")
def whisper(prepared: Path) -> Iterator[WhisperOnnx]:
    """Whisper, outside the server, to transcribe what the server said."""
    engine = WhisperOnnx(models.model_dir(prepared, "whisper-tiny-en"))
    engine.load()
    yield engine
    engine.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(
    tmp_path_factory: pytest.TempPathFactory, prepared: Path
) -> AsyncIterator[LiveServer]:
    """One server for the module (the models load once)."""
    tmp = tmp_path_factory.mktemp("assistant")
    (tmp / "models").symlink_to(prepared / "models")
    settings = make_settings(
        tmp, engines=("vad", "asr", "llm", "tts", "vision"), assistant_vision_interval_s=0.2
    )
    async with run_server(settings) as server:
        await wait_ready(server.http, timeout_s=120)
        yield server


@dataclass
class Conversation:
    """One assistant session and every event it received, with arrival times."""

    client: Client
    session_id: str
    events: list[tuple[ServerMessage, float]] = field(default_factory=list)

    async def read(self) -> None:
        async for ev in self.client:
            self.events.append((ev, time.monotonic()))

    def of(self, kind: type[M]) -> list[M]:
        return [e for e, _ in self.events if isinstance(e, kind)]

    def done(self, status: str | None = None) -> list[ResponseDone]:
        return [d for d in self.of(ResponseDone) if status is None or d.status == status]

    async def wait(self, check: object, timeout_s: float = 60.0) -> None:
        async with asyncio.timeout(scaled(timeout_s)):
            while not check():  # type: ignore[operator]
                await asyncio.sleep(0.05)

    async def speak(self, pcm: np.ndarray, rate: int, tail_s: float = 1.0) -> None:
        """Stream ``pcm`` and ``tail_s`` of silence as input.audio at SPEED x real time."""
        pcm = np.concatenate([pcm, np.zeros(int(tail_s * rate), np.int16)])
        step = int(CHUNK_S * rate)
        t0 = time.monotonic()
        for i in range(0, len(pcm), step):
            await asyncio.sleep(max(0.0, t0 + i / rate / SPEED - time.monotonic()))
            chunk = pcm[i : i + step].astype("<i2").tobytes()
            await self.client.send(
                InputAudio(pcm=chunk, format="s16le", sample_rate=rate, channels=1)
            )

    def deltas(self, response_id: str) -> str:
        return "".join(d.delta for d in self.of(ResponseTextDelta) if d.response_id == response_id)

    def audio(self, response_id: str) -> np.ndarray:
        parts = [a.pcm for a in self.of(OutputAudio) if a.response_id == response_id]
        return np.frombuffer(b"".join(parts), "<i2")


class converse:
    """``async with converse(live) as c``: an assistant session whose events are collected."""

    def __init__(self, live: LiveServer, **config: object) -> None:
        self.live = live
        self.config = config  # more of the session's config

    async def __aenter__(self) -> Conversation:
        self.client = await self.live.client()
        # This client hears no echo of its replies (a headset): it says so. With the server's
        # canceller on (auto, for WS-only), a question spoken over a reply comes out worse
        # transcribed (docs/ears.md, double talk) and the small LLM no longer says Paris.
        config = {"mode": "assistant", "audio": {"echo_cancellation": "off"}, **self.config}
        created = await self.client.create_session(config)
        self.conv = Conversation(self.client, created.session_id)
        self.reader = asyncio.get_running_loop().create_task(self.conv.read())
        return self.conv

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.client.close_session()
        finally:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
            await self.client.close()


#: the reply's audio reads as its text: letter error rate of Whisper tiny.en's transcription.
#: Letters, not words: tiny.en hears Piper's "France is" as "Francis" in every run (WER 0.33 on
#: a six-word reply, one run in many also "but" for "The": 0.5), which is the transcriber,
#: not the audio (0.04 and 0.16 in letters); audio missing a chunk (three of its words) reads 0.48.
READS_AS = 0.25


def transcribe(whisper: WhisperOnnx, audio_48k: np.ndarray) -> str:
    pcm = resample(audio_48k.astype(np.float32) / 32768, 48_000, 16_000)
    result = whisper.run_batch([AsrRequest(pcm.astype(np.float32) / 32768)], [None])[0]
    assert isinstance(result, Ok)
    return str(result.value.text)


def _check_timing(ev: ResponseTextDelta | ResponseDone) -> None:
    t = ev.timing
    assert t is not None and None not in (t.received, t.engine_start, t.engine_end, t.sent), ev
    assert t.received <= t.engine_start <= t.engine_end <= t.sent, ev  # type: ignore[operator]


async def test_spoken_question_gets_a_spoken_answer(
    live: LiveServer, question: tuple[np.ndarray, int], whisper: WhisperOnnx
) -> None:
    """A recorded question gives VAD events and a final with its words, then a reply streamed
    as deltas that says Paris, and output.audio whose transcription reads the reply."""
    async with converse(live) as c:
        await c.speak(*question)
        await c.wait(lambda: c.done())
        await asyncio.sleep(0.3)
    kinds = [type(e) for e, _ in c.events]
    assert VadSpeechStarted in kinds and VadSpeechStopped in kinds
    final = " ".join(f.text for f in c.of(AsrFinal)).lower()
    assert "capital" in final and "france" in final, final
    (created,) = c.of(ResponseCreated)
    (done,) = c.done()
    assert done.response_id == created.response_id and done.status == "completed"
    assert kinds.index(AsrFinal) < kinds.index(ResponseCreated) < kinds.index(ResponseTextDelta)
    assert kinds.index(ResponseDone) > max(i for i, k in enumerate(kinds) if k is OutputAudio)
    assert "Paris" in done.text, done.text
    assert c.deltas(done.response_id) == done.text
    timed: list[ResponseTextDelta | ResponseDone] = [*c.of(ResponseTextDelta), done]
    for ev in timed:
        _check_timing(ev)
    audio = c.audio(done.response_id)
    assert all(a.sample_rate == 48_000 and a.format == "s16le" for a in c.of(OutputAudio))
    assert len(audio) / 48_000 > 1.0
    heard = transcribe(whisper, audio)
    assert ler(done.text, heard) <= READS_AS, (done.text, heard)


async def test_text_input_gets_a_streamed_reply(live: LiveServer) -> None:
    """input.text starts a reply: response.created (referring to it), several deltas, audio,
    and response.done completed whose text is the deltas."""
    async with converse(live) as c:
        await c.client.send(InputText(id="t1", text=STORY))
        await c.wait(lambda: c.done())
    (created,) = c.of(ResponseCreated)
    (done,) = c.done("completed")
    assert created.ref == "t1" and done.ref == "t1"
    assert len([d for d in c.of(ResponseTextDelta)]) > 3
    assert c.deltas(done.response_id) == done.text and "cat" in done.text.lower()
    assert len(c.audio(done.response_id)) / 48_000 > 3.0


async def test_a_silent_user_is_prompted_after_the_idle_timeout(
    live: LiveServer, question: tuple[np.ndarray, int]
) -> None:
    """``turn.idle_timeout_s``: a question spoken right after a reply has played stops the
    idle timer (it is answered, no idle turn); then the user stays silent: once a reply has
    played, ``turn.end`` with reason ``idle`` comes at least the timeout later and a reply
    prompts the user, again after that reply, up to ``turn_idle_max_prompts`` (3) in a row;
    then the assistant waits in silence."""
    timeout_s = 1.0
    async with converse(live, turn={"idle_timeout_s": timeout_s}, max_output_tokens=12) as c:
        await c.client.send(InputText(id="t1", text=QUESTION))
        await c.wait(lambda: c.done())
        await c.speak(*question)  # starts at once: within the timeout
        await c.wait(lambda: len(c.done()) >= 5, 120)
        await asyncio.sleep(timeout_s * 2.5)  # no fourth prompt
    done_at = [t for e, t in c.events if isinstance(e, ResponseDone)]
    idle = [(e, t) for e, t in c.events if isinstance(e, TurnEnd) and e.reason == "idle"]
    created = c.of(ResponseCreated)
    assert len(c.done()) == 5 and all(d.status == "completed" for d in c.done())
    assert len(idle) == 3, [e for e, _ in idle]
    # the typed question, the spoken one, then the three prompts; each idle turn.end comes
    # after the reply before it has played, at least the timeout later, before its prompt
    first_idle = c.events.index(idle[0])
    spoken = [e for e, _ in c.events[:first_idle] if isinstance(e, AsrFinal) and e.text]
    assert spoken and "capital" in " ".join(f.text for f in spoken).lower()
    order = [e for e, _ in c.events]
    for k, (end, at) in enumerate(idle):
        assert end.audio_ms is None
        assert at - done_at[k + 1] >= timeout_s * 0.95
        prompt = created[k + 2]  # its reply comes after it
        assert order.index(end) < order.index(prompt) < order.index(c.done()[k + 2])
    assert idle[-1][1] < done_at[-1]  # the last prompt's reply came; nothing after it


async def test_speech_over_a_reply_cuts_it(
    live: LiveServer, question: tuple[np.ndarray, int]
) -> None:
    """Speech while a reply is spoken cancels it: response.done cancelled with the spoken part
    (a prefix of the reply, not all of it), no more audio of it, the spoken part in the
    history; then the new question is answered."""
    async with converse(live) as c:
        await c.client.send(InputText(id="t1", text=STORY))
        (created,) = await _first(c, ResponseCreated)
        await c.wait(lambda: len(c.audio(created.response_id)) >= 1.5 * 48_000)
        await c.speak(*question)
        await c.wait(lambda: len(c.done()) == 2)
        session = live.runtime.registry.get(c.session_id)
        assert session is not None
        history = list(session.mode.lane(ReplyLane).history)  # type: ignore[union-attr]
    first, second = c.done()
    assert first.status == "cancelled" and first.ref == "t1"
    said = c.deltas(first.response_id)
    assert first.text and said.startswith(first.text) and len(first.text) < len(said)
    cut_at = next(i for i, (e, _) in enumerate(c.events) if e is first)
    assert not [
        e
        for e, _ in c.events[cut_at:]
        if isinstance(e, OutputAudio | ResponseTextDelta) and e.response_id == first.response_id
    ]
    heard_s = len(c.audio(first.response_id)) / 48_000
    assert 1.5 <= heard_s < 12.0
    assert second.status == "completed" and "Paris" in second.text
    assert history[:2] == [
        {"role": "user", "content": STORY},
        {"role": "assistant", "content": first.text},
    ]


async def _first(c: Conversation, kind: type[M]) -> list[M]:
    await c.wait(lambda: c.of(kind))
    return c.of(kind)[:1]


async def test_cancel_stops_the_reply(live: LiveServer) -> None:
    """response.cancel ends the reply in progress (cancelled); a second cancel is not_found."""
    async with converse(live) as c:
        await c.client.send(InputText(id="t1", text=STORY))
        await c.wait(lambda: c.of(ResponseTextDelta))
        await c.client.send(ResponseCancel(id="c1"))
        await c.wait(lambda: c.done())
        with pytest.raises(RefusedError) as caught:
            await c.client.request(ResponseCancel(id="c2"))
        assert caught.value.server_code == "not_found"
    (done,) = c.done()
    assert done.status == "cancelled"
    assert c.deltas(done.response_id).startswith(done.text)


async def test_two_sessions_at_once_keep_their_own_replies(
    live: LiveServer, question: tuple[np.ndarray, int]
) -> None:
    """One session speaks its question while another types a different one: each gets its
    own reply and only its own audio."""
    async with converse(live) as a, converse(live) as b:
        await asyncio.gather(
            a.speak(*question), b.client.send(InputText(id="t1", text="What color is the sky?"))
        )
        await a.wait(lambda: a.done())
        await b.wait(lambda: b.done())
    (da,), (db,) = a.done(), b.done()
    assert da.status == db.status == "completed"
    assert "Paris" in da.text and "Paris" not in db.text and "blue" in db.text.lower()
    assert {x.response_id for x in a.of(OutputAudio)} == {da.response_id}
    assert {x.response_id for x in b.of(OutputAudio)} == {db.response_id}


async def test_tools_on_the_local_llm_are_unsupported(live: LiveServer) -> None:
    """A session declaring tools on the local LLM is refused (unsupported), naming the way."""
    tools = [{"type": "function", "name": "get_weather"}]
    async with await live.client() as client:
        with pytest.raises(RefusedError) as caught:
            await client.create_session({"mode": "assistant", "tools": tools})
    assert caught.value.server_code == "unsupported"
    assert "llm_runtime=providers" in str(caught.value)


async def test_assistant_without_the_engines_is_unsupported(tmp_path: Path) -> None:
    """A server without the engines refuses the assistant mode (unsupported)."""
    settings = make_settings(tmp_path, default_mode="loopback")
    async with run_server(settings) as server, await server.client() as client:
        with pytest.raises(RefusedError) as caught:
            await client.create_session({"mode": "assistant"})
        assert caught.value.server_code == "unsupported"


async def test_spoken_text_follows_the_playout() -> None:
    """What counts as spoken at a cut: whole chunks played, and of the chunk playing, the
    words that fit in the share of its frames played; nothing before the first frame."""
    reply = Reply("r_1", None, 0.0, text="Hello there, friend. How are you today? Fine.")
    for chunk in ("Hello there,", "friend.", "How are you today?"):
        reply.chunks.append(SpokenChunk(*reply.locate(chunk), 10, None))
    t = 100.0
    for c in reply.chunks[:2]:
        c.frame_starts = [t + 0.02 * i for i in range(10)]
        t += 0.2
    reply.chunks[2].frame_starts = [t + 0.02 * i for i in range(6)]  # 6 of 10 sent
    assert reply.spoken(99.0) == ""
    assert reply.spoken(100.0) == ""  # one frame of "Hello there," is not yet a word
    assert reply.spoken(100.19) == "Hello there,"
    assert reply.spoken(100.39) == "Hello there, friend."
    assert reply.spoken(t + 0.05) == "Hello there, friend. How"
    assert reply.spoken(t + 5.0) == "Hello there, friend. How are"  # 6 of 10 frames played
    # begun: the word in progress too (an echo carries it; the ASR finishes it)
    assert reply.spoken(99.0, begun=True) == ""
    assert reply.spoken(100.0, begun=True) == "Hello"
    assert reply.spoken(t + 5.0, begun=True) == "Hello there, friend. How are you"


class rtc_call:
    """``async with rtc_call(c) as call``: a real aiortc peer (loopback only) on the session of
    ``c``: ``call.speak`` plays 16 kHz audio into its microphone track in real time, and what
    arrives on its inbound track is collected in ``call.heard`` (arrival time, 48 kHz mono)."""

    def __init__(self, conv: Conversation, *, with_video: bool = False) -> None:
        self.conv = conv
        self.with_video = with_video
        self.heard: list[tuple[float, np.ndarray]] = []

    async def __aenter__(self) -> rtc_call:
        from aiortc import RTCSessionDescription

        from tidegate.protocol.messages import RtcAnswer, RtcOffer

        from .test_rtc import client_pc

        self.pc, self.mic, tracks = await client_pc(self.with_video)
        try:
            answer = await self.conv.client.request(
                RtcOffer(id="o1", sdp=self.pc.localDescription.sdp)
            )
            assert isinstance(answer, RtcAnswer)
            await self.pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
            async with asyncio.timeout(scaled(10)):
                while self.pc.connectionState != "connected" or not tracks:
                    await asyncio.sleep(0.02)
        except BaseException:
            await self.pc.close()
            raise
        self.listener = asyncio.get_running_loop().create_task(self._listen(tracks[0]))
        return self

    async def _listen(self, track: object) -> None:
        while True:
            f = await track.recv()  # type: ignore[attr-defined]
            x = f.to_ndarray().reshape(-1).astype(np.float32)
            if len(f.layout.channels) == 2:
                x = x.reshape(-1, 2).mean(axis=1)
            assert f.sample_rate == 48_000
            self.heard.append((time.monotonic(), x))

    async def speak(self, speech: np.ndarray) -> None:
        step = int(0.2 * 16_000)
        for i in range(0, len(speech), step):  # real time: the track paces by the clock
            self.mic.write(speech[i : i + step])
            while self.mic.queued_ms > 400:
                await asyncio.sleep(0.02)

    def audio(self, start: float = 0.0, end: float = float("inf")) -> np.ndarray:
        parts = [x for t, x in self.heard if start <= t < end]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    async def __aexit__(self, *exc: object) -> None:
        self.listener.cancel()
        await asyncio.gather(self.listener, return_exceptions=True)
        await self.pc.close()


def _at_16k(question: tuple[np.ndarray, int], tail_s: float = 1.0) -> np.ndarray:
    from tidegate.pipelines.audio import to_mono_16k

    pcm, rate = question
    speech = to_mono_16k(
        InputAudio(pcm=pcm.astype("<i2").tobytes(), format="s16le", sample_rate=rate, channels=1)
    )
    return np.concatenate([speech, np.zeros(int(tail_s * 16_000), np.float32)])


async def test_webrtc_question_is_answered_on_the_track(
    live: LiveServer, question: tuple[np.ndarray, int], whisper: WhisperOnnx
) -> None:
    """Over WebRTC (a real aiortc peer on loopback), the spoken question is answered: the
    reply's speech comes back on the client's inbound track (not as output.audio), and its
    transcription reads the reply."""
    async with converse(live) as c, rtc_call(c) as call:
        await call.speak(_at_16k(question))
        await c.wait(lambda: c.done())
        await asyncio.sleep(0.5)
    (done,) = c.done()
    assert done.status == "completed" and "Paris" in done.text, done.text
    assert not c.of(OutputAudio)
    audio = call.audio()
    assert len(audio) / 48_000 > 1.0
    text = transcribe(whisper, np.clip(audio, -32768, 32767).astype(np.int16))
    assert ler(done.text, text) <= READS_AS, (done.text, text)


async def test_webrtc_speech_over_a_reply_stops_the_track(
    live: LiveServer, question: tuple[np.ndarray, int]
) -> None:
    """Over WebRTC, speaking over a reply cuts it: the track goes quiet at once, at the VAD's
    start of speech (response.paused; no audio from shortly after it until the next reply
    starts), and once the ASR has heard words response.done is cancelled with a prefix of
    the reply."""
    async with converse(live) as c, rtc_call(c) as call:
        await c.client.send(InputText(id="t1", text=STORY))
        async with asyncio.timeout(scaled(60)):
            while len(call.audio()) < 1.5 * 48_000:
                await asyncio.sleep(0.05)
        await call.speak(_at_16k(question))
        await c.wait(lambda: len(c.done()) == 2)
        await asyncio.sleep(0.5)
    first, second = c.done()
    assert first.status == "cancelled" and second.status == "completed"
    said = c.deltas(first.response_id)
    assert first.text and said.startswith(first.text) and len(first.text) < len(said)
    (paused,) = [p for p in c.of(ResponsePaused) if p.response_id == first.response_id]
    assert not c.of(ResponseResumed)
    t_pause = next(t for e, t in c.events if e is paused)
    t_cut = next(t for e, t in c.events if e is first)
    t_next = next(
        t
        for e, t in c.events
        if isinstance(e, ResponseCreated) and e.response_id != first.response_id
    )
    assert t_pause < t_cut <= t_next and t_next - t_pause > 0.5
    assert len(call.audio(t_pause + 0.3, t_next)) == 0  # flushed: nothing played after it
    assert not c.of(OutputAudio)


async def test_webrtc_a_sound_over_a_reply_pauses_the_track_and_the_reply_resumes(
    live: LiveServer,
) -> None:
    """Over WebRTC, a wordless sound ("ahh") over a reply pauses it at once: response.paused,
    and the track goes quiet (its queue flushed); the ASR hears no words, so the reply
    resumes (response.resumed) and its speech comes back on the track."""
    from tidegate.bench import audio_sets

    async with converse(live) as c, rtc_call(c) as call:
        await c.client.send(InputText(id="t1", text=STORY))
        async with asyncio.timeout(scaled(60)):
            while len(call.audio()) < 1.5 * 48_000:
                await asyncio.sleep(0.05)
        sound = np.concatenate([audio_sets.speech("ahhhh"), np.zeros(16_000, np.float32)])
        await call.speak(sound.astype(np.float32))
        await c.wait(lambda: c.of(ResponseResumed) or c.done())
        await asyncio.sleep(1.0)
        await c.client.send(ResponseCancel(id="x1"))
        await c.wait(lambda: c.done())
    (paused,) = c.of(ResponsePaused)
    (resumed,) = c.of(ResponseResumed)
    assert resumed.reason in ("no_words", "backchannel") and resumed.played_ms == paused.played_ms
    t_paused = next(t for e, t in c.events if e is paused)
    t_resumed = next(t for e, t in c.events if e is resumed)
    assert len(call.audio(t_paused + 0.3, t_resumed)) == 0  # quiet while paused
    assert len(call.audio(t_resumed, t_resumed + 1.0)) > 0.5 * 48_000  # and on again
    (done,) = c.done()
    assert done.status == "cancelled" and not c.of(OutputAudio)


async def test_frames_are_looked_at_and_told_to_the_llm(live: LiveServer) -> None:
    """input.frame photos give vision.result naming the frame's time: a face in the astronaut
    photo, none in the coffee cup; the latest sight is put just before the user's question in
    what the LLM is given; a frame that is not an image is dropped alone."""
    from tidegate.protocol.messages import InputFrame, VisionResult

    def frame(name: str, ts: float) -> InputFrame:
        image = (CACHE / "assets" / f"{name}.png").read_bytes()
        return InputFrame(image=image, encoding="png", ts=ts)

    question = {"role": "user", "content": "Who do you see?"}

    def prompt() -> list[dict[str, str]]:
        reply = session.mode.lane(ReplyLane)  # type: ignore[union-attr]
        reply.history.append(question)
        try:
            return list(reply.messages())
        finally:
            reply.history.pop()

    async with converse(live) as c:
        session = live.runtime.registry.get(c.session_id)
        assert session is not None
        await c.client.send(InputFrame(image=b"not a png", encoding="png", ts=1.0))
        await asyncio.sleep(0.5)
        await c.client.send(frame("astronaut", 1000.0))
        await c.wait(lambda: c.of(VisionResult))
        with_face = prompt()
        await c.client.send(frame("coffee", 2000.0))
        await c.wait(lambda: len(c.of(VisionResult)) == 2)
        without = prompt()
        stats = session.mode.stats()["vision"]  # type: ignore[union-attr]
    first, second = c.of(VisionResult)
    assert first.frame_ts == 1000.0 and [d.label for d in first.detections] == ["face"]
    assert first.detections[0].score > 0.5
    assert second.frame_ts == 2000.0 and second.detections == ()
    assert first.timing is not None and first.timing.engine_end is not None
    assert with_face[-2:] == [
        {"role": "system", "content": "The camera sees one face in view."},
        question,
    ]
    assert without[-2]["content"] == "The camera sees no face in view."
    assert stats["bad_frames"] == 1 and stats["results"] == 2


async def _answer_to(c: Conversation, frame_id: str, ts: float) -> ServerMessage:
    """The error that names ``frame_id``, or the vision.result of its ``ts``: whichever comes."""
    from tidegate.protocol.messages import Error, VisionResult

    def answer() -> ServerMessage | None:
        for e, _ in c.events:
            if isinstance(e, Error) and e.ref == frame_id:
                return e
            if isinstance(e, VisionResult) and e.frame_ts == ts:
                return e
        return None

    await c.wait(lambda: answer() is not None, timeout_s=60)
    found = answer()
    assert found is not None
    return found


async def test_png_bomb_is_refused_before_decoding(live: LiveServer) -> None:
    """A 249 KB PNG that would decode to 16000x16000 pixels (768 MB of RGB) is refused with
    invalid_field naming the size and frame_max_pixels, before anything decodes it: the
    server's resident memory does not grow by hundreds of MB; the next frame is looked at."""
    from tidegate.protocol.messages import Error, InputFrame

    bomb = png_bomb()
    photo = (CACHE / "assets" / "astronaut.png").read_bytes()
    async with converse(live) as c:
        session = live.runtime.registry.get(c.session_id)
        assert session is not None

        def handled() -> int:  # frames the vision lane refused, failed or looked at
            st = session.mode.stats()["vision"]  # type: ignore[union-attr]
            return int(st["results"] + st["errors"] + st["bad_frames"])

        with PeakRss() as rss:
            for i in range(3):
                before = handled()
                await c.client.send(InputFrame(id=f"bomb{i}", image=bomb, encoding="png", ts=i))
                await c.wait(lambda before=before: handled() > before, timeout_s=60)
        errors = [e for e in c.of(Error) if e.ref is not None and e.ref.startswith("bomb")]
        await c.client.send(InputFrame(id="photo", image=photo, encoding="png", ts=10.0))
        assert not isinstance(await _answer_to(c, "photo", 10.0), Error)
    assert rss.growth < 200 * 2**20, f"RSS grew {rss.growth / 2**20:.0f} MiB"
    assert len(errors) == 3, "the bombs were decoded"
    for e in errors:
        assert e.code == "invalid_field"
        assert "16000x16000" in e.message and "frame_max_pixels" in e.message


async def test_frames_that_are_not_their_named_format_are_refused(live: LiveServer) -> None:
    """A GIF, a BMP and a TIFF sent as png or jpeg, and real video files (MP4, Matroska) sent
    as png or jpeg, are each refused with invalid_field saying what they look like; none is
    looked at; a PNG whose body does not decode gets invalid_field too; a real JPEG then is
    looked at, decoded on the media worker pool."""
    from tidegate.protocol.messages import Error, InputFrame

    wrong = [
        ("gif", still("GIF"), "png", "GIF"),
        ("bmp", still("BMP"), "png", "BMP"),
        ("tiff", still("TIFF"), "jpeg", "TIFF"),
        ("mp4", video("mp4", "mpeg4"), "png", "MP4"),
        ("mkv", video("matroska", "mpeg4"), "jpeg", "Matroska"),
    ]
    png = still("PNG")
    idat = png.index(b"IDAT")
    broken = png[: idat + 4] + bytes(len(png) - idat - 4)  # a good header, a body of zeros
    pool = live.runtime.engines.media  # type: ignore[union-attr]
    async with converse(live) as c:
        for i, (name, data, encoding, looks) in enumerate(wrong):
            await c.client.send(InputFrame(id=name, image=data, encoding=encoding, ts=100.0 + i))
            answer = await _answer_to(c, name, 100.0 + i)
            assert isinstance(answer, Error), f"{name} sent as {encoding} was looked at"
            assert answer.code == "invalid_field" and looks in answer.message, answer
        await c.client.send(InputFrame(id="broken", image=broken, encoding="png", ts=150.0))
        answer = await _answer_to(c, "broken", 150.0)
        assert isinstance(answer, Error) and answer.code == "invalid_field"
        assert "not a decodable png" in answer.message
        decoded = pool.done
        await c.client.send(InputFrame(id="ok", image=still("JPEG"), encoding="jpeg", ts=200.0))
        assert not isinstance(await _answer_to(c, "ok", 200.0), Error)
        assert pool.done > decoded  # decoded on the media worker pool


async def test_webrtc_video_is_looked_at(live: LiveServer) -> None:
    """Frames of a WebRTC video track (aiortc's test pattern: no face) reach the vision lane:
    vision.result with no detection, naming increasing frame times."""
    from tidegate.protocol.messages import VisionResult

    async with converse(live) as c, rtc_call(c, with_video=True):
        await c.wait(lambda: len(c.of(VisionResult)) >= 2, timeout_s=20)
    results = c.of(VisionResult)
    assert all(r.detections == () for r in results)
    assert results[0].frame_ts < results[1].frame_ts


async def test_turn_end_reports_the_freshest_frame(
    live: LiveServer, question: tuple[np.ndarray, int]
) -> None:
    """At the end of a spoken turn (and of a typed one), a vision.result names the freshest
    frame's time, before the reply starts, besides the results at the set rate."""
    from tidegate.protocol.messages import InputFrame, VisionResult

    image = (CACHE / "assets" / "astronaut.png").read_bytes()
    async with converse(live) as c:
        await c.client.send(InputFrame(image=image, encoding="png", ts=5000.0))
        await c.wait(lambda: c.of(VisionResult))
        await c.speak(*question)
        await c.wait(lambda: c.done())
        await c.client.send(InputText(id="t2", text="And now?"))
        await c.wait(lambda: len(c.done()) == 2)
    kinds = [type(e) for e, _ in c.events]
    results = c.of(VisionResult)
    assert len(results) == 3 and {r.frame_ts for r in results} == {5000.0}
    created = [i for i, k in enumerate(kinds) if k is ResponseCreated]
    looks = [i for i, k in enumerate(kinds) if k is VisionResult]
    assert looks[1] < created[0] < looks[2] < created[1]
    assert [d.label for d in results[1].detections] == ["face"]
    session_stats = c.of(ResponseDone)
    assert all(d.status == "completed" for d in session_stats)


async def test_ws_only_device_speaks_and_publishes_sensors(
    live: LiveServer, long_question: tuple[np.ndarray, int]
) -> None:
    """A WS-only device (input.audio chunks, paced by credit) gets VAD events, partials, a
    final with the words, a streamed reply and output.audio; its sensor readings, sent
    meanwhile, reach a dashboard session of the same tenant; another tenant cannot subscribe."""
    from tidegate.protocol.messages import (
        AsrPartial,
        InputSensor,
        SensorReading,
        SensorSubscribe,
    )

    speech, rate = long_question  # long enough for partials while it is spoken
    async with (
        converse(live) as device,
        await live.client(token=live.token(subject="dash")) as dash,
        await live.client(token=live.token(tenant="evil", subject="eve")) as eve,
    ):
        await dash.create_session({"mode": "transcribe"})
        await eve.create_session({"mode": "transcribe"})
        with pytest.raises(RefusedError) as caught:
            await eve.request(SensorSubscribe(id="e1", session_id=device.session_id))
        assert caught.value.server_code == "not_found"
        await dash.send(SensorSubscribe(session_id=device.session_id, channels=("imu.accel",)))
        await asyncio.sleep(0.2)  # the subscription is in place before the readings

        async def sensors() -> None:
            for i in range(20):
                await device.client.send(
                    InputSensor(channel="imu.accel", ts=i * 50.0, values=(0.1 * i, -9.8, 0.0))
                )
                await asyncio.sleep(0.05)

        await asyncio.gather(device.speak(speech, rate), sensors())
        readings = [await dash.wait_for(SensorReading, timeout_s=scaled(10))]
        async with asyncio.timeout(scaled(10)):
            while readings[-1].ts < 19 * 50.0:
                readings.append(await dash.wait_for(SensorReading))
        await device.wait(lambda: device.done("completed"))
    assert {r.session_id for r in readings} == {device.session_id}
    assert [r.ts for r in readings] == sorted(r.ts for r in readings)
    assert readings[-1].values == (0.1 * 19, -9.8, 0.0)
    assert len(readings) + sum(r.dropped for r in readings) == 20
    kinds = [type(e) for e, _ in device.events]
    lane = [(e.TYPE, getattr(e, "text", "")) for e, _ in device.events if e.TYPE[:3] in "vadasr"]
    assert VadSpeechStarted in kinds and AsrPartial in kinds and AsrFinal in kinds, lane
    final = " ".join(f.text for f in device.of(AsrFinal)).lower()
    assert "weather" in final and "umbrella" in final, final
    committed = [p for p in device.of(AsrPartial) if p.text]  # the first may be all tentative
    assert committed, lane
    partial = committed[0]
    assert final.startswith(partial.text.lower()[:10]), (partial.text, final)
    done = device.done("completed")[-1]  # a pause in the reading may end a turn early
    assert done.text and len(device.audio(done.response_id)) > 48_000


async def test_garbage_on_one_session_leaves_the_other_intact(
    live: LiveServer, question: tuple[np.ndarray, int]
) -> None:
    """One client sends undecodable bytes, unknown types, bad fields and a reading out of
    order; it gets errors (and is closed at the bad-message limit); a session speaking at the
    same time gets its final and reply as usual."""
    import cbor2
    from websockets.exceptions import InvalidState

    from tidegate.protocol.client import ConnectionClosedError
    from tidegate.protocol.messages import Error, InputSensor

    async def garbage() -> list[str]:
        codes: list[str] = []
        async with await live.client(token=live.token(subject="mallory")) as bad:
            await bad.create_session({"mode": "assistant"})
            await bad.send(InputSensor(channel="t", ts=5.0, values=(1.0,)))
            await bad.send(InputSensor(channel="t", ts=1.0, values=(1.0,)))
            payloads = [
                b"\xff\xfe\x00garbage",
                cbor2.dumps({"type": "no.such.type"}),
                cbor2.dumps({"type": "input.audio", "pcm": "text", "format": "s16le"}),
                cbor2.dumps([1, 2, 3]),
            ]
            try:
                for i in range(40):
                    try:
                        await bad.send_raw(payloads[i % len(payloads)])
                    except InvalidState:  # the server closed it at the bad-message limit
                        break
                    await asyncio.sleep(0.02)
                async with asyncio.timeout(scaled(10)):
                    while True:
                        event = await bad.recv()
                        if isinstance(event, Error):
                            codes.append(event.code)
            except ConnectionClosedError as e:
                codes.append(f"closed {e.close_code}")
        return codes

    async with converse(live) as good:
        codes, _ = await asyncio.gather(garbage(), good.speak(*question))
        await good.wait(lambda: good.done())
    assert "invalid_field" in codes and "closed 4400" in codes, codes
    final = " ".join(f.text for f in good.of(AsrFinal)).lower()
    assert "capital" in final and "france" in final, final
    (done,) = good.done()
    assert done.status == "completed" and "Paris" in done.text
