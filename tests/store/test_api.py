"""The records API over a live server: tenant isolation on every endpoint, pagination,
filters, deletion, the OpenAPI description, and the errors it answers with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server.conftest import LiveServer, make_settings, run_server
from tests.store.test_writer import session_records
from tests.support import scaled
from tidegate.pipelines import records as r
from tidegate.server.api import CHILD_KINDS, OPENAPI

ACME_SESSIONS = ["s_a1", "s_a2", "s_a3"]


def _seed(server: LiveServer) -> None:
    """Three sessions of tenant acme (one by bob), one of tenant umbrella; records of each kind."""
    rec = server.runtime.recorder
    for i, sid in enumerate(ACME_SESSIONS):
        for x in session_records(sid, "acme"):
            if isinstance(x, r.SessionStarted):
                subject = "bob" if i == 2 else "alice"
                x = r.SessionStarted(
                    session_id=sid,
                    tenant="acme",
                    subject=subject,
                    mode="loopback",
                    config={"mode": "loopback"},
                    client={},
                    at_ms=1_000.0 + i,
                )
            assert rec.record(x)
    for x in session_records("s_u1", "umbrella"):
        assert rec.record(x)


@pytest.fixture
async def api(
    database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[LiveServer, httpx.AsyncClient]]:
    settings = make_settings(tmp_path, database_url=database_url, rate_requests_per_s=0.0)
    async with run_server(settings) as server:
        _seed(server)
        assert await server.runtime.recorder.flush(20)
        async with httpx.AsyncClient(base_url=server.http, timeout=scaled(10)) as http:
            yield server, http


def _auth(server: LiveServer, tenant: str = "acme", admin: bool = False) -> dict[str, str]:
    scopes = ("session", "admin") if admin else ("session",)
    return {"Authorization": f"Bearer {server.token(tenant=tenant, scopes=scopes)}"}


def _endpoints(sid: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/v1/sessions/{sid}"),
        *(("GET", f"/v1/sessions/{sid}/{kind}") for kind in CHILD_KINDS),
        ("DELETE", f"/v1/sessions/{sid}"),
    ]


async def test_a_tenant_sees_only_its_own_on_every_endpoint(api: Any) -> None:
    """Another tenant's session is a 404 on every endpoint, and absent from every list."""
    server, http = api
    umbrella = _auth(server, "umbrella")
    listed = (await http.get("/v1/sessions", headers=umbrella)).json()
    assert [s["id"] for s in listed["items"]] == ["s_u1"]
    for method, path in _endpoints("s_a1"):
        resp = await http.request(method, path, headers=umbrella)
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.json()["error"]["code"] == "not_found"
    forbidden = await http.get("/v1/sessions?tenant=acme", headers=umbrella)
    assert forbidden.status_code == 403
    for method, path in _endpoints("s_u1")[:-1]:
        assert (await http.request(method, path, headers=umbrella)).status_code == 200, path
    # nothing of acme was deleted by umbrella's attempts
    acme = (await http.get("/v1/sessions", headers=_auth(server))).json()
    assert sorted(s["id"] for s in acme["items"]) == ACME_SESSIONS


async def test_admin_sees_every_tenant_and_may_filter(api: Any) -> None:
    """An admin token lists every tenant's sessions, or one tenant's with ?tenant=."""
    server, http = api
    admin = _auth(server, "ops", admin=True)
    everything = (await http.get("/v1/sessions", headers=admin)).json()["items"]
    assert sorted(s["id"] for s in everything) == sorted([*ACME_SESSIONS, "s_u1"])
    only = (await http.get("/v1/sessions?tenant=umbrella", headers=admin)).json()["items"]
    assert [s["id"] for s in only] == ["s_u1"]
    detail = await http.get("/v1/sessions/s_a1/transcript", headers=admin)
    assert detail.status_code == 200 and detail.json()["items"][0]["text"] == "hello there"
    status = (await http.get("/v1/admin/db", headers=admin)).json()
    assert status["writer"]["available"] and status["writer"]["queue"]["policy"] == "reject"
    assert (await http.get("/v1/admin/db", headers=_auth(server))).status_code == 403


