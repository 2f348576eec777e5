"""The openai runtime's client and the provider failover on faults a real server cannot be made
to produce on demand, and the settings of the providers.

TEST DOUBLE: :class:`ScriptedProvider` is a raw HTTP/1.1 server on a loopback port that answers
every request with bytes a test scripts — a 500 or a 429 status, garbage in the event stream,
a connection reset at a chosen byte, two tool calls in one reply. llama.cpp's server (the
real provider of tests/engines/llm/test_providers.py) never answers 500 or 429 to a chat
completion that it can serve, never writes a malformed event, and cannot be killed at an exact
byte of its reply; SmolLM2-135M, the only model the test servers have, cannot be made to emit
two calls at once. Everything a real server can do is tested against the real one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from tidegate.bench.llama_server import LlamaServer
from tidegate.engines.llm import SamplingParams
from tidegate.engines.llm.providers import ProviderPool, ProvidersSettings
from tidegate.engines.runtime.openai import (
    BROKEN,
    STATUS,
    STREAM_ERROR,
    OpenAiClient,
    ProviderConfig,
    ProviderError,
)
from tidegate.server.engines import provider_settings
from tidegate.server.errors import ConfigError
from tidegate.server.settings import Settings

ASK = [{"role": "user", "content": "What is the capital of France?"}]


def sse(*chunks: dict[str, Any] | str) -> bytes:
    out = b""
    for c in chunks:
        out += b"data: " + (c.encode() if isinstance(c, str) else orjson.dumps(c)) + b"\n\n"
    return out


def content(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def streaming(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + body


def status(code: int, message: str) -> bytes:
    body = orjson.dumps({"error": {"message": message, "type": "server_error"}})
    return (
        f"HTTP/1.1 {code} X\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


class ScriptedProvider:
    """TEST DOUBLE (see the module docstring): answers each request with ``reply`` and then,
    with ``reset``, aborts the connection (RST) instead of closing it."""

    def __init__(self, reply: bytes, *, reset: bool = False) -> None:
        self.reply = reply
        self.reset = reset
        self.requests: list[dict[str, Any]] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> ScriptedProvider:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        self.requests.append(orjson.loads(await reader.readexactly(length)))
        writer.write(self.reply)
        await writer.drain()
        if self.reset:
            writer.transport.abort()
            return
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def cfg(name: str, url: str, **kw: Any) -> ProviderConfig:
    return ProviderConfig(name=name, base_url=url, model="m", **kw)


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[OpenAiClient]:
    c = OpenAiClient(cfg("x", url))
    await c.start()
    try:
        yield c
    finally:
        await c.close()


async def drain(c: OpenAiClient) -> list[dict[str, Any]]:
    return [chunk async for chunk in c.stream_chat({"model": "m", "messages": ASK})]


async def test_a_stream_yields_its_chunks_until_done() -> None:
    """Event lines become JSON chunks (comments and event names skipped) until [DONE]."""
    body = b": keep-alive\n\nevent: message\n" + sse(content("Pa"), content("ris"), "[DONE]")
    async with ScriptedProvider(streaming(body)) as fake, client(fake.url) as c:
        chunks = await drain(c)
    assert [ch["choices"][0]["delta"]["content"] for ch in chunks] == ["Pa", "ris"]


@pytest.mark.parametrize("code", [500, 503, 429])
async def test_5xx_and_429_are_retryable(code: int) -> None:
    """500, 503 and 429 are provider failures worth another provider, with its message."""
    async with ScriptedProvider(status(code, "busy")) as fake, client(fake.url) as c:
        with pytest.raises(ProviderError) as err:
            await drain(c)
    assert err.value.kind == STATUS and err.value.status == code
    assert err.value.retryable and "busy" in str(err.value)


@pytest.mark.parametrize(
    ("body", "kind", "words"),
    [
        (b"<html>not an event stream</html>\n", BROKEN, "not a server-sent event"),
        (sse(content("Pa")) + b"data: {not json\n\n", BROKEN, "not JSON"),
        (sse(content("Pa")), BROKEN, "without [DONE]"),
        (sse({"error": {"message": "slot failed"}}), STREAM_ERROR, "slot failed"),
    ],
)
async def test_a_broken_stream_is_a_provider_failure(body: bytes, kind: str, words: str) -> None:
    """Garbage, a malformed event, a stream cut before [DONE], an error event: each names what
    was wrong."""
    async with ScriptedProvider(streaming(body)) as fake, client(fake.url) as c:
        with pytest.raises(ProviderError) as err:
            await drain(c)
    assert err.value.kind == kind and words in str(err.value) and err.value.retryable


async def test_a_reset_at_a_chosen_byte_is_a_broken_connection() -> None:
    """A connection reset in the middle of an event is a broken connection."""
    reply = streaming(sse(content("Pa")) + b'data: {"choi')
    async with ScriptedProvider(reply, reset=True) as fake, client(fake.url) as c:
        with pytest.raises(ProviderError) as err:
            await drain(c)
    assert err.value.kind == BROKEN


Servers = Callable[..., list[LlamaServer]]


@pytest.mark.parametrize(
    "reply",
    [
        status(500, "internal"),
        status(429, "slow down"),
        streaming(b"garbage\n"),
    ],
    ids=["500", "429", "garbage"],
)
async def test_a_failing_primary_fails_over_to_a_real_server(
    llama_servers: Servers, reply: bytes
) -> None:
    """A primary answering 500, 429 or garbage moves the request to the next provider (a real
    llama.cpp server), which answers."""
    (real,) = llama_servers(1)
    async with ScriptedProvider(reply) as fake:
        pool = ProviderPool(
            ProvidersSettings(
                (cfg("fake", fake.url), ProviderConfig(name="real", base_url=real.url, model="m"))
            )
        )
        await pool.start()
        try:
            gen = pool.generate(ASK, SamplingParams(max_tokens=8))
            assert await gen.text() and gen.provider == "real" and gen.failovers == 1
            assert len(fake.requests) == 1 and fake.requests[0]["stream"] is True
        finally:
            await pool.close()


async def test_a_reset_mid_stream_continues_on_a_real_server(llama_servers: Servers) -> None:
    """Reset after "The capital of France is" was streamed, the reply goes on at a real server,
    which is given that text as the assistant message to continue."""
    (real,) = llama_servers(1)
    reply = streaming(sse(content("The capital"), content(" of France is")) + b"data: {")
    async with ScriptedProvider(reply, reset=True) as fake:
        pool = ProviderPool(
            ProvidersSettings(
                (cfg("fake", fake.url), ProviderConfig(name="real", base_url=real.url, model="m"))
            )
        )
        await pool.start()
        try:
            gen = pool.generate(ASK, SamplingParams(temperature=0.0, max_tokens=12))
            text = await gen.text()
            assert text.startswith("The capital of France is") and len(text) > 24
            assert gen.provider == "real"
        finally:
            await pool.close()


def test_provider_settings_parse_in_order_with_options() -> None:
    """llm_providers keeps its order; llm_provider_options set each provider's fields; the
    API key is only ever a reference (a variable's name or a file)."""
    s = Settings.load(
        {},
        llm_runtime="providers",
        llm_providers="a=http://127.0.0.1:1/v1,b=http://127.0.0.1:2",
        llm_provider_options="a.model=smol,a.api_key_env=A_KEY,b.max_requests=3,"
        "b.first_token_timeout_s=0.5,b.standby_every_tokens=16",
    )
    ps = provider_settings(s)
    assert ps is not None
    a, b = ps.providers
    assert (a.name, a.model, a.api_key_env, a.root) == ("a", "smol", "A_KEY", "http://127.0.0.1:1")
    assert (b.name, b.model, b.max_requests, b.first_token_timeout_s) == ("b", "b", 3, 0.5)
    assert (a.standby_every_tokens, b.standby_every_tokens) == (0, 16)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"TIDEGATE_LLM_RUNTIME": "providers"}, "needs llm_providers"),
        ({"TIDEGATE_LLM_PROVIDERS": "a=http://x"}, "llm_runtime is not providers"),
        (
            {"TIDEGATE_LLM_RUNTIME": "providers", "TIDEGATE_LLM_PROVIDERS": "a"},
            "not NAME=BASE_URL",
        ),
        (
            {
                "TIDEGATE_LLM_RUNTIME": "providers",
                "TIDEGATE_LLM_PROVIDERS": "a=http://x",
                "TIDEGATE_LLM_PROVIDER_OPTIONS": "a.api_key=secret",
            },
            "unknown option 'api_key'",
        ),
        (
            {"TIDEGATE_LLM_RUNTIME": "providers", "TIDEGATE_LLM_PROVIDERS": "a=ftp://x"},
            "must start with http",
        ),
        (
            {
                "TIDEGATE_LLM_RUNTIME": "providers",
                "TIDEGATE_LLM_PROVIDERS": "a=http://x",
                "TIDEGATE_LLM_PROVIDER_STANDBY_EVERY_TOKENS": "-1",
            },
            "llm_provider_standby_every_tokens must be at least 0",
        ),
        (
            {
                "TIDEGATE_LLM_RUNTIME": "providers",
                "TIDEGATE_LLM_PROVIDERS": "a=http://x",
                "TIDEGATE_LLM_PROVIDER_OPTIONS": "a.standby_every_tokens=-2",
            },
            "standby_every_tokens must be 0 or more",
        ),
    ],
)
def test_bad_provider_settings_are_refused(env: dict[str, str], words: str) -> None:
    """A bad provider setting is refused naming what is wrong."""
    with pytest.raises(ConfigError, match=words):
        Settings.load(env)


