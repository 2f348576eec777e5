"""The turns scenario (tiny): end of turn under both policies, and a kiosk that hears its own
replies, over the control channel and over WebRTC, against a live server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidegate.bench import audio_sets
from tidegate.bench.target import Target

from .conftest import run_scenario

pytestmark = pytest.mark.skipif(bool(audio_sets.have_tools()), reason="needs espeak-ng and sox")


async def test_turns_scenario_report(live_target: Target, tmp_path: Path) -> None:
    """One complete sentence per policy, and per transport one reply echoed back at 120 ms /
    -12 dB: with the server's canceller off the echo is heard as speech over the reply (the
    fault the set catches), with it on (auto: WS-only, and a WebRTC offer that says the
    client has none) the reply is heard out; a question spoken over the next reply cuts it and is
    transcribed; the canceller's CPU and echo reduction come from the session's metrics."""
    report = await run_scenario(
        live_target,
        "turns",
        tmp_path,
        *("--voice", "espeak", "--paused", "0", "--complete", "1"),
        *("--transports", "ws,rtc", "--delays-ms", "120", "--levels-db=-12"),
        *("--replies", "1", "--replies-per-session", "1", "--erle", "off", "--warm", "off"),
    )
    results = report["results"]
    paused = results["paused"]
    assert paused["voice"] == "espeak" and paused["complete"] == 1
    # semantic: a score that misses the turn engine's deadline (a loaded machine) decides that
    # pause by silence, as documented
    semantic = {"semantic", "timeout", "silence"}
    for policy, reasons in (("silence", {"silence"}), ("semantic", semantic)):
        figures = paused["policies"][policy]
        assert figures["end_of_turn_ms"]["n"] == 1, paused["clips"]
        assert set(figures["reasons"]) <= reasons, figures
    assert paused["turn_engine_run_s"] > 0  # the semantic session's pause was scored
    for transport in ("ws", "rtc"):
        [case] = results["echo"]["transports"][transport]["cases"]
        assert case["errors"] == [], case
        # the echo is heard as speech (the reply pauses); whether the guard against the
        # reply's own words then resumes it or it is cut depends on what the ASR made of it
        control = case["control_off"]
        assert control["replies"] == 1 and control["barge_ins"] == 1, case
        assert case["replies"] == 1 and case["false_barge_ins"] == 0, case
        assert case["completed"] == 1, case
        talk = case["double_talk"]
        assert talk["questions"] == 1 and talk["cut"] == 1, talk
        assert talk["wer"]["n"] == 1 and talk["heard"][0][1], talk  # transcribed: WER reported
        assert 0 < case["aec_cpu_s_per_session_s"] < 1, case
        assert case["echo_reduction_db"] > 6, case
        assert case["echo_stats"]["far_frames"] > 0, case
    assert results["targets"]["false_barge_ins"] == {"ws": 0, "rtc": 0}
    assert results["echo"]["rtc_pause"] == "silence"  # the WebRTC kiosk gave its playout delay
