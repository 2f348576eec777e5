"""The ears microbenchmark's paced AEC part (sessions' echo paths fed every 20 ms) and its
echo-words part (the guard against the reply's own words on what Whisper hears)."""

from __future__ import annotations

import pytest

from tests.support import prepare_models
from tidegate.bench import audio_sets
from tidegate.bench.micro.ears import (
    ECHO_USER_PHRASES,
    bench_aec_paced,
    bench_echo_words,
    bench_own_voice,
)

pytestmark = pytest.mark.skipif(bool(audio_sets.have_tools()), reason="needs espeak-ng and sox")


def test_paced_aec_counts_each_sessions_canceller_time() -> None:
    """Every level is measured for its sessions over the paced time, with the CPU each
    session's echo path counted (what its metrics report live)."""
    report = bench_aec_paced([1, 3], 0.4)  # each cadence 0.2 s, in two alternated rounds
    assert report["seconds_per_cadence"] == pytest.approx(0.2)
    assert set(report["by_sessions"]) == {"1", "3"}
    for figures in report["by_sessions"].values():
        assert 0.0 < figures["cpu_s_per_session_s"] < 1.0  # per VAD frame, as the lane
        assert 0.0 < figures["per_chunk_cpu_s_per_session_s"] < 1.0


def test_echo_words_judges_piper_echoes_and_users_phrases() -> None:
    """The echo-words part hears a reply's echoes and users' phrases with Whisper and judges
    each with the guard the reply lane uses; most echoes heard as words are the reply's own,
    and a user's phrase is judged against every window."""
    data_dir = prepare_models("whisper-tiny-en", "piper-joe")
    report = bench_echo_words(data_dir, step_s=1.0, replies=1)
    assert report["echoes_with_words"] >= 3
    assert report["echo_recall"] >= 0.5, report
    assert len(report["missed"]) == report["echoes_with_words"] - report["echoes_judged_own"]
    assert report["user_phrases"] == len(ECHO_USER_PHRASES)
    assert report["user_pairs"] % len(ECHO_USER_PHRASES) == 0
    assert report["user_pairs_judged_own"] < report["user_pairs"] / 10, report


def test_own_voice_tells_echoes_from_users_by_sound() -> None:
    """The own-voice part judges one reply's echoes (the microphone as the judge hears it,
    before any canceller, and after one), a user over them, and the replayed second: every
    echo is the reply's own voice, no user's question over it is, nor the canceller's output
    of it. Held over a reply that
    plays on, its echo keeps the hold to the reply's end, and every question over it ends
    the hold (the reply pauses) before the question does."""
    report = bench_own_voice(prepare_models("piper-joe"), replies=1)
    groups = report["groups"]
    echo = groups["echo"]
    assert echo["n"] == 18 and echo["no_verdict"] == 0 and echo["own"] == 18, groups
    assert echo["likeness"]["min"] >= report["threshold"], groups
    assert groups["replayed a second later"]["own"] == 2, groups
    assert groups["echo played 0.2 s early"]["own"] == 18, groups
    for name, g in groups.items():
        if name.startswith("user"):
            assert g["n"] == 18 and g["own"] == 0, groups
    held = report["held"]
    assert held["echo held"] == {"n": 9, "lost": 0, "lost_after_s": {"n": 0}}
    for gain in ("+0", "-10"):
        assert held[f"user {gain} dB over held echo"]["lost"] == 9, held
