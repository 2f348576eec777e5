"""``tidegate serve`` as a process: the drain on SIGTERM (new sessions refused, live ones
finish up to TIDEGATE_DRAIN_TIMEOUT_S, the journal flushed, exit 0) and the models prepared
on a first start, with progress lines."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.store.helpers import check_draining, eventually, query
from tests.support import scaled
from tidegate.bench.target import free_port
from tidegate.protocol.client import Client
from tidegate.server.auth import mint_token

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Child:
    proc: asyncio.subprocess.Process
    port: int
    secret: str
    log: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def client(self) -> Client:
        token = mint_token(self.secret.encode(), subject="alice", tenant="acme")
        return await Client.connect(f"ws://127.0.0.1:{self.port}/v1/control", token)

    async def ready(self) -> bool:
        assert self.proc.returncode is None, f"the server exited:\n{self.log.read_text()}"
        try:
            async with httpx.AsyncClient() as http:
                return (await http.get(f"{self.http}/readyz")).status_code == 200
        except httpx.TransportError:
            return False


@asynccontextmanager
async def serve(tmp_path: Path, **env: str) -> AsyncIterator[Child]:
    """``python -m tidegate serve`` on a free loopback port with ``env``; killed if still
    running at the end."""
    port, secret = free_port(), secrets.token_hex(32)
    log = tmp_path / "serve.log"
    child_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TIDEGATE_HOST": "127.0.0.1",
        "TIDEGATE_PORT": str(port),
        "TIDEGATE_JWT_SECRET": secret,
        "TIDEGATE_DATA_DIR": str(tmp_path / "data"),
        "TIDEGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'records.db'}",
        "TIDEGATE_LOG_LEVEL": "info",
        **env,
    }
    with log.open("w") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tidegate", "serve", env=child_env, stdout=out, stderr=out
        )
    child = Child(proc, port, secret, log)
    try:
        yield child
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sigterm_drains_live_sessions_then_exits_clean(tmp_path: Path) -> None:
    """After SIGTERM /readyz says draining and a new session is refused with overloaded, the
    open session keeps working; once it closes the process exits 0 and its records are
    committed."""
    async with serve(tmp_path, TIDEGATE_ENGINES="", TIDEGATE_DRAIN_TIMEOUT_S="60") as child:
        await eventually(child.ready, 60, "the server is ready")
        client = await child.client()
        sid = (await client.create_session({"mode": "loopback"})).session_id
        child.proc.send_signal(signal.SIGTERM)

        await check_draining(child.http, child.client, client)
        assert child.proc.returncode is None  # the open session holds the drain
        await client.close_session()
        await client.close()
        assert await asyncio.wait_for(child.proc.wait(), scaled(30)) == 0
    url = f"sqlite:///{tmp_path / 'records.db'}"
    rows = await query(url, "SELECT status FROM sessions WHERE id = :s", s=sid)
    assert [r["status"] for r in rows] == ["closed"]
    texts = await query(url, "SELECT text FROM responses WHERE session_id = :s", s=sid)
    assert [r["text"] for r in texts] == ["during the drain"]


async def test_drain_is_bounded_and_closes_what_is_left(tmp_path: Path) -> None:
    """A session that never ends holds the drain only TIDEGATE_DRAIN_TIMEOUT_S: then the
    process closes it (recorded as shutdown) and exits 0."""
    async with serve(tmp_path, TIDEGATE_ENGINES="", TIDEGATE_DRAIN_TIMEOUT_S="1") as child:
        await eventually(child.ready, 60, "the server is ready")
        client = await child.client()
        sid = (await client.create_session({"mode": "loopback"})).session_id
        child.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(child.proc.wait(), scaled(30)) == 0
        await client.close()
    assert "drained: shutting down, 1 session(s) left" in child.log.read_text()
    url = f"sqlite:///{tmp_path / 'records.db'}"
    rows = await query(url, "SELECT status FROM sessions WHERE id = :s", s=sid)
    assert [r["status"] for r in rows] == ["shutdown"]


async def test_first_start_prepares_a_missing_model_with_progress(tmp_path: Path) -> None:
    """An engine whose model is not in the data folder gets it prepared before the server
    starts, each step on a progress line; then the server is ready with it."""
    async with serve(tmp_path, TIDEGATE_ENGINES="vad") as child:
        await eventually(child.ready, 90, "the server is ready")
        child.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(child.proc.wait(), scaled(30)) == 0
    log = child.log.read_text()
    assert "the vad engine's model silero-vad is not prepared" in log, log
    assert "silero-vad: ready in" in log, log
    assert (tmp_path / "data" / "models" / "silero-vad" / "silero_vad.onnx").is_file()


async def test_first_start_without_the_turn_model_serves_without_it(tmp_path: Path) -> None:
    """The turn engine is optional: when its model cannot be prepared (no cached pipecat-ai
    wheel, no package index: PIP_NO_INDEX), the server says so on one warning line naming
    the fallback, and starts without it: ready, /readyz naming the engine left out."""
    async with serve(tmp_path, TIDEGATE_ENGINES="turn", PIP_NO_INDEX="1") as child:
        await eventually(child.ready, 90, "the server is ready")
        async with httpx.AsyncClient() as http:
            ready = (await http.get(f"{child.http}/readyz")).json()
        assert "smart-turn-v3.2" in ready["engines_missing"]["turn"], ready
        child.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(child.proc.wait(), scaled(30)) == 0
    log = child.log.read_text()
    assert "the turn engine's model smart-turn-v3.2 cannot be prepared" in log, log
    assert "engine turn: not started, its model smart-turn-v3.2 is missing" in log, log
    assert "turns end by the silence policy" in log, log
    assert not (tmp_path / "data" / "models" / "smart-turn-v3.2").exists()
