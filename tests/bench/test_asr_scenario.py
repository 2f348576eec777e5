"""The asr scenario streams real speech to a server it starts and writes a valid report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import scaled
from tidegate.bench.report import load_report
from tidegate.bench.scenarios.asr import Utterance, attribute, utterance_latencies, wer_figures


def test_asr_scenario_report(tmp_path: Path) -> None:
    """`tidegate bench asr` with one short stream reports latencies, CPU and WER."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidegate",
            "bench",
            "asr",
            "--streams",
            "1",
            "--clips",
            ".cache/assets/beckett.wav",
            "--clip-s",
            "4",
            "--sentences",
            "1",
            "--gap-s",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=scaled(110),
    )
    assert proc.returncode == 0, proc.stderr
    [path] = tmp_path.glob("asr-*.json")
    report = load_report(path)
    assert report["scenario"] == "asr"
    results = report["results"]
    assert results["clip_s"] == 4.0
    assert [u["kind"] for u in results["utterances"]] == ["clip", "sentence"]
    assert results["utterances"][0]["text"] is None  # 4 s of beckett: no known text
    assert results["fast_upload"]["rtf"] > 0
    [level] = results["levels"]
    assert level["streams"] == 1 and level["errors"] == []
    eos = level["eos_to_final_ms"]
    assert eos["n"] >= 2  # the clip's speech and the espeak sentence each end at least once
    assert 0 < eos["p50"] <= eos["max"]
    assert level["speech_stopped_to_final_ms"]["n"] == eos["n"]
    assert level["words_timed"] == 14
    assert level["partial_latency_ms"]["n"] + level["words_final_only"] == 14
    # a caption (committed and tentative words) shows every word no later than committed text
    assert level["caption_latency_ms"]["n"] + level["caption_words_final_only"] == 14
    assert level["caption_words_final_only"] <= level["words_final_only"]
    assert level["cpu_s_per_audio_s"] > 0
    assert level["finals"] >= 2
    assert level["utterance_end_to_final_ms"]["n"] == 2 and level["utterances_without_final"] == 0
    assert len(level["heard"]) == 2 and level["wer"]["mean"] == level["wer_sentences"]["mean"]
    assert len(level["eos_to_final_ms"]["samples"]) == eos["n"]
    assert level["load"]["server_cpu_s_per_s"] > 0 and level["load"]["generator_cpu_s_per_s"] > 0
    assert level["real_time_held"] is True and results["real_time_lost_at"] is None


def test_finals_are_attributed_to_their_utterances() -> None:
    """A final belongs to the utterance it begins in (pre-roll slack before it); WER is over
    the utterances with a known text; an utterance is final once a final reaches its end."""
    us = [
        Utterance(0.0, 900.0, "fail again", "sentence"),
        Utterance(2000.0, 2900.0, None, "clip"),
        Utterance(4000.0, 4900.0, "try again", "sentence"),
    ]
    hyps = [(-100.0, "fail"), (500.0, "again"), (1700.0, "noise"), (3900.0, "try again")]
    assert attribute(hyps, us) == ["fail again", "noise", "try again"]
    assert wer_figures(hyps, us) == {"wer": 0.0, "wer_sentences": 0.0}
    sent = {900.0: 10.0, 2900.0: 12.0, 4900.0: 14.0}
    latencies, missing = utterance_latencies([(950.0, 10.3), (4700.0, 14.2)], sent.get, us)
    assert latencies == pytest.approx([300.0, 2200.0, 200.0]) and missing == 0
    latencies, missing = utterance_latencies([(950.0, 10.3)], sent.get, us)
    assert len(latencies) == 1 and missing == 2
