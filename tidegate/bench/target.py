"""The server a scenario drives: one it starts (``tidegate serve`` in a child process) or one
already running (``--url`` and ``--token``). Either way it is reached only over the network."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from tidegate.protocol.client import Client

READY_TIMEOUT_S = 60.0


@dataclass
class Target:
    """Where the server is and how to authenticate to it."""

    http_url: str
    token: str
    pid: int | None = None
    mint_key: str | None = None  # set when we started the server and know its key
    metrics_url: str | None = None  # Prometheus text; default: http_url + "/metrics"
    admin_token: str | None = None  # for /metrics on a server we did not start

    @property
    def control_url(self) -> str:
        return self.http_url.replace("http", "ws", 1) + "/v1/control"

    def mint(self, *, subject: str = "bench", tenant: str = "bench") -> str:
        """A fresh token (only for a server this harness started)."""
        if self.mint_key is None:
            return self.token
        return _mint(self.mint_key, subject, tenant)

    def admin(self) -> str | None:
        """An admin-scope token (for ``/metrics``): minted, or the one given, or none."""
        if self.mint_key is not None:
            return _mint(self.mint_key, "bench-admin", "bench", scope="admin")
        return self.admin_token


def _mint(key: str, subject: str, tenant: str, *, scope: str = "session") -> str:
    now = int(time.time())
    claims = {
        "sub": subject,
        "tenant": tenant,
        "scope": scope,
        "aud": "tidegate",
        "iat": now,
        "exp": now + 3600,
    }
    return jwt.encode(claims, key, algorithm="HS256")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def started_server(
    env: dict[str, str] | None = None, *, data_dir: Path | None = None
) -> AsyncIterator[Target]:
    """Start ``tidegate serve`` on a free loopback port; stop it (SIGTERM) on exit."""
    key = secrets.token_hex(32)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tidegate-bench-") as tmp:
        child_env = {
            **os.environ,
            "TIDEGATE_HOST": "127.0.0.1",
            "TIDEGATE_PORT": str(port),
            "TIDEGATE_JWT_SECRET": key,
            "TIDEGATE_DATA_DIR": str(data_dir or tmp),
            "TIDEGATE_LOG_LEVEL": "warning",
            "TIDEGATE_ENGINES": "",  # a scenario that needs engines names them
            **(env or {}),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tidegate", "serve", env=child_env
        )
        url = f"http://127.0.0.1:{port}"
        try:
            await _wait_ready(url, proc)
            yield Target(url, _mint(key, "bench", "bench"), proc.pid, key)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _wait_ready(url: str, proc: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"tidegate serve exited with {proc.returncode} before it was ready")
        try:
            status = await asyncio.to_thread(_get_status, url + "/readyz")
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError(f"server at {url} not ready after {READY_TIMEOUT_S} s")


def _get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def process_cpu_s(pid: int) -> float:
    """User+system CPU seconds a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def thread_cpu_s(pid: int) -> dict[str, float]:
    """User+system CPU seconds of a process's threads so far, summed by thread name
    (``engine-asr``, ``engine-llm``, ...; Linux /proc). Threads that ended are not counted."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as fh:
                head, tail = fh.read().rsplit(")", 1)
        except OSError:  # the thread ended meanwhile
            continue
        name = head.split("(", 1)[1]
        fields = tail.split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return out


def process_rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def get_json(url: str, token: str, timeout_s: float = 10.0) -> Any:
    """GET a JSON document with a bearer token (blocking: call it in a thread)."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())


async def open_session(
    target: Target, subject: str, config: dict[str, object]
) -> tuple[Client, float]:
    """Connect the control channel with a fresh token for ``subject`` and create a session;
    returns the client and the session's open time (WebSocket handshake to session.created,
    ms)."""
    t0 = time.perf_counter()
    client = await Client.connect(target.control_url, target.mint(subject=subject))
    try:
        await client.create_session(dict(config))
    except BaseException:
        await client.close()
        raise
    return client, (time.perf_counter() - t0) * 1000.0
