"""The reply lane (LLM -> TTS -> audio out, barge-in) on the real local LLM and Piper, without
a server: a FakeSession is its session side; with no WebRTC peer its speech goes out as
output.audio."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from types import SimpleNamespace

import numpy as np
import pytest
import pytest_asyncio

from tests.support import scaled
from tidegate.bench import audio_sets
from tidegate.engines.llm import LlmBatcher
from tidegate.engines.registry import TTS
from tidegate.engines.service import EngineService
from tidegate.media.audio_out import AudioOutTrack
from tidegate.pipelines.echo import Played
from tidegate.pipelines.errors import InvalidConfigError, NotFoundError
from tidegate.pipelines.interrupt import Interruption
from tidegate.pipelines.media import SessionMedia
from tidegate.pipelines.own_voice import OwnVoice
from tidegate.pipelines.records import Response as ResponseRecord
from tidegate.pipelines.reply import (
    OutFrame,
    Reply,
    ReplyLane,
    SpokenChunk,
    SpokenTurn,
    _created,
    mid_sentence,
    trim_leading_silence,
    trim_trailing_silence,
)
from tidegate.protocol.messages import (
    MAX_TEXT_CHARS,
    MAX_TURN_SEGMENTS,
    OutputAudio,
    ResponseCancel,
    ResponseCreate,
    ResponseCreated,
    ResponseDone,
    ResponsePaused,
    ResponseResumed,
    ResponseTextDelta,
)
from tidegate.server.modes import lane_config
from tidegate.server.settings import Settings

from .lanes import FakeSession, engine_settings, started_engines

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tmp = tmp_path_factory.mktemp("reply-lane")
    return engine_settings(tmp, ("smollm2-135m", "piper-joe"), engines=("llm", "tts"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines(settings: Settings) -> AsyncIterator[EngineService]:
    async for service in started_engines(settings):
        yield service


def lane_for(session: FakeSession, settings: Settings, engines: EngineService) -> ReplyLane:
    config = lane_config(settings)
    media = SessionMedia(session, config.media, lambda peer: None)
    return ReplyLane(
        session, config.reply, engines.llm(), engines.get(TTS), voice="piper-joe", media=media
    )


async def wait_for(check: object, timeout_s: float = 60.0) -> None:
    async with asyncio.timeout(scaled(timeout_s)):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_an_answer_streams_text_and_speech(
    settings: Settings, engines: EngineService
) -> None:
    """answer() gives response.created, text deltas that add up to the reply, output.audio
    (48 kHz s16le) and response.done completed; the history and the record keep it."""
    session = FakeSession()
    lane = lane_for(session, settings, engines)
    try:
        lane.answer("What is the capital of France?", "t1", 0.0, spoken=False)
        await wait_for(lambda: session.of(ResponseDone))
    finally:
        await lane.close()
        await session.close()
    (created,) = session.of(ResponseCreated)
    (done,) = session.of(ResponseDone)
    assert created.ref == "t1" and done.status == "completed" and done.text
    assert created.input_text is None and created.segment_ids is None  # typed: no segments
    deltas = "".join(d.delta for d in session.of(ResponseTextDelta))
    assert deltas == done.text
    audio = session.of(OutputAudio)
    assert audio and {(a.sample_rate, a.format, a.response_id) for a in audio} == {
        (48_000, "s16le", done.response_id)
    }
    assert [m["role"] for m in lane.history] == ["user", "assistant"]
    (record,) = [r for r in session.records if isinstance(r, ResponseRecord)]
    assert record.status == "completed" and record.text == done.text


async def test_barge_in_cuts_the_reply_at_what_was_heard(
    settings: Settings, engines: EngineService
) -> None:
    """barge_in() while the reply speaks ends it at once: response.done cancelled, its text
    the part already played (a prefix of what was generated), counted as a barge-in; no audio
    of it follows."""
    session = FakeSession()
    lane = lane_for(session, settings, engines)
    try:
        lane.answer("Tell me a long story about a cat.", None, 0.0, spoken=True)
        await wait_for(lambda: len(session.of(OutputAudio)) >= 10)
        lane.barge_in()
        (done,) = session.of(ResponseDone)
        frames = len(session.of(OutputAudio))
        await asyncio.sleep(0.3)
        assert len(session.of(OutputAudio)) == frames
    finally:
        await lane.close()
        await session.close()
    assert done.status == "cancelled"
    generated = "".join(d.delta for d in session.of(ResponseTextDelta))
    assert generated.startswith(done.text)
    assert lane.stats()["barge_ins"] == 1 and lane.reply is None


async def test_a_speculative_reply_is_adopted_when_the_turn_ends_as_guessed(
    settings: Settings, engines: EngineService
) -> None:
    """speculate() starts the reply held (nothing emitted); answer() with the same text
    adopts it: one response, one LLM generation, its text and speech as usual."""
    session = FakeSession()
    lane = lane_for(session, settings, engines)
    llm = engines.llm()
    assert isinstance(llm, LlmBatcher)
    submitted = llm.counters.submitted
    try:
        lane.speculate("What is the capital of France?", 5.0, wait_s=0.2)
        await wait_for(lambda: lane.speculative is not None and lane.speculative.text)
        assert session.events == []  # held: the client sees nothing yet
        lane.answer("What is the capital of France?", None, 7.0, spoken=True, segments=("g1", "g2"))
        await wait_for(lambda: session.of(ResponseDone))
    finally:
        await lane.close()
        await session.close()
    (created,) = session.of(ResponseCreated)
    (done,) = session.of(ResponseDone)
    assert done.status == "completed" and created.response_id == done.response_id
    # the turn the answer named (a held reply is named when it is adopted)
    assert created.input_text == "What is the capital of France?"
    assert created.segment_ids == ("g1", "g2")
    assert "".join(d.delta for d in session.of(ResponseTextDelta)) == done.text
    assert session.of(OutputAudio) and done.timing is not None and done.timing.received == 7.0
    assert llm.counters.submitted == submitted + 1
    stats = lane.stats()
    assert stats["speculations"] == 1 and stats["speculation_hits"] == 1
    assert stats["responses"] == 1 and stats["speculation_discarded"] == 0
    assert [m["role"] for m in lane.history] == ["user", "assistant"]


async def test_a_speculative_reply_is_discarded_when_the_final_differs(
    settings: Settings, engines: EngineService
) -> None:
    """A held reply for text the turn did not end with is dropped without a trace: the
    client, the history and the records see only the reply to what was said."""
    session = FakeSession()
    lane = lane_for(session, settings, engines)
    try:
        lane.speculate("What is the capital of Spain?", 0.0, wait_s=0.2)
        held = lane.speculative
        assert held is not None
        await wait_for(lambda: held.text)  # it generated text that must never be seen
        lane.answer("What is the capital of France?", None, 0.0, spoken=True)
        await wait_for(lambda: session.of(ResponseDone))
        lane.speculate("How many days are in a week?", 0.0, wait_s=0.2)
        lane.barge_in()  # the user spoke again: that guess goes too
    finally:
        await lane.close()
        await session.close()
    (done,) = session.of(ResponseDone)
    assert done.status == "completed" and done.response_id != held.id
    assert {e.response_id for e in session.events if hasattr(e, "response_id")} == {
        done.response_id
    }
    assert lane.history[0]["content"] == "What is the capital of France?"
    assert [r.response_id for r in session.records if isinstance(r, ResponseRecord)] == [
        done.response_id
    ]
    stats = lane.stats()
    assert stats["speculations"] == 2 and stats["speculation_discarded"] == 2
    assert stats["speculation_hits"] == 0 and stats["responses"] == 1
    assert held.gen is not None and held.gen.cancelled


async def test_leading_silence_is_trimmed_to_a_short_lead() -> None:
    """A first chunk keeps 10 ms before its first audible sample; quiet audio is kept whole."""
    audio = np.zeros(48_000, np.int16)
    audio[4800:9600] = 3000  # audible from 100 ms
    audio[:4800] = 20  # -64 dBFS: silence
    out = trim_leading_silence(audio)
    assert len(out) == 48_000 - 4800 + 480 and out[480] == 3000 and out[479] == 20
    quiet = np.full(960, 20, np.int16)
    assert trim_leading_silence(quiet) is quiet


async def test_a_chunk_cut_mid_phrase_keeps_a_short_seam() -> None:
    """A chunk that ends in a word keeps 30 ms of its trailing silence (and the next starts
    like a first chunk); one that ends at a mark keeps its pause."""
    audio = np.zeros(48_000, np.int16)
    audio[4800:38_400] = 3000  # audible until 800 ms
    audio[38_400:] = 20  # then 200 ms of silence
    out = trim_trailing_silence(audio)
    assert len(out) == 38_400 + 1440 and out[38_399] == 3000 and out[-1] == 20
    quiet = np.full(960, 20, np.int16)
    assert trim_trailing_silence(quiet) is quiet
    assert mid_sentence("The city") and mid_sentence("of Paris has a long ")
    assert not mid_sentence("The city of Paris,") and not mid_sentence("Hello.")
    assert not mid_sentence("") and not mid_sentence('He said "hi."')


async def test_speech_that_runs_dry_mid_reply_is_counted_as_a_gap(
    settings: Settings, engines: EngineService
) -> None:
    """A frame sent after the audio before it has played out is a gap the user hears
    (``audio_gaps``, ``audio_gap_ms``); frames sent ahead of their playout, the first frame,
    and the silence of a pause are not."""
    session = FakeSession()
    lane = lane_for(session, settings, engines)
    try:
        reply = Reply("r_gap", None, 0.0, text="Hello there, friend.")
        chunk = SpokenChunk(0, 20, 40, None)
        pcm = np.zeros(960, np.int16)
        t = time.monotonic() - 10.0
        for j, now in enumerate([t, t + 0.005, t + 0.01, t + 0.06]):  # ahead, then in time
            lane._send(reply, OutFrame(chunk, j, pcm), now)
        assert lane.counters["audio_gaps"] == 0
        lane._send(reply, OutFrame(chunk, 4, pcm), t + 0.58)  # 500 ms after it played out
        assert lane.counters["audio_gaps"] == 1
        assert lane.counters["audio_gap_ms"] == 500
        # paused at t + 0.6, resumed ~9.4 s later: playing on from then is no gap
        lane._pause(reply, t + 0.6)
        lane._resume(reply, Interruption(reply.id, paused_at=t + 0.6, confirm_s=1.5))
        lane._send(reply, OutFrame(chunk, 5, pcm), time.monotonic())
        assert lane.counters["audio_gaps"] == 1, lane.counters
    finally:
        await lane.close()
        await session.close()


async def test_requests_the_lane_cannot_serve_are_refused(
    settings: Settings, engines: EngineService
) -> None:
    """response.create with no user message to answer is invalid; response.cancel with no
    reply in progress names what is not found."""
    session = FakeSession()
    lane = lane_for(session, settings, engines)
    table = lane.handlers()
    try:
        with pytest.raises(InvalidConfigError, match="no user message"):
            await table[ResponseCreate](ResponseCreate(id="c1"))
        with pytest.raises(NotFoundError, match="no response in progress"):
            await table[ResponseCancel](ResponseCancel(id="x1"))
    finally:
        await lane.close()
        await session.close()


async def test_a_reply_names_the_spoken_turn_it_answers(
    settings: Settings, engines: EngineService
) -> None:
    """response.created gives a spoken turn's words and the segments they came from: for a
    turn answered at its end, and for a committed one answered by a response.create that
    gives no text; not for a response.create that gives its own. A turn too long to name is
    not named."""
    session = FakeSession()
    session.config = {"output_modalities": ["text"]}
    lane = lane_for(session, settings, engines)
    create = lane.handlers()[ResponseCreate]
    try:
        lane.answer(
            "I would like a table for four people tonight.",
            None,
            0.0,
            spoken=True,
            segments=("g1", "g2"),
        )
        await wait_for(lambda: len(session.of(ResponseDone)) == 1)
        lane.hear("Make it five.", ("g3",))
        await create(ResponseCreate(id="c1"))
        await wait_for(lambda: len(session.of(ResponseDone)) == 2)
        lane.hear("Make it six.", ("g4",))
        await create(ResponseCreate(id="c2", text="Make it seven."))
        await wait_for(lambda: len(session.of(ResponseDone)) == 3)
    finally:
        await lane.close()
        await session.close()
    named = [(c.ref, c.input_text, c.segment_ids) for c in session.of(ResponseCreated)]
    assert named == [
        (None, "I would like a table for four people tonight.", ("g1", "g2")),
        ("c1", "Make it five.", ("g3",)),
        ("c2", None, None),  # it answers the text it gave
    ]
    assert [d.status for d in session.of(ResponseDone)] == ["completed"] * 3

    def created(text: str, segments: tuple[str, ...]) -> ResponseCreated:
        return _created(Reply("r1", None, 0.0, turn=SpokenTurn(text, segments)))

    ids = tuple(f"g{k}" for k in range(MAX_TURN_SEGMENTS + 1))
    assert created("yes " * 65, ids).segment_ids is None
    assert created("x" * (MAX_TEXT_CHARS + 1), ("g1",)).input_text is None
    assert created("yes", ()).input_text is None
    assert created("yes", ("g1",)).segment_ids == ("g1",)


class Player(FakeSession):
    """A WS-only client playing the reply: frames by ts; at response.paused it drops those
    from played_ms on (the server sends them again if the reply resumes)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: dict[float, bytes] = {}

    def emit(self, msg: object) -> None:
        super().emit(msg)  # type: ignore[arg-type]
        if isinstance(msg, OutputAudio) and msg.ts is not None:
            self.frames[msg.ts] = msg.pcm
        elif isinstance(msg, ResponsePaused):
            for ts in [ts for ts in self.frames if ts >= msg.played_ms]:
                del self.frames[ts]


