"""The sensors scenario measures delivery from a publishing to a subscribing session; two of
its reports are compared and plotted."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

from tidegate.bench.compare import compare, run_compare, table
from tidegate.bench.load import LoadMeter
from tidegate.bench.target import Target

from .conftest import run_scenario, scenario_args


async def test_sensors_scenario_report(live_target: Target, tmp_path: Path) -> None:
    """Two levels (1 and 2 pairs): every reading sent is delivered or counted as coalesced
    (latest-wins, when the server's loop falls behind on a busy machine), and the delivery
    latency and load figures are there."""
    report = await run_scenario(
        live_target, "sensors", tmp_path, "--sessions", "1,2", "--duration-s", "1.5"
    )
    results = report["results"]
    levels = results["levels"]
    assert [lv["sessions"] for lv in levels] == [1, 2]
    for lv in levels:
        assert lv["errors"] == []
        assert lv["readings_sent"] >= lv["sessions"] * 100  # 2 channels x 50 Hz x 1.5 s
        assert lv["readings_delivered"] + lv["coalesced"] == lv["readings_sent"]
        assert lv["missing"] == 0 and lv["readings_delivered"] > lv["readings_sent"] // 2
        # every reading reached the database, in the publishers' sensor batches
        assert lv["readings_persisted"] == lv["readings_sent"] and lv["persist_wait_ms"] >= 0
        assert lv["delivery_ms"]["n"] == lv["readings_delivered"]
        assert 0 < lv["delivery_ms"]["p50"] <= lv["delivery_ms"]["p99"]
        # The verdict follows from the level's own figures (--max-latency-ms: 100 by default).
        held = (
            lv["coalesced"] == 0
            and lv["delivered_fraction"] >= 0.99
            and lv["delivery_ms"]["p90"] <= 100.0
        )
        assert lv["real_time_held"] is held, lv
        assert lv["load"]["server_cpu_s_per_s"] > 0
    lost = [lv["sessions"] for lv in levels if not lv["real_time_held"]]
    assert results["real_time_lost_at"] == (min(lost) if lost else None)
    [cdf] = _pngs(tmp_path, "sensors-*-cdf.png")
    [vs] = _pngs(tmp_path, "sensors-*-sessions.png")
    assert cdf.stat().st_size > 1000 and vs.stat().st_size > 1000


async def test_compare_two_real_reports(live_target: Target, tmp_path: Path) -> None:
    """`bench compare` lines up two real reports level by level; a report compared with
    itself flags nothing, and a threshold below zero flags every row."""
    a = await run_scenario(
        live_target, "sensors", tmp_path, "--sessions", "1", "--duration-s", "0.5", "--no-plots"
    )
    b = await run_scenario(
        live_target, "sensors", tmp_path, "--sessions", "1", "--duration-s", "0.5", "--no-plots"
    )
    rows = compare(a, b)
    paths = {r.path for r in rows}
    assert "levels[sessions=1].delivery_ms" in paths and "levels[sessions=1].send_ms" in paths
    assert not any(r.worse for r in compare(a, a))
    assert all(r.worse for r in compare(a, b, threshold=-1.0))
    text = table(rows, 0.1)
    assert "delivery_ms" in text and "p99 A" in text
    [path_a, path_b] = sorted(tmp_path.glob("sensors-*.json"))  # noqa: ASYNC240
    args = scenario_args(
        "compare", str(path_a), str(path_b), "--threshold", "-1", "--fail-on-regression"
    )
    out = io.StringIO()
    with redirect_stdout(out):
        assert run_compare(args) == 1
    assert "worse" in out.getvalue()


def _pngs(folder: Path, pattern: str) -> list[Path]:
    """The files matching ``pattern``, each checked to be a PNG image that decodes."""
    from PIL import Image

    out = sorted(folder.glob(pattern))
    for path in out:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
        with Image.open(path) as img:
            img.verify()
    return out


async def test_load_figures_fall_back_to_proc(live_target: Target) -> None:
    """Without an admin token /metrics is refused: a server this harness started is then
    read from /proc; one it did not start (no pid) gives no server figures at all."""
    own = Target(live_target.http_url, live_target.token, live_target.pid)
    meter = LoadMeter(own)
    idle = await meter.baseline()
    assert idle["source"] == "proc" and idle["server_rss_mb"] > 0
    await meter.start()
    level = await meter.stop(1)
    assert level["source"] == "proc" and level["server_cpu_s_per_s"] >= 0
    remote = LoadMeter(Target(live_target.http_url, live_target.token))
    assert (await remote.baseline()) == {"source": None}
    await remote.start()
    level = await remote.stop(1)
    assert "server_cpu_s_per_s" not in level and level["generator_cpu_s_per_s"] >= 0
