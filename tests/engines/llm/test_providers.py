"""The LLM engine on OpenAI-compatible providers, against real llama.cpp servers (two servers =
two providers): streaming, failover before the first token and in the middle of a reply, the
first-token timeout, a bad key, circuit breakers, tool calls."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.llama import WEATHER, Servers
from tidegate.bench.llama_server import LlamaServer
from tidegate.engines.errors import OverloadedError, RequestError
from tidegate.engines.llm import SamplingParams
from tidegate.engines.llm.providers import (
    FINISH_TOOL_CALLS,
    ProviderGeneration,
    ProviderPool,
    ProvidersSettings,
    ProviderUnavailableError,
)
from tidegate.engines.llm.tools import ToolCallDelta, ToolCallError
from tidegate.engines.runtime.openai import FIRST_TOKEN_TIMEOUT, ProviderConfig, ProviderError

SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."}
ASK = [SYSTEM, {"role": "user", "content": "What is the capital of France?"}]
LONG = [{"role": "user", "content": "Write a long story about a cat who travels the world."}]


def config(server: LlamaServer, **kw: Any) -> ProviderConfig:
    return ProviderConfig(name=server.name, base_url=server.url, model="smollm2", **kw)


async def started(*configs: ProviderConfig, **kw: Any) -> ProviderPool:
    pool = ProviderPool(ProvidersSettings(configs, **kw))
    await pool.start()
    return pool


async def test_a_reply_streams_from_the_first_provider(llama_servers: Servers) -> None:
    """A reply streams text deltas from the first provider, with its usage counted."""
    a, b = llama_servers(2)
    pool = await started(config(a), config(b))
    try:
        gen = pool.generate(ASK, SamplingParams(max_tokens=24))
        deltas = [d async for d in gen]
        assert len(deltas) > 1 and "".join(deltas) == gen.output
        assert "Paris" in gen.output
        assert gen.provider == "a" and gen.failovers == 0
        assert gen.finish_reason in ("stop", "length")
        assert gen.prompt_tokens > 5 and gen.completion_tokens > 1
        assert pool.stats()["providers"]["b"]["requests"] == 0
    finally:
        await pool.close()


async def test_primary_killed_before_the_request_fails_over(llama_servers: Servers) -> None:
    """With the primary dead (connection refused), the reply comes from the next provider."""
    a, b = llama_servers(2)
    pool = await started(config(a), config(b))
    try:
        a.kill()
        gen = pool.generate(ASK, SamplingParams(max_tokens=16))
        text = await gen.text()
        assert text and gen.provider == "b" and gen.failovers == 1
        stats = pool.stats()
        assert stats["providers"]["a"]["failures"] == 1
        assert stats["providers"]["a"]["failovers_from"] == 1
        assert stats["failover_ms"]["count"] == 1 and stats["switch_ms"]["count"] == 1
        assert gen.failover_first_token_s is not None and gen.failover_first_token_s > 0
    finally:
        await pool.close()


async def test_primary_killed_mid_stream_continues_on_the_next(llama_servers: Servers) -> None:
    """Killed in the middle of a reply, the primary's text so far is kept and the next provider
    continues it: the client's stream has no gap and no repeat of the prefix."""
    a, b = llama_servers(2)
    pool = await started(config(a), config(b))
    try:
        gen = pool.generate(LONG, SamplingParams(max_tokens=120))
        seen = ""
        async for delta in gen:
            seen += delta
            if len(seen) >= 20 and a.proc is not None:
                prefix = seen
                a.kill()
        assert gen.provider == "b" and gen.failovers == 1
        assert gen.output == seen and seen.startswith(prefix) and len(seen) > len(prefix)
        assert not seen[len(prefix) :].lstrip().startswith(prefix[:12])  # continued, not anew
        stats = pool.stats()["providers"]["a"]
        assert stats["failovers_from"] == 1 and stats["failovers_midstream"] == 1
    finally:
        await pool.close()


async def test_slow_first_token_fails_over(llama_servers: Servers) -> None:
    """A primary that accepts the request and never answers (frozen with SIGSTOP) is left after
    the first-token timeout; the next provider answers."""
    a, b = llama_servers(2)
    pool = await started(config(a, first_token_timeout_s=1.0), config(b))
    try:
        a.pause()
        gen = pool.generate(ASK, SamplingParams(max_tokens=12))
        assert await gen.text()
        assert gen.provider == "b"
        last = pool.stats()["providers"]["a"]["last_error"]
        assert "no first token within 1 s" in last
    finally:
        a.resume()
        await pool.close()