async def test_speech_pauses_a_reply_and_a_final_without_words_resumes_it(
    settings: Settings, engines: EngineService
) -> None:
    """speech_started() pauses the reply at once: response.paused says how much had played,
    the frames sent ahead of that are taken back and nothing more goes out; a final with no
    words resumes it (response.resumed, no_words) from there, the taken-back frames sent
    again with the same ts; it completes, and a client that drops what it had not played
    at the pause plays every frame exactly once."""
    session = Player()
    lane = lane_for(session, settings, engines)
    try:
        lane.answer("What is the capital of France?", None, 0.0, spoken=True)
        await wait_for(lambda: len(session.of(OutputAudio)) >= 20)
        lane.speech_started()
        sent = len(session.of(OutputAudio))
        (paused,) = session.of(ResponsePaused)
        await asyncio.sleep(0.3)
        assert len(session.of(OutputAudio)) == sent  # nothing while paused
        lane.speech_stopped()
        assert lane.heard("", final=True)
        await wait_for(lambda: session.of(ResponseResumed), 5.0)  # after the onset hold
        (resumed,) = session.of(ResponseResumed)
        await wait_for(lambda: session.of(ResponseDone))
    finally:
        await lane.close()
        await session.close()
    assert paused.played_ms < sent * 20  # frames sent ahead were taken back
    assert resumed.played_ms == paused.played_ms and resumed.reason == "no_words"
    assert resumed.paused_ms >= 250 and resumed.heard == ""
    after = session.of(OutputAudio)[sent]
    assert after.ts == paused.played_ms  # played on from where it paused
    (done,) = session.of(ResponseDone)
    generated = "".join(d.delta for d in session.of(ResponseTextDelta))
    assert done.status == "completed" and done.text == generated
    assert sorted(session.frames) == [20.0 * i for i in range(len(session.frames))]
    assert len(session.frames) == len({a.ts for a in session.of(OutputAudio)})
    (record,) = [r for r in session.records if isinstance(r, ResponseRecord)]
    assert record.spoken_text == generated
    stats = lane.stats()
    assert stats["interruptions_resumed"] == 1 and stats["resent_frames"] >= 1


