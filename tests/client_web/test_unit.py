"""The browser client's own unit tests (Vitest: the CBOR codec against the shared wire
vectors, the protocol module, the event→state reducer) and its type check, run from pytest so
that ``make test`` covers them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support import scaled

WEB = Path(__file__).resolve().parents[2] / "client-web"
BIN = WEB / "node_modules" / ".bin"


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    assert (BIN / "vitest").exists(), "client-web's npm packages are missing: run `make web`"
    return subprocess.run(
        cmd,
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=scaled(100),
        env={**os.environ, "CI": "1"},
    )


def test_vitest_suite_passes() -> None:
    """``vitest run`` passes: codec vs wire vectors, protocol checks, the state reducer."""
    out = _run(str(BIN / "vitest"), "run", "--reporter=dot")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout, out.stdout[-3000:]


def test_typescript_type_checks() -> None:
    """``tsc --noEmit`` (strict) finds nothing in the client's sources and tests."""
    out = _run(str(BIN / "tsc"), "--noEmit")
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
