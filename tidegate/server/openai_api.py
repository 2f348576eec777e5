"""``POST /v1/chat/completions``: the OpenAI chat completions API on tidegate's LLM engine, so
existing OpenAI client libraries work against tidegate.

Served by the same :class:`~tidegate.engines.llm.LlmBatcher` as the sessions (its requests
share decode steps with theirs). JWT (scope ``session``) as a bearer token. ``stream: true``
answers with server-sent events (``chat.completion.chunk`` objects, then ``[DONE]``); a client
that disconnects cancels its generation within one decode step. Supported fields: ``model``
(informative: the served model answers), ``messages`` (string content or text parts),
``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``,
``n`` (1 only), ``stream``, ``stream_options.include_usage``, and on OpenAI-compatible providers
(``llm_runtime=providers``) ``tools`` / ``tool_choice`` (tool calls stream back as
``tool_calls`` deltas; ``tool`` messages carry the results). Others are ignored, as OpenAI's own
server ignores unknown ones.

On providers, ``model`` routes: a request goes to the providers serving that model (by model or
provider name), in order, failing over between them; any other name goes to every provider in
order. A streamed reply's headers wait for its first token, so that a request no provider can
serve gets an HTTP error status (503 with Retry-After) rather than an error inside a 200 stream.

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
from tidegate.engines.llm import Generation, LlmEngine, ProviderPool, SamplingParams
from tidegate.engines.llm.providers import ProviderUnavailableError
from tidegate.engines.llm.tools import (
    ToolCallDelta,
    ToolCallError,
    validate_tool_choice,
    validate_tools,
)
from tidegate.engines.runtime.openai import ProviderError

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


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _invalid("messages must be a non-empty array")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise _invalid(f"messages[{i}] must be an object")
        role, content = m.get("role"), m.get("content")
        if m.get("tool_calls") is not None or role == "tool":  # tool use: passed through
            out.append(_tool_message(i, m))
            continue
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


def _tool_message(i: int, m: dict[str, Any]) -> dict[str, Any]:
    """An assistant message with ``tool_calls`` or a ``tool`` result, as given (checked for
    the fields the providers need)."""
    role, content = m.get("role"), m.get("content")
    if role == "tool":
        if not isinstance(m.get("tool_call_id"), str) or not isinstance(content, str):
            raise _invalid(f"messages[{i}]: a tool message needs tool_call_id and string content")
        return {"role": "tool", "tool_call_id": m["tool_call_id"], "content": content}
    calls = m.get("tool_calls")
    if role != "assistant" or not isinstance(calls, list):
        raise _invalid(f"messages[{i}].tool_calls: only an assistant message has a list of them")
    if content is not None and not isinstance(content, str):
        raise _invalid(f"messages[{i}].content must be a string or null")
    # no content as "": OpenAI takes null or "", some servers (llama-cpp-python) only ""
    return {"role": "assistant", "content": content or "", "tool_calls": calls}


def _tools(body: Mapping[str, Any], batcher: LlmEngine, settings: Any) -> tuple[Any, Any]:
    """The request's ``tools`` (validated) and ``tool_choice``; (None, None) without tools."""
    raw = body.get("tools")
    if raw is None:
        return None, None
    if not batcher.supports_tools:
        raise _invalid("tools: this server's LLM cannot call tools (llm_runtime=local)")
    try:
        tools = validate_tools(
            raw,
            max_items=settings.assistant_max_tools_items,
            max_bytes=settings.assistant_max_tools_bytes,
        )
        return list(tools), validate_tool_choice(body.get("tool_choice"), tools)
    except RequestError as e:
        raise _invalid(str(e)) from None


def _engine_error(e: EngineError) -> ApiError:
    """The HTTP error of a generation that could not start or failed."""
    if isinstance(e, ProviderUnavailableError):
        return ApiError(503, str(e), "server_error", retry_after_s=e.retry_after_s)
    if isinstance(e, OverloadedError):
        return ApiError(429, str(e), "rate_limit_error", retry_after_s=e.retry_after_s)
    if isinstance(e, RequestError):
        return _invalid(str(e))
    if isinstance(e, ProviderError | ToolCallError):
        return ApiError(502, str(e), "server_error")
    return ApiError(503, str(e), "server_error")


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
        principal = runtime.verifier.verify(
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
        batcher: LlmEngine = engines.llm()
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
        tools, tool_choice = _tools(body, batcher, runtime.settings)
        session = f"openai:{principal.tenant}:{principal.subject}"
        try:
            if isinstance(batcher, ProviderPool):  # routed by model name, not cached
                model_name = body.get("model")
                gen = batcher.generate(
                    messages,
                    params,
                    session=session,
                    tools=tools,
                    tool_choice=tool_choice,
                    model=model_name if isinstance(model_name, str) else None,
                )
            else:  # a greedy (temperature 0) request answered before comes from the cache
                gen = await runtime.cluster.caches.generate(
                    batcher, messages, params, session=session
                )
        except EngineError as e:
            raise _engine_error(e) from None
    except ApiError as e:
        return e.response()
    served = next((s.model for s in engines.specs if s.name == "llm"), "llm")
    model = str(body.get("model") or served)
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.get("stream"):
        options = body.get("stream_options") or {}
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
        events = gen.events()
        first: str | ToolCallDelta | None = None
        if isinstance(batcher, ProviderPool):  # an HTTP status while one can still be sent
            try:
                first = await anext(events)
            except StopAsyncIteration:
                pass
            except EngineError as e:
                return _engine_error(e).response()
        return StreamingResponse(
            _stream(gen, events, first, completion_id, created, model, usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        text = await gen.text()
    except EngineError as e:
        if isinstance(batcher, ProviderPool):
            return _engine_error(e).response()
        return ApiError(500, f"generation failed: {e}", "server_error").response()
    finally:
        gen.cancel()  # no-op once finished; stops compute if this request was cancelled
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if gen.tool_calls:
        message["content"] = text or None
        message["tool_calls"] = [c.as_message() for c in gen.tool_calls]
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
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


def _tool_delta(item: ToolCallDelta, seen: set[int]) -> dict[str, Any]:
    """A tool-call piece as OpenAI streams it: id, type and name on the call's first piece."""
    piece: dict[str, Any] = {"index": item.index, "function": {"arguments": item.arguments}}
    if item.index not in seen:
        seen.add(item.index)
        piece.update(id=item.call_id, type="function")
        piece["function"]["name"] = item.name
    return {"tool_calls": [piece]}


async def _stream(
    gen: Generation,
    events: AsyncIterator[str | ToolCallDelta],
    first: str | ToolCallDelta | None,
    completion_id: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }

    seen: set[int] = set()

    def delta_of(item: str | ToolCallDelta) -> dict[str, Any]:
        return {"content": item} if isinstance(item, str) else _tool_delta(item, seen)

    try:
        yield _sse(chunk({"role": "assistant", "content": ""}, None))
        try:
            if first is not None:
                yield _sse(chunk(delta_of(first), None))
            async for item in events:
                yield _sse(chunk(delta_of(item), None))
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