class TrackClient(FakeSession):
    """A WebRTC client at the end of the reply lane's track: each packet plays ``delay_s``
    after it arrives (its jitter buffer); with ``silences``, at response.paused it drops what
    it holds and what arrives until response.resumed (what its rtc.offer's playout_delay_ms
    promises), else it plays everything out."""

    def __init__(self, delay_s: float, *, silences: bool) -> None:
        super().__init__()
        self.delay_s, self.silences = delay_s, silences
        self.held: deque[float] = deque()  # when each held packet plays
        self.arrived = self.played = self.dropped = 0
        self.muted = False
        self.played_at_pause: int | None = None
        self.arrived_at_pause: int | None = None

    def _play_due(self) -> None:
        now = time.monotonic()
        while self.held and self.held[0] <= now:
            self.held.popleft()
            self.played += 1

    def packet(self, payload: bytes, pts: int) -> None:
        self._play_due()
        self.arrived += 1
        if self.muted:
            self.dropped += 1
        else:
            self.held.append(time.monotonic() + self.delay_s)

    def emit(self, msg: object) -> None:
        super().emit(msg)  # type: ignore[arg-type]
        self._play_due()
        if isinstance(msg, ResponsePaused):
            self.played_at_pause, self.arrived_at_pause = self.played, self.arrived
            if self.silences:
                self.dropped += len(self.held)
                self.held.clear()
                self.muted = True
        elif isinstance(msg, ResponseResumed):
            self.muted = False


