"""The HTTP edge in front of every route: origin allow-list, token, the subject's request
budget and one error table, walked route by route against a live server."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from tests.support import scaled
from tidegate.protocol.client import Client
from tidegate.protocol.messages import Error
from tidegate.server import edge
from tidegate.server.auth import SCOPE_ADMIN, SCOPE_SESSION, Principal
from tidegate.server.runtime import Runtime
from tidegate.server.web import DEV_TOKEN_PATH
from tidegate.server.webauth import AUTH_CONFIG_PATH

from .conftest import LiveServer, make_settings, run_server

ROOT = Path(__file__).resolve().parents[2]
#: the public routes as docs/security.md documents them (the web client's files at "/")
DOCUMENTED_PUBLIC = {"/healthz", "/readyz", "/openapi.json", AUTH_CONFIG_PATH, DEV_TOKEN_PATH, "/"}
EVIL = "http://evil.example"
#: mints a token: (subject, scopes) -> JWT
Mint = Callable[[str, Sequence[str]], str]


def _requests(route: BaseRoute) -> list[tuple[str, str]]:
    """(method, concrete path) for every method a route serves; a mount: a path under it."""
    if isinstance(route, Mount):
        return [("GET", route.path + "/x"), ("POST", route.path + "/x")]
    assert isinstance(route, Route), route
    path = re.sub(r"\{[^}]+\}", "s_x", route.path)
    return [(m, path) for m in sorted((route.methods or set()) - {"OPTIONS"})]


def http_routes(routes: Iterable[BaseRoute]) -> list[BaseRoute]:
    """The HTTP routes (a WebSocket route refuses in-band, not by status)."""
    return [r for r in routes if isinstance(r, Route | Mount)]


async def walk(http: httpx.AsyncClient, routes: Iterable[BaseRoute], mint: Mint) -> list[str]:
    """Every way in which an HTTP route outside edge.PUBLIC is not behind the edge: for each
    of its methods, a disallowed origin must get 403, no token and a bad token 401, a token
    without the route's declared scope 403, and the second request of a subject whose
    budget holds one 429 with Retry-After; a preflight from a disallowed origin 403."""
    problems: list[str] = []

    def expect(r: httpx.Response, status: int, what: str, needle: str = "") -> None:
        if r.status_code != status or (r.request.method != "HEAD" and needle not in r.text):
            problems.append(f"{r.request.method} {r.request.url.path}: {what} -> {r.status_code}")

    for i, route in enumerate(http_routes(routes)):
        if edge.is_public(route):
            continue
        scope = edge.policy_of(route).scope
        for j, (method, path) in enumerate(_requests(route)):
            good = {"Authorization": f"Bearer {mint(f'w{i}m{j}', (SCOPE_SESSION, SCOPE_ADMIN))}"}
            r = await http.request(method, path, headers={**good, "Origin": EVIL})
            expect(r, 403, "a disallowed origin", "evil.example")
            expect(await http.request(method, path), 401, "no token", "unauthorized")
            bad = {"Authorization": "Bearer not-a-jwt"}
            expect(await http.request(method, path, headers=bad), 401, "a bad token")
            if scope != SCOPE_SESSION:
                lesser = {"Authorization": f"Bearer {mint(f'w{i}m{j}', (SCOPE_SESSION,))}"}
                r = await http.request(method, path, headers=lesser)
                expect(r, 403, f"a token without scope {scope!r}", "forbidden")
            first = await http.request(method, path, headers=good)
            if first.status_code == 429:
                problems.append(f"{method} {path}: the first request of a subject -> 429")
            second = await http.request(method, path, headers=good)
            expect(second, 429, "a spent request budget", "rate_limited")
            if second.status_code == 429 and int(second.headers.get("Retry-After", "0")) < 1:
                problems.append(f"{method} {path}: 429 without Retry-After")
        path = _requests(route)[0][1]
        preflight = {"Origin": EVIL, "Access-Control-Request-Method": "GET"}
        r = await http.options(path, headers=preflight)
        expect(r, 403, "a preflight from a disallowed origin", "evil.example")
    return problems


def _security_doc_public() -> set[str]:
    """The paths docs/security.md's "Public routes" table names."""
    text = (ROOT / "docs" / "security.md").read_text()
    section = text.split("## Public routes", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(?:[A-Z]+ )?(/[^`]*)`", section, re.MULTILINE))


async def test_every_http_route_is_behind_the_edge(tmp_path: Path) -> None:
    """Every HTTP route of the app, method by method, refuses a foreign Origin (403), a missing
    or bad token (401), a token without its declared scope (403) and a spent request budget
    (429 with Retry-After) — but the public ones, which are exactly those documented."""
    settings = make_settings(tmp_path, rate_requests_per_s=0.01, rate_burst_requests=1)
    async with run_server(settings) as live, httpx.AsyncClient(base_url=live.http) as http:
        routes = http_routes(live.app.app.routes)
        public = {edge.route_path(r) for r in routes if edge.is_public(r)}
        assert public == set(edge.PUBLIC) == DOCUMENTED_PUBLIC == _security_doc_public()
        walked = {p for r in routes if not edge.is_public(r) for _, p in _requests(r)}
        assert {"/v1/chat/completions", "/v1/sessions/s_x/offer", "/metrics"} <= walked
        scopes = {edge.route_path(r): edge.policy_of(r).scope for r in routes}
        assert scopes["/metrics"] == scopes["/v1/admin/db"] == scopes["/v1/cluster"] == "admin"

        def mint(subject: str, scopes: Sequence[str]) -> str:
            return live.token(subject=subject, scopes=scopes)

        assert await walk(http, routes, mint) == []
        for route in routes:  # public: answered without a token, whatever the budget
            if edge.is_public(route):
                method, path = _requests(route)[0]
                for _ in range(2):
                    r = await http.request(method, path)
                    assert r.status_code not in (401, 403, 429), (method, path, r.text)


async def test_a_new_route_is_behind_the_edge_and_the_walk_catches_one_that_is_not(
    tmp_path: Path,
) -> None:
    """A bare route added to the app (no declaration, no checks of its own) is behind the edge
    by construction; served without the edge, the walk flags it on every check."""

    async def bare(request: Request) -> Response:
        return PlainTextResponse("anyone may read this")

    settings = make_settings(tmp_path, rate_requests_per_s=0.01, rate_burst_requests=1)
    async with run_server(settings) as live:
        routes = [Route("/v1/bare", bare), *live.app.app.routes]

        async def walk_app(app: Starlette, prefix: str) -> list[str]:
            app.state.runtime = live.runtime  # the live server's verifier and limiter
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                return await walk(
                    http, routes[:1], lambda s, sc: live.token(subject=prefix + s, scopes=sc)
                )

        behind = Starlette(routes=routes, middleware=[Middleware(edge.Edge)])
        assert await walk_app(behind, "a") == []
        bypassed = await walk_app(Starlette(routes=routes), "b")
    for what in ("a disallowed origin", "no token", "a bad token", "a spent request budget"):
        assert any(p.startswith("GET /v1/bare:") and what in p for p in bypassed), bypassed
    assert any(p.startswith("OPTIONS /v1/bare:") for p in bypassed), "\n".join(bypassed)


async def test_a_wrong_method_is_the_edges_not_the_web_clients(server: LiveServer) -> None:
    """A method an API route does not serve still needs a token (401), then is 405 with
    Allow, not the web client's answer; a preflight names the route's methods."""
    auth = {"Authorization": f"Bearer {server.token()}"}
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.put("/v1/sessions")).status_code == 401
        r = await http.put("/v1/sessions", headers=auth)
        assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD, OPTIONS"
        pre = await http.options("/v1/sessions/s_x", headers={"Origin": server.http})
        assert pre.status_code == 204
        assert pre.headers["Access-Control-Allow-Methods"] == "DELETE, GET, OPTIONS"
        assert pre.headers["Access-Control-Allow-Origin"] == server.http


async def test_an_unexpected_exception_is_a_500_without_details(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises something no refusal explains is answered 500 ``internal`` as
    JSON naming nothing of the exception; the server log has the traceback."""

    @edge.handler()
    async def broken(request: Request, runtime: Runtime, principal: Principal) -> Response:
        raise RuntimeError("secret detail /etc/passwd")

    app = Starlette(routes=[Route("/broken", broken)], middleware=[Middleware(edge.Edge)])
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


async def test_a_handler_served_without_the_edge_fails_closed(server: LiveServer) -> None:
    """A declared handler that somehow runs without the edge has no principal: it answers
    500, never the caller's data."""

    @edge.handler()
    async def mine(request: Request, runtime: Runtime, principal: Principal) -> Response:
        return PlainTextResponse(f"data of {principal.tenant}")

    app = Starlette(routes=[Route("/mine", mine)])
    app.state.runtime = server.runtime
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        r = await http.get("/mine")
    assert r.status_code == 500 and "data of" not in r.text


async def test_the_control_websocket_refuses_in_band_with_the_edges_checks(
    server: LiveServer,
) -> None:
    """The control WebSocket refuses a foreign origin and a bad token in-band, with the same
    codes and messages as the HTTP edge gives a route (one check, edge.admit)."""
    async with httpx.AsyncClient(base_url=server.http) as http:
        for token, origin in ((server.token(), EVIL), ("not-a-jwt", None)):
            headers = {"Authorization": f"Bearer {token}", **({"Origin": origin} if origin else {})}
            over_http = (await http.get("/v1/sessions", headers=headers)).json()["error"]
            ws = await Client.connect(server.url, token, origin=origin)
            try:
                in_band = await ws.recv(scaled(5))
            finally:
                await ws.close()
            assert isinstance(in_band, Error), in_band
            assert (in_band.code, in_band.message) == (over_http["code"], over_http["message"])