def call_piece(index: int, **fn: str) -> dict[str, Any]:
    piece: dict[str, Any] = {"index": index, "function": fn}
    if "name" in fn:
        piece.update(id=f"call_{index}", type="function")
    return {"choices": [{"index": 0, "delta": {"tool_calls": [piece]}, "finish_reason": None}]}


async def test_several_calls_in_one_reply_are_kept_apart() -> None:
    """Two calls streamed interleaved (by index) end as two whole calls, in order. (A test
    double: the real servers here run SmolLM2-135M, which cannot be made to emit two calls.)"""
    body = sse(
        call_piece(0, name="get_weather", arguments=""),
        call_piece(1, name="get_time", arguments='{"zone":'),
        call_piece(0, arguments='{"city": "Paris"}'),
        call_piece(1, arguments=' "CET"}'),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        "[DONE]",
    )
    tools = [
        {"type": "function", "function": {"name": "get_weather"}},
        {"type": "function", "function": {"name": "get_time"}},
    ]
    async with ScriptedProvider(streaming(body)) as fake:
        pool = ProviderPool(ProvidersSettings((cfg("fake", fake.url),)))
        await pool.start()
        try:
            gen = pool.generate(ASK, SamplingParams(max_tokens=32), tools=tools)
            items = [i async for i in gen.events()]
        finally:
            await pool.close()
    assert len(items) == 4 and gen.finish_reason == "tool_calls"
    assert [(c.call_id, c.name, c.arguments) for c in gen.tool_calls] == [
        ("call_0", "get_weather", '{"city": "Paris"}'),
        ("call_1", "get_time", '{"zone": "CET"}'),
    ]
    assert fake.requests[0]["tools"] == tools and "tool_choice" not in fake.requests[0]


async def test_a_break_during_a_tool_call_fails_the_reply(llama_servers: Servers) -> None:
    """A connection reset while a tool call streams fails the reply saying so: half a call
    cannot be continued elsewhere (the next provider, a real server, is not asked)."""
    (real,) = llama_servers(1)
    reply = streaming(sse(call_piece(0, name="get_weather", arguments='{"city": "Pa')))
    async with ScriptedProvider(reply + b"data: {", reset=True) as fake:
        pool = ProviderPool(
            ProvidersSettings(
                (cfg("fake", fake.url), ProviderConfig(name="real", base_url=real.url, model="m"))
            )
        )
        await pool.start()
        try:
            gen = pool.generate(
                ASK,
                SamplingParams(max_tokens=16),
                tools=[{"type": "function", "function": {"name": "get_weather"}}],
            )
            with pytest.raises(ProviderError, match="during a tool call"):
                await gen.text()
            assert pool.stats()["providers"]["real"]["requests"] == 0
        finally:
            await pool.close()
