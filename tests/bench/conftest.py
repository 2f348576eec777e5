"""One live server for the bench tests that drive a server they did not start (``--url``
style): ``tidegate serve`` in a child process with the assistant's engines and vision, shared
by the bench tests, reached only over loopback."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import wait_ready_blocking
from tidegate.bench.scenarios import load_scenarios
from tidegate.bench.target import Target, _mint, free_port

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90.0


@pytest.fixture(scope="session")
def live_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A server with the vad, asr, llm, tts, vision and turn engines; vision looks 5 times a
    second, sessions report their metrics twice a second."""
    key = secrets.token_hex(32)
    port = free_port()
    db = tmp_path_factory.mktemp("bench-db") / "tidegate.db"
    env = {
        **os.environ,
        "TIDEGATE_HOST": "127.0.0.1",
        "TIDEGATE_PORT": str(port),
        "TIDEGATE_JWT_SECRET": key,
        "TIDEGATE_DATA_DIR": str(ROOT / ".cache" / "data"),
        "TIDEGATE_DATABASE_URL": f"sqlite:///{db}",
        "TIDEGATE_LOG_LEVEL": "warning",
        "TIDEGATE_ENGINES": "vad,asr,llm,tts,vision,turn",
        "TIDEGATE_METRICS_INTERVAL_S": "0.5",  # the turns scenario reads the echo stats
        "TIDEGATE_ASSISTANT_VISION_INTERVAL_S": "0.2",
        "TIDEGATE_ICE_HOSTS": "127.0.0.1",
    }
    proc = subprocess.Popen([sys.executable, "-m", "tidegate", "serve"], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready_blocking(url, timeout_s=READY_TIMEOUT_S, exited=proc.poll)
        yield Target(url, _mint(key, "bench", "bench"), proc.pid, key)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def scenario_args(name: str, *argv: str) -> argparse.Namespace:
    """The parsed arguments of ``tidegate bench NAME ARGV...`` (defaults filled in)."""
    from tidegate.bench.cli import add_commands

    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", name, *argv])
    assert args.scenario == name
    return args


async def run_scenario(target: Target, name: str, out: Path, *argv: str) -> dict[str, Any]:
    """Run scenario ``name`` against ``target`` and write its report and plots into ``out``;
    returns the report as read back (validated)."""
    from tidegate.bench.cli import finish
    from tidegate.bench.report import load_report

    sc = load_scenarios()[name]
    results = await sc.run(scenario_args(name, *argv), target)
    return load_report(finish(name, results, out))
