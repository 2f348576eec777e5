"""The control scenario runs end to end against a live server and writes a valid report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import scaled
from tidegate.bench.report import load_report


def test_control_scenario_report(tmp_path: Path) -> None:
    """`tidegate bench control` starts a server and an echo server and reports both."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidegate",
            "bench",
            "control",
            "--pings",
            "60",
            "--warmup",
            "10",
            "--duration-s",
            "0.2",
            "--window",
            "4",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=scaled(120),
    )
    assert proc.returncode == 0, proc.stderr
    [path] = tmp_path.glob("control-*.json")
    report = load_report(path)
    assert report["scenario"] == "control"
    assert report["environment"]["cpus"] >= 1
    results = report["results"]
    for encoding in ("cbor", "msgpack", "json"):
        for side in ("tidegate", "echo"):
            rtt = results[side][encoding]["rtt_ms"]
            assert rtt["n"] == 60
            assert 0 < rtt["p50"] <= rtt["p90"] <= rtt["p99"] <= rtt["max"]
            assert results[side][encoding]["msgs_per_s"] > 0
        assert results["rtt_p50_ratio_vs_echo"][encoding] > 0
        assert results["codec_us"][encoding] > 0
    assert results["tidegate"]["cbor"]["server_cpu_us_per_round_trip"] >= 0
