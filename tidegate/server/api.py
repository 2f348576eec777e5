"""The HTTP API over what the server keeps: sessions, their transcripts, responses, sensor
batches, latency summaries and lifecycle events; deleting a session's data; the OpenAPI
description (``/openapi.json``).

Every request carries a JWT (``Authorization: Bearer``). A token sees its own tenant's data
only; one with the ``admin`` scope sees every tenant's (and may filter on ``tenant``). Another
tenant's session answers exactly like a missing one (404): no existence oracle. Requests are
rate-limited per subject (``rate_requests_per_s``: 429 with ``Retry-After``), and a browser's
``Origin`` must pass the same allow-list as the control channel (``allowed_origins``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidegate.pipelines import records as rec
from tidegate.protocol import ErrorCode
from tidegate.store import store
from tidegate.store.writer import is_unavailable

from . import edge, params
from .auth import SCOPE_ADMIN, Principal
from .errors import ForbiddenError, InvalidConfigError, NotFoundError, RefusalError
from .runtime import Runtime

MAX_TENANT_CHARS = 128  # as the token's tenant claim

DEFAULT_PAGE_ITEMS = 50
CHILD_KINDS = ("transcript", "responses", "sensors", "latency", "events")


class SessionLiveError(RefusalError):
    code = ErrorCode.UNEXPECTED_MESSAGE


class DatabaseUnavailableError(RefusalError):
    code = ErrorCode.OVERLOADED


def _database_unavailable(e: Exception, runtime: Runtime) -> RefusalError | None:
    """The database is away: 503 with a retry hint (any other exception is ours: 500)."""
    if not is_unavailable(e):
        return None
    return DatabaseUnavailableError(
        "the database is unavailable; retry shortly",
        retry_after_ms=runtime.settings.db_retry_s * 1000,
    )


#: the records API's routes behind the edge: the database's unavailability is a 503
endpoint = edge.handler(translate=_database_unavailable)
#: the admin routes: the same, with the ``admin`` scope
admin_endpoint = edge.handler(scope=SCOPE_ADMIN, translate=_database_unavailable)


# -- query parameters ---------------------------------------------------------------------------


def _tenant_scope(request: Request, principal: Principal) -> str | None:
    """The tenant a request may see: its own, or (admin) any, or the one it filters on."""
    asked = params.text(request, "tenant", max_chars=MAX_TENANT_CHARS)
    if principal.is_admin:
        return asked or None
    if asked is not None and asked != principal.tenant:
        raise ForbiddenError("tenant: only an admin token may read another tenant's data")
    return principal.tenant


def _limit(request: Request, runtime: Runtime) -> int:
    top = runtime.settings.api_page_max_items
    limit = params.integer(request, "limit", low=1, high=top)
    return min(DEFAULT_PAGE_ITEMS, top) if limit is None else limit


def _cursor(request: Request) -> str | None:
    cursor = params.cursor(request)
    if cursor is not None:
        try:
            store.decode_cursor(cursor)
        except store.CursorError as e:
            raise InvalidConfigError(str(e)) from None
    return cursor


def _page(page: store.Page) -> JSONResponse:
    return JSONResponse({"items": page.items, "next_cursor": page.next_cursor})


def _not_found(session_id: str) -> NotFoundError:
    return NotFoundError(f"no session {session_id!r}")


# -- handlers -----------------------------------------------------------------------------------


@endpoint
async def list_sessions(request: Request, runtime: Runtime, principal: Principal) -> Response:
    """Sessions, newest first, filtered and paginated."""
    status = request.query_params.get("status")
    if status is not None and status not in (rec.STATUS_OPEN, *rec.END_STATUSES):
        raise InvalidConfigError(
            f"status: expected one of {[rec.STATUS_OPEN, *rec.END_STATUSES]}, got {status!r}"
        )
    f = store.SessionFilter(
        tenant=_tenant_scope(request, principal),
        subject=params.text(request, "subject"),
        status=status,
        mode=params.text(request, "mode"),
        since_ms=params.epoch_ms(request, "since_ms"),
        until_ms=params.epoch_ms(request, "until_ms"),
    )
    limit, cursor = _limit(request, runtime), _cursor(request)
    async with runtime.recorder.engine.connect() as conn:
        return _page(await store.list_sessions(conn, f, limit=limit, cursor=cursor))


@endpoint
async def session_detail(request: Request, runtime: Runtime, principal: Principal) -> Response:
    """One session (GET), or delete all its data (DELETE)."""
    session_id = params.path_id(request, "session_id")
    tenant = None if principal.is_admin else principal.tenant
    if request.method == "DELETE":
        return await _delete(runtime, session_id, tenant)
    async with runtime.recorder.engine.connect() as conn:
        row = await store.get_session(conn, session_id, tenant)
    if row is None:
        raise _not_found(session_id)
    return JSONResponse(row)


async def _delete(runtime: Runtime, session_id: str, tenant: str | None) -> Response:
    if runtime.registry.get(session_id) is None:  # running on another node: say which
        await runtime.cluster.wrong_node(session_id, tenant, "DELETE")
    async with runtime.recorder.engine.connect() as conn:
        owner = await store.session_owner(conn, session_id)
    if owner is None or (tenant is not None and owner != tenant):
        raise _not_found(session_id)
    live = runtime.registry.get(session_id)
    if live is not None and not live.closed:
        raise SessionLiveError(
            f"session {session_id!r} is still running; close it (session.close) first"
        )
    timeout_s = runtime.settings.db_timeout_s
    deletion = rec.SessionDeleted(session_id=session_id, tenant=owner)
    if not await runtime.recorder.record_journaled(deletion, timeout_s):  # 202 means journaled
        raise DatabaseUnavailableError(
            "the deletion could not be journaled in time (the writer's queue is full or the "
            "writer is not running); if it was queued it is applied later; retry shortly (a "
            "deleted session answers 404)",
            retry_after_ms=1000.0,
        )
    if await runtime.recorder.flush(timeout_s):
        return Response(status_code=204)
    return JSONResponse(
        {"status": "accepted", "detail": "journaled; applied when the database is back"}, 202
    )


def _children(kind: str) -> Callable[[Request], Awaitable[Response]]:
    @endpoint
    async def handler(request: Request, runtime: Runtime, principal: Principal) -> Response:
        session_id = params.path_id(request, "session_id")
        tenant = None if principal.is_admin else principal.tenant
        limit, cursor = _limit(request, runtime), _cursor(request)
        async with runtime.recorder.engine.connect() as conn:
            page = await store.list_children(
                conn, kind, session_id, tenant, limit=limit, cursor=cursor
            )
        if page is None:
            raise _not_found(session_id)
        return _page(page)

    return handler


@admin_endpoint
async def db_status(request: Request, runtime: Runtime, principal: Principal) -> Response:
    """The writer, its queue and journal, and the rate limiters (admin only)."""
    return JSONResponse({"writer": runtime.recorder.stats(), "limits": runtime.limiter.stats()})


@admin_endpoint
async def cluster_status(request: Request, runtime: Runtime, principal: Principal) -> Response:
    """This node's cluster state and the live nodes with their load (admin only)."""
    return JSONResponse({"node": runtime.cluster.stats(), "nodes": await runtime.cluster.nodes()})


