"""The OpenAI-compatible gateway on providers (``llm_runtime=providers``): a real tidegate server in
front of two real llama.cpp servers, driven by the official openai client — tools pass through,
the model name routes, the primary's death is not seen, and no API key leaks into the config,
the metrics or /readyz."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import (
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionNamedToolChoiceParam,
)
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall

from tests.llama import WEATHER, Servers
from tests.support import scaled, wait_ready
from tidegate.bench.llama_server import LlamaServer

from .conftest import LiveServer, make_settings, run_server

FRANCE: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]
SECRET = "sk-test-3f9a1c77"


@pytest.fixture
async def gateway(
    llama_servers: Servers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[LiveServer, LlamaServer, LlamaServer]]:
    """tidegate (engines=llm on providers a, b; a's key from a variable) and its providers."""
    a, b = llama_servers(2)
    monkeypatch.setenv("PROVIDER_A_KEY", SECRET)
    settings = make_settings(
        tmp_path,
        engines=("llm",),
        llm_runtime="providers",
        llm_providers=(f"a={a.url}/v1", f"b={b.url}"),
        llm_provider_options=("a.model=smollm2", "b.model=smollm2", "a.api_key_env=PROVIDER_A_KEY"),
        rate_requests_per_s=0.0,
    )
    async with run_server(settings) as live:
        await wait_ready(live.http, timeout_s=60)
        yield live, a, b


@pytest.fixture
async def tool_gateway(tool_server: LlamaServer, tmp_path: Path) -> AsyncIterator[LiveServer]:
    """tidegate (engines=llm) on one provider that can call tools (tests/llama.py)."""
    settings = make_settings(
        tmp_path,
        engines=("llm",),
        llm_runtime="providers",
        llm_providers=(f"tools={tool_server.url}",),
        rate_requests_per_s=0.0,
    )
    async with run_server(settings) as live:
        await wait_ready(live.http, timeout_s=60)
        yield live


NAMED: ChatCompletionNamedToolChoiceParam = {
    "type": "function",
    "function": {"name": "get_weather"},
}


def _client(live: LiveServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{live.http}/v1", api_key=live.token(), max_retries=0, timeout=scaled(60)
    )


async def test_openai_client_gets_a_tool_call(tool_gateway: LiveServer) -> None:
    """tools and tool_choice pass through: the official client gets a tool call whose
    arguments are a JSON object, then answers it with a tool message and gets text."""
    live = tool_gateway
    ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    async with _client(live) as client:
        first = await client.chat.completions.create(
            model="smollm2",
            messages=ask,
            tools=[WEATHER],
            tool_choice=NAMED,
            max_tokens=64,
            temperature=0,
        )
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        assert isinstance(call, ChatCompletionMessageFunctionToolCall)
        assert call.function.name == "get_weather"
        assert isinstance(json.loads(call.function.arguments), dict)
        follow = [
            *ask,
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny", "c": 21}'},
        ]
        second = await client.chat.completions.create(
            model="smollm2",
            messages=follow,
            tools=[WEATHER],
            max_tokens=32,
            temperature=0,
        )
    assert second.choices[0].message.content


async def test_tool_call_streams_as_deltas(tool_gateway: LiveServer) -> None:
    """Streamed, a tool call comes as tool_calls deltas (id and name first, then argument
    pieces) and the stream ends with finish_reason tool_calls."""
    live = tool_gateway
    async with _client(live) as client:
        stream = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
            tools=[WEATHER],
            tool_choice=NAMED,
            max_tokens=64,
            stream=True,
        )
        pieces: list[ChoiceDeltaToolCall] = []
        finish = None
        async for chunk in stream:
            if chunk.choices:
                pieces += chunk.choices[0].delta.tool_calls or []
                finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and pieces
    assert pieces[0].id and pieces[0].function and pieces[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert isinstance(json.loads(arguments), dict)


async def test_the_primary_dying_is_not_seen(
    gateway: tuple[LiveServer, LlamaServer, LlamaServer],
) -> None:
    """With the primary killed, streamed and plain completions still answer (from b)."""
    live, a, _ = gateway
    a.kill()
    async with _client(live) as client:
        stream = await client.chat.completions.create(
            model="smollm2",
            messages=FRANCE,
            stream=True,
            max_tokens=16,
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        plain = await client.chat.completions.create(
            model="smollm2",
            messages=FRANCE,
            max_tokens=8,
        )
    assert text and plain.choices[0].message.content
    assert live.runtime.engines is not None
    pool = live.runtime.engines.batchers["llm"]
    assert pool.stats()["providers"]["b"]["completed"] == 2


async def test_the_model_name_routes_to_its_provider(
    gateway: tuple[LiveServer, LlamaServer, LlamaServer],
) -> None:
    """model "b" (a provider's name) goes to that provider only."""
    live, _, _ = gateway
    async with _client(live) as client:
        await client.chat.completions.create(model="b", messages=FRANCE, max_tokens=4)
    assert live.runtime.engines is not None
    stats = live.runtime.engines.batchers["llm"].stats()["providers"]
    assert stats["b"]["requests"] == 1 and stats["a"]["requests"] == 0


async def test_every_provider_down_is_a_503_with_retry_after(
    gateway: tuple[LiveServer, LlamaServer, LlamaServer],
) -> None:
    """With both providers dead, a streamed request gets HTTP 503 and Retry-After, not a 200
    stream with an error inside."""
    live, a, b = gateway
    a.kill()
    b.kill()
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{live.http}/v1/chat/completions",
            json={"model": "smollm2", "messages": FRANCE, "stream": True},
            headers={"Authorization": f"Bearer {live.token()}"},
        )
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert "no provider could answer" in r.json()["error"]["message"]


async def test_the_api_key_never_shows(
    gateway: tuple[LiveServer, LlamaServer, LlamaServer],
) -> None:
    """The API key (read from its variable; that it reaches the provider is
    tests/engines/llm/test_providers.py::test_right_key_is_sent) appears in no config listing,
    metric, readiness or stats output: those name the variable at most."""
    live, _, _ = gateway
    async with _client(live) as client:
        await client.chat.completions.create(model="a", messages=FRANCE, max_tokens=2)
    admin = live.token(scopes=("admin",))
    async with httpx.AsyncClient(base_url=live.http) as http:
        metrics = (await http.get("/metrics", headers={"Authorization": f"Bearer {admin}"})).text
        ready = (await http.get("/readyz")).text
    assert 'tidegate_llm_provider_state{provider="a",state="closed"} 1.0' in metrics
    # no standby configured: no warming request was sent
    assert (
        'tidegate_llm_provider_standby_warms_total{outcome="answered",provider="b"} 0.0' in metrics
    )
    assert '"llm_providers"' in ready
    listing = json.dumps(live.settings.describe())
    assert live.runtime.engines is not None
    stats = json.dumps(live.runtime.engines.stats())
    for text in (metrics, ready, listing, stats, repr(live.settings)):
        assert SECRET not in text
    assert "PROVIDER_A_KEY" in repr(live.settings)
