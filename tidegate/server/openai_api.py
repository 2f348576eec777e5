"""``POST /v1/chat/completions``: the OpenAI chat completions API on tidegate's LLM engine, so
existing OpenAI client libraries work against tidegate.

Served by the same :class:`~tidegate.engines.llm.LlmBatcher` as the sessions (its requests
share decode steps with theirs), behind the HTTP edge (:mod:`.edge`): origin allow-list, JWT
(scope ``session``) as a bearer token, the subject's request budget (``rate_requests_per_s``),
errors as OpenAI's error object. Each subject may have ``max_completions_per_subject``
generations running at once (429 beyond); the body is bounded by ``http_max_body_bytes``
(413, from ``Content-Length`` or while it streams in). Every field is validated by
:mod:`.chat_request` (OpenAI's types and ranges; 400 naming the field as ``param``) before
the engine sees it; the prompt is templated and tokenised off the event loop.

``stream: true`` answers with server-sent events (``chat.completion.chunk`` objects, then
``[DONE]``). A client that disconnects, streaming or not, cancels its generation within one
decode step. Supported: ``model`` (informative: the served model answers), ``messages``
(string content or text parts), ``max_tokens`` / ``max_completion_tokens``, ``temperature``,
``top_p``, ``stop``, ``seed``, ``n`` (1 only), ``stream``, ``stream_options.include_usage``.
Other documented fields are validated and then ignored; unknown ones are ignored.

On OpenAI-compatible providers (``llm_runtime=providers``, docs/llm-tts.md) ``tools`` /
``tool_choice`` pass through (tool calls come back as ``tool_calls``, streamed as deltas;
``tool`` messages and assistant ``tool_calls`` go to the provider as given), and ``model``
routes: a request goes to the providers serving that model (by model or provider name), in
order, failing over between them; any other name goes to every provider in order. A streamed
reply's headers wait for its first token, so that a request no provider can serve gets an HTTP
error (503 with Retry-After) rather than an error inside a 200 stream.

A caller's conversation cache is keyed by tenant and subject: a follow-up request that
repeats the earlier messages prefills only the new ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tidegate.engines.errors import EngineError, RequestError
from tidegate.engines.errors import OverloadedError as EngineOverloadedError
from tidegate.engines.llm import Generation, LlmEngine, ProviderPool
from tidegate.engines.llm.providers import ProviderUnavailableError
from tidegate.engines.llm.tools import ToolCallDelta, validate_tool_choice, validate_tools

from . import edge
from .auth import Principal
from .chat_request import (
    ChatRequest,
    ChatRequestError,
    local_messages,
    parse_chat_request,
    sampling_params,
)
from .errors import OverloadedError, RateLimitedError, RefusalError
from .runtime import Runtime

log = logging.getLogger(__name__)

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
#: OpenAI's error ``type`` for a status (anything else from 500 up: ``server_error``)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(e: RefusalError, status: int, fields: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's error object: ``message``, ``type`` (by status), ``param`` (the field, when
    one is to blame) and ``code`` (tidegate's wire error code)."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    param = e.param if isinstance(e, ChatRequestError) else None
    return {"error": {"message": e.message, "type": kind, "param": param, "code": e.code.value}}


def _sse(obj: Mapping[str, Any] | str) -> bytes:
    data = obj.encode() if isinstance(obj, str) else orjson.dumps(obj)
    return b"data: " + data + b"\n\n"


def _provider_messages(req: ChatRequest) -> list[dict[str, Any]]:
    """The chat as a provider takes it: the fields of OpenAI's messages that carry the
    conversation, tool calls and results included (an assistant turn that only called tools
    gets content "": OpenAI takes null or "", some servers only "")."""
    out = []
    for m in req.messages:
        msg = {k: m[k] for k in ("role", "content", "name", "tool_calls", "tool_call_id") if k in m}
        if msg.get("content") is None:
            msg["content"] = ""
        out.append(msg)
    return out


def _tools(req: ChatRequest, llm: LlmEngine, runtime: Runtime) -> tuple[Any, Any]:
    """The request's ``tools`` (validated, size-limited) and ``tool_choice``; (None, None)
    without tools."""
    raw = req.body.get("tools")
    if raw is None:
        return None, None
    if not llm.supports_tools:
        raise ChatRequestError("tools", "this server's LLM cannot call tools (llm_runtime=local)")
    s = runtime.settings
    try:
        tools = validate_tools(
            raw, max_items=s.assistant_max_tools_items, max_bytes=s.assistant_max_tools_bytes
        )
    except RequestError as e:
        raise ChatRequestError("tools", str(e).removeprefix("tools: ")) from None
    try:
        return list(tools), validate_tool_choice(req.body.get("tool_choice"), tools)
    except RequestError as e:
        raise ChatRequestError("tool_choice", str(e).removeprefix("tool_choice: ")) from None


def _provider_refusal(e: EngineError) -> RefusalError:
    """The refusal of a reply the providers could not give (every provider down: 503 with
    the hint; a provider's refusal or a model's bad tool call: 500 with its message)."""
    if isinstance(e, ProviderUnavailableError):
        return OverloadedError(str(e), retry_after_ms=e.retry_after_s * 1000)
    if isinstance(e, EngineOverloadedError):
        return RateLimitedError(str(e), retry_after_ms=e.retry_after_s * 1000)
    return edge.InternalError(f"the LLM provider failed: {e}")


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ChatRequestError("body", "not valid JSON") from None


@edge.handler(shape=openai_error)
async def chat_completions(request: Request, runtime: Runtime, principal: Principal) -> Response:
    """One chat completion (see the module docstring)."""
    engines = runtime.engines
    if engines is None or "llm" not in engines.batchers:
        raise OverloadedError(
            "no LLM engine runs on this server (engines=llm), or it is still starting",
            retry_after_ms=1000.0 if runtime.engines_warming else None,
        )
    slot = runtime.limiter.completions.acquire(principal)
    try:
        raw = await edge.read_body(request, runtime.settings.http_max_body_bytes)
        req = parse_chat_request(_json(raw))
        params = sampling_params(req, runtime.settings.llm_default_max_tokens)
        llm = engines.llm()
        tools, tool_choice = _tools(req, llm, runtime)
        session = f"openai:{principal.tenant}:{principal.subject}"
        try:
            if isinstance(llm, ProviderPool):  # routed by model name, not cached
                gen: Generation = llm.generate(
                    _provider_messages(req),
                    params,
                    session=session,
                    tools=tools,
                    tool_choice=tool_choice,
                    model=req.model,
                )
            else:  # a greedy (temperature 0) request answered before comes from the cache
                gen = await runtime.cluster.caches.generate(
                    llm, local_messages(req), params, session=session
                )
        except ProviderUnavailableError as e:
            raise _provider_refusal(e) from None
        except EngineOverloadedError as e:
            raise RateLimitedError(str(e), retry_after_ms=e.retry_after_s * 1000) from None
        except RequestError as e:
            raise ChatRequestError("messages", str(e)) from None
        except EngineError as e:
            raise OverloadedError(f"the LLM cannot take this request now: {e}") from None
    except BaseException:
        slot.release()
        raise
    gen.add_done_callback(lambda _: slot.release())  # the slot is held while it generates
    served = next((s.model for s in engines.specs if s.name == "llm"), "llm")
    model = req.model or served
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if req.stream:
        events = gen.events()
        first: str | ToolCallDelta | None = None
        if isinstance(llm, ProviderPool):  # an HTTP status while one can still be sent
            try:
                first = await anext(events)
            except StopAsyncIteration:
                pass
            except EngineError as e:
                raise _provider_refusal(e) from None
        return StreamingResponse(
            _stream(gen, events, first, completion_id, created, model, req.include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        text = await _text_unless_gone(request, gen)
    except EngineError as e:
        log.warning("chat completion %s failed: %s", completion_id, e)
        if isinstance(llm, ProviderPool):
            return edge.error_response(_provider_refusal(e), openai_error)
        return edge.error_response(
            edge.InternalError("generation failed; the server log has the details"),
            openai_error,
        )
    if text is None:  # the client went away; nobody reads this
        return Response(status_code=499)
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


async def _text_unless_gone(request: Request, gen: Generation) -> str | None:
    """The whole reply, or None when the client disconnects first (the generation is then
    cancelled: it stops within one step)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    reply = asyncio.ensure_future(gen.text())
    watch = asyncio.ensure_future(gone())
    try:
        await asyncio.wait((reply, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gen.cancel()  # a no-op once finished
        for task in (reply, watch):
            task.cancel()
        await asyncio.gather(reply, watch, return_exceptions=True)  # both end here
    if reply.cancelled():
        return None
    return reply.result()


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
