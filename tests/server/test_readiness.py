"""Readiness follows the engines: /healthz answers at once, /readyz once they are warm."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.support import prepare_models, scaled, wait_ready
from tidegate.protocol.client import RefusedError

from .conftest import make_settings, run_server

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".cache" / "data"


@pytest.fixture(scope="module")
def prepared_data() -> Path:
    """The data folder with the VAD model prepared (by `make setup`, or here)."""
    return prepare_models("silero-vad")


async def test_ready_once_engines_are_warm(tmp_path: Path, prepared_data: Path) -> None:
    """With engines configured, /readyz turns 200 when they are loaded and lists nothing else."""
    settings = make_settings(tmp_path, engines=("vad",), data_dir=prepared_data)
    async with run_server(settings) as live, httpx.AsyncClient(base_url=live.http) as http:
        assert (await http.get("/healthz")).status_code == 200
        await wait_ready(live.http, timeout_s=60)
        assert live.runtime.engines is not None
        assert "vad" in live.runtime.engines.schedulers


async def test_engine_failure_is_reported_not_hidden(tmp_path: Path) -> None:
    """Engines that cannot load leave /readyz at 503 with the reason; sessions get told."""
    broken = tmp_path / "models.toml"
    broken.write_text("[models.mine]\npath = 'nowhere.onnx'\n")  # a model file that is not there
    settings = make_settings(tmp_path, engines=("vad",), models_file=broken)
    async with run_server(settings) as live, httpx.AsyncClient(base_url=live.http) as http:
        async with asyncio.timeout(scaled(30)):
            while live.runtime.startup_error is None:
                await asyncio.sleep(0.05)
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "failed"
        assert ready.json()["error"].startswith("engines failed to start")
        assert (await http.get("/healthz")).status_code == 200
        async with await live.client() as client:
            with pytest.raises(RefusedError) as caught:
                await client.create_session({"mode": "transcribe"})
            assert caught.value.server_code == "unsupported"
            assert (await client.create_session({"mode": "loopback"})).session_id
