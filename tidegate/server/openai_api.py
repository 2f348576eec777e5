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
from tidegate.engines.llm import Generation

from . import edge
from .auth import Principal
from .chat_request import (
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


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ChatRequestError("body", "not valid JSON") from None


@edge.endpoint("POST, OPTIONS", shape=openai_error)
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
        messages = local_messages(req)
        session = f"openai:{principal.tenant}:{principal.subject}"
        try:  # a greedy (temperature 0) request answered before comes from the cache
            gen = await runtime.cluster.caches.generate(
                engines.llm(), messages, params, session=session
            )
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
        return StreamingResponse(
            _stream(gen, completion_id, created, model, req.include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        text = await _text_unless_gone(request, gen)
    except EngineError as e:
        log.warning("chat completion %s failed: %s", completion_id, e)
        return edge.error_response(
            edge.InternalError("generation failed; the server log has the details"),
            openai_error,
        )
    if text is None:  # the client went away; nobody reads this
        return Response(status_code=499)
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
