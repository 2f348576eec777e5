"""The ears microbenchmark's paced AEC part (sessions' echo paths called every 20 ms) and its
echo-words part (the guard against the reply's own words on what Whisper hears)."""

from __future__ import annotations

import pytest

from tests.support import prepare_models
from tidegate.bench import audio_sets
from tidegate.bench.micro.ears import ECHO_USER_PHRASES, bench_aec_paced, bench_echo_words

pytestmark = pytest.mark.skipif(bool(audio_sets.have_tools()), reason="needs espeak-ng and sox")


def test_paced_aec_counts_each_sessions_canceller_time() -> None:
    """Every level is measured for its sessions over the paced time, with the CPU each
    session's echo path counted (what its metrics report live)."""
    report = bench_aec_paced([1, 3], 0.3)
    assert report["seconds"] == pytest.approx(0.3)
    assert set(report["by_sessions"]) == {"1", "3"}
    for figures in report["by_sessions"].values():
        assert 0.0 < figures["cpu_s_per_session_s"] < 1.0


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