async def test_every_endpoint_needs_a_token(api: Any) -> None:
    """No token or a bad one: 401 with code unauthorized, everywhere."""
    _, http = api
    for method, path in [("GET", "/v1/sessions"), ("GET", "/v1/admin/db"), *_endpoints("s_a1")]:
        for headers in ({}, {"Authorization": "Bearer nope"}):
            resp = await http.request(method, path, headers=headers)
            assert resp.status_code == 401, (method, path)
            assert resp.json()["error"]["code"] == "unauthorized"


async def test_session_detail_transcript_and_replies(api: Any) -> None:
    """A session's detail, transcript and replies, as recorded."""
    server, http = api
    auth = _auth(server)
    s = (await http.get("/v1/sessions/s_a1", headers=auth)).json()
    assert (s["status"], s["resumes"], s["stats"]) == ("closed", 1, {"frames": 3})
    assert s["counts"] == {
        "events": 3,
        "transcript": 1,
        "responses": 3,
        "latency": 1,
        "sensors": 1,
    }
    replies = (await http.get("/v1/sessions/s_a1/responses", headers=auth)).json()["items"]
    assert [x["response_id"] for x in replies] == ["r0", "r1", "r2"]
    assert (replies[0]["status"], replies[0]["spoken_text"]) == ("interrupted", "rep")
    events = (await http.get("/v1/sessions/s_a1/events", headers=auth)).json()["items"]
    assert [e["kind"] for e in events] == ["started", "resumed", "ended"]
    sensors = (await http.get("/v1/sessions/s_a1/sensors", headers=auth)).json()["items"]
    assert sensors[0]["readings"] == [[1.0, [0.1, 0.2]], [2.0, [0.3, 0.4]]]


async def test_pagination_walks_everything_once_in_order(api: Any) -> None:
    """Pages of `limit` follow next_cursor through every item once, newest first."""
    server, http = api
    rec = server.runtime.recorder
    for i in range(23):  # equal created_at_ms in pairs: the id breaks the tie
        rec.record(
            r.SessionStarted(
                session_id=f"s_p{i:02d}",
                tenant="paged",
                subject="p",
                mode="loopback",
                config={},
                client={},
                at_ms=5_000.0 + i // 2,
            )
        )
    assert await rec.flush(20)
    auth = _auth(server, "paged")
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "5", **({"cursor": cursor} if cursor else {})}
        page = (await http.get("/v1/sessions", params=params, headers=auth)).json()
        pages += 1
        seen.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5 and len(seen) == 23
    keys = [(s["created_at_ms"], s["id"]) for s in seen]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == 23
    # child lists page the same way, oldest first
    first = (await http.get("/v1/sessions/s_a1/responses?limit=2", headers=_auth(server))).json()
    rest = await http.get(
        "/v1/sessions/s_a1/responses",
        params={"limit": "2", "cursor": first["next_cursor"]},
        headers=_auth(server),
    )
    ids = [x["response_id"] for x in first["items"] + rest.json()["items"]]
    assert ids == ["r0", "r1", "r2"] and rest.json()["next_cursor"] is None


async def test_filters(api: Any) -> None:
    """status, subject, mode and time filters narrow the list."""
    server, http = api
    auth = _auth(server)

    async def ids(**params: str) -> list[str]:
        page = await http.get("/v1/sessions", params=params, headers=auth)
        return sorted(s["id"] for s in page.json()["items"])

    assert await ids(subject="bob") == ["s_a3"]
    assert await ids(status="closed") == ACME_SESSIONS
    assert await ids(status="open") == []
    assert await ids(mode="loopback") == ACME_SESSIONS
    assert await ids(since_ms="1001", until_ms="1002") == ["s_a2"]


async def test_bad_parameters_are_400_naming_the_parameter(api: Any) -> None:
    """A bad limit, cursor, status or time gets 400 invalid_field naming what was wrong."""
    server, http = api
    for query, name in [
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("cursor=%21%21", "cursor"),
        ("status=gone", "status"),
        ("since_ms=yesterday", "since_ms"),
    ]:
        resp = await http.get(f"/v1/sessions?{query}", headers=_auth(server))
        assert resp.status_code == 400, query
        err = resp.json()["error"]
        assert err["code"] == "invalid_field" and err["message"].startswith(name)


