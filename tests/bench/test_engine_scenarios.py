"""The engine-layer scenarios (engines, llm, tts) run briefly and write valid reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import DATA, prepare_models, scaled
from tidegate.bench.compare import compare
from tidegate.bench.report import ReportError, load_report, validate_report

CASES = {
    "engines": ["--engines", "vad", "--streams", "1,2", "--repeats", "1"],
    "llm": ["--streams", "1", "--max-tokens", "6"],
    "tts": [],  # the engine bench has no shorter setting (~25 s on 2 CPUs)
    "ears": ["--sessions", "4", "--repeats", "1", "--parts", "turn", "--data-dir", str(DATA)],
    "languages": ["--clips", "1", "--data-dir", str(DATA)],
    "turn-words": [
        *("--pauses", "0.6", "--sets", "ssml/en-us", "--sentences", "2"),
        *("--data-dir", str(DATA)),
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_engine_scenario_report(name: str, tmp_path: Path) -> None:
    """`tidegate bench NAME` with brief settings writes a report that passes the schema."""
    if name == "ears":
        prepare_models("smart-turn-v3.2")
    if name == "languages":
        prepare_models("whisper-tiny-en", "whisper-base")
    if name == "turn-words":
        prepare_models("silero-vad", "whisper-tiny-en")
    proc = subprocess.run(
        [sys.executable, "-m", "tidegate", "bench", name, *CASES[name], "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=scaled(110),
    )
    assert proc.returncode == 0, proc.stderr
    [path] = tmp_path.glob(f"{name}-*.json")
    report = load_report(path)
    assert report["scenario"] == name
    results = report["results"]
    if name == "engines":
        assert results
    elif name == "ears":
        assert results["turn"]["sessions"] == 4 and results["turn"]["cpu_ratio"] > 0
    elif name == "turn-words":
        ways = results["sets"]["ssml/en-us/0.6"]
        assert set(ways) == {"joined", "apart"} and results["sentences"] == 2
        # the two sentences are cut at their pauses: each second segment is joined
        assert ways["joined"]["turn_texts_joined"] == 2 and ways["apart"]["joined_finals"] == 0
    elif name == "languages":
        assert set(results["whisper-base"]) == {"en", "de", "es", "fr"}
        assert results["cpu_ratio_vs_tiny_en"]["en"] > 0
    elif name == "llm":
        [case] = results["cases"]
        assert case["tokens"] > 0 and case["ttft_ms_p50"] > 0
    else:
        assert results["rtf_p50"] > 0
    if name not in (
        "engines",
        "ears",
        "languages",
        "turn-words",
    ):  # flat *_p50/*_p95 figures are compared too, p95 as the tail
        rows = compare(report, report)
        assert rows and not any(r.worse for r in rows)
        assert any(r.path.endswith("(p95)") for r in rows)


def test_schema_refuses_broken_reports() -> None:
    """A report missing its envelope, or with percentiles out of order, is refused with a
    message naming where."""
    good = {
        "report_version": 1,
        "scenario": "x",
        "created_utc": "20260101T000000",
        "environment": {},
        "results": {"a": {"n": 2, "p50": 1, "p90": 2, "p99": 2, "mean": 1.5, "min": 1, "max": 2}},
    }
    validate_report(good)
    with pytest.raises(ReportError, match="missing field 'results'"):
        validate_report({k: v for k, v in good.items() if k != "results"})
    bad = {**good, "results": {"lvl": [{"sessions": 4, "x_ms": {"n": 2, "p50": 3, "p90": 2}}]}}
    with pytest.raises(ReportError, match=r"results\.lvl\[sessions=4\]\.x_ms"):
        validate_report(bad)
    samples = {**good, "results": {"a": {"n": 0, "samples": [1.0]}}}
    with pytest.raises(ReportError, match="samples"):
        validate_report(samples)
