"""The OpenAI-compatible chat completions endpoint, driven by the official openai client
against a real server running the LLM engine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support import prepare_models, scaled, wait_ready
from tidegate.engines.llm import LlmBatcher

from .conftest import LiveServer, make_settings, run_server

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".cache" / "data"
FRANCE: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]


@pytest.fixture(scope="module")
def prepared() -> Path:
    """The data folder with the LLM prepared (by make setup, or here on first use)."""
    return prepare_models("smollm2-135m")


@contextlib.asynccontextmanager
async def serve_llm(tmp_path: Path, prepared: Path, **overrides: Any) -> AsyncIterator[LiveServer]:
    """A real server running the LLM engine (settings overridden by ``overrides``), ready."""
    (tmp_path / "models").symlink_to(prepared / "models")
    settings = make_settings(
        tmp_path, **{"engines": ("llm",), "llm_max_batch_items": 4, **overrides}
    )
    async with run_server(settings) as live:
        await wait_ready(live.http, timeout_s=60)  # engines load after the server starts
        yield live


@pytest.fixture
async def llm_server(tmp_path: Path, prepared: Path) -> AsyncIterator[LiveServer]:
    async with serve_llm(tmp_path, prepared) as live:
        yield live


def local_llm(live: LiveServer) -> LlmBatcher:
    """The server's LLM: the local engine these tests run."""
    assert live.runtime.engines is not None
    llm = live.runtime.engines.llm()
    assert isinstance(llm, LlmBatcher)
    return llm


def _client(live: LiveServer, token: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{live.http}/v1", api_key=token or live.token(), max_retries=0, timeout=scaled(60)
    )


async def test_openai_client_streams_a_completion(llm_server: LiveServer) -> None:
    """client.chat.completions.create(stream=True) yields chunks whose text says Paris."""
    async with _client(llm_server) as client:
        stream = await client.chat.completions.create(
            model="smollm2-135m",
            messages=FRANCE,
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
            max_tokens=24,
        )
        assert "Paris" in (reply.choices[0].message.content or "")
        assert reply.usage is not None and reply.usage.prompt_tokens > 10
        short = await client.chat.completions.create(
            model="smollm2-135m",
            messages=FRANCE,
            temperature=0,
            max_tokens=2,
        )
        assert short.choices[0].finish_reason == "length"
        assert short.usage is not None and short.usage.completion_tokens == 2


async def test_openai_endpoint_needs_a_token_and_valid_input(llm_server: LiveServer) -> None:
    """No token: 401 (AuthenticationError); bad fields: 400 naming the field."""
    async with _client(llm_server, token="not-a-jwt") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="x", messages=FRANCE)
    async with _client(llm_server) as client:
        with pytest.raises(openai.BadRequestError, match="temperature"):
            await client.chat.completions.create(model="x", messages=FRANCE, temperature=5)
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
            await client.chat.completions.create(model="x", messages=FRANCE)


STORY: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Write a long story about a dragon and a knight."}
]
CHAT_PATH = "/v1/chat/completions"


