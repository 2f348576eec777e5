"""The db scenario runs end to end on SQLite and PostgreSQL and writes a valid report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import scaled
from tidegate.bench.report import load_report


@pytest.mark.slow
def test_db_scenario_report(tmp_path: Path) -> None:
    """`tidegate bench db` measures writer throughput and echo latency with and without a
    write flood, on both databases."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidegate",
            "bench",
            "db",
            "--records",
            "600",
            "--chunks",
            "40",
            "--flood-rate",
            "200",
            "--flood-clients",
            "2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=scaled(110),
    )
    assert proc.returncode == 0, proc.stderr
    [path] = tmp_path.glob("db-*.json")
    results = load_report(path)["results"]
    for backend in ("sqlite", "postgresql"):
        t = results["throughput"][backend]
        assert t["flushed"] and t["records"] >= 500 and t["records_per_s"] > 0
        assert t["queue_rejected"] == 0
        lat = results["latency"][backend]
        for phase in ("baseline", "flood"):
            rtt = lat[phase]["rtt_ms"]
            assert rtt["n"] == 40 and 0 < rtt["p50"] <= rtt["p99"]
        assert lat["flood"]["sent_msgs"] > 0
        assert lat["writer"]["committed"] >= lat["flood"]["sent_msgs"]  # every text recorded
        assert lat["p50_ratio_flood_vs_baseline"] > 0
