"""A real tidegate server on an ephemeral loopback port, in the test's event loop."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.support import scaled
from tidegate.protocol.client import Client
from tidegate.server.app import create_app
from tidegate.server.auth import mint_token
from tidegate.server.cli import uvicorn_config
from tidegate.server.runtime import Runtime
from tidegate.server.settings import Settings


@dataclass
class LiveServer:
    settings: Settings
    runtime: Runtime
    port: int
    app: Any = None  # the ASGI application it serves

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/control"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(
        self,
        *,
        subject: str = "alice",
        tenant: str = "acme",
        scopes: Iterable[str] = ("session",),
        ttl_s: float = 600.0,
        **kw: Any,
    ) -> str:
        return mint_token(
            self.settings.jwt_secret.encode(),  # type: ignore[union-attr]
            subject=subject,
            tenant=tenant,
            scopes=scopes,
            ttl_s=ttl_s,
            **{"audience": self.settings.jwt_audience, **kw},
        )

    async def client(self, **kw: Any) -> Client:
        token = kw.pop("token", None) or self.token()
        return await Client.connect(self.url, token, **kw)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings(
        host="127.0.0.1",
        port=0,
        data_dir=tmp_path,
        jwt_secret=secrets.token_hex(32),
        log_level="warning",
        metrics_interval_s=0.0,
        engines=(),  # tests that need engines ask for them (the default is every CPU engine)
    )
    return base.replace(**overrides)  # public names: vad_runtime=... sets engine(VAD).runtime


@pytest.fixture
def server_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def server(server_settings: Settings) -> AsyncIterator[LiveServer]:
    async with run_server(server_settings) as live:
        yield live


class run_server:
    """Start the real app under uvicorn on 127.0.0.1:0 and stop it on exit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LiveServer:
        app = create_app(self.settings)
        self._server = uvicorn.Server(uvicorn_config(app, self.settings))
        self._server.config.setup_event_loop = lambda: None  # type: ignore[method-assign]
        self._task = asyncio.get_running_loop().create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return LiveServer(self.settings, app.state.runtime, port, app)

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        assert self._task is not None
        await asyncio.wait_for(self._task, scaled(10))