def _auth(live: LiveServer, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {live.token(**claims)}"}


async def _wait_for(condition: Any) -> None:
    """Poll ``condition()`` until it holds (bounded by the test's timeout)."""
    while not condition():
        await asyncio.sleep(0.01)


async def test_a_poisoned_request_does_not_cut_another_tenants_stream(
    llm_server: LiveServer,
) -> None:
    """Requests with seed -1 and with out-of-range sampling values, sent by one tenant while
    another tenant's reply streams, are served or refused (400 naming the field); the stream
    completes."""
    batcher = local_llm(llm_server)
    mallory = _client(llm_server, llm_server.token(tenant="umbrella", subject="mallory"))
    async with _client(llm_server) as alice, mallory:
        stream = await alice.chat.completions.create(
            model="smollm2-135m",
            messages=STORY,
            stream=True,
            temperature=0,
            max_tokens=400,
        )
        chunks = stream.__aiter__()
        deltas: list[str] = []
        while not "".join(deltas):  # the reply is streaming
            chunk = await chunks.__anext__()
            deltas.append(chunk.choices[0].delta.content or "")
        # seed -1 is in OpenAI's range (int64): served beside the stream. That the two shared
        # the batcher is watched while it is served (whether the stream outlives it depends on
        # the machine's speed: 160 tokens can be done before another client's request is in).
        seeded_task = asyncio.create_task(
            mallory.chat.completions.create(
                model="smollm2-135m",
                messages=FRANCE,
                seed=-1,
                temperature=0.8,
                max_tokens=4,
            )
        )
        together = 0
        while not seeded_task.done():
            together = max(together, batcher.stats()["running"])
            await asyncio.sleep(0.002)
        seeded = await seeded_task
        assert seeded.choices[0].finish_reason in ("stop", "length")
        assert together == 2, "the seeded request was not served beside the stream"
        bad: list[tuple[str, dict[str, Any]]] = [
            ("seed", {"seed": 2**63}),
            ("seed", {"seed": 1.5}),
            ("temperature", {"temperature": -0.5}),
            ("temperature", {"temperature": "hot"}),
            ("top_p", {"top_p": 1.5}),
            ("max_tokens", {"max_tokens": 0}),
            ("max_completion_tokens", {"max_completion_tokens": -3}),
            ("n", {"n": 0}),
            ("presence_penalty", {"presence_penalty": 2.5}),
            ("frequency_penalty", {"frequency_penalty": -9}),
            ("logit_bias", {"logit_bias": {"42": 101}}),
            ("top_logprobs", {"top_logprobs": 21}),
            ("stop", {"stop": ["a", "b", "c", "d", "e"]}),
            ("stream_options", {"stream_options": {"include_usage": "yes"}}),
        ]
        for field, extra in bad:
            with pytest.raises(openai.BadRequestError, match=field):
                await mallory.chat.completions.create(
                    model="smollm2-135m",
                    messages=FRANCE,
                    max_tokens=4,
                    extra_body=extra,
                )
        finish = None
        async for chunk in chunks:
            if chunk.choices:
                deltas.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
    assert finish in ("stop", "length") and len("".join(deltas)) > 20


async def test_chat_completions_are_rate_limited_per_subject(
    tmp_path: Path, prepared: Path
) -> None:
    """Past rate_burst_requests the endpoint answers 429 (rate_limit_error, Retry-After) from
    the same per-subject budget as the records API; another subject is not affected."""
    overrides = {"rate_requests_per_s": 0.5, "rate_burst_requests": 2}
    async with serve_llm(tmp_path, prepared, **overrides) as live, httpx.AsyncClient() as http:
        body = {"model": "smollm2-135m", "messages": FRANCE, "max_tokens": 1}
        url, auth = live.http + CHAT_PATH, _auth(live)
        codes = [(await http.post(url, json=body, headers=auth)).status_code for _ in range(2)]
        assert codes == [200, 200]
        records = await http.get(f"{live.http}/v1/sessions", headers=auth)
        assert records.status_code == 429  # one budget for every route
        refused = await http.post(url, json=body, headers=auth)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limited"
        other = await http.post(url, json=body, headers=_auth(live, subject="dave"))
        assert other.status_code == 200


async def test_concurrent_completions_per_subject_are_capped(
    tmp_path: Path, prepared: Path
) -> None:
    """A subject with max_completions_per_subject generations running gets 429 for one more;
    another subject does not; once one of them ends, the subject may start another."""
    async with (
        serve_llm(tmp_path, prepared, max_completions_per_subject=2) as live,
        httpx.AsyncClient(timeout=scaled(60)) as http,
    ):
        url, auth = live.http + CHAT_PATH, _auth(live)
        long = {"model": "m", "messages": STORY, "max_tokens": 400, "stream": True}
        short = {"model": "m", "messages": FRANCE, "max_tokens": 1}
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(2):
                r = await stack.enter_async_context(
                    http.stream("POST", url, json=long, headers=auth)
                )
                assert r.status_code == 200
            third = await http.post(url, json=short, headers=auth)
            assert third.status_code == 429, third.text
            assert "max_completions_per_subject" in third.json()["error"]["message"]
            other = await http.post(url, json=short, headers=_auth(live, subject="dave"))
            assert other.status_code == 200
        # Both streams were closed: their generations stop and give their slots back.
        slots = live.runtime.limiter.completions
        await _wait_for(lambda: slots.stats()["held"] == 0)
        assert local_llm(live).stats()["running"] == 0
        again = await http.post(url, json=short, headers=auth)
        assert again.status_code == 200, again.text


async def test_an_abandoned_request_stops_generating(llm_server: LiveServer) -> None:
    """A non-streaming request whose client disconnects mid-generation is cancelled (it does
    not run to its max_tokens)."""
    batcher = local_llm(llm_server)
    cancelled, completed = batcher.counters.cancelled, batcher.counters.completed
    body = {"model": "m", "messages": STORY, "max_tokens": 400, "temperature": 0.7, "seed": 1}
    async with httpx.AsyncClient(timeout=scaled(60)) as http:
        request = asyncio.ensure_future(
            http.post(llm_server.http + CHAT_PATH, json=body, headers=_auth(llm_server))
        )
        tokens = batcher.counters.tokens
        await _wait_for(lambda: batcher.counters.tokens >= tokens + 3)
        request.cancel()  # the client goes away: httpx closes the connection
        with contextlib.suppress(asyncio.CancelledError):
            await request
    await _wait_for(lambda: batcher.stats()["running"] == 0)
    assert batcher.counters.cancelled == cancelled + 1
    assert batcher.counters.completed == completed


async def test_a_long_prompt_is_tokenised_off_the_event_loop(
    tmp_path: Path, prepared: Path
) -> None:
    """Templating and tokenising a long prompt does not stall the server's event loop: the
    longest loop stall while it is served is well under what tokenising it on the loop
    takes (a ratio measured here, not a time)."""
    prompt = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 12000}]
    overrides = {"llm_max_prompt_tokens": 8192, "llm_max_context_tokens": 16384}
    async with serve_llm(tmp_path, prepared, **overrides) as live, httpx.AsyncClient() as http:
        tokenizer = local_llm(live).tokenizer
        assert tokenizer is not None
        t0 = asyncio.get_running_loop().time()
        tokenizer.encode_chat(prompt)  # what the loop would stall for
        inline_s = asyncio.get_running_loop().time() - t0
        stalls: list[float] = []

        async def ticker() -> None:
            loop = asyncio.get_running_loop()
            last = loop.time()
            while True:
                await asyncio.sleep(0.002)
                now = loop.time()
                stalls.append(now - last)
                last = now

        tick = asyncio.ensure_future(ticker())
        try:
            r = await http.post(
                live.http + CHAT_PATH,
                json={"model": "m", "messages": prompt, "max_tokens": 1},
                headers=_auth(live),
                timeout=scaled(60),
            )
        finally:
            tick.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tick
    assert r.status_code == 400 and "tokens" in r.json()["error"]["message"], r.text
    assert max(stalls) < inline_s / 3, (max(stalls), inline_s)


async def test_an_oversized_body_is_refused_before_it_is_read(llm_server: LiveServer) -> None:
    """A Content-Length over http_max_body_bytes is answered 413 without the body being sent;
    a chunked body is answered 413 as soon as it passes the limit, before it ends."""
    limit = llm_server.settings.http_max_body_bytes
    head = (
        f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{llm_server.port}\r\n"
        f"Authorization: Bearer {llm_server.token()}\r\nContent-Type: application/json\r\n"
    )
    for framing, body in (
        (f"Content-Length: {limit + 1}\r\n\r\n", b""),
        ("Transfer-Encoding: chunked\r\n\r\n", b"%x\r\n%s\r\n" % (limit + 1, b" " * (limit + 1))),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", llm_server.port)
        try:
            writer.write((head + framing).encode() + body)  # never the end of the body
            await writer.drain()
            async with asyncio.timeout(scaled(30)):
                status = await reader.readline()
                rest = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in rest.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                answer = orjson.loads(await reader.readexactly(length))
        finally:
            writer.close()
        assert status.split()[1] == b"413", (framing, status)
        assert answer["error"]["code"] == "too_large" and str(limit) in answer["error"]["message"]
