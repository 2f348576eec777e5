"""The HTTP edge: one ASGI middleware in front of every HTTP route.

:class:`Edge` sits in the starlette application's middleware stack, so every HTTP request
reaches a route through it; a route added to the application is behind it by construction,
whatever its handler does. For the route that owns the request's path it does, in order:

1. the browser origin allow-list (:func:`check_origin`, :meth:`Runtime.origin_allowed`; 403
   ``forbidden``), CORS headers for an allowed origin, and preflights (``OPTIONS``) answered
   with the route's methods;
2. authentication: ``Authorization: Bearer <jwt>`` with the route's declared scope (401
   ``unauthorized``, 403 ``forbidden``);
3. the per-subject request budget (``rate_requests_per_s`` / ``rate_burst_requests``, the
   limiter the control channel's buckets live in, shared across nodes with Redis; 429
   ``rate_limited`` with ``Retry-After``);
4. one error → status table (:data:`STATUS_FOR_CODE`) for what the handler raises: a
   :class:`~tidegate.server.errors.RefusalError` becomes its status and a body in the route's
   shape (the records API's ``{"error": {...}}``, the offer route's flat object, OpenAI's
   error object); anything else is our fault: logged with its traceback, answered 500
   ``internal`` with nothing of it on the wire. A method the route does not serve is 405.

What a route asks of the edge (its scope, its error shape, how it explains its own failures)
is declared on its handler with :func:`handler`, which also hands the handler the verified
principal; a route without a declaration gets the defaults (scope ``session``, the records
API's shape). Routes outside the edge are declared in one place, :data:`PUBLIC`, and nowhere
else (docs/security.md lists them; a test walks every route of the application and checks
both).

The WebSocket routes keep their in-band refusals (a browser cannot read an HTTP refusal of a
WebSocket handshake) and share the origin and token checks through :func:`admit`.

:func:`read_body` reads a request body with a bound: a ``Content-Length`` over it is refused
before reading, a streamed body as soon as it passes it (413 ``too_large``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
#: the HTTP routes outside the edge, by design: path -> why (a mount's path covers what is
#: under it). Nothing else answers without a token; docs/security.md lists the same.
PUBLIC: Mapping[str, str] = {
    "/healthz": "liveness probe for orchestrators and load balancers",
    "/readyz": "readiness probe for orchestrators and load balancers",
    "/openapi.json": "the records API's description, public like any API reference",
    "/v1/auth/config": "the sign-in options: how a browser gets a token in the first place",
    "/v1/dev/token": "the development login: mints the token itself, for loopback callers only, "
    "with its own Host and origin checks (tidegate.server.web)",
    "/": "the browser client's files (static; the page signs in before it calls anything)",
}
#: where the edge puts the verified principal in the ASGI scope, for :func:`principal`
PRINCIPAL_KEY = "tidegate.principal"

Handler = Callable[[Request, "Runtime", Principal], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]
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


# -- what a route declares ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """What a route asks of the edge: the token scope it needs, the shape of its error bodies,
    and how it explains exceptions of its own (None: every other exception is a 500)."""

    scope: str = SCOPE_SESSION
    shape: Shape = wrapped
    translate: Translate | None = None


DEFAULT_POLICY = Policy()
_POLICY_ATTR = "__tidegate_edge_policy__"


def handler(
    *, scope: str = SCOPE_SESSION, shape: Shape = wrapped, translate: Translate | None = None
) -> Callable[[Handler], Endpoint]:
    """Declare a route's :class:`Policy` and give its handler ``(request, runtime,
    principal)``: the edge has verified the principal before the handler runs."""
    policy = Policy(scope, shape, translate)

    def wrap(fn: Handler) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            return await fn(request, request.app.state.runtime, principal(request))

        endpoint.__doc__ = fn.__doc__
        endpoint.__name__ = endpoint.__qualname__ = fn.__name__
        setattr(endpoint, _POLICY_ATTR, policy)
        return endpoint

    return wrap


def policy_of(route: BaseRoute) -> Policy:
    """A route's declared policy, or the defaults."""
    declared = getattr(getattr(route, "endpoint", None), _POLICY_ATTR, None)
    return declared if isinstance(declared, Policy) else DEFAULT_POLICY


def route_path(route: BaseRoute) -> str:
    """The path a route is declared with (``/`` for a mount at the root)."""
    return getattr(route, "path", "") or "/"


