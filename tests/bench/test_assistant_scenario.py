"""The assistant scenario speaks to a server it starts and writes a valid report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import scaled
from tidegate.bench.report import load_report


def test_assistant_scenario_report(tmp_path: Path) -> None:
    """`tidegate bench assistant` with one session and one question reports the latencies
    from the end of speech to the final, the first token and the first reply audio, with
    the per-stage breakdown, and a completed reply that answers the question; over the
    control channel and over WebRTC."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidegate",
            "bench",
            "assistant",
            "--sessions",
            "1",
            "--turns",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=scaled(120),
    )
    assert proc.returncode == 0, proc.stderr
    [path] = tmp_path.glob("assistant-*.json")
    report = load_report(path)
    assert report["scenario"] == "assistant"
    [level] = report["results"]["levels"]
    assert level["sessions"] == 1 and level["turns"] == 1 and level["errors"] == []
    assert level["completed"] == 1 and level["answers_ok"] == 1, level["heard_and_replied"]
    final = level["eos_to_final_ms"]["p50"]
    token = level["eos_to_first_token_ms"]["p50"]
    audio = level["eos_to_first_audio_ms"]["p50"]
    assert 0 < final < token < audio
    for name, stage in level["stages"].items():
        assert stage["n"] == 1 and stage["p50"] >= 0, name
    assert level["server_cpu_s"] > 0
    # the reply came in more than one delta, unless a speculative start wrote all of it while
    # the turn's end was awaited (adopted, its text so far goes out as one delta: docs/assistant.md)
    spoken_whole = level["speculation"]["speculation_hits"] >= 1
    assert level["token_interval_ms"]["n"] >= 1 or spoken_whole, level["speculation"]
    assert level["load"]["server_cpu_s_per_s"] > 0 and level["load"]["server_rss_mb"] > 0
    # queueing vs compute per engine (the server's /metrics) and CPU per server thread: the
    # final and the reply's first chunk went as urgent requests
    engines = level["engines"]
    assert {"vad", "asr", "llm", "tts"} <= set(engines), engines
    assert engines["asr"]["urgent_wait_n"] >= 1 and engines["tts"]["urgent_wait_n"] >= 1
    assert engines["tts"]["run_ms"] > 0 and engines["llm"]["prefill_ms"] > 0
    assert level["thread_cpu_s"].get("engine-llm", 0) > 0, level["thread_cpu_s"]
    for t in level["slow_turns"]:  # listed: not completed, or first audio late or never
        assert t["status"] != "completed" or t.get("eos_to_first_audio_ms", 1e9) > 6000, t
    # The verdict follows from the figures: every turn answered, no error, and the first reply
    # audio's p90 within --max-latency-ms (3000 by default).
    assert level["real_time_held"] is (level["eos_to_first_audio_ms"]["p90"] <= 3000.0)
    # the same question over WebRTC: Opus up, the reply heard on the client's inbound track
    [rtc] = report["results"]["rtc"]["levels"]
    assert rtc["errors"] == [] and rtc["completed"] == 1, rtc["heard_and_replied"]
    assert rtc["connect_ms"]["n"] == 1
    assert 0 < rtc["eos_to_final_ms"]["p50"] < rtc["eos_to_first_audio_ms"]["p50"]


def test_assistant_scenario_over_both_dialects(tmp_path: Path) -> None:
    """``--dialect tidegate,realtime``: the same question over the control channel and over
    /v1/realtime in one run, both completed and answered, with the figures the Realtime
    events carry, and first audio compared at p50 and turn by turn."""
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "tidegate", "bench", "assistant"),
            *("--sessions", "1", "--turns", "1", "--transports", "ws"),
            *("--dialect", "tidegate,realtime", "--out", str(tmp_path), "--no-plots"),
        ],
        capture_output=True,
        text=True,
        timeout=scaled(120),
    )
    assert proc.returncode == 0, proc.stderr
    [path] = tmp_path.glob("assistant-*.json")
    results = load_report(path)["results"]
    assert results["alternated"] is True  # question by question, on the same load
    [level] = results["realtime"]["levels"]
    assert level["dialect"] == "realtime" and level["errors"] == []
    assert level["completed"] == 1 and level["answers_ok"] == 1, level["heard_and_replied"]
    final = level["eos_to_final_ms"]["p50"]
    assert 0 < final < level["eos_to_first_token_ms"]["p50"] < level["eos_to_first_audio_ms"]["p50"]
    assert level["stages"]["asr_ms"]["n"] == 0  # a server-clock figure the dialect lacks
    [compared] = results["dialects"]["realtime_minus_tidegate_p50_ms"].values()
    assert compared["realtime_minus_tidegate_p50_ms"] == (
        compared["realtime_p50_ms"] - compared["tidegate_p50_ms"]
    )
    # both sent the same 24 kHz samples; one turn each: the paired difference is that one
    assert results["input_rate_hz"] == {"tidegate": 24_000, "realtime": 24_000}
    assert level["paired_minus_tidegate_ms"]["samples"] == [
        round(compared["realtime_minus_tidegate_p50_ms"], 2)
    ]
    assert compared["paired_p50_ms"] == level["paired_minus_tidegate_ms"]["p50"]
    assert "rtc" not in results
