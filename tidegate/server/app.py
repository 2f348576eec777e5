"""The starlette application: health, readiness, the control channel, the Realtime
WebSocket (``/v1/realtime``) and the HTTP routes.

Every HTTP route is behind the edge middleware (:class:`.edge.Edge`: origin allow-list, token,
the subject's request budget, one error table) but the public ones it names
(:data:`.edge.PUBLIC`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from tidegate.engines.llm import ProviderPool

from .api import api_routes, metrics_endpoint
from .asgi_ws import AsgiWebSocket, WebSocketFront
from .control import control_endpoint
from .edge import Edge
from .metrics import METRICS_PATH
from .openai_api import CHAT_COMPLETIONS_PATH, chat_completions
from .realtime import REALTIME_PATH, realtime_endpoint
from .realtime_calls import CALLS_PATH, calls_endpoint
from .rtc import offer_endpoint
from .runtime import Runtime
from .settings import Settings
from .web import DEV_TOKEN_PATH, WebApp, dev_token_endpoint, web_dir
from .webauth import AUTH_CONFIG_PATH, auth_config


async def healthz(request: Request) -> JSONResponse:
    """Liveness: the process serves requests."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Readiness: start-up finished (engines loaded and warm), the record writer runs, and
    not draining."""
    runtime: Runtime = request.app.state.runtime
    if runtime.ready and not runtime.draining and not runtime.recorder.running:
        error = "the record writer is not running; it restarts by itself (see the server log)"
        return JSONResponse({"status": "degraded", "error": error}, status_code=503)
    issuers = runtime.verifier.status()
    if runtime.ready and not runtime.draining and not runtime.verifier.starting:
        body: dict[str, object] = {"status": "ready", "sessions": len(runtime.registry)}
        if issuers:  # an unreachable issuer is reported, not fatal: its cached keys still work
            body["issuers"] = issuers
        if runtime.engines is not None and runtime.engines.missing:
            # an optional engine whose model is missing: served without it, not fatal
            body["engines_missing"] = dict(runtime.engines.missing)
        llm = runtime.engines.batchers.get("llm") if runtime.engines is not None else None
        if isinstance(llm, ProviderPool):  # each provider's breaker and counts
            body["llm_providers"] = llm.readiness()
        return JSONResponse(body)
    if runtime.startup_error is not None:
        return JSONResponse({"status": "failed", "error": runtime.startup_error}, status_code=503)
    status = "draining" if runtime.draining else "starting"
    return JSONResponse({"status": status, **({"issuers": issuers} if issuers else {})}, 503)


CONTROL_PATH = "/v1/control"


def create_app(settings: Settings | None = None) -> WebSocketFront:
    """The ASGI application: the control WebSocket on its own fast path, the rest on starlette."""
    settings = settings or Settings.load()
    runtime = Runtime(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route(METRICS_PATH, metrics_endpoint, methods=["GET"]),
            Route("/v1/sessions/{session_id}/offer", offer_endpoint, methods=["POST"]),
            Route(CALLS_PATH, calls_endpoint, methods=["POST"]),
            Route(CHAT_COMPLETIONS_PATH, chat_completions, methods=["POST"]),
            *api_routes(),
            Route(DEV_TOKEN_PATH, dev_token_endpoint(settings), methods=["POST"]),
            Route(AUTH_CONFIG_PATH, auth_config, methods=["GET"]),
            Mount("/", WebApp(web_dir(settings), settings)),  # last: the browser client's files
        ],
        middleware=[Middleware(Edge)],  # in front of every HTTP route (edge.PUBLIC excepted)
        lifespan=lifespan,
    )
    app.state.runtime = runtime

    async def control(ws: AsgiWebSocket) -> None:
        await control_endpoint(ws, runtime)

    async def realtime(ws: AsgiWebSocket) -> None:
        await realtime_endpoint(ws, runtime)

    # The two WebSocket routes on the raw-ASGI path (asgi_ws.py); the Realtime dialect's is
    # the same shell with the translator as its wire (realtime.py).
    return WebSocketFront(app, {CONTROL_PATH: control, REALTIME_PATH: realtime})
