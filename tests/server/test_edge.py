"""The HTTP edge in front of every route: origin allow-list, token, the subject's request
budget and one error table, against a live server."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidegate.server import edge
from tidegate.server.auth import Principal
from tidegate.server.runtime import Runtime
from tidegate.server.web import DEV_TOKEN_PATH
from tidegate.server.webauth import AUTH_CONFIG_PATH

from .conftest import LiveServer, make_settings, run_server

#: routes outside the edge, on purpose (module docstring of tidegate.server.edge)
PUBLIC = {"/healthz", "/readyz", "/openapi.json", DEV_TOKEN_PATH, AUTH_CONFIG_PATH}


def _edge_routes(live: LiveServer) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route of the running app but the public ones."""
    out = []
    for route in live.app.app.routes:
        if isinstance(route, Route) and route.path not in PUBLIC:
            method = sorted(route.methods - {"HEAD", "OPTIONS"})[0]
            out.append((method, route.path.replace("{session_id}", "s_x")))
    return out


async def test_every_http_route_is_behind_the_edge(tmp_path: Path) -> None:
    """Every route but health, readiness, the OpenAPI document, the sign-in options and the
    development login refuses a foreign Origin (403) and a missing token (401), and answers 429 with
    Retry-After once the subject's request budget is spent."""
    settings = make_settings(tmp_path, rate_requests_per_s=0.01, rate_burst_requests=1)
    async with run_server(settings) as live, httpx.AsyncClient(base_url=live.http) as http:
        routes = _edge_routes(live)
        assert {"/v1/chat/completions", "/v1/sessions/s_x/offer", "/metrics"} <= {
            p for _, p in routes
        }
        for i, (method, path) in enumerate(routes):
            auth = {"Authorization": f"Bearer {live.token(subject=f'u{i}', scopes=('admin',))}"}
            evil = {**auth, "Origin": "http://evil.example"}
            r = await http.request(method, path, headers=evil)
            assert r.status_code == 403 and "evil.example" in r.text, (method, path, r.text)
            r = await http.request(method, path)
            assert r.status_code == 401 and "unauthorized" in r.text, (method, path, r.text)
            first = await http.request(method, path, headers=auth)
            assert first.status_code != 429, (method, path)
            second = await http.request(method, path, headers=auth)
            assert second.status_code == 429 and "rate_limited" in second.text, (method, path)
            assert int(second.headers["Retry-After"]) >= 1


async def test_an_unexpected_exception_is_a_500_without_details(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises something no refusal explains is answered 500 ``internal`` as
    JSON naming nothing of the exception; the server log has the traceback."""

    @edge.endpoint("GET")
    async def broken(request: Request, runtime: Runtime, principal: Principal) -> Response:
        raise RuntimeError("secret detail /etc/passwd")

    app = Starlette(routes=[Route("/broken", broken)])
    app.state.runtime = server.runtime  # the live server's runtime: its verifier and limiter
    auth = {"Authorization": f"Bearer {server.token()}"}
    transport = httpx.ASGITransport(app=app)
    with caplog.at_level(logging.ERROR, logger="tidegate.server.edge"):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            r = await http.get("/broken", headers=auth)
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "internal"
    assert "secret" not in r.text and "Traceback" not in r.text
    assert "secret detail" in caplog.text