@pytest.mark.parametrize("silences", [True, False], ids=["playout-delay-given", "none-given"])
async def test_a_paused_track_takes_back_what_the_client_has_not_played(
    settings: Settings, engines: EngineService, silences: bool
) -> None:
    """Over WebRTC, a client that gave its playout delay (rtc.offer ``playout_delay_ms``)
    silences what it holds at response.paused: the pause takes back the frames it had not
    played (sent less than that delay ago), response.paused says what it had played, and the
    resumed reply sends them again, so it hears every frame exactly once. A client that said
    nothing plays out what it received: only the frames the track had not sent come back."""
    delay_s = 0.1
    client = TrackClient(delay_s, silences=silences)
    config = lane_config(settings)
    media = SessionMedia(client, config.media, lambda peer: None)
    track = AudioOutTrack(lead_ms=20)
    media.peer = SimpleNamespace(audio_out=track)  # type: ignore[assignment]
    media.client_playout_delay_s = delay_s if silences else None
    lane = ReplyLane(
        client, config.reply, engines.llm(), engines.get(TTS), voice="piper-joe", media=media
    )
    track.attach(client.packet)
    try:
        lane.answer("What is the capital of France?", None, 0.0, spoken=True)
        await wait_for(lambda: client.arrived >= 40)
        lane.speech_started()
        (paused,) = client.of(ResponsePaused)
        lane.speech_stopped()
        assert lane.heard("", final=True)
        await wait_for(lambda: client.of(ResponseResumed), 5.0)
        await wait_for(lambda: client.of(ResponseDone))
        await asyncio.sleep(2 * delay_s)
        client._play_due()
    finally:
        track.stop()
        await lane.close()
        await client.close()
    (done,) = client.of(ResponseDone)
    assert done.status == "completed" and not client.of(OutputAudio)
    stats = lane.stats()
    frames = stats["audio_frames"] - stats["resent_frames"]  # the reply's, each once
    assert client.played_at_pause is not None and client.arrived_at_pause is not None
    if silences:
        # what it had played at the pause, give or take the frame playing then
        assert abs(paused.played_ms - 20 * client.played_at_pause) <= 20
        assert client.arrived_at_pause - client.played_at_pause >= 4  # it held ~5 frames
        assert client.played == frames  # the dropped ones came again: each heard once
        assert client.dropped >= 4
    else:
        assert paused.played_ms == 20 * client.arrived_at_pause  # every sent frame counts
        assert client.dropped == 0 and client.played == client.arrived
        assert client.played == frames


