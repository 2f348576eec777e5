"""The observability kit against a live server: the Prometheus rules (deploy/prometheus/) pass
``promtool check rules``, and each alert is evaluated by ``promtool test rules`` on series
recorded from a live server's /metrics (after a spoken assistant turn): none fires on them
as recorded, and each fires, alone, when its signal is turned bad. Every metric the Grafana
dashboard (deploy/grafana/) names is in that live /metrics."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import make_settings, run_server
from tests.server.test_assistant import converse, prepared, question  # noqa: F401 (fixtures)
from tests.support import scaled, wait_ready

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "tidegate-rules.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tidegate.json"
NODE = {"job": "tidegate", "instance": "node-a"}  # the labels Prometheus adds to a scrape
STEPS = 40  # minutes of series; alerts are evaluated at EVAL_MIN
EVAL_MIN = 30
METRIC_RE = re.compile(r"\b((?:tidegate|process)_[a-z0-9_]+)")

pytestmark = pytest.mark.timeout(300)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scrape(
    tmp_path_factory: pytest.TempPathFactory,
    prepared: Path,  # noqa: F811
    question: tuple[np.ndarray, int],  # noqa: F811
) -> AsyncIterator[str]:
    """/metrics of a live server with every CPU engine, after one spoken assistant turn."""
    tmp = tmp_path_factory.mktemp("observability")
    (tmp / "models").symlink_to(prepared / "models")
    settings = make_settings(tmp, engines=("vad", "asr", "vision", "llm", "tts"))
    async with (
        run_server(settings) as live,
        httpx.AsyncClient(base_url=live.http, timeout=scaled(10)) as http,
    ):
        await wait_ready(live.http)
        async with converse(live) as c:
            await c.speak(*question)
            await c.wait(lambda: c.done(), timeout_s=90)
        admin = {"Authorization": f"Bearer {live.token(scopes=('admin',))}"}
        r = await http.get("/metrics", headers=admin)
        assert r.status_code == 200
        yield r.text


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _series(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted({**labels, **NODE}.items()))
    return f"{name}{{{inner}}}"


def _num(v: float) -> str:
    return f"{v:.6f}".rstrip("0").rstrip(".") or "0"


def _recorded(text: str) -> dict[str, str]:
    """series -> promtool values: every recorded sample held constant, plus ``up`` (the
    series Prometheus itself writes for a scrape that worked)."""
    out = {_series(n, lab): f"{_num(v)}+0x{STEPS}" for n, lab, v in _samples(text)}
    out[_series("up", {})] = f"1+0x{STEPS}"
    return out


def _one(text: str, name: str, **labels: str) -> tuple[dict[str, str], float]:
    samples = _samples(text)
    found = [(lab, v) for n, lab, v in samples if n == name and labels.items() <= lab.items()]
    assert found, f"{name}{labels} is not in the live /metrics"
    return found[0]


def _bad(text: str) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """alert -> (series whose values turn bad, the labels the alert fires with)."""
    node = dict(NODE)
    depth_labels, _ = _one(text, "tidegate_engine_queue_depth", engine="asr")
    _, capacity = _one(text, "tidegate_engine_queue_capacity", engine="asr")
    refused_labels, refused = _one(text, "tidegate_session_events_total", event="refused")
    slow: dict[str, str] = {}
    for name, labels, value in _samples(text):
        if name == "tidegate_voice_to_voice_seconds_bucket":
            le = float(labels["le"])  # every new turn lands over 2.5 s
            slow[_series(name, labels)] = f"{_num(value)}+{10 if le > 2.5 else 0}x{STEPS}"
        elif name == "tidegate_voice_to_voice_seconds_count":
            slow[_series(name, labels)] = f"{_num(value)}+10x{STEPS}"
        elif name == "tidegate_voice_to_voice_seconds_sum":
            slow[_series(name, labels)] = f"{_num(value)}+40x{STEPS}"
    assert len(slow) > 3, "no voice-to-voice histogram in the live /metrics"
    return {
        "TidegateRecordWriterDown": ({_series("tidegate_db_up", {}): f"0x{STEPS}"}, node),
        "TidegateJournalGrowing": (
            {_series("tidegate_journal_pending_records", {}): f"0+50x{STEPS}"},
            node,
        ),
        "TidegateEngineSaturated": (
            {_series("tidegate_engine_queue_depth", depth_labels): f"{capacity}x{STEPS}"},
            {**node, "engine": "asr"},
        ),
        "TidegateAdmissionRefusals": (
            {_series("tidegate_session_events_total", refused_labels): f"{refused}+6x{STEPS}"},
            node,
        ),
        "TidegateVoiceToVoiceSlow": (slow, node),
        "TidegateNodeLost": ({_series("up", {}): f"0x{STEPS}"}, node),
    }


def _rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def _expected(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """The alert promtool should see: its labels, and its annotations with $labels filled."""

    def fill(text: str) -> str:
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)

    return {
        "exp_labels": {**labels, **rule.get("labels", {})},
        "exp_annotations": {k: fill(v) for k, v in rule.get("annotations", {}).items()},
    }


def _promtool_test(tmp_path: Path, tests: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    spec = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}
    path = tmp_path / "rules-test.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return subprocess.run(
        ["promtool", "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=scaled(120),
    )


def test_rules_pass_promtool_check() -> None:
    """promtool check rules accepts the file, with one alert per condition the kit watches."""
    out = subprocess.run(
        ["promtool", "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert set(_rules()) == {
        "TidegateRecordWriterDown",
        "TidegateJournalGrowing",
        "TidegateEngineSaturated",
        "TidegateAdmissionRefusals",
        "TidegateVoiceToVoiceSlow",
        "TidegateNodeLost",
    }


def test_each_alert_fires_alone_on_recorded_series_turned_bad(scrape: str, tmp_path: Path) -> None:
    """On the recorded series no alert fires; with one alert's signal turned bad (the rest as
    recorded), that alert fires with the node's labels and no other does."""
    rules = _rules()
    recorded = _recorded(scrape)
    bad = _bad(scrape)
    tests = [
        {
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in recorded.items()],
            "alert_rule_test": [
                {"eval_time": f"{EVAL_MIN}m", "alertname": a, "exp_alerts": []} for a in rules
            ],
        }
    ]
    for alert, (series, labels) in bad.items():
        missing = set(series) - set(recorded) - {_series("tidegate_journal_pending_records", {})}
        assert not missing, f"{alert}: not recorded from the live server: {missing}"
        inputs = {**recorded, **series}
        tests.append(
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in inputs.items()],
                "alert_rule_test": [
                    {
                        "eval_time": f"{EVAL_MIN}m",
                        "alertname": a,
                        "exp_alerts": [_expected(rules[a], labels)] if a == alert else [],
                    }
                    for a in rules
                ],
            }
        )
    out = _promtool_test(tmp_path, tests)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_spoken_turn_is_counted_as_voice_to_voice(scrape: str) -> None:
    """The live server's spoken turn was observed once in tidegate_voice_to_voice_seconds,
    within its buckets (from its last audio to its reply's first audio)."""
    _, count = _one(scrape, "tidegate_voice_to_voice_seconds_count")
    _, total = _one(scrape, "tidegate_voice_to_voice_seconds_sum")
    _, inf = _one(scrape, "tidegate_voice_to_voice_seconds_bucket", le="+Inf")
    assert count == inf == 1
    assert 0 < total < 60


def test_dashboard_names_only_metrics_a_live_server_exports(scrape: str) -> None:
    """Every metric in the dashboard's queries is exported by the live server (as a sample,
    or as a declared family that has no sample yet, e.g. refusals that never happened)."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]
    assert len(exprs) > 20
    names = {m for e in exprs for m in METRIC_RE.findall(e)}
    samples = {n for n, _, _ in _samples(scrape)}
    declared = set(re.findall(r"^# TYPE (\S+) ", scrape, re.MULTILINE))
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    missing = {
        n
        for n in names
        if n not in samples and not any(n == d + s for d in declared for s in suffixes)
    }
    assert not missing, f"the dashboard names metrics /metrics does not export: {missing}"
    for needed in (
        "tidegate_voice_to_voice_seconds_bucket",
        "tidegate_engine_queue_depth",
        "tidegate_journal_pending_records",
        "tidegate_redis_up",
    ):
        assert needed in names, f"the dashboard does not show {needed}"
