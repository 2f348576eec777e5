"""The vision scenario measures frame to detection over input.frame and WebRTC video."""

from __future__ import annotations

from pathlib import Path

from tidegate.bench.scenarios.vision import PLACES, place_of, read_place
from tidegate.bench.target import Target

from .conftest import run_scenario


async def test_vision_scenario_report(live_target: Target, tmp_path: Path) -> None:
    """One session per transport, two seconds each: every result names a frame that was
    sent, finds the face where that frame's index put it, and the latencies add up."""
    report = await run_scenario(
        live_target, "vision", tmp_path, "--sessions", "1", "--duration-s", "2"
    )
    results = report["results"]
    assert results["idle"]["source"] == "metrics"  # the server's /metrics, admin token
    for transport in ("ws", "rtc"):
        [level] = results[transport]["levels"]
        assert level["sessions"] == 1 and level["errors"] == [], level
        assert level["frames_sent"] >= 15
        assert level["results"] >= 3 and level["results_unmatched"] == 0
        assert level["results_with_a_face"] == level["results"]
        assert level["code_ok"] == level["results"]  # the face is where the index put it
        lat = level["frame_to_detection_ms"]
        assert lat["n"] == level["results"] and len(lat["samples"]) == lat["n"]
        stages = level["stages"]
        assert 0 < stages["engine_ms"]["p50"] < lat["p50"]
        assert stages["to_engine_ms"]["n"] == lat["n"]
        load = level["load"]
        assert load["server_cpu_s_per_s"] > 0 and load["generator_cpu_s_per_s"] > 0
        assert load["server_rss_mb"] > 0
    assert "uplink_ms" in results["ws"]["levels"][0]["stages"]
    assert results["rtc"]["levels"][0]["connect_ms"]["n"] == 1
    assert len(_pngs(tmp_path, "vision-*-cdf.png")) == 1


def _pngs(folder: Path, pattern: str) -> list[Path]:
    """The files matching ``pattern``, each checked to be a PNG image."""
    out = sorted(folder.glob(pattern))
    for path in out:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    return out


def test_the_face_place_code_round_trips() -> None:
    """Each index's place is read back from a box centred in it."""
    from tidegate.bench.scenarios.vision import COLS, HEAD_PX, HEIGHT, ROWS, WIDTH

    for i in range(2 * PLACES):
        col, row = place_of(i) % COLS, place_of(i) // COLS
        x = 20 + col * (WIDTH - 40 - HEAD_PX) // (COLS - 1) + 60
        y = 10 + row * (HEIGHT - 20 - HEAD_PX) // (ROWS - 1) + 50
        assert read_place((x, y, 90.0, 90.0)) == place_of(i)
