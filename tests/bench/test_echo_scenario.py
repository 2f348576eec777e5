"""The echo scenario runs end to end against a server it starts and writes a valid report."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import scaled
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
        timeout=scaled(110),
    )
    assert proc.returncode == 0, proc.stderr
    [path] = tmp_path.glob("echo-*.json")
    results = load_report(path)["results"]
    echo = results["echo"]
    assert echo["rtt_ms"]["n"] >= 2  # bursts found in the echo, one per second
    assert 0 < echo["rtt_ms"]["p50"] < 1000
    assert echo["server_cpu_s_per_s"] > 0  # the server's echo costs it CPU, measured
    assert echo["server_media"]["audio_rtp"]["packets"] > 100
    runs = results["receive_only"]
    assert [r["sessions"] for r in runs] == [1, 3]
    for r in runs:
        assert r["client_send_rate_min"] > 0.5
        assert r["server_consume_rate_min"] > 0  # every session's audio reached the server
        assert r["connect_ms"]["n"] == r["sessions"]
        assert r["load"]["generator_cpu_s_per_s"] > 0 and r["load"]["server_rss_mb"] > 0
        # The verdict follows from the level's own figures (--max-lag-ms: 200 by default).
        held = (
            r["consumed_vs_sent_min"] >= 0.95
            and r["peak_queued_ms_max"] < 200.0
            and r["flow_lag_events"] == 0
        )
        assert r["real_time_held"] is held, r
    lost = [r["sessions"] for r in runs if not r["real_time_held"]]
    assert results["real_time_lost_at"] == (min(lost) if lost else None)


async def test_a_refused_level_is_reported_and_closes_what_it_opened(tmp_path: Path) -> None:
    """A level the server refuses (here its limit of connections per address) is a report
    line, not a crash, and the sessions of that level that did open are closed: the server
    holds none after it."""
    from tests.server.conftest import make_settings, run_server
    from tidegate.bench.scenarios.echo import encode_cycle, run_load
    from tidegate.bench.target import Target

    settings = make_settings(tmp_path, max_connections_per_address=3, ice_hosts=("127.0.0.1",))
    async with run_server(settings) as live:
        key = str(settings.jwt_secret)
        target = Target(http_url=live.http, token="", mint_key=key)
        level = await run_load(target, encode_cycle(), 6, 0.5, 500.0)
        assert level["sessions"] == 6 and level["real_time_held"] is False, level
        assert "429" in level["refused"], level
        async with asyncio.timeout(scaled(10)):
            while len(live.runtime.registry):
                await asyncio.sleep(0.05)