async def test_words_cut_a_paused_reply_at_what_had_played_at_the_pause(
    settings: Settings, engines: EngineService
) -> None:
    """Words heard while the reply is paused cut it: response.done cancelled whose text is
    what had played at the pause (the wait for the ASR adds nothing), into the history."""
    session = Player()
    lane = lane_for(session, settings, engines)
    try:
        lane.answer("Tell me a long story about a cat.", None, 0.0, spoken=True)
        await wait_for(lambda: len(session.of(OutputAudio)) >= 60)
        lane.speech_started()
        assert lane.reply is not None
        at_pause = lane.reply.spoken(time.monotonic())
        await asyncio.sleep(0.5)
        assert lane.heard("Wait, stop.", final=False)
        (done,) = session.of(ResponseDone)
    finally:
        await lane.close()
        await session.close()
    assert done.status == "cancelled" and done.text == at_pause and at_pause
    assert lane.history[-1] == {"role": "assistant", "content": at_pause}
    assert lane.stats()["interruptions_cut"] == 1


class Heard:
    """What the session played (the reply lane's ``echo`` sink, beside the own-voice judge):
    each frame and when it plays."""

    def __init__(self) -> None:
        self.frames: list[tuple[np.ndarray, float]] = []

    def played(self, pcm: np.ndarray, rate_hz: int, at: float) -> None:
        assert rate_hz == 48_000
        self.frames.append((pcm, at))

    def unplayed(self, since: float) -> None:
        self.frames = [(pcm, at) for pcm, at in self.frames if at < since]


def echo_of(frames: list[tuple[np.ndarray, float]], level_db: float) -> np.ndarray:
    """The frames' speech as a microphone hears it (16 kHz): each where it played (a gap
    where the speech ran dry stays a gap), through a room, ``level_db`` down, over a -60 dBFS
    floor; sample 0 is the first frame's playout start."""
    first = frames[0][1]
    speech = audio_sets.resample(np.concatenate([f for f, _ in frames]), 48_000)
    far = np.zeros(round((frames[-1][1] - first) * 16_000) + 320, np.float32)
    for k, (_, at) in enumerate(frames):
        i = round((at - first) * 16_000)
        far[i : i + 320] = speech[k * 320 : (k + 1) * 320]
    return audio_sets.mic_with_echo(far, delay_s=0.0, level_db=level_db)[0]