async def test_numbers_and_ids_are_ascii_only_and_never_a_500(api: Any) -> None:
    """Non-ASCII digits (``limit=²``, Arabic-Indic, fullwidth), signs, spaces, underscores,
    nan and inf in a number, and a path id outside its ASCII pattern, are 400 invalid_field
    naming the value, as JSON (never a 500 or a traceback)."""
    server, http = api
    for query, name in [
        ("limit=%C2%B2", "limit"),  # superscript 2: isdigit() is true, int() raises
        ("limit=%D9%A1%D9%A0", "limit"),  # Arabic-Indic 10: int() reads 10
        ("limit=%EF%BC%95", "limit"),  # fullwidth 5
        ("limit=+5", "limit"),
        ("limit=%205", "limit"),
        ("limit=05", "limit"),
        ("since_ms=%D9%A1%D9%A0", "since_ms"),
        ("since_ms=1_000", "since_ms"),
        ("since_ms=nan", "since_ms"),
        ("until_ms=-inf", "until_ms"),
        ("until_ms=1e400", "until_ms"),
        ("until_ms=%201000", "until_ms"),
        ("subject=%00", "subject"),
    ]:
        resp = await http.get(f"/v1/sessions?{query}", headers=_auth(server))
        assert resp.status_code == 400, (query, resp.status_code, resp.text)
        err = resp.json()["error"]
        assert err["code"] == "invalid_field" and err["message"].startswith(name), query
        assert "Traceback" not in resp.text
    for path in ("/v1/sessions/%C2%B2", "/v1/sessions/s%20a1/transcript"):
        resp = await http.get(path, headers=_auth(server))
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_field", path
        assert resp.json()["error"]["message"].startswith("session_id"), path
    page = await http.get(
        "/v1/sessions?limit=2&since_ms=999.5&until_ms=1002", headers=_auth(server)
    )
    assert page.status_code == 200 and len(page.json()["items"]) == 2


async def test_delete_removes_the_session_and_its_records(api: Any) -> None:
    """DELETE answers 204 and the session and its records are gone; others stay."""
    server, http = api
    auth = _auth(server)
    assert (await http.delete("/v1/sessions/s_a2", headers=auth)).status_code == 204
    assert (await http.get("/v1/sessions/s_a2", headers=auth)).status_code == 404
    assert (await http.get("/v1/sessions/s_a2/responses", headers=auth)).status_code == 404
    left = (await http.get("/v1/sessions", headers=auth)).json()["items"]
    assert sorted(s["id"] for s in left) == ["s_a1", "s_a3"]
    assert (await http.get("/v1/sessions/s_a1", headers=auth)).json()["counts"]["responses"] == 3
    assert (await http.delete("/v1/sessions/s_a2", headers=auth)).status_code == 404


async def test_a_running_session_cannot_be_deleted(tmp_path: Path) -> None:
    """Deleting a session that is still open on this node is a 409."""
    async with run_server(make_settings(tmp_path)) as server:
        async with await server.client() as client:
            sid = (await client.create_session({"mode": "loopback"})).session_id
            assert await server.runtime.recorder.flush(20)
            async with httpx.AsyncClient(base_url=server.http) as http:
                resp = await http.delete(f"/v1/sessions/{sid}", headers=_auth(server))
        assert resp.status_code == 409
        assert resp.json()["error"]["code"] == "unexpected_message"


async def test_openapi_describes_every_route(api: Any) -> None:
    """/openapi.json is served and names every records route and method the app serves."""
    _, http = api
    served = (await http.get("/openapi.json")).json()
    assert served == OPENAPI and served["openapi"].startswith("3.")
    paths = served["paths"]
    assert set(paths["/v1/sessions/{session_id}"]) == {"get", "delete"}
    for kind in CHILD_KINDS:
        assert "get" in paths[f"/v1/sessions/{{session_id}}/{kind}"]
    from starlette.routing import Route

    from tidegate.server.api import api_routes

    for route in api_routes():
        assert isinstance(route, Route)
        if route.path != "/openapi.json":
            assert route.path in paths, route.path
            methods = {m.lower() for m in route.methods or ()} - {"head", "options"}
            assert methods == set(paths[route.path]), route.path