async def test_bad_key_fails_fast_without_failover(
    llama_servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 401 (wrong API key) fails the request at once with the provider's message and no
    retry on another provider; repeated, it opens the breaker, and requests then skip it."""
    (a,) = llama_servers(1, api_key="right-key")
    (b,) = llama_servers(1)
    monkeypatch.setenv("TEST_PROVIDER_KEY", "wrong-key")
    pool = await started(config(a, api_key_env="TEST_PROVIDER_KEY"), config(b), breaker_failures=2)
    try:
        for _ in range(2):
            gen = pool.generate(ASK, SamplingParams(max_tokens=8))
            with pytest.raises(ProviderError) as err:
                await gen.text()
            assert err.value.status == 401 and not err.value.retryable
            assert "wrong-key" not in str(err.value)
        stats = pool.stats()["providers"]
        assert stats["b"]["requests"] == 0 and stats["a"]["refusals"] == 2
        assert stats["a"]["state"] == "open"
        gen = pool.generate(ASK, SamplingParams(max_tokens=8))  # a is skipped now
        assert await gen.text() and gen.provider == "b"
    finally:
        await pool.close()


async def test_right_key_is_sent(llama_servers: Servers, tmp_path: Any) -> None:
    """The key read from a file reaches the provider (which refuses requests without it)."""
    (a,) = llama_servers(1, api_key="file-key")
    key = tmp_path / "key"
    key.write_text("file-key\n")
    pool = await started(config(a, api_key_file=key))
    try:
        assert await pool.generate(ASK, SamplingParams(max_tokens=4)).text()
        assert "file-key" not in json.dumps(pool.stats())
    finally:
        await pool.close()


async def test_breaker_opens_and_a_probe_closes_it(llama_servers: Servers) -> None:
    """A dead primary's breaker opens after N failures (requests skip it at once), and once
    open_s has passed one request probes it: back up, the probe succeeds and closes it."""
    a, b = llama_servers(2)
    pool = await started(config(a), config(b), breaker_failures=2, breaker_open_s=1.0)
    try:
        a.kill()
        for _ in range(3):
            assert await pool.generate(ASK, SamplingParams(max_tokens=4)).text()
        st = pool.stats()["providers"]["a"]
        assert st["state"] == "open" and st["requests"] == 2 and st["skipped_open"] == 1
        a.start()
        await asyncio.sleep(1.1)
        assert pool.stats()["providers"]["a"]["state"] == "half_open"
        gen = pool.generate(ASK, SamplingParams(max_tokens=4))
        assert await gen.text() and gen.provider == "a"
        assert pool.stats()["providers"]["a"]["state"] == "closed"
    finally:
        await pool.close()


async def test_every_provider_down_is_refused_with_a_retry_hint(llama_servers: Servers) -> None:
    """With every provider failing the reply fails naming each; once every breaker is open a
    new request is refused at once (overloaded) with a retry hint."""
    a, b = llama_servers(2)
    pool = await started(config(a), config(b), breaker_failures=1, breaker_open_s=30.0)
    try:
        a.kill()
        b.kill()
        gen = pool.generate(ASK, SamplingParams(max_tokens=4))
        with pytest.raises(ProviderUnavailableError) as err:
            await gen.text()
        assert "'a'" in str(err.value) and "'b'" in str(err.value)
        with pytest.raises(OverloadedError) as refused:
            pool.generate(ASK, SamplingParams(max_tokens=4))
        assert refused.value.retry_after_s > 1.0
    finally:
        await pool.close()


async def test_cancel_closes_the_stream(llama_servers: Servers) -> None:
    """Cancelling a reply stops it at once and frees the provider's slot."""
    (a,) = llama_servers(1)
    pool = await started(config(a))
    try:
        gen = pool.generate(LONG, SamplingParams(max_tokens=200))
        async for _ in gen:
            gen.cancel()
        assert gen.finish_reason == "cancelled"
        await asyncio.sleep(0)
        assert pool.providers[0].in_flight == 0
        assert pool.stats()["cancelled"] == 1
    finally:
        await pool.close()


async def test_token_ids_are_refused(llama_servers: Servers) -> None:
    """Providers take chat messages; a raw token-id prompt is refused."""
    (a,) = llama_servers(1)
    pool = await started(config(a))
    try:
        with pytest.raises(RequestError):
            pool.generate(prompt=[1, 2, 3])
    finally:
        await pool.close()


NAMED = {"type": "function", "function": {"name": "get_weather"}}


async def tool_reply(pool: ProviderPool, **kw: Any) -> tuple[ProviderGeneration, list[Any]]:
    gen = pool.generate(
        [{"role": "user", "content": "What is the weather in Paris?"}],
        SamplingParams(max_tokens=kw.pop("max_tokens", 48)),
        tools=[WEATHER],
        tool_choice=NAMED,
    )
    return gen, [item async for item in gen.events()]


async def test_a_tool_call_streams_and_ends_as_valid_json(tool_server: LlamaServer) -> None:
    """Asked with a tool (tool_choice naming it), the model's call streams as pieces and ends
    as one call whose arguments are a JSON object; finish_reason is tool_calls."""
    pool = await started(config(tool_server))
    try:
        gen, items = await tool_reply(pool)
        pieces = [i for i in items if isinstance(i, ToolCallDelta)]
        assert pieces and gen.finish_reason == FINISH_TOOL_CALLS
        (call,) = gen.tool_calls
        assert call.name == "get_weather" and call.call_id == pieces[0].call_id
        assert "".join(p.arguments for p in pieces).strip() == call.arguments.strip()
        assert isinstance(json.loads(call.arguments), dict)
    finally:
        await pool.close()


async def test_a_cut_off_tool_call_fails_with_a_clear_reason(tool_server: LlamaServer) -> None:
    """A call whose arguments the model did not finish (max_tokens reached inside them) is not
    valid JSON: the reply fails saying so, and the provider is not blamed."""
    pool = await started(config(tool_server))
    try:
        with pytest.raises(ToolCallError, match="not valid JSON"):
            await tool_reply(pool, max_tokens=3)
        assert pool.stats()["providers"]["tools"]["state"] == "closed"
    finally:
        await pool.close()


def test_first_token_timeout_kind_is_retryable() -> None:
    """A first-token timeout is a provider failure worth another provider."""
    assert ProviderError("a", FIRST_TOKEN_TIMEOUT, "slow").retryable


async def test_a_full_provider_is_skipped_and_all_full_is_refused(llama_servers: Servers) -> None:
    """With max_requests in flight a provider is skipped (the next one serves); with every
    provider full a new request is refused at once (overloaded, with a retry hint)."""
    a, b = llama_servers(2)
    pool = await started(config(a, max_requests=1), config(b, max_requests=1))
    try:
        first = pool.generate(LONG, SamplingParams(max_tokens=200))
        second = pool.generate(LONG, SamplingParams(max_tokens=200))
        async for _ in second:  # both are running now
            break
        with pytest.raises(OverloadedError) as refused:
            pool.generate(ASK, SamplingParams(max_tokens=4))
        assert refused.value.retry_after_s >= 0.25
        assert pool.queue_load().depth == 2 and pool.queue_load().max_items == 2
        first.cancel()
        second.cancel()
        assert second.provider == "b"
        assert pool.stats()["providers"]["a"]["skipped_full"] == 1
    finally:
        await pool.close()


def failover_body(text: str) -> dict[str, Any]:
    """What a mid-stream failover sends the next provider after ``text`` was streamed."""
    return {
        "model": "smollm2",
        "messages": [*LONG, {"role": "assistant", "content": text}],
        "continue_final_message": True,
        "add_generation_prompt": False,
        "max_tokens": 1,
    }


async def cached_tokens(server: LlamaServer, body: dict[str, Any]) -> int:
    """Prompt tokens llama-server took from its cache for ``body`` (its own ``timings``)."""
    async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
        reply = (await http.post(server.url + "/v1/chat/completions", json=body)).json()
    return int(reply["timings"]["cache_n"])


async def test_a_standby_is_kept_warm_with_the_reply_so_far(llama_servers: Servers) -> None:
    """With standby_every_tokens, the next provider is sent the prompt and then the text streamed
    so far while the reply streams from the first (not counted as its requests): what a
    mid-stream failover would send it is then in its prompt cache."""
    a, b = llama_servers(2)
    pool = await started(config(a), config(b, standby_every_tokens=4))
    try:
        gen = pool.generate(LONG, SamplingParams(temperature=0.0, max_tokens=120))
        await gen.text()
        while pool.providers[1].warming:  # each is one prefill and one token
            await asyncio.sleep(0.01)
        stats = pool.stats()["providers"]["b"]
        assert stats["standby_warms"] >= 2 and stats["standby_warm_failures"] == 0
        assert stats["requests"] == 0 and gen.provider == "a"
        assert pool.readiness()["b"]["standby_warms"] == stats["standby_warms"]
        assert await cached_tokens(b, failover_body(gen.output)) > gen.prompt_tokens
    finally:
        await pool.close()


async def test_no_standby_is_warmed_by_default(llama_servers: Servers) -> None:
    """Without standby_every_tokens the next provider hears nothing while the first answers:
    a failover to it would find an empty cache."""
    a, b = llama_servers(2)
    pool = await started(config(a), config(b))
    try:
        gen = pool.generate(LONG, SamplingParams(temperature=0.0, max_tokens=24))
        await gen.text()
        stats = pool.stats()["providers"]["b"]
        assert stats["standby_warms"] == 0 and stats["requests"] == 0
        assert await cached_tokens(b, failover_body(gen.output)) == 0
    finally:
        await pool.close()


async def test_a_failed_warming_changes_nothing(llama_servers: Servers) -> None:
    """A standby that is down fails its warming requests: the reply still streams from the
    first provider, and the standby's breaker does not count them."""
    a, b = llama_servers(2)
    pool = await started(config(a), config(b, standby_every_tokens=2), breaker_failures=1)
    try:
        b.kill()
        gen = pool.generate(LONG, SamplingParams(max_tokens=24))
        assert await gen.text() and gen.provider == "a" and gen.failovers == 0
        while pool.providers[1].warming:
            await asyncio.sleep(0.01)
        stats = pool.stats()["providers"]["b"]
        assert stats["standby_warm_failures"] >= 1 and stats["standby_warms"] == 0
        assert stats["state"] == "closed" and stats["consecutive_failures"] == 0
    finally:
        await pool.close()
