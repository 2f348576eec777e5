"""What every HTTP route does around its handler, in one place.

:func:`endpoint` wraps a handler ``(request, runtime, principal) -> Response`` with, in order:

1. the browser origin allow-list (:meth:`Runtime.origin_allowed`; 403 ``forbidden``), CORS
   headers for an allowed origin, and preflights (``OPTIONS``) answered;
2. authentication: ``Authorization: Bearer <jwt>`` with the route's scope (401
   ``unauthorized``, 403 ``forbidden``);
3. the per-subject request budget (``rate_requests_per_s`` / ``rate_burst_requests``, the
   limiter the control channel's buckets live in, shared across nodes with Redis; 429
   ``rate_limited`` with ``Retry-After``);
4. one error → status table (:data:`STATUS_FOR_CODE`) for what the handler raises: a
   :class:`~tidegate.server.errors.RefusalError` becomes its status and a body in the route's
   shape (the records API's ``{"error": {...}}``, the offer route's flat object, OpenAI's
   error object); anything else is our fault: logged with its traceback, answered 500
   ``internal`` with nothing of it on the wire.

:func:`read_body` reads a request body with a bound: a ``Content-Length`` over it is refused
before reading, a streamed body as soon as it passes it (413 ``too_large``).

Only ``/healthz``, ``/readyz``, ``/openapi.json``, ``/v1/auth/config``, the development login
(loopback only, :mod:`.web`) and the web client's files are outside it. A later redesign makes
this one ASGI middleware in front of every route.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from tidegate.cluster import WrongNodeError
from tidegate.protocol import ErrorCode

from .auth import SCOPE_SESSION, Principal, bearer_from_header
from .errors import ForbiddenError, RefusalError

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

STATUS_FOR_CODE = {
    ErrorCode.BAD_MESSAGE: 400,
    ErrorCode.INVALID_FIELD: 400,
    ErrorCode.BAD_SDP: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNEXPECTED_MESSAGE: 409,
    ErrorCode.UNSUPPORTED: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.TIMEOUT: 504,
}
ALLOWED_HEADERS = "Authorization, Content-Type"
PREFLIGHT_MAX_AGE_S = 600

Handler = Callable[[Request, "Runtime", Principal], Awaitable[Response]]
#: (the error, its status, its fields) -> the JSON body of the answer
Shape = Callable[[RefusalError, int, dict[str, Any]], dict[str, Any]]
#: an exception the route knows how to explain (the database is away) -> a refusal, or None
Translate = Callable[[Exception, "Runtime"], RefusalError | None]


class TooLargeError(RefusalError):
    code = ErrorCode.TOO_LARGE


class InternalError(RefusalError):
    code = ErrorCode.INTERNAL


def wrapped(e: RefusalError, status: int, fields: dict[str, Any]) -> dict[str, Any]:
    """The records API's shape: ``{"error": {"code", "message", "retry_after_ms"?}}``."""
    return {"error": fields}


def flat(e: RefusalError, status: int, fields: dict[str, Any]) -> dict[str, Any]:
    """The offer route's shape: ``{"code", "message", "retry_after_ms"?}``."""
    return fields


def error_response(e: RefusalError, shape: Shape = wrapped) -> JSONResponse:
    """The answer to a refusal: its status from the one table, ``Retry-After`` when it has a
    hint, a 421 naming the node for a session another node holds."""
    fields: dict[str, Any] = {"code": e.code.value, "message": e.message}
    headers: dict[str, str] = {}
    if e.retry_after_ms is not None:
        fields["retry_after_ms"] = e.retry_after_ms
        headers["Retry-After"] = str(max(1, math.ceil(e.retry_after_ms / 1000)))
    status = STATUS_FOR_CODE.get(e.code, 400)
    if isinstance(e, WrongNodeError):
        status, fields, more = e.http(fields)
        headers.update(more)
    return JSONResponse(shape(e, status, fields), status, headers=headers)


def endpoint(
    methods: str,
    *,
    scope: str = SCOPE_SESSION,
    shape: Shape = wrapped,
    translate: Translate | None = None,
) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Wrap a handler with the origin check, CORS, authentication, the rate limit and the
    error table (see the module docstring). ``methods`` is what preflights are told."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            runtime: Runtime = request.app.state.runtime
            origin = request.headers.get("origin")
            if not runtime.origin_allowed(origin, request.headers.get("host")):
                runtime.counters["api_origin_refused"] += 1
                refused = ForbiddenError(
                    f"origin {origin!r} is not allowed; see TIDEGATE_ALLOWED_ORIGINS"
                )
                return error_response(refused, shape)
            cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {}
            if request.method == "OPTIONS":
                return Response(
                    status_code=204,
                    headers={
                        **cors,
                        "Access-Control-Allow-Methods": methods,
                        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
                    },
                )
            try:
                token = bearer_from_header(request.headers.get("authorization"))
                principal = await runtime.verifier.verify(token, scope)
                await runtime.limiter.requests.acquire(principal)
                response = await handler(request, runtime, principal)
            except RefusalError as e:
                response = error_response(e, shape)
            except ClientDisconnect:
                return Response(status_code=499)  # nobody is left to read it
            except Exception as e:
                explained = translate(e, runtime) if translate is not None else None
                if explained is None:
                    log.exception("%s %s failed", request.method, request.url.path)
                    runtime.counters["api_internal_errors"] += 1
                    explained = InternalError(
                        "the server failed to answer this request; its log has the details"
                    )
                response = error_response(explained, shape)
            response.headers.update(cors)
            return response

        serve.__doc__ = handler.__doc__
        return serve

    return wrap


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, at most ``max_bytes``: a larger ``Content-Length`` is refused before
    anything is read, a streamed (chunked) body as soon as it passes the bound."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit():
        if int(declared) > max_bytes:
            raise TooLargeError(f"body: {declared} bytes, over {max_bytes} (http_max_body_bytes)")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > max_bytes:
            raise TooLargeError(f"body: over {max_bytes} bytes (http_max_body_bytes)")
    return bytes(body)