@pytest.mark.parametrize("user_speaks", [False, True])
async def test_speech_that_sounds_like_the_reply_is_its_own_voice_whatever_its_words(
    settings: Settings, engines: EngineService, user_speaks: bool
) -> None:
    """The reply's own voice comes back into the microphone (no canceller, -6 dB, 120 ms
    late) and pauses it, and the ASR hears words nowhere near what it played ("Gerco went in
    the world" for "scarecrow win an award", as Whisper did): it sounds like the reply, so it
    resumes (reason echo, counted in echo_sounds). With the user asking a question over the
    same echo, the same words cut it."""
    session = Player()
    lane = lane_for(session, settings, engines)
    heard = Heard()
    lane.own_voice = OwnVoice()
    lane.echo = Played([lane.own_voice, heard])
    delay_s, uplink_s = 0.12, 0.03
    try:
        lane.answer("Tell me a long story about a cat.", None, 0.0, spoken=True)
        await wait_for(lambda: len(heard.frames) >= 150)  # 3 s of speech told
        first = heard.frames[0][1]
        await asyncio.sleep(max(0.0, first + 2.5 - time.monotonic()))
        lane.speech_started()
        paused = time.monotonic()
        await asyncio.sleep(delay_s + 0.2)  # the echo of what played before the pause ends
        mic = echo_of(heard.frames, -6.0)  # the frames taken back at the pause are gone
        if user_speaks:
            question = audio_sets.speech("Wait, what about Friday?")
            at = round((paused - 0.15 - first) * 16_000)
            mic = np.pad(mic, (0, max(0, at + len(question) - len(mic))))
            mic[at : at + len(question)] += question
        end = round((time.monotonic() - first - delay_s - uplink_s) * 16_000)
        for i in range(0, min(len(mic), end) - 320 + 1, 320):
            lane.own_voice.heard(mic[i : i + 320], first + i / 16_000 + delay_s + uplink_s)
        lane.speech_stopped()
        lane.heard("Gerco went in the world.", final=True)
        if user_speaks:
            await wait_for(lambda: session.of(ResponseDone), 5.0)
        else:
            await wait_for(lambda: session.of(ResponseResumed), 5.0)
    finally:
        await lane.close()
        await session.close()
    stats = lane.stats()
    if user_speaks:
        (done,) = session.of(ResponseDone)
        assert done.status == "cancelled" and not session.of(ResponseResumed), (
            stats,
            session.of(ResponseResumed),
        )
        assert stats["interruptions_cut"] == 1 and stats["echo_sounds"] == 0
    else:
        (resumed,) = session.of(ResponseResumed)
        assert resumed.reason == "echo"
        assert stats["echo_sounds"] == 1 and stats["interruptions_cut"] == 0


class Microphone:
    """A kiosk's microphone, live: every 20 ms slot it captured holds what the speaker played
    ``delay_s`` before (the frames the reply lane told, 48 kHz, averaged down to 16 kHz),
    ``level_db`` down, plus ``near`` speech from a given time, over a -60 dBFS floor; it is
    told to the judge as the audio lane tells it (stamped with its capture plus the uplink)."""

    def __init__(self, played: Heard, judge: OwnVoice, *, delay_s: float, level_db: float):
        self.played, self.judge = played, judge
        self.delay_s, self.gain = delay_s, audio_sets.db_gain(level_db)
        self.uplink_s = 0.03
        self.near: tuple[np.ndarray, float] | None = None  # speech, when it starts (monotonic)
        self.cancelled = False  # the server's canceller cleans this microphone next
        self._feeder: asyncio.Task[None] | None = None
        self.rng = np.random.default_rng(7)

    def slot(self, at: float) -> np.ndarray:
        x = self.rng.standard_normal(320).astype(np.float32) * audio_sets.db_gain(-60.0)
        source = at - self.delay_s
        for pcm, start in reversed(self.played.frames):
            if abs(start - source) < 0.01:
                f = np.asarray(pcm, np.float32) / 32768.0  # 960 samples at 48 kHz
                x += f.reshape(-1, 3).mean(axis=1) * self.gain
                break
            if start < source - 0.01:
                break
        if self.near is not None:
            speech, begins = self.near
            i = round((at - begins) * 16_000)
            if -320 < i < len(speech):
                part = speech[max(0, i) : i + 320]
                x[max(0, -i) : max(0, -i) + len(part)] += part
        return x

    async def sounding(self) -> None:
        """Until the echo arriving now has been speech for 0.2 s (the VAD would hear a sound:
        an onset is told then, not in a gap between the reply's sentences)."""

        def loud() -> bool:
            source = time.monotonic() - self.delay_s
            recent = [p for p, at in self.played.frames if source - 0.2 <= at < source]
            rms = [
                float(np.sqrt(np.mean((np.asarray(p, np.float32) / 32768) ** 2))) for p in recent
            ]
            return len(rms) >= 9 and min(rms) > 0.01

        await wait_for(loud, 10.0)

    def start(self, at: float) -> None:
        """Capture from monotonic ``at`` on, live, until :meth:`stop`."""
        self._feeder = asyncio.create_task(self.run(at))

    def stop(self) -> None:
        if self._feeder is not None:
            self._feeder.cancel()

    async def run(self, start: float) -> None:
        at = start
        while True:
            while at + 0.02 + self.uplink_s <= time.monotonic():
                self.judge.heard(self.slot(at), at + self.uplink_s, cancelled=self.cancelled)
                at += 0.02
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def kiosk(
    settings: Settings, engines: EngineService, *, delay_s: float
) -> AsyncIterator[tuple[Player, ReplyLane, Heard, Microphone]]:
    """A reply lane with its own-voice judge, and a kiosk's microphone with no canceller
    (its speaker ``delay_s`` and 6 dB into it) to run beside it; all closed at the end."""
    session = Player()
    lane = lane_for(session, settings, engines)
    played = Heard()
    lane.own_voice = OwnVoice()
    lane.echo = Played([lane.own_voice, played])
    mic = Microphone(played, lane.own_voice, delay_s=delay_s, level_db=-6.0)
    try:
        yield session, lane, played, mic
    finally:
        mic.stop()
        await lane.close()
        await session.close()