async def openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)


def api_routes() -> list[Route]:
    routes = [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/sessions", list_sessions, methods=["GET"]),
        Route("/v1/sessions/{session_id}", session_detail, methods=["GET", "DELETE"]),
        Route("/v1/admin/db", db_status, methods=["GET"]),
        Route("/v1/cluster", cluster_status, methods=["GET"]),
    ]
    for kind in CHILD_KINDS:
        routes.append(
            Route(f"/v1/sessions/{{session_id}}/{kind}", _children(kind), methods=["GET"])
        )
    return routes


# -- OpenAPI ------------------------------------------------------------------------------------


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


S = {"type": "string"}
SN = {"type": ["string", "null"]}
N = {"type": "number"}
NN = {"type": ["number", "null"]}
I = {"type": "integer"}  # noqa: E741
J = {"type": "object", "additionalProperties": True}


def _page_of(ref: str) -> dict[str, Any]:
    return _obj(
        {
            "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{ref}"}},
            "next_cursor": SN,
        },
        ["items", "next_cursor"],
    )


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERR = {"$ref": "#/components/schemas/Error"}
ERRORS = {
    str(code): _json_response(text, ERR)
    for code, text in (
        (400, "a query or path parameter is invalid (code invalid_field)"),
        (401, "no token, or one that does not verify (code unauthorized)"),
        (403, "the token lacks a scope, or the origin is not allowed (code forbidden)"),
        (429, "too many requests for this subject; see Retry-After (code rate_limited)"),
        (500, "our fault; the server log has the details (code internal)"),
        (503, "the database is unavailable; see Retry-After (code overloaded)"),
    )
}
NOT_FOUND = {"404": _json_response("no such session visible to this token (code not_found)", ERR)}
PAGE_PARAMS = [
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "default": DEFAULT_PAGE_ITEMS},
        "description": "items per page (at most api_page_max_items)",
    },
    {
        "name": "cursor",
        "in": "query",
        "schema": S,
        "description": "next_cursor of the previous page",
    },
]
SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": S}
CHILD_SCHEMAS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "transcript": (
        "TranscriptSegment",
        "final transcript segments, oldest first",
        {
            "id": S,
            "session_id": S,
            "segment_id": S,
            "text": S,
            "language": SN,
            "audio_start_ms": N,
            "audio_end_ms": N,
            "created_at_ms": N,
        },
    ),
    "responses": (
        "Response",
        "responses (replies), oldest first",
        {
            "id": S,
            "session_id": S,
            "response_id": S,
            "status": S,
            "text": S,
            "spoken_text": SN,
            "ref": SN,
            "tool_calls": SN,
            "created_at_ms": N,
        },
    ),
    "sensors": (
        "SensorBatch",
        "sensor batches, oldest first",
        {
            "id": S,
            "session_id": S,
            "channel": S,
            "count": I,
            "first_ts_ms": N,
            "last_ts_ms": N,
            "readings": {"type": "array", "items": {"type": "array"}},
            "created_at_ms": N,
        },
    ),
    "latency": (
        "LatencySummary",
        "latency summaries, oldest first",
        {
            "id": S,
            "session_id": S,
            "metric": S,
            "count": I,
            "p50_ms": N,
            "p90_ms": N,
            "p99_ms": N,
            "max_ms": N,
            "created_at_ms": N,
        },
    ),
    "events": (
        "SessionEvent",
        "lifecycle events (started, resumed, ended), oldest first",
        {"id": S, "session_id": S, "kind": S, "at_ms": N, "detail": J},
    ),
}
SESSION_PROPS = {
    "id": S,
    "tenant_id": S,
    "subject": S,
    "mode": S,
    "status": {"type": "string", "enum": [rec.STATUS_OPEN, *rec.END_STATUSES]},
    "created_at_ms": N,
    "ended_at_ms": NN,
    "end_reason": SN,
    "resumes": I,
    "last_resumed_at_ms": NN,
    "encoding": SN,
    "user_agent": SN,
    "origin": SN,
    "remote_addr": SN,
    "config": J,
}


