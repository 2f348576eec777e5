"""The `tidegate` command: token, config, bench listing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jwt

from tests.support import scaled


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidegate", *args],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        env={**os.environ, **env},
    )


def test_token_is_signed_with_the_generated_key(tmp_path: Path) -> None:
    """`tidegate token` mints a token that verifies with the key it generated on first run."""
    env = {"TIDEGATE_DATA_DIR": str(tmp_path)}
    proc = run("token", "--tenant", "acme", "--subject", "kiosk-7", "--scope", "session", env=env)
    assert proc.returncode == 0, proc.stderr
    key = (tmp_path / "jwt.key").read_bytes().strip()
    claims = jwt.decode(proc.stdout.strip(), key, algorithms=["HS256"], audience="tidegate")
    assert (claims["sub"], claims["tenant"], claims["scope"]) == ("kiosk-7", "acme", "session")
    assert claims["exp"] > claims["iat"]


def test_config_lists_every_setting(tmp_path: Path) -> None:
    """`tidegate config` prints each TIDEGATE_ variable with its default and doc."""
    proc = run("config", env={"TIDEGATE_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    for name in ("TIDEGATE_PORT", "TIDEGATE_MAX_MESSAGE_BYTES", "TIDEGATE_SESSION_RESUME_S"):
        assert name in proc.stdout


def test_config_markdown_is_the_docs_table(tmp_path: Path) -> None:
    """`tidegate config --markdown` prints the table docs/configuration.md holds."""
    proc = run("config", "--markdown", env={"TIDEGATE_DATA_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert proc.stdout.startswith("| variable | default | what |")
    assert proc.stdout.strip() in doc
    assert "| `TIDEGATE_VAD_THRESHOLD` | `0.5` |" in proc.stdout


def test_bad_setting_is_a_clear_error(tmp_path: Path) -> None:
    """A bad environment value stops the command with a message naming it (exit 2)."""
    proc = run("token", env={"TIDEGATE_DATA_DIR": str(tmp_path), "TIDEGATE_PORT": "x"})
    assert proc.returncode == 2
    assert "TIDEGATE_PORT" in proc.stderr
    assert "Traceback" not in proc.stderr
