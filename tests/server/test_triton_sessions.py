"""Transcribe sessions whose VAD runs on a real Triton server (pytriton's, on 127.0.0.1) and
whose ASR runs locally (a runtime per engine): finals arrive as with the local runtime; when
Triton stops, the running session keeps going (its frames count as silence, the session stays
open) and new sessions are refused with ``overloaded`` naming the Triton server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support import wait_ready
from tidegate.engines.registry import VAD
from tidegate.protocol.client import RefusedError
from tidegate.protocol.messages import AsrFinal

from ..engines.asr_audio import read_wav
from ..engines.triton_server import TritonServer
from .conftest import LiveServer, make_settings, run_server
from .test_transcribe import prepared, stream  # noqa: F401  (a fixture and a helper)

pytestmark = pytest.mark.asyncio(loop_scope="module")

ASSETS = Path(__file__).resolve().parents[2] / ".cache" / "assets"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vad_triton(
    tmp_path_factory: pytest.TempPathFactory,
    prepared: Path,  # noqa: F811
) -> AsyncIterator[TritonServer]:
    """A Triton server of its own (this module stops it) serving Silero VAD."""
    server = TritonServer(
        tmp_path_factory.mktemp("vad-triton"),
        ["--model", str(prepared / "models" / "silero-vad" / "silero_vad.onnx")],
    )
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(
    tmp_path_factory: pytest.TempPathFactory,
    prepared: Path,  # noqa: F811
    vad_triton: TritonServer,
) -> AsyncIterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("triton-sessions")
    (tmp / "models").symlink_to(prepared / "models")
    settings = make_settings(
        tmp,
        engines=("vad", "asr"),
        vad_runtime="triton",
        triton_url=vad_triton.url,
        triton_policy="refuse",
        triton_retry_s=120.0,
    )
    async with run_server(settings) as server:
        await wait_ready(server.http, timeout_s=90)
        yield server


async def test_transcribe_through_triton_then_triton_stops(
    live: LiveServer, vad_triton: TritonServer
) -> None:
    """A session's speech is transcribed with its VAD on Triton; after Triton stops, a running
    session survives to its end and a new one is refused (overloaded, with a retry hint)."""
    audio = read_wav(ASSETS / "beckett.wav", seconds=4.0)
    events = await stream(live, audio)
    finals = " ".join(e.text for e, _ in events if isinstance(e, AsrFinal)).lower()
    assert "tried" in finals, finals
    assert live.runtime.engines is not None
    assert live.runtime.engines.get(VAD).engine.provider == "triton"  # type: ignore[attr-defined]

    await asyncio.to_thread(vad_triton.stop)
    events = await stream(live, audio)  # runs to its end and closes its session cleanly
    assert not any(isinstance(e, AsrFinal) for e, _ in events)  # no speech heard
    assert live.runtime.engines.get(VAD).stats()["failed"] > 0
    async with await live.client() as client:
        with pytest.raises(RefusedError) as refused:
            await client.create_session({"mode": "transcribe"})
    assert refused.value.server_code == "overloaded"
    assert "Triton server" in str(refused.value) and refused.value.retry_after_ms
