"""The OpenAI-compatible chat completions endpoint, driven by the official openai client
against a real server running the LLM engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support import prepare_models, scaled, wait_ready

from .conftest import LiveServer, make_settings, run_server

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".cache" / "data"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def prepared() -> Path:
    """The data folder with the LLM prepared (by make setup, or here on first use)."""
    return prepare_models("smollm2-135m")


@pytest.fixture
async def llm_server(tmp_path: Path, prepared: Path) -> AsyncIterator[LiveServer]:
    (tmp_path / "models").symlink_to(prepared / "models")
    settings = make_settings(tmp_path, engines=("llm",), llm_max_batch_items=4)
    async with run_server(settings) as live:
        await wait_ready(live.http, timeout_s=60)  # engines load after the server starts
        yield live


def _client(live: LiveServer, token: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{live.http}/v1", api_key=token or live.token(), max_retries=0, timeout=scaled(60)
    )


async def test_openai_client_streams_a_completion(llm_server: LiveServer) -> None:
    """client.chat.completions.create(stream=True) yields chunks whose text says Paris."""
    async with _client(llm_server) as client:
        stream = await client.chat.completions.create(
            model="smollm2-135m",
            messages=FRANCE,  # type: ignore[arg-type]
            stream=True,
            temperature=0,
            max_tokens=24,
            stream_options={"include_usage": True},
        )
        deltas, finish, usage = [], None, None
        async for chunk in stream:
            if chunk.choices:
                deltas.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
    text = "".join(deltas)
    assert "Paris" in text, text
    assert sum(1 for d in deltas if d) >= 3, "the reply did not stream"
    assert finish in ("stop", "length")
    assert usage is not None and usage.completion_tokens > 0


async def test_openai_client_non_streaming(llm_server: LiveServer) -> None:
    """A non-streaming completion answers with one message, usage and a finish reason; a
    stop sequence and max_tokens are honoured."""
    async with _client(llm_server) as client:
        reply = await client.chat.completions.create(
            model="smollm2-135m",
            messages=FRANCE,
            temperature=0,
            max_tokens=24,  # type: ignore[arg-type]
        )
        assert "Paris" in (reply.choices[0].message.content or "")
        assert reply.usage is not None and reply.usage.prompt_tokens > 10
        short = await client.chat.completions.create(
            model="smollm2-135m",
            messages=FRANCE,
            temperature=0,
            max_tokens=2,  # type: ignore[arg-type]
        )
        assert short.choices[0].finish_reason == "length"
        assert short.usage is not None and short.usage.completion_tokens == 2


async def test_openai_endpoint_needs_a_token_and_valid_input(llm_server: LiveServer) -> None:
    """No token: 401 (AuthenticationError); bad fields: 400 naming the field."""
    async with _client(llm_server, token="not-a-jwt") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="x", messages=FRANCE)  # type: ignore[arg-type]
    async with _client(llm_server) as client:
        with pytest.raises(openai.BadRequestError, match="temperature"):
            await client.chat.completions.create(model="x", messages=FRANCE, temperature=5)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError, match="messages"):
            await client.chat.completions.create(model="x", messages=[])
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{llm_server.http}/v1/chat/completions",
            content=b"{not json",
            headers={"authorization": f"Bearer {llm_server.token()}"},
        )
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


async def test_openai_endpoint_without_llm_is_unavailable(tmp_path: Path) -> None:
    """A server that runs no LLM answers 503, not a traceback."""
    async with run_server(make_settings(tmp_path)) as live, _client(live) as client:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="x", messages=FRANCE)  # type: ignore[arg-type]
