"""Server nodes as child processes (``python -m tidegate serve``) sharing one Redis: what a
cluster is, without the engines (``TIDEGATE_ENGINES=""`` keeps them cheap)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.cluster.redis_server import free_port
from tests.support import wait_ready_blocking
from tidegate.protocol.client import Client
from tidegate.server.auth import mint_token

START_TIMEOUT_S = 60.0


class Node:
    """One server process of the cluster (started at once; :meth:`stop` or :meth:`kill`)."""

    def __init__(
        self,
        tmp_path: Path,
        node_id: str,
        key: str,
        redis_url: str = "",
        prefix: str = "tidegate:",
        *,
        open_files: int | None = None,
        **settings: str,
    ) -> None:
        """``redis_url`` empty: a node on its own; ``open_files``: its RLIMIT_NOFILE."""
        self.node_id = node_id
        self.key = key
        self.port = free_port()
        data = tmp_path / node_id
        data.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "TIDEGATE_HOST": "127.0.0.1",
            "TIDEGATE_PORT": str(self.port),
            "TIDEGATE_DATA_DIR": str(data),
            "TIDEGATE_JWT_SECRET": key,
            "TIDEGATE_ENGINES": "",
            "TIDEGATE_LOG_LEVEL": "warning",
            "TIDEGATE_METRICS_INTERVAL_S": "0",
            "TIDEGATE_DB_JOURNAL_FSYNC": "false",
            "TIDEGATE_REDIS_URL": redis_url,
            "TIDEGATE_REDIS_KEY_PREFIX": prefix,
            "TIDEGATE_NODE_ID": node_id,
            "TIDEGATE_NODE_URL": self.http,
            "TIDEGATE_CLUSTER_HEARTBEAT_S": "0.2",
            "TIDEGATE_CLUSTER_NODE_TTL_S": "1.5",
            **{"TIDEGATE_" + k.upper(): v for k, v in settings.items()},
        }
        limit = None if open_files is None else (open_files, open_files)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tidegate", "serve"],
            env=env,
            preexec_fn=None
            if limit is None
            else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit),
        )

    def wait_ready(self) -> Node:
        wait_ready_blocking(
            self.http, timeout_s=START_TIMEOUT_S, exited=self.proc.poll, poll_s=0.05
        )
        return self

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/control"

    def token(self, *, subject: str = "alice", tenant: str = "acme", admin: bool = False) -> str:
        scopes = ("session", "admin") if admin else ("session",)
        return mint_token(self.key.encode(), subject=subject, tenant=tenant, scopes=scopes)

    def auth(self, **kw: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(**kw)}"}

    async def client(self, **kw: Any) -> Client:
        token = kw.pop("token", None) or self.token()
        return await Client.connect(self.url, token, **kw)

    async def cluster(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.http) as http:
            r = await http.get("/v1/cluster", headers=self.auth(admin=True))
            r.raise_for_status()
            return dict(r.json())

    def kill(self) -> None:
        """SIGKILL: the node dies without a word to Redis."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