def is_public(route: BaseRoute) -> bool:
    return route_path(route) in PUBLIC


def principal(request: Request) -> Principal:
    """The principal the edge verified for this request. A handler served without the edge
    has none: it fails closed (500) rather than answer unauthenticated."""
    found = request.scope.get(PRINCIPAL_KEY)
    if not isinstance(found, Principal):
        raise RuntimeError(f"{request.url.path} was served without the edge (no principal)")
    return found


# -- the checks, shared with the WebSocket routes -----------------------------------------------


def check_origin(runtime: Runtime, headers: Mapping[str, str]) -> None:
    """Refuse (ForbiddenError) a browser ``Origin`` the allow-list does not admit."""
    origin = headers.get("origin")
    if not runtime.origin_allowed(origin, headers.get("host")):
        raise ForbiddenError(f"origin {origin!r} is not allowed; see TIDEGATE_ALLOWED_ORIGINS")


async def admit(
    runtime: Runtime, headers: Mapping[str, str], token: str | None, scope: str
) -> Principal:
    """The origin allow-list, then the token with ``scope``: the caller's principal, or the
    RefusalError to answer (in-band on a WebSocket, as a status over HTTP)."""
    check_origin(runtime, headers)
    return await runtime.verifier.verify(token, scope)


# -- the middleware -----------------------------------------------------------------------------


def owner(routes: list[BaseRoute], scope: Scope) -> BaseRoute | None:
    """The route that owns the request's path: the one starlette serves, except that a route
    matching the path by another method owns it before a later catch-all mount (so a
    preflight or a wrong method on an API path is the edge's, not the web client's)."""
    partial: BaseRoute | None = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL and (partial is None or not isinstance(route, Mount)):
            return route
        if match is Match.PARTIAL and partial is None:
            partial = route
    return partial


def _methods(route: BaseRoute) -> list[str]:
    """The methods a route serves (every method for a mount)."""
    methods = route.methods if isinstance(route, Route) else None
    return sorted(methods) if methods else []


class Edge:
    """ASGI middleware: the checks of the module docstring in front of every HTTP route but
    the :data:`PUBLIC` ones. WebSocket and lifespan traffic passes through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = owner(scope["app"].router.routes, scope)
        if route is None or is_public(route):
            await self.app(scope, receive, send)
            return
        policy = policy_of(route)
        runtime: Runtime = scope["app"].state.runtime
        headers = Headers(scope=scope)
        try:
            check_origin(runtime, headers)
        except ForbiddenError as refused:
            runtime.counters["api_origin_refused"] += 1
            await error_response(refused, policy.shape)(scope, receive, send)
            return
        origin = headers.get("origin")
        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {}
        methods = _methods(route)
        if scope["method"] == "OPTIONS":
            allow = ", ".join([m for m in methods if m != "HEAD"] + ["OPTIONS"])
            preflight = {
                "Access-Control-Allow-Methods": allow,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
            }
            await Response(status_code=204, headers={**cors, **preflight})(scope, receive, send)
            return
        started = False

        async def send_with_cors(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                extra = [
                    (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in cors.items()
                ]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            token = bearer_from_header(headers.get("authorization"))
            scope[PRINCIPAL_KEY] = await runtime.verifier.verify(token, policy.scope)
            await runtime.limiter.requests.acquire(scope[PRINCIPAL_KEY])
            if methods and scope["method"] not in methods:
                allowed = {"Allow": ", ".join([*methods, "OPTIONS"])}
                response: Response = PlainTextResponse("Method Not Allowed", 405, headers=allowed)
            else:
                await self.app(scope, receive, send_with_cors)
                return
        except RefusalError as e:
            if started:  # a streamed body failed: too late for a status
                raise
            response = error_response(e, policy.shape)
        except ClientDisconnect:
            if started:
                return
            response = Response(status_code=499)  # nobody is left to read it
        except Exception as e:
            if started:
                raise
            explained = policy.translate(e, runtime) if policy.translate is not None else None
            if explained is None:
                log.exception("%s %s failed", scope["method"], scope["path"])
                runtime.counters["api_internal_errors"] += 1
                explained = InternalError(
                    "the server failed to answer this request; its log has the details"
                )
            response = error_response(explained, policy.shape)
        await response(scope, receive, send_with_cors)


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
