"""The echo scenario runs end to end against a server it starts and writes a valid report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tidegate.bench.report import load_report


@pytest.mark.slow
def test_echo_scenario_report(tmp_path: Path) -> None:
    """`tidegate bench echo` measures round trips, CPU and concurrent receive-only sessions."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidegate",
            "bench",
            "echo",
            "--rtt-s",
            "3",
            "--window-s",
            "1",
            "--sessions",
            "1,3",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr
    [path] = tmp_path.glob("echo-*.json")
    results = load_report(path)["results"]
    echo = results["echo"]
    assert echo["rtt_ms"]["n"] >= 2  # bursts found in the echo, one per second
    assert 0 < echo["rtt_ms"]["p50"] < 1000
    assert echo["server_cpu_s_per_s"] >= 0
    assert echo["server_media"]["audio_rtp"]["packets"] > 100
    runs = results["receive_only"]
    assert [r["sessions"] for r in runs] == [1, 3]
    for r in runs:
        assert r["client_send_rate_min"] > 0.5
        assert isinstance(r["real_time_held"], bool)
        assert r["connect_ms"]["n"] == r["sessions"]
        assert r["load"]["generator_cpu_s_per_s"] > 0 and r["load"]["server_rss_mb"] > 0
    assert results["real_time_lost_at"] in (None, 1, 3)
