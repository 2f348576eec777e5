"""The transcribe mode end to end: a real server with the VAD and ASR engines, WS-only
clients streaming recorded speech as ``input.audio`` (paced by the clock and by credit)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio

from tests.support import prepare_models, scaled, wait_ready
from tidegate.protocol.client import Client, RefusedError
from tidegate.protocol.messages import (
    AsrFinal,
    AsrPartial,
    InputAudio,
    ServerMessage,
    VadSpeechStarted,
    VadSpeechStopped,
)

from ..engines.asr_audio import BECKETT, TWO_CITIES_20S, read_wav, wer
from .conftest import LiveServer, make_settings, run_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
RATE_HZ = 16_000
CHUNK_S = 0.04
SPEED = 2.0  # times real time
EVENTS = (VadSpeechStarted, VadSpeechStopped, AsrPartial, AsrFinal)


@pytest.fixture(scope="module")
def prepared() -> Path:
    """The data folder with the VAD and Whisper prepared (by make setup, or here)."""
    return prepare_models("silero-vad", "whisper-tiny-en")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def asr_server(
    tmp_path_factory: pytest.TempPathFactory, prepared: Path
) -> AsyncIterator[LiveServer]:
    """One server for the module (the models load once)."""
    tmp = tmp_path_factory.mktemp("transcribe")
    (tmp / "models").symlink_to(prepared / "models")
    settings = make_settings(tmp, engines=("vad", "asr"))
    async with run_server(settings) as live:
        await wait_ready(live.http, timeout_s=90)
        yield live


async def stream(
    live: LiveServer,
    audio: np.ndarray,
    *,
    tail_s: float = 1.0,
    quiet_s: float = 1.5,
    session_ids: list[str] | None = None,
    speed: float = SPEED,
) -> list[tuple[ServerMessage, float]]:
    """Stream ``audio`` and ``tail_s`` of silence at ``speed`` x real time over one session;
    return the transcribe events with their arrival times, once nothing has come for
    ``quiet_s`` after the last final of every ended segment (the session's id goes to
    ``session_ids``)."""
    audio = np.concatenate([audio, np.zeros(int(tail_s * RATE_HZ), np.float32)])
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    step = int(CHUNK_S * RATE_HZ)
    got: list[tuple[ServerMessage, float]] = []
    async with await live.client() as client:
        created = await client.create_session({"mode": "transcribe"})
        if session_ids is not None:
            session_ids.append(created.session_id)

        async def read() -> None:
            async for ev in client:
                if isinstance(ev, EVENTS):
                    got.append((ev, time.monotonic()))

        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(read())
            t0 = time.monotonic()
            for i in range(0, len(pcm), step):
                await asyncio.sleep(max(0.0, t0 + i / RATE_HZ / speed - time.monotonic()))
                chunk = pcm[i : i + step].tobytes()
                await client.send(
                    InputAudio(pcm=chunk, format="s16le", sample_rate=RATE_HZ, channels=1)
                )
            async with asyncio.timeout(scaled(60)):
                while not _settled(got, quiet_s):
                    await asyncio.sleep(0.1)
            await client.close_session()
            reader.cancel()
    return got


def _settled(got: list[tuple[ServerMessage, float]], quiet_s: float) -> bool:
    if got and time.monotonic() - got[-1][1] < quiet_s:
        return False
    stops = sum(isinstance(e, VadSpeechStopped) for e, _ in got)
    finals = [e for e, _ in got if isinstance(e, AsrFinal)]
    return stops == 0 or len(finals) >= stops or time.monotonic() - got[-1][1] > 5


def _text(events: list[tuple[ServerMessage, float]]) -> str:
    return " ".join(e.text for e, _ in events if isinstance(e, AsrFinal))


def _check_timing(ev: Any) -> None:
    t = ev.timing
    assert t is not None and None not in (t.received, t.engine_start, t.engine_end, t.sent), ev
    assert t.engine_start <= t.engine_end <= t.sent, ev


async def test_speech_gives_vad_events_partials_and_finals(asr_server: LiveServer) -> None:
    """beckett.wav: speech_started, partials that are prefixes of their segment's final, and
    each final after its speech_stopped, all with timing; the finals read the clip."""
    events = await stream(asr_server, read_wav(CACHE / "assets" / "beckett.wav"))
    kinds = [type(e) for e, _ in events]
    assert kinds[0] is VadSpeechStarted
    assert wer(BECKETT, _text(events)) <= 0.15, _text(events)
    finals = {e.segment_id: e for e, _ in events if isinstance(e, AsrFinal)}
    stopped_at = {e.audio_ms for e, _ in events if isinstance(e, VadSpeechStopped)}
    for i, (e, _) in enumerate(events):
        _check_timing(e)
        if isinstance(e, AsrFinal):
            assert e.audio_end_ms in stopped_at
            before = [x for x, _ in events[:i] if isinstance(x, VadSpeechStopped)]
            assert any(x.audio_ms == e.audio_end_ms for x in before), "final before its end"
        if isinstance(e, AsrPartial):
            assert finals[e.segment_id].text.startswith(e.text), (e.text, finals[e.segment_id])


async def test_finals_are_recorded_and_served_by_the_records_api(
    asr_server: LiveServer,
) -> None:
    """Every asr.final with words of a transcribe session becomes a transcript segment that
    GET /v1/sessions/{id}/transcript serves (same ids, text and audio times, in order); one
    without words (it takes back a segment's partials) is not a transcript."""
    sids: list[str] = []
    events = await stream(asr_server, read_wav(CACHE / "assets" / "beckett.wav"), session_ids=sids)
    finals = [e for e, _ in events if isinstance(e, AsrFinal) and e.text]
    assert finals and sids
    assert await asr_server.runtime.recorder.flush(20)
    auth = {"Authorization": f"Bearer {asr_server.token()}"}
    async with httpx.AsyncClient(base_url=asr_server.http, headers=auth) as http:
        detail = await http.get(f"/v1/sessions/{sids[0]}")
        transcript = await http.get(f"/v1/sessions/{sids[0]}/transcript")
    assert detail.status_code == 200 and transcript.status_code == 200
    assert detail.json()["counts"]["transcript"] == len(finals)
    assert detail.json()["mode"] == "transcribe"
    rows = transcript.json()["items"]
    assert [(x["segment_id"], x["text"], x["audio_start_ms"], x["audio_end_ms"]) for x in rows] == [
        (e.segment_id, e.text, e.audio_start_ms, e.audio_end_ms) for e in finals
    ]


async def test_long_speech_partials_grow_into_the_final(asr_server: LiveServer) -> None:
    """two_cities.wav (12 s): committed partials only grow within a segment and begin its
    final; no segment's final is missing. A segment's first partial, before any word is
    committed, shows what was heard as ``tentative``. Streamed at real time, as a speaker
    would: partials are paced by the wall clock (asr_partial_interval_s), so faster than real
    time a loaded machine may close each segment before any partial of it is decoded."""
    audio = read_wav(CACHE / "assets" / "two_cities.wav", 12.0)
    events = await stream(asr_server, audio, speed=1.0)
    partials = [e for e, _ in events if isinstance(e, AsrPartial)]
    finals = {e.segment_id: e.text for e, _ in events if isinstance(e, AsrFinal)}
    assert partials, "no partial"
    last: dict[str, str] = {}
    for p in partials:
        if p.segment_id not in last:
            assert p.text == "" and p.tentative, p
        assert p.text.startswith(last.get(p.segment_id, "")), (last, p.text)
        last[p.segment_id] = p.text
        assert finals[p.segment_id].startswith(p.text)
    reference = " ".join(TWO_CITIES_20S.split()[: len(_text(events).split())])
    assert wer(reference, _text(events)) <= 0.2, _text(events)


async def test_silence_and_noise_give_nothing(asr_server: LiveServer) -> None:
    """Three seconds of silence and faint noise give no VAD or ASR event."""
    rng = np.random.default_rng(7)
    audio = np.concatenate(
        [np.zeros(RATE_HZ * 2, np.float32), (rng.standard_normal(RATE_HZ) * 0.003)]
    ).astype(np.float32)
    assert await stream(asr_server, audio, quiet_s=1.0) == []


async def test_two_sessions_at_once_keep_their_own_text(asr_server: LiveServer) -> None:
    """Two clients streaming different speech at the same time each get their own words."""
    beckett = read_wav(CACHE / "assets" / "beckett.wav")
    cities = read_wav(CACHE / "assets" / "two_cities.wav", 8.0)
    a, b = await asyncio.gather(stream(asr_server, beckett), stream(asr_server, cities))
    assert wer(BECKETT, _text(a)) <= 0.15, _text(a)
    reference = " ".join(TWO_CITIES_20S.split()[: len(_text(b).split())])
    assert len(_text(b).split()) >= 12 and wer(reference, _text(b)) <= 0.2, _text(b)
    assert "times" not in _text(a).lower() and "fail" not in _text(b).lower()


async def test_transcribe_without_the_engines_is_unsupported(tmp_path: Path) -> None:
    """A server without the VAD and ASR engines refuses the transcribe mode (unsupported)."""
    async with run_server(make_settings(tmp_path)) as live:
        client: Client
        async with await live.client() as client:
            with pytest.raises(RefusedError) as caught:
                await client.create_session({"mode": "transcribe"})
            assert caught.value.server_code == "unsupported"


async def test_webrtc_audio_is_transcribed(asr_server: LiveServer) -> None:
    """Speech sent over WebRTC (Opus, real peer connection on loopback) goes through the same
    VAD and ASR lanes as input.audio: VAD events and finals that read the clip."""
    from aiortc import RTCSessionDescription

    from tidegate.protocol.messages import RtcAnswer, RtcOffer

    from .test_rtc import client_pc

    audio = np.concatenate(
        [read_wav(CACHE / "assets" / "beckett.wav"), np.zeros(RATE_HZ, np.float32)]
    )
    got: list[tuple[ServerMessage, float]] = []
    async with await asr_server.client() as client:
        await client.create_session({"mode": "transcribe"})
        pc, mic, _ = await client_pc()
        try:
            answer = await client.request(RtcOffer(id="o1", sdp=pc.localDescription.sdp))
            assert isinstance(answer, RtcAnswer)
            await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
            async with asyncio.timeout(scaled(10)):
                while pc.connectionState != "connected":
                    await asyncio.sleep(0.02)

            async def read() -> None:
                async for ev in client:
                    if isinstance(ev, EVENTS):
                        got.append((ev, time.monotonic()))

            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(read())
                step = int(0.2 * RATE_HZ)
                for i in range(0, len(audio), step):  # real time: the track paces by the clock
                    mic.write(audio[i : i + step])
                    while mic.queued_ms > 400:
                        await asyncio.sleep(0.02)
                async with asyncio.timeout(scaled(60)):
                    while not _settled(got, 1.5) or not any(
                        isinstance(e, AsrFinal) for e, _ in got
                    ):
                        await asyncio.sleep(0.1)
                reader.cancel()
        finally:
            await pc.close()
    kinds = [type(e) for e, _ in got]
    assert kinds[0] is VadSpeechStarted
    assert VadSpeechStopped in kinds
    for ev, _ in got:
        _check_timing(ev)
    assert wer(BECKETT, _text(got)) <= 0.2, _text(got)


async def test_refused_uploads_give_their_credit_back(asr_server: LiveServer) -> None:
    """Audio the mode refuses (non-finite samples) is answered with an error and its credit
    comes back: more refusals than the whole grant never stall the client."""
    from tidegate.protocol.messages import Error

    grant = asr_server.settings.upload_credit_messages
    bad = np.full(320, np.nan, np.float32).tobytes()
    async with await asr_server.client() as client:
        await client.create_session({"mode": "transcribe"})
        errors = 0
        async with asyncio.timeout(scaled(30)):
            for i in range(grant + 20):
                await client.send(
                    InputAudio(pcm=bad, format="f32le", sample_rate=RATE_HZ, channels=1, id=f"a{i}")
                )
            while errors < grant + 20:
                event = await client.recv()
                if isinstance(event, Error):
                    assert event.code == "invalid_field"
                    assert "finite" in event.message
                    errors += 1
        assert client.credits[0] > 0


async def test_audio_faster_than_real_time_is_refused_beyond_the_window(
    asr_server: LiveServer,
) -> None:
    """input.audio sent at 4x real time is taken up to audio_max_ahead_s ahead of the wall
    clock; chunks beyond it are refused (rate_limited, retry_after_ms, naming the setting)
    and not queued; another session's pings are answered all along; the resampling ran on
    the media worker pool."""
    from tidegate.protocol.messages import Error

    window_s = asr_server.settings.audio_max_ahead_s
    chunk_s, speed, chunks = 1.0, 4.0, 16
    second = (np.sin(np.arange(48_000) * 0.05) * 3000).astype("<i2")  # 1 s at 48 kHz
    pool = asr_server.runtime.engines.media  # type: ignore[union-attr]
    resampled = pool.done
    async with await asr_server.client() as fast, await asr_server.client() as victim:
        created = await fast.create_session({"mode": "transcribe"})
        await victim.create_session({"mode": "loopback"})
        session = asr_server.runtime.registry.get(created.session_id)
        assert session is not None
        pongs = 0

        async def ping_all_along() -> None:
            nonlocal pongs
            while True:
                await victim.ping(timeout_s=30)
                pongs += 1
                await asyncio.sleep(0.05)

        async with asyncio.TaskGroup() as tg:
            pinger = tg.create_task(ping_all_along())
            t0 = time.monotonic()
            for i in range(chunks):
                await asyncio.sleep(max(0.0, t0 + i * chunk_s / speed - time.monotonic()))
                await fast.send(
                    InputAudio(
                        pcm=second.tobytes(),
                        format="s16le",
                        sample_rate=48_000,
                        channels=1,
                        id=f"a{i}",
                    )
                )
            await fast.ping(timeout_s=30)  # every chunk has been handled
            elapsed = time.monotonic() - t0
            refusals: list[Error] = []
            while True:
                try:
                    event = await fast.recv(0.5)
                except TimeoutError:
                    break
                if isinstance(event, Error):
                    refusals.append(event)
            before = pongs
            async with asyncio.timeout(scaled(30)):
                while pongs < before + 3:
                    await asyncio.sleep(0.05)
            pinger.cancel()
        pace = session.mode.stats()["pace"]  # type: ignore[union-attr]
    assert refusals, "4x real time was taken whole"
    assert all(e.code == "rate_limited" for e in refusals)
    assert all("audio_max_ahead_s" in e.message for e in refusals)
    assert all(e.retry_after_ms is not None and e.retry_after_ms > 0 for e in refusals)
    accepted = chunks - len(refusals)
    assert pace["refused"] == len(refusals) and pace["media_s"] == accepted * chunk_s
    assert accepted * chunk_s <= elapsed + window_s + chunk_s
    assert pongs > 0
    assert pool.done - resampled >= accepted


async def test_every_audio_chunk_the_protocol_accepts_is_refused_or_survives() -> None:
    """Any input.audio the protocol accepts (either format, 8-192 kHz, 1-8 channels, any
    bytes: NaN, infinities, huge floats) is refused with invalid_field, or becomes finite
    16 kHz mono within full scale, of the length its duration gives, that the inbound audio
    lane takes."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tidegate.media import AudioInbox
    from tidegate.pipelines.audio import audio_frames, to_mono_16k
    from tidegate.protocol.messages import MAX_CHANNELS, MAX_SAMPLE_RATE_HZ
    from tidegate.server.errors import InvalidConfigError

    @settings(max_examples=400, deadline=None)
    @given(
        st.sampled_from(["s16le", "f32le"]),
        st.integers(8_000, MAX_SAMPLE_RATE_HZ),
        st.integers(1, MAX_CHANNELS),
        st.binary(min_size=1, max_size=4_096),
    )
    def check(fmt: str, rate: int, channels: int, pcm: bytes) -> None:
        msg = InputAudio(pcm=pcm, format=fmt, sample_rate=rate, channels=channels)
        refusal: str | None
        try:
            frames = audio_frames(msg)
            out = to_mono_16k(msg)
        except InvalidConfigError as e:
            refusal = e.message
        else:
            refusal = None
        if refusal is not None:
            assert refusal.startswith("input.audio.pcm: ")
            return
        assert out.dtype == np.float32 and out.ndim == 1
        assert len(out) == -(-frames * RATE_HZ // rate)  # a whole stream: ceil
        assert np.isfinite(out).all() and np.abs(out).max(initial=0.0) <= 1.0
        inbox = AudioInbox(max_s=3.0)
        inbox.push(out, 0.0)
        assert inbox.stats.chunks_in == 1

    check()
