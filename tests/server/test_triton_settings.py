"""The triton runtime's settings: a runtime per engine, a server per engine, the policy, and
errors that name the bad setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidegate.server.engines import engine_specs
from tidegate.server.errors import ConfigError
from tidegate.server.settings import Settings


def test_runtime_and_server_per_engine(tmp_path: Path) -> None:
    """<engine>_runtime overrides engine_runtime; triton_urls overrides triton_url per engine;
    the deadline, policy and retry reach every engine's runtime options."""
    s = Settings.load(
        environ={
            "TIDEGATE_DATA_DIR": str(tmp_path),
            "TIDEGATE_ENGINES": "vad,asr,vision",
            "TIDEGATE_ASR_RUNTIME": "triton",
            "TIDEGATE_VAD_RUNTIME": "triton",
            "TIDEGATE_TRITON_URL": "127.0.0.1:9001",
            "TIDEGATE_TRITON_URLS": "asr=127.0.0.1:9101",
            "TIDEGATE_TRITON_TIMEOUT_S": "0.75",
            "TIDEGATE_TRITON_POLICY": "fallback",
        }
    )
    specs = {spec.name: spec.runtime for spec in engine_specs(s)}
    assert specs["vision"].runtime == "onnx"
    assert specs["vad"].runtime == specs["asr"].runtime == "triton"
    assert specs["vad"].triton_url == "127.0.0.1:9001"
    assert specs["asr"].triton_url == "127.0.0.1:9101"
    assert all(r.triton_timeout_s == 0.75 and r.triton_policy == "fallback" for r in specs.values())


@pytest.mark.parametrize(
    ("env", "culprit"),
    [
        ({"TIDEGATE_TRITON_POLICY": "maybe"}, "triton_policy"),
        ({"TIDEGATE_TRITON_URLS": "gpu=127.0.0.1:1"}, "triton_urls"),
        ({"TIDEGATE_ASR_RUNTIME": "tpu"}, "runtime"),
    ],
)
def test_bad_triton_settings(tmp_path: Path, env: dict[str, str], culprit: str) -> None:
    """A bad policy, an unknown engine in triton_urls or an unknown runtime is refused at
    start-up with a message naming it."""
    with pytest.raises(ConfigError, match=culprit):
        Settings.load(
            environ={"TIDEGATE_DATA_DIR": str(tmp_path), "TIDEGATE_ENGINES": "vad,asr", **env}
        )
