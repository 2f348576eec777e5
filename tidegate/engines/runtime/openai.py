"""The ``openai`` runtime: one OpenAI-compatible LLM server (vLLM, SGLang, llama.cpp's server,
Ollama, a hosted API) reached over HTTP, streaming ``POST {base}/v1/chat/completions``.

:class:`OpenAiClient` holds one pooled :mod:`httpx` client (HTTP/1.1 keep-alive, at most
``max_requests`` connections) and turns a streamed reply (server-sent events) into the JSON
chunks it carries, enforcing three clocks: the first token (first content or tool-call piece)
within ``first_token_timeout_s`` of sending, each later one within ``token_timeout_s`` of the
one before, the whole reply within ``reply_timeout_s``. Every failure is a
:class:`ProviderError` whose ``kind`` says what went wrong, so that the caller (the failover
in :mod:`tidegate.engines.llm.providers`) can tell a provider that is down or slow from a
request the provider refused. The API key is read when the client starts, from an environment
variable or a file, and is sent only in the ``Authorization`` header: never logged, never in
an error message, never in stats.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import EngineError, ModelError

CHAT_PATH = "/v1/chat/completions"
MAX_ERROR_BODY_BYTES = 4096  # of a refusal's body, read for its message
MAX_SSE_LINE_BYTES = 1 << 20  # a longer line is a broken stream

# ProviderError kinds
CONNECT = "connect"  # refused, reset or timed out while connecting
STATUS = "status"  # an HTTP status other than 200
FIRST_TOKEN_TIMEOUT = "first_token_timeout"
TOKEN_TIMEOUT = "token_timeout"
REPLY_TIMEOUT = "reply_timeout"
BROKEN = "broken"  # the connection broke, or the stream is not what the protocol says
STREAM_ERROR = "stream_error"  # the server reported an error inside the stream


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One OpenAI-compatible server: where it is, which model to ask for, its key (by
    reference: an environment variable or a file, never the key itself), how many requests it
    takes at once, and its timeouts."""

    name: str
    base_url: str
    model: str
    api_key_env: str | None = None
    api_key_file: Path | None = None
    max_requests: int = 16
    connect_timeout_s: float = 1.0
    first_token_timeout_s: float = 10.0
    token_timeout_s: float = 10.0
    reply_timeout_s: float = 300.0
    standby_every_tokens: int = 0  # > 0: kept warm while it is a reply's next provider

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"provider {self.name!r}: base URL must start with http:// or https://, "
                f"got {self.base_url!r}"
            )
        if self.max_requests < 1:
            raise ValueError(f"provider {self.name!r}: max_requests must be at least 1")
        for f in ("connect_timeout_s", "first_token_timeout_s", "token_timeout_s"):
            if getattr(self, f) <= 0:
                raise ValueError(f"provider {self.name!r}: {f} must be positive")
        if self.reply_timeout_s <= 0:
            raise ValueError(f"provider {self.name!r}: reply_timeout_s must be positive")
        if self.standby_every_tokens < 0:
            raise ValueError(f"provider {self.name!r}: standby_every_tokens must be 0 or more")
        if self.api_key_env and self.api_key_file:
            raise ValueError(f"provider {self.name!r}: give api_key_env or api_key_file, not both")

    @property
    def root(self) -> str:
        """The base URL without a trailing ``/v1`` (both spellings are accepted)."""
        url = self.base_url.rstrip("/")
        return url[:-3] if url.endswith("/v1") else url

    def api_key(self) -> str | None:
        """The key, read now (:class:`ModelError` naming the variable or file when it cannot
        be read; the key itself never appears in a message)."""
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "").strip()
            if not key:
                raise ModelError(
                    f"provider {self.name!r}: the API key variable {self.api_key_env} is not set"
                )
            return key
        if self.api_key_file is not None:
            try:
                key = self.api_key_file.read_text().strip()
            except OSError as e:
                raise ModelError(
                    f"provider {self.name!r}: cannot read the API key file "
                    f"{self.api_key_file}: {e.strerror}"
                ) from None
            if not key:
                raise ModelError(f"provider {self.name!r}: the API key file is empty")
            return key
        return None


