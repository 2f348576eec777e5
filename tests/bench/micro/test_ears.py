"""The ears microbenchmark's paced AEC part: sessions' echo paths called every 20 ms."""

from __future__ import annotations

import pytest

from tidegate.bench import audio_sets
from tidegate.bench.micro.ears import bench_aec_paced

pytestmark = pytest.mark.skipif(bool(audio_sets.have_tools()), reason="needs espeak-ng and sox")


def test_paced_aec_counts_each_sessions_canceller_time() -> None:
    """Every level is measured for its sessions over the paced time, with the CPU each
    session's echo path counted (what its metrics report live)."""
    report = bench_aec_paced([1, 3], 0.3)
    assert report["seconds"] == pytest.approx(0.3)
    assert set(report["by_sessions"]) == {"1", "3"}
    for figures in report["by_sessions"].values():
        assert 0.0 < figures["cpu_s_per_session_s"] < 1.0