async def start_kiosk_reply(lane: ReplyLane, played: Heard, mic: Microphone) -> None:
    """Start a reply and the microphone beside it; return 1 s into the reply's playout."""
    lane.answer("Tell me a long story about a cat.", None, 0.0, spoken=True)
    await wait_for(lambda: len(played.frames) >= 100)
    mic.start(played.frames[0][1])
    await asyncio.sleep(max(0.0, played.frames[0][1] + 1.0 - time.monotonic()))


async def echo_pauses_and_is_told(
    lane: ReplyLane, session: Player, mic: Microphone, pauses: int
) -> None:
    """The echo, once sounding, pauses the reply (its ``pauses``-th pause), its final is
    misheard, and its sound tells it: the reply resumes, reason echo."""
    await mic.sounding()
    lane.speech_onset()
    lane.speech_started()
    assert len(session.of(ResponsePaused)) == pauses, lane.stats()
    await asyncio.sleep(0.3)
    lane.speech_stopped()
    lane.heard("Gerco went in the world.", final=True)  # misheard: its sound tells
    await wait_for(lambda: len(session.of(ResponseResumed)) == pauses, 5.0)
    assert session.of(ResponseResumed)[-1].reason == "echo"


@pytest.mark.parametrize("user_speaks", [False, True])
async def test_once_its_echo_was_told_by_sound_the_reply_plays_on_over_it(
    settings: Settings, engines: EngineService, user_speaks: bool
) -> None:
    """A kiosk with no canceller (its speaker 40 ms and 6 dB into its microphone, live): the
    echo pauses the reply once and is told by its sound (resumed, reason echo); from then on
    the next sounds of that echo are judged before they pause it (held): the reply plays on,
    and their finals are absorbed. A user asking a question over the echo while a sound is
    held pauses the reply (echo_holds_lost), and the question's words cut it."""
    async with kiosk(settings, engines, delay_s=0.04) as (session, lane, played, mic):
        await start_kiosk_reply(lane, played, mic)
        # the echo's first sound: nothing is known of it yet
        await echo_pauses_and_is_told(lane, session, mic, 1)
        await asyncio.sleep(0.5)  # the reply plays on, and so does its echo
        await mic.sounding()
        lane.speech_onset()
        lane.speech_started()
        await asyncio.sleep(0.6)  # judged every 50 ms, on the echo
        assert len(session.of(ResponsePaused)) == 1, lane.stats()  # held, not paused
        if user_speaks:
            question = audio_sets.speech("Wait, what about Friday?")
            mic.near = (question, time.monotonic() - mic.uplink_s)
            await wait_for(lambda: len(session.of(ResponsePaused)) == 2, 5.0)
            asked = time.monotonic() - mic.near[1]
            ends = mic.near[1] + len(question) / 16_000 + mic.uplink_s + 0.1
            await asyncio.sleep(max(0.0, ends - time.monotonic()))  # its final comes after it
            lane.speech_stopped()
            lane.heard("Wait, what about Friday?", final=True)
            (done,) = session.of(ResponseDone)
            assert done.status == "cancelled"
            print(f"held echo: the question paused the reply {asked * 1000:.0f} ms into it")
        else:
            lane.speech_stopped()
            assert lane.heard("the cat sat in the sun", final=False)  # no verdict yet
            assert not lane.heard("The cat's at in the sun.", final=True)  # absorbed
            assert lane.interruption is None and len(session.of(ResponsePaused)) == 1
            assert lane.reply is not None  # playing on
    stats = lane.stats()
    assert stats["echo_holds"] == 1
    assert stats["echo_holds_lost"] == (1 if user_speaks else 0)
    assert stats["interruptions_cut"] == (1 if user_speaks else 0)


async def test_where_a_canceller_cleans_the_microphone_the_echo_is_told_but_not_held(
    settings: Settings, engines: EngineService
) -> None:
    """The judge hears the microphone before the server's canceller (the whole echo): a
    sound the canceller let through pauses the reply and is told by its sound (resumed,
    reason echo), but the next sound is not held: with a canceller, what reaches the VAD is
    mostly the user, whose onset should pause the reply at once."""
    async with kiosk(settings, engines, delay_s=0.04) as (session, lane, played, mic):
        mic.cancelled = True
        await start_kiosk_reply(lane, played, mic)
        for pauses in (1, 2):  # the second is paused too: not held
            await echo_pauses_and_is_told(lane, session, mic, pauses)
            await asyncio.sleep(0.5)
    stats = lane.stats()
    assert stats["echo_holds"] == 0 and stats["echo_sounds"] == 2
    assert stats["interruptions_cut"] == 0


