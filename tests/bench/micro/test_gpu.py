"""The GPU capacity script (bench/micro/gpu.py) runs on the CPU provider and writes its report;
figures from another provider than the one asked for are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import ASSETS, prepare_models
from tidegate.bench.micro import gpu


@pytest.mark.slow
def test_gpu_script_runs_on_the_cpu_provider(tmp_path: Path) -> None:
    """`--provider cpu --quick`: every part (ASR streams, LLM streams, BlazeFace batches) runs
    on the real models and the JSON report names the provider each engine ran on."""
    data = prepare_models(
        "whisper-tiny-en", "smollm2-135m", "blazeface", assets=("beckett.wav", "two_cities.wav")
    )
    argv = ["--provider", "cpu", "--quick", "--data-dir", str(data), "--assets", str(ASSETS)]
    assert gpu.main([*argv, "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("gpu-cpu-*.json")
    report = json.loads(path.read_text())
    assert report["provider"] == "cpu" and report["quick"] is True
    assert {report[p]["provider"] for p in ("asr", "llm", "vision")} == {"cpu"}
    [level] = report["asr"]["levels"]
    assert level["streams"] == 1 and level["finals"] >= 1 and level["error_count"] == 0
    assert report["asr"]["streams_held"] == 1
    [case] = report["llm"]["cases"]
    assert case["concurrent"] == 2 and case["tokens"] > 0
    assert [c["batch"] for c in report["vision"]["cases"]] == [1, 2]
    assert all(c["frames_per_s"] > 0 for c in report["vision"]["cases"])


def test_gpu_figures_must_come_from_the_gpu() -> None:
    """An engine that asked for CUDA and ran on the CPU stops the script (ProviderMismatchError
    naming both), so CPU figures are never reported as GPU ones; the CPU provider asks
    nothing."""
    with pytest.raises(gpu.ProviderMismatchError, match=r"asked for the cuda .* gave 'cpu'"):
        gpu._check_provider("asr", "cuda", "cpu")
    gpu._check_provider("asr", "cuda", "cuda")
    gpu._check_provider("asr", "cpu", "cpu")
