"""Admission control against real engines: while the LLM's queue is saturated (a tiny queue
and a flood of real chat completions), new assistant sessions are refused with ``overloaded``
and a retry hint; sessions that do not need the LLM are admitted; sessions already running
keep working, and new ones are admitted again once the queue drains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from tests.server.conftest import LiveServer, make_settings, run_server
from tests.server.test_metrics import documented, samples
from tests.support import prepare_models, scaled, wait_ready
from tidegate.protocol.client import RefusedError
from tidegate.protocol.messages import InputText, ResponseDone

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
MODELS = ("silero-vad", "whisper-tiny-en", "smollm2-135m", "piper-joe")


@pytest.fixture(scope="module")
def prepared() -> Path:
    """The data folder with the four engines' models prepared (by make setup, or here)."""
    return prepare_models(*MODELS)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(
    tmp_path_factory: pytest.TempPathFactory, prepared: Path
) -> AsyncIterator[LiveServer]:
    """A server whose LLM runs one generation at a time with two queue places; a new session
    is refused once one place is taken."""
    tmp = tmp_path_factory.mktemp("admission")
    (tmp / "models").symlink_to(prepared / "models")
    settings = make_settings(
        tmp,
        engines=("vad", "asr", "llm", "tts"),
        llm_max_batch_items=1,
        llm_max_queue_items=2,
        admission_queue_fraction=0.5,
        rate_requests_per_s=0.0,
    )
    async with run_server(settings) as server:
        await wait_ready(server.http, timeout_s=120)
        yield server


async def _complete(live: LiveServer, i: int) -> int:
    """One real chat completion (its own subject and prompt, sampled: nothing is shared)."""
    token = live.token(subject=f"flood{i}")
    async with httpx.AsyncClient(base_url=live.http, timeout=scaled(120)) as http:
        r = await http.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {token}"},
            json={
                "messages": [{"role": "user", "content": f"Count from {i} to {i + 200}."}],
                "max_tokens": 160,
                "temperature": 0.8,
                "seed": i,
            },
        )
        return r.status_code


async def test_saturated_llm_refuses_new_assistant_sessions(live: LiveServer) -> None:
    """A flood fills the LLM queue: session.create of an assistant is refused (overloaded, with
    retry_after_ms, naming the engine); a transcribe session is admitted; a session created
    before keeps working; after the flood, an assistant session is admitted again."""
    engines = live.runtime.engines
    assert engines is not None
    llm = engines.llm()
    async with await live.client(token=live.token(subject="early")) as early:
        await early.create_session({"mode": "assistant"})
        flood = [asyncio.ensure_future(_complete(live, i)) for i in range(3)]
        try:
            async with asyncio.timeout(scaled(30)):
                while llm.queue_load().depth < 1:
                    await asyncio.sleep(0.005)
            async with await live.client(token=live.token(subject="late")) as late:
                with pytest.raises(RefusedError) as caught:
                    await late.create_session({"mode": "assistant"})
                assert caught.value.server_code == "overloaded"
                assert "llm" in caught.value.error.message
                assert caught.value.retry_after_ms is not None
                assert caught.value.retry_after_ms > 0
                created = await late.create_session({"mode": "transcribe"})
                assert created.config["mode"] == "transcribe"
            assert live.runtime.admission.refused["llm"] >= 1
            admin = {"Authorization": f"Bearer {live.token(scopes=('session', 'admin'))}"}
            async with httpx.AsyncClient(base_url=live.http) as http:
                got = samples((await http.get("/metrics", headers=admin)).text)
            assert got[("tidegate_admission_refusals_total", (("engine", "llm"),))] >= 1
            assert got[("tidegate_engine_queue_depth", (("engine", "llm"),))] >= 1
        finally:
            statuses = await asyncio.gather(*flood)
        assert 200 in statuses
        await early.send(InputText(id="t1", text="Say hello."))
        done = await early.wait_for(ResponseDone, timeout_s=scaled(60))
        assert done.status == "completed" and done.text
        await early.close_session()
    async with await live.client(token=live.token(subject="later")) as later:
        created = await later.create_session({"mode": "assistant"})
        assert created.config["mode"] == "assistant"
        await later.close_session()


async def test_metrics_show_engines_and_event_stages(live: LiveServer) -> None:
    """After a spoken-to-text reply, /metrics has the LLM's requests, batch sizes and queue
    bound, admission refusals by engine, and the reply events' stage histograms."""
    async with await live.client(token=live.token(subject="m")) as client:
        await client.create_session({"mode": "assistant"})
        await client.send(InputText(id="t1", text="Say hello."))
        await client.wait_for(ResponseDone, timeout_s=scaled(60))
        await client.close_session()
    admin = {"Authorization": f"Bearer {live.token(scopes=('session', 'admin'))}"}
    async with httpx.AsyncClient(base_url=live.http) as http:
        text = (await http.get("/metrics", headers=admin)).text
    got = samples(text)
    llm = (("engine", "llm"),)
    assert got[("tidegate_engine_requests_total", (("engine", "llm"), ("outcome", "completed")))]
    assert got[("tidegate_engine_queue_capacity", llm)] == 2
    assert got[("tidegate_engine_batch_size_count", llm)] > 0
    assert got[("tidegate_engine_run_seconds_count", (("engine", "tts"),))] > 0
    assert got[("tidegate_engine_wait_seconds_count", (("engine", "tts"),))] > 0
    delta = (("dialect", "tidegate"), ("stage", "total"), ("type", "response.text.delta"))
    assert got[("tidegate_event_stage_seconds_count", delta)] > 0
    assert got[("tidegate_event_stage_seconds_sum", delta)] > 0
    assert got[("tidegate_sessions", (("mode", "assistant"),))] == 0
    documented(text)