@pytest.mark.parametrize("user_speaks", [False, True])
async def test_the_echo_of_a_reply_that_just_ended_is_not_the_users_turn(
    settings: Settings, engines: EngineService, user_speaks: bool
) -> None:
    """A kiosk with no canceller (250 ms, -6 dB): the reply ends, and the end of its speech
    is still coming back into the microphone; a sound that begins then and sounds like the
    reply is not the user's turn (its final is absorbed: echo_after_reply), whatever words
    the ASR made of it. The user speaking right after the reply is."""
    async with kiosk(settings, engines, delay_s=0.25) as (session, lane, played, mic):
        lane.answer("What is the capital of France?", None, 0.0, spoken=True)
        await wait_for(lambda: played.frames)
        mic.start(played.frames[0][1])
        await wait_for(lambda: session.of(ResponseDone), 30.0)
        text = "Paris."
        if user_speaks:
            question = audio_sets.speech("And what about Berlin?")
            mic.near = (question, time.monotonic() + 0.3)  # after the echo's tail
            await asyncio.sleep(0.3 + 0.15 + mic.uplink_s)
            text = "And what about Berlin?"
        lane.speech_onset()  # the end of the echo (or the user) is heard: no reply runs
        lane.speech_started()
        await asyncio.sleep(1.5 if user_speaks else 0.4)
        lane.speech_stopped()
        turn = lane.heard(text, final=True)
    assert turn == user_speaks
    assert lane.stats()["echo_after_reply"] == (0 if user_speaks else 1)


async def test_an_onset_pauses_a_reply_and_the_hold_resumes_it_if_no_speech_follows(
    settings: Settings, engines: EngineService
) -> None:
    """speech_onset() pauses the reply before the VAD's start of speech; an onset lost (the
    sound ended short of speech) resumes it after interrupt_onset_hold_s (no_words); a
    second onset that becomes speech (speech_started) stays one pause, and its words cut
    the reply."""
    session = Player()
    lane = lane_for(session, settings, engines)
    try:
        lane.answer("Tell me a long story about a cat.", None, 0.0, spoken=True)
        await wait_for(lambda: len(session.of(OutputAudio)) >= 20)
        lane.speech_onset()
        (paused,) = session.of(ResponsePaused)
        lane.speech_onset_lost()
        assert not session.of(ResponseResumed)  # the hold: more sound may follow
        await wait_for(lambda: session.of(ResponseResumed), 5.0)
        (resumed,) = session.of(ResponseResumed)
        assert lane.interruption is None  # over: nothing left to judge
        await wait_for(lambda: len(session.of(OutputAudio)) >= 40)
        lane.speech_onset()
        lane.speech_started()  # the same sound, now speech: no second pause
        assert len(session.of(ResponsePaused)) == 2
        lane.speech_stopped()
        assert lane.heard("Wait, stop.", final=True)
        (done,) = session.of(ResponseDone)
    finally:
        await lane.close()
        await session.close()
    assert resumed.reason == "no_words" and resumed.played_ms == paused.played_ms
    assert resumed.paused_ms >= 350  # the hold (0.4 s; a loop timer may fire 5 ms early)
    assert done.status == "cancelled"
    stats = lane.stats()
    assert stats["onset_pauses"] == 2 and stats["barge_ins"] == 2
    assert stats["interruptions_resumed"] == 1 and stats["interruptions_cut"] == 1


async def test_the_confirm_window_resumes_a_silent_user_and_zero_cuts_at_once(
    settings: Settings, engines: EngineService
) -> None:
    """With interrupt.confirm_s 0.3, a sound whose final never comes resumes the reply 0.3 s
    after it stopped; with 0, speech cuts the reply at once (no response.paused)."""
    session = Player()
    session.config = {"interrupt": {"confirm_s": 0.3}}
    lane = lane_for(session, settings, engines)
    try:
        lane.answer("Tell me a long story about a cat.", None, 0.0, spoken=True)
        await wait_for(lambda: len(session.of(OutputAudio)) >= 20)
        lane.speech_started()
        lane.speech_stopped()
        await wait_for(lambda: session.of(ResponseResumed), 5.0)
        (resumed,) = session.of(ResponseResumed)
        session.config = {"interrupt": {"confirm_s": 0.0}}
        lane.speech_started()
        (done,) = session.of(ResponseDone)
    finally:
        await lane.close()
        await session.close()
    assert resumed.reason == "no_words" and resumed.paused_ms >= 250
    assert done.status == "cancelled" and len(session.of(ResponsePaused)) == 1