def _build_openapi() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v1/sessions": {
            "get": {
                "summary": "List sessions, newest first",
                "parameters": [
                    *(
                        {"name": name, "in": "query", "schema": schema, "description": doc}
                        for name, schema, doc in (
                            ("status", SESSION_PROPS["status"], "lifecycle status"),
                            ("mode", S, "session mode"),
                            ("subject", S, "token subject that opened it"),
                            ("since_ms", N, "created at or after (epoch ms)"),
                            ("until_ms", N, "created before (epoch ms)"),
                            ("tenant", S, "admin only: one tenant's sessions"),
                        )
                    ),
                    *PAGE_PARAMS,
                ],
                "responses": {
                    "200": _json_response("a page of sessions", _page_of("Session")),
                    **ERRORS,
                },
            }
        },
        "/v1/sessions/{session_id}": {
            "get": {
                "summary": "One session with its stats summary and record counts",
                "parameters": [SESSION_ID],
                "responses": {
                    "200": _json_response(
                        "the session", {"$ref": "#/components/schemas/SessionDetail"}
                    ),
                    **NOT_FOUND,
                    **ERRORS,
                },
            },
            "delete": {
                "summary": "Delete all data of an ended session",
                "parameters": [SESSION_ID],
                "responses": {
                    "204": {"description": "deleted"},
                    "202": _json_response(
                        "journaled; applied when the database is back",
                        _obj({"status": S, "detail": S}),
                    ),
                    "409": _json_response(
                        "the session is still running (code unexpected_message)", ERR
                    ),
                    "421": _json_response(
                        "another node holds the session (running): error.node, "
                        "error.node_url and the X-Tidegate-Node header name it",
                        ERR,
                    ),
                    **NOT_FOUND,
                    **ERRORS,
                },
            },
        },
        "/v1/admin/db": {
            "get": {
                "summary": "Writer, queue, journal and rate limiter counters (admin scope)",
                "responses": {"200": _json_response("counters", J), **ERRORS},
            }
        },
        "/v1/cluster": {
            "get": {
                "summary": "This node's cluster state (Redis link, directory, caches) and "
                "the live nodes with their load (admin scope; docs/cluster.md)",
                "responses": {"200": _json_response("node and nodes", J), **ERRORS},
            }
        },
    }
    schemas: dict[str, Any] = {
        "Error": _obj(
            {"error": _obj({"code": S, "message": S, "retry_after_ms": N}, ["code", "message"])},
            ["error"],
        ),
        "Session": _obj(SESSION_PROPS, list(SESSION_PROPS)),
        "SessionDetail": _obj(
            {**SESSION_PROPS, "stats": {"type": ["object", "null"]}, "counts": J},
            [*SESSION_PROPS, "stats", "counts"],
        ),
    }
    for kind, (name, summary, props) in CHILD_SCHEMAS.items():
        schemas[name] = _obj(props, list(props))
        paths[f"/v1/sessions/{{session_id}}/{kind}"] = {
            "get": {
                "summary": f"One session's {summary}",
                "parameters": [SESSION_ID, *PAGE_PARAMS],
                "responses": {
                    "200": _json_response(f"a page of {summary}", _page_of(name)),
                    **NOT_FOUND,
                    **ERRORS,
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tidegate records API",
            "version": "1",
            "description": "Sessions and what they recorded. See docs/persistence.md.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "security": [{"bearer": []}],
    }


OPENAPI = _build_openapi()


@edge.handler(scope=SCOPE_ADMIN)
async def metrics_endpoint(request: Request, runtime: Runtime, principal: Principal) -> Response:
    """``GET /metrics`` on the main port (:mod:`.metrics`): an ``admin``-scope token."""
    return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
