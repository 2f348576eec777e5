"""The asr scenario streams real speech to a server it starts and writes a valid report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import scaled
from tidegate.bench.report import load_report


def test_asr_scenario_report(tmp_path: Path) -> None:
    """`tidegate bench asr` with one short stream reports latencies, CPU and WER."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidegate",
            "bench",
            "asr",
            "--streams",
            "1",
            "--clip-s",
            "4",
            "--sentences",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=scaled(110),
    )
    assert proc.returncode == 0, proc.stderr
    [path] = tmp_path.glob("asr-*.json")
    report = load_report(path)
    assert report["scenario"] == "asr"
    results = report["results"]
    assert results["clip_s"] == 4.0
    assert results["fast_upload"]["rtf"] > 0
    [level] = results["levels"]
    assert level["streams"] == 1 and level["errors"] == []
    eos = level["eos_to_final_ms"]
    assert eos["n"] >= 2  # the clip's speech and the espeak sentence each end at least once
    assert 0 < eos["p50"] <= eos["max"]
    assert level["speech_stopped_to_final_ms"]["n"] == eos["n"]
    assert level["words_timed"] == 14
    assert level["partial_latency_ms"]["n"] + level["words_final_only"] == 14
    assert level["cpu_s_per_audio_s"] > 0
    assert level["finals"] >= 2
    assert len(level["eos_to_final_ms"]["samples"]) == eos["n"]
    assert level["load"]["server_cpu_s_per_s"] > 0 and level["load"]["generator_cpu_s_per_s"] > 0
    assert level["real_time_held"] is True and results["real_time_lost_at"] is None
