"""The cluster bench's sensor part runs end to end (two nodes it starts, a real Redis) and
writes a valid report. Its greeting part needs the engines and is run by hand (docs/cluster.md
gives the command and the figures); the caches it measures are tested in tests/cluster."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.redis_server import shared_or_own
from tests.support import scaled
from tidegate.bench.report import load_report


@pytest.fixture
def redis_url() -> Iterator[str]:
    with shared_or_own() as url:
        yield url


@pytest.mark.slow
def test_cluster_bench_sensor_report(tmp_path: Path, redis_url: str) -> None:
    """`tidegate bench cluster --skip-greeting` measures cross-node and same-node
    sensor delivery and writes them as percentile blocks."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidegate",
            "bench",
            "cluster",
            "--no-plots",
            "--skip-greeting",
            "--redis-url",
            redis_url,
            "--rate-hz",
            "50",
            "--duration-s",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=scaled(110),
    )
    assert proc.returncode == 0, proc.stderr
    [path] = tmp_path.glob("cluster-*.json")
    sensor = load_report(path)["results"]["sensor"]
    assert sensor["sent"] == 50 and not sensor["errors"]
    cross, same = sensor["cross_node_delivery_ms"], sensor["same_node_delivery_ms"]
    assert cross["n"] >= 1 and same["n"] >= 1
    assert cross["n"] + sensor["cross_node_coalesced"] <= 50
    # The verdict follows from the figures: the cross-node delivery's p50 within 5 ms.
    assert sensor["target_met"] is (cross["p50"] <= 5.0)
