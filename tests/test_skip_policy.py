"""The suite's own policy: a skipped test fails the run unless it is marked `gpu`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import scaled

CONFTEST = Path(__file__).parent / "conftest.py"


def run_suite(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(body)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a GPU\n")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=scaled(120),
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(CONFTEST.parent.parent)},  # the conftest imports tests
    )


def test_non_gpu_skip_fails_the_run(tmp_path: Path) -> None:
    """A plain skip makes pytest exit non-zero and is named in the summary."""
    proc = run_suite(
        tmp_path,
        "import pytest\n\ndef test_ok():\n    pass\n\n"
        "def test_skipped():\n    pytest.skip('no reason')\n",
    )
    assert proc.returncode == 1, proc.stdout
    assert "skipped_not_allowed=1" in proc.stdout
    assert "NOT ALLOWED TO SKIP" in proc.stdout


def test_gpu_skip_is_allowed(tmp_path: Path) -> None:
    """A skip of a `gpu`-marked test is counted and passes."""
    proc = run_suite(
        tmp_path,
        "import pytest\n\ndef test_ok():\n    pass\n\n"
        "@pytest.mark.gpu\ndef test_needs_gpu():\n    pytest.skip('no GPU here')\n",
    )
    assert proc.returncode == 0, proc.stdout
    assert "passed=1 failed=0 skipped_gpu=1 skipped_not_allowed=0" in proc.stdout