class ProviderError(EngineError):
    """A provider could not serve a request. ``kind`` is one of the module's kinds; ``status``
    the HTTP status of a refusal."""

    def __init__(self, provider: str, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(f"provider {provider!r}: {message}")
        self.provider = provider
        self.kind = kind
        self.status = status

    @property
    def retryable(self) -> bool:
        """Worth trying another provider: down, slow, broken, busy (429) or failing (5xx).
        Other 4xx (a bad key, an unknown model, a request it refuses) are not."""
        if self.kind != STATUS or self.status is None:
            return True
        return self.status == 429 or self.status >= 500

    @property
    def provider_fault(self) -> bool:
        """Counts against the provider's circuit breaker: everything but a refusal of the
        request itself (400, 413, 422), which another request may not repeat."""
        return not (self.kind == STATUS and self.status in (400, 413, 422))


def _error_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()[:200] or "(no body)"
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        return str(err.get("message", err))[:200]
    return str(err or data)[:200]


def is_token(chunk: Mapping[str, Any]) -> bool:
    """Whether a chunk carries generated output (content or a tool-call piece)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")):
            return True
    return False


class OpenAiClient:
    """One provider's pooled HTTP client (see the module docstring)."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._client: Any = None  # httpx.AsyncClient, created by start()
        self.stale_retries = 0  # requests sent again after a stale keep-alive connection

    async def start(self) -> None:
        import httpx

        c = self.config
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        key = c.api_key()
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            base_url=c.root,
            headers=headers,
            timeout=httpx.Timeout(
                connect=c.connect_timeout_s,
                read=None,  # the token clocks below bound every read
                write=c.connect_timeout_s,
                pool=c.connect_timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=c.max_requests,
                max_keepalive_connections=c.max_requests,
                keepalive_expiry=30.0,
            ),
            trust_env=False,  # no proxy from the environment between us and the provider
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def stream_chat(self, body: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST ``body`` (``stream`` set) and yield each JSON chunk of the reply; ends after
        ``data: [DONE]``. Raises :class:`ProviderError`."""
        import httpx

        c = self.config
        if self._client is None:
            raise ProviderError(c.name, CONNECT, "the client is not started")
        loop = asyncio.get_running_loop()
        sent = loop.time()
        reply_deadline = sent + c.reply_timeout_s
        deadline = sent + c.first_token_timeout_s
        first = True
        try:
            async with asyncio.timeout_at(reply_deadline):
                content = orjson.dumps(body)
                async with asyncio.timeout_at(min(deadline, reply_deadline)):
                    try:
                        response = await self._client.send(
                            self._client.build_request("POST", CHAT_PATH, content=content),
                            stream=True,
                        )
                    except httpx.RemoteProtocolError:
                        # A pooled keep-alive connection the server had closed meanwhile
                        # (servers close them on their own schedule, llama.cpp's after a few
                        # requests): no response at all. Once more, on a new connection.
                        self.stale_retries += 1
                        response = await self._client.send(
                            self._client.build_request("POST", CHAT_PATH, content=content),
                            stream=True,
                        )
                try:
                    if response.status_code != 200:
                        raw = b""
                        async with asyncio.timeout_at(min(deadline, reply_deadline)):
                            async for part in response.aiter_bytes():
                                raw += part
                                if len(raw) >= MAX_ERROR_BODY_BYTES:
                                    break
                        raise ProviderError(
                            c.name,
                            STATUS,
                            f"HTTP {response.status_code}: {_error_message(raw)}",
                            response.status_code,
                        )
                    lines = aiter(response.aiter_lines())
                    while True:
                        try:
                            async with asyncio.timeout_at(deadline):
                                line = await anext(lines)
                        except StopAsyncIteration:
                            raise ProviderError(
                                c.name, BROKEN, "the stream ended without [DONE]"
                            ) from None
                        except TimeoutError:
                            if loop.time() >= reply_deadline:
                                raise
                            kind = FIRST_TOKEN_TIMEOUT if first else TOKEN_TIMEOUT
                            wait = c.first_token_timeout_s if first else c.token_timeout_s
                            what = "first token" if first else "next token"
                            raise ProviderError(
                                c.name, kind, f"no {what} within {wait:g} s"
                            ) from None
                        if len(line) > MAX_SSE_LINE_BYTES:
                            raise ProviderError(c.name, BROKEN, "an event line is too long")
                        if not line or line.startswith(":"):
                            continue  # event separator, comment (keep-alive)
                        field, _, value = line.partition(":")
                        if field in ("event", "id", "retry"):
                            continue
                        if field != "data":
                            raise ProviderError(
                                c.name, BROKEN, f"not a server-sent event: {line[:80]!r}"
                            )
                        value = value.removeprefix(" ")
                        if value == "[DONE]":
                            return
                        try:
                            chunk = orjson.loads(value)
                        except orjson.JSONDecodeError:
                            raise ProviderError(
                                c.name, BROKEN, f"an event is not JSON: {value[:80]!r}"
                            ) from None
                        if not isinstance(chunk, dict):
                            raise ProviderError(c.name, BROKEN, "an event is not a JSON object")
                        if "error" in chunk:
                            err = chunk["error"]
                            text = err.get("message", err) if isinstance(err, dict) else err
                            raise ProviderError(c.name, STREAM_ERROR, str(text)[:200])
                        if is_token(chunk):
                            first = False
                            deadline = min(loop.time() + c.token_timeout_s, reply_deadline)
                        yield chunk
                finally:
                    await response.aclose()
        except TimeoutError:
            if first and loop.time() < reply_deadline:
                raise ProviderError(
                    c.name,
                    FIRST_TOKEN_TIMEOUT,
                    f"no first token within {c.first_token_timeout_s:g} s",
                ) from None
            raise ProviderError(
                c.name, REPLY_TIMEOUT, f"the reply took over {c.reply_timeout_s:g} s"
            ) from None
        except httpx.ConnectError as e:
            raise ProviderError(c.name, CONNECT, f"cannot connect: {type(e).__name__}") from None
        except httpx.TimeoutException as e:
            raise ProviderError(c.name, CONNECT, f"timed out: {type(e).__name__}") from None
        except httpx.HTTPError as e:
            raise ProviderError(
                c.name, BROKEN, f"the connection broke: {type(e).__name__}"
            ) from None
