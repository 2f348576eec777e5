"""The reply's own voice told by sound (pipelines/own_voice.py), on real audio: an espeak-ng
reply played through a simulated room into a microphone (audio_sets.mic_with_echo: a room
response, a delay, a level, a -60 dBFS floor), and a user's espeak-ng question over it."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tidegate.bench import audio_sets
from tidegate.pipelines.own_voice import OWN_VOICE_LIKENESS, OwnVoice

pytestmark = pytest.mark.skipif(bool(audio_sets.have_tools()), reason="needs espeak-ng and sox")

SR = 16_000
FRAME = 320
T0 = 100.0  # the monotonic time the reply's first frame plays
UPLINK_S = 0.03  # the microphone's audio arrives this much after its capture
PAUSE_S = 3.0  # the reply pauses here: nothing of it plays after


@functools.cache
def reply() -> np.ndarray:
    """The reply as played: its speech up to the pause, silence after."""
    x = np.concatenate([audio_sets.speech(t) for t in audio_sets.REPLY_SENTENCES[:2]])
    x[round(PAUSE_S * SR) :] = 0.0
    return x


def hear(
    mic: np.ndarray,
    until_s: float,
    *,
    rate_hz: int = SR,
    ahead_s: float = 0.0,
    voice: OwnVoice | None = None,
) -> OwnVoice:
    """An OwnVoice told of the reply's frames up to the pause (int16, at ``rate_hz``: 16 kHz
    as the WebRTC track writes, 48 kHz held as output.audio), and of ``mic`` in 20 ms chunks
    as they arrive, up to ``until_s`` (when the ASR's verdict comes). ``ahead_s``: the client
    played each frame that long before the time the lane told."""
    voice = voice or OwnVoice()
    up = rate_hz // SR
    pcm = np.repeat(np.round(reply() * 32767).astype(np.int16), up)
    for i in range(0, round(PAUSE_S * SR), FRAME):
        voice.played(pcm[up * i : up * (i + FRAME)], rate_hz, T0 + i / SR + ahead_s)
    for j in range(0, min(len(mic), round(until_s * SR)) - FRAME + 1, FRAME):
        voice.heard(mic[j : j + FRAME], T0 + j / SR + UPLINK_S)
    return voice


@pytest.mark.parametrize("delay_s", [0.04, 0.25])
@pytest.mark.parametrize("level_db", [-6.0, -20.0])
@pytest.mark.parametrize("rate_hz", [16_000, 48_000])
def test_the_replys_echo_is_its_own_voice_and_a_question_over_it_is_not(
    delay_s: float, level_db: float, rate_hz: int
) -> None:
    """From the sound's start (0.35 s before the pause) to the end of its echo, what the
    microphone heard of the reply alone is like what played; with the user asking a question
    over it (from 0.15 s before the pause, at espeak's level), it is not."""
    echo, _, _ = audio_sets.mic_with_echo(reply(), delay_s=delay_s, level_db=level_db)
    voice = hear(echo, PAUSE_S + delay_s + 0.4, rate_hz=rate_hz)
    own = voice.likeness(T0 + PAUSE_S - 0.35, T0 + PAUSE_S + delay_s + 0.4)
    assert own is not None and own >= OWN_VOICE_LIKENESS + 0.05, own

    question = audio_sets.speech("Wait, what about Friday?")
    mic, _, _ = audio_sets.mic_with_echo(
        reply(), delay_s=delay_s, level_db=level_db, near=question, near_at_s=PAUSE_S - 0.15
    )
    until = PAUSE_S - 0.15 + len(question) / SR + 0.1
    other = hear(mic, until, rate_hz=rate_hz).likeness(T0 + PAUSE_S - 0.35, T0 + until)
    assert other is not None and other < OWN_VOICE_LIKENESS - 0.15, other


def test_the_reply_replayed_a_second_late_is_its_own_voice() -> None:
    """The last second the reply played, heard again a second later (a long loop, and the
    interruption test's echo case): within the lags searched."""
    mic = (np.random.default_rng(0).standard_normal(len(reply())) * 0.001).astype(np.float32)
    start = round((PAUSE_S - 0.2) * SR)
    mic[start : start + SR] += reply()[start - SR : start] * audio_sets.db_gain(-6.0)
    voice = hear(mic, PAUSE_S + 0.9)
    own = voice.likeness(T0 + PAUSE_S - 0.3, T0 + PAUSE_S + 0.9)
    assert own is not None and own >= OWN_VOICE_LIKENESS + 0.05, own


def test_too_little_sound_or_nothing_played_is_no_verdict() -> None:
    """A stretch with under MIN_FRAMES frames above its floor, or heard when nothing was
    played lately, gives None; nothing is kept while no reply plays."""
    floor = (np.random.default_rng(1).standard_normal(len(reply())) * 0.001).astype(np.float32)
    voice = hear(floor, 2.0)
    assert voice.likeness(T0 + 1.0, T0 + 2.0) is None  # the noise floor alone
    idle = OwnVoice()
    idle.heard(floor[: 10 * FRAME], T0)
    assert idle.counters["heard_frames"] == 0
    assert idle.likeness(T0, T0 + 1.0) is None


def test_frames_a_pause_took_back_still_match_and_are_replaced_when_told_again() -> None:
    """A client that plays output.audio as it arrives has played the frames a pause takes
    back (unplayed): their echo is still the reply's own voice. Told again at a resume, they
    replace what was told for the same time on."""
    echo, _, _ = audio_sets.mic_with_echo(reply(), delay_s=0.04, level_db=-6.0)
    voice = OwnVoice()
    pcm = np.round(reply() * 32767).astype(np.int16)
    for i in range(0, round(PAUSE_S * SR), FRAME):
        voice.played(pcm[i : i + FRAME], SR, T0 + i / SR)
    voice.unplayed(T0 + PAUSE_S - 0.5)  # taken back: the client had played them
    for j in range(0, round((PAUSE_S + 0.44) * SR) - FRAME + 1, FRAME):
        voice.heard(echo[j : j + FRAME], T0 + j / SR + UPLINK_S)
    own = voice.likeness(T0 + PAUSE_S - 0.6, T0 + PAUSE_S + 0.44)
    assert own is not None and own >= OWN_VOICE_LIKENESS + 0.05, own
    told = voice.counters["played_frames"]
    voice.played(pcm[:FRAME], SR, T0 + 1.0)  # told again from 1 s: what came after goes
    assert voice.counters["played_frames"] == told + 1
    assert [t for t, _ in voice._played][-2:] == pytest.approx([T0 + 0.98, T0 + 1.0])


def test_a_client_that_plays_ahead_is_heard_within_its_lead() -> None:
    """A WS-only client that plays output.audio as it arrives plays it up to the reply's
    lead (0.2 s) before the time the lane told: its echo comes before that time, which an
    OwnVoice whose early_s covers the lead still matches, and one whose early_s does not,
    cannot."""
    echo, _, _ = audio_sets.mic_with_echo(reply(), delay_s=0.04, level_db=-6.0)
    until = PAUSE_S + 0.44
    since = T0 + PAUSE_S - 0.35
    wide = hear(echo, until, ahead_s=0.2, voice=OwnVoice(early_s=0.26))
    own = wide.likeness(since, T0 + until)
    assert own is not None and own >= OWN_VOICE_LIKENESS + 0.05, own
    narrow = hear(echo, until, ahead_s=0.2).likeness(since, T0 + until)
    assert narrow is not None and narrow < OWN_VOICE_LIKENESS, narrow


def test_audio_that_arrives_in_bursts_keeps_its_own_timeline() -> None:
    """The microphone's audio arrives in bursts (a busy loop, a stalled WebSocket: 200 ms
    late, then five chunks at once): stamped by arrival its frames would bunch up; on the
    stream's own timeline the echo still lines up with what played. A gap of more than a
    second in the stream starts a new timeline."""
    echo, _, _ = audio_sets.mic_with_echo(reply(), delay_s=0.12, level_db=-6.0)
    voice = OwnVoice()
    pcm = np.round(reply() * 32767).astype(np.int16)
    for i in range(0, round(PAUSE_S * SR), FRAME):
        voice.played(pcm[i : i + FRAME], SR, T0 + i / SR)
    until = PAUSE_S + 0.12 + 0.4
    for k, j in enumerate(range(0, round(until * SR) - FRAME + 1, FRAME)):
        late = 0.2 if k % 10 < 5 else 0.0  # every fifth chunk waits 200 ms, then all come
        burst = (k // 5) * 5 * FRAME / SR + 4 * FRAME / SR  # when the last of the five is due
        arrival = T0 + (burst if late else j / SR + FRAME / SR) + UPLINK_S
        voice.heard(echo[j : j + FRAME], arrival - FRAME / SR)
    own = voice.likeness(T0 + PAUSE_S - 0.35, T0 + until)
    assert own is not None and own >= OWN_VOICE_LIKENESS + 0.05, own
    stamps = [t for t, _ in voice._heard]
    assert stamps == sorted(stamps) and np.allclose(np.diff(stamps), 0.02), "one timeline"
    voice.heard(echo[:FRAME], stamps[-1] + 2.0)  # after a 2 s gap
    assert voice._heard[-1][0] == pytest.approx(stamps[-1] + 2.0)
