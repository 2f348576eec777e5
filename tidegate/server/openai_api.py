"""``POST /v1/chat/completions``: the OpenAI chat completions API on tidegate's LLM engine, so
existing OpenAI client libraries work against tidegate.

Served by the same :class:`~tidegate.engines.llm.LlmBatcher` as the sessions (its requests
share decode steps with theirs). JWT (scope ``session``) as a bearer token. ``stream: true``
answers with server-sent events (``chat.completion.chunk`` objects, then ``[DONE]``); a client
that disconnects cancels its generation within one decode step. Supported fields: ``model``
(informative: the served model answers), ``messages`` (string content or text parts),
``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``,
``n`` (1 only), ``stream``, ``stream_options.include_usage``. Others are ignored, as OpenAI's
own server ignores unknown ones.

A caller's conversation cache is keyed by tenant and subject: a follow-up request that
repeats the earlier messages prefills only the new ones.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tidegate.engines.errors import EngineError, OverloadedError, RequestError
from tidegate.engines.llm import Generation, LlmBatcher, SamplingParams

from .auth import SCOPE_SESSION, bearer_from_header
from .errors import ForbiddenError, UnauthorizedError

log = logging.getLogger(__name__)

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str, *, retry_after_s: float = 0) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.retry_after_s = retry_after_s

    def response(self) -> JSONResponse:
        headers = (
            {"Retry-After": str(max(1, round(self.retry_after_s)))}
            if self.status
            in (
                429,
                503,
            )
            else None
        )
        body = {"error": {"message": self.message, "type": self.kind, "code": None}}
        return JSONResponse(body, status_code=self.status, headers=headers)


def _invalid(message: str) -> ApiError:
    return ApiError(400, message, "invalid_request_error")


def _messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _invalid("messages must be a non-empty array")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise _invalid(f"messages[{i}] must be an object")
        role, content = m.get("role"), m.get("content")
        if role == "developer":
            role = "system"
        if isinstance(content, list):  # content parts: only text is understood
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    raise _invalid(f"messages[{i}].content: only text parts are supported")
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        if not isinstance(content, str):
            raise _invalid(f"messages[{i}].content must be a string or text parts")
        out.append({"role": str(role), "content": content})
    return out


def _number(body: Mapping[str, Any], name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{name} must be a number")
    return float(value)


def _params(body: Mapping[str, Any], default_max_tokens: int) -> SamplingParams:
    if body.get("n") not in (None, 1):
        raise _invalid("n: only 1 choice per request is supported")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise _invalid("max_tokens must be an integer")
    stop = body.get("stop")
    stops: tuple[str, ...] = ()
    if isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    elif stop is not None:
        raise _invalid("stop must be a string or an array of strings")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _invalid("seed must be an integer")
    try:
        return SamplingParams(
            temperature=_number(body, "temperature", 1.0),
            top_p=_number(body, "top_p", 1.0),
            max_tokens=max_tokens,
            stop=stops,
            seed=seed,
        )
    except RequestError as e:
        raise _invalid(str(e)) from None


def _sse(obj: Mapping[str, Any] | str) -> bytes:
    data = obj.encode() if isinstance(obj, str) else orjson.dumps(obj)
    return b"data: " + data + b"\n\n"


async def chat_completions(request: Request) -> Response:
    runtime = request.app.state.runtime
    try:
        principal = await runtime.verifier.verify(
            bearer_from_header(request.headers.get("authorization")), SCOPE_SESSION
        )
    except UnauthorizedError as e:
        return ApiError(401, e.message, "authentication_error").response()
    except ForbiddenError as e:
        return ApiError(403, e.message, "permission_error").response()
    try:
        engines = runtime.engines
        if engines is None or "llm" not in engines.batchers:
            raise ApiError(503, "no LLM engine runs on this server (engines=llm)", "server_error")
        batcher: LlmBatcher = engines.llm()
        limit = runtime.settings.max_message_bytes
        raw = await request.body()
        if len(raw) > limit:
            raise ApiError(413, f"request body over {limit} bytes", "invalid_request_error")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _invalid("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _invalid("the body must be a JSON object")
        params = _params(body, runtime.settings.llm_default_max_tokens)
        messages = _messages(body)
        session = f"openai:{principal.tenant}:{principal.subject}"
        try:  # a greedy (temperature 0) request answered before comes from the cache
            gen = await runtime.cluster.caches.generate(batcher, messages, params, session=session)
        except OverloadedError as e:
            raise ApiError(429, str(e), "rate_limit_error", retry_after_s=e.retry_after_s) from None
        except RequestError as e:
            raise _invalid(str(e)) from None
        except EngineError as e:
            raise ApiError(503, str(e), "server_error") from None
    except ApiError as e:
        return e.response()
    served = next((s.model for s in engines.specs if s.name == "llm"), "llm")
    model = str(body.get("model") or served)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.get("stream"):
        options = body.get("stream_options") or {}
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return StreamingResponse(
            _stream(gen, completion_id, created, model, usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        text = await gen.text()
    except EngineError as e:
        return ApiError(500, f"generation failed: {e}", "server_error").response()
    finally:
        gen.cancel()  # no-op once finished; stops compute if this request was cancelled
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": gen.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(gen),
        }
    )


def _usage(gen: Generation) -> dict[str, Any]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": gen.cached_tokens},
    }


async def _stream(
    gen: Generation, completion_id: str, created: int, model: str, include_usage: bool
) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    try:
        yield _sse(chunk({"role": "assistant", "content": ""}, None))
        try:
            async for delta in gen:
                yield _sse(chunk({"content": delta}, None))
        except EngineError as e:
            log.warning("chat completion %s failed: %s", completion_id, e)
            yield _sse({"error": {"message": "generation failed", "type": "server_error"}})
            return
        yield _sse(chunk({}, gen.finish_reason))
        if include_usage:
            final = chunk({}, None)
            final["choices"] = []
            final["usage"] = _usage(gen)
            yield _sse(final)
        yield _sse("[DONE]")
    finally:
        gen.cancel()  # the client went away: stop within one step
