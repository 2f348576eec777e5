"""Per-token rate limits (new sessions, messages, API requests) and the origin allow-list of
the HTTP API, against a live server; the token buckets with an injected clock."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.server.conftest import make_settings, run_server
from tidegate.protocol.client import RefusedError
from tidegate.protocol.messages import Error, FlowCredit, InputSensor, InputText, ResponseDone
from tidegate.server.auth import Principal
from tidegate.server.errors import RateLimitedError
from tidegate.sessions.limits import Slots, TokenBuckets


def test_bucket_refills_at_its_rate_and_says_when() -> None:
    """A bucket admits its burst, then one per 1/rate s, and says how long to wait."""
    now = [0.0]
    b = TokenBuckets("things", rate_per_s=2.0, burst=3, clock=lambda: now[0])
    key = ("t", "s")
    assert [b.take(key) for _ in range(3)] == [None] * 3
    assert b.take(key) == pytest.approx(500.0)
    now[0] = 0.25
    assert b.take(key) == pytest.approx(250.0)
    now[0] = 0.5
    assert b.take(key) is None
    assert b.take(("t", "other")) is None  # subjects do not share a bucket
    assert (b.admitted, b.refused) == (5, 2)
    p = Principal("s", "t", frozenset({"session"}), 0.0)
    with pytest.raises(RateLimitedError) as e:
        b.check(p)
    assert e.value.retry_after_ms == pytest.approx(500.0) and "2 per second" in e.value.message


def test_rate_zero_means_no_limit() -> None:
    """rate 0 turns a limit off."""
    b = TokenBuckets("things", rate_per_s=0.0, burst=1)
    assert all(b.take(("t", "s")) is None for _ in range(1000))


async def test_new_sessions_are_rate_limited_per_subject(tmp_path: Path) -> None:
    """Past the burst, session.create is refused with rate_limited and retry_after_ms; another
    subject is not affected."""
    settings = make_settings(tmp_path, rate_sessions_per_s=0.01, rate_burst_sessions=2)
    async with run_server(settings) as server:
        for _ in range(2):
            async with await server.client() as client:
                await client.create_session({"mode": "loopback"})
                await client.close_session()
        async with await server.client() as client:
            with pytest.raises(RefusedError) as e:
                await client.create_session({"mode": "loopback"})
        err = e.value.error
        assert err.code == "rate_limited" and err.retry_after_ms is not None
        assert err.retry_after_ms > 1000 and "new sessions" in err.message
        async with await server.client(token=server.token(subject="carol")) as client:
            await client.create_session({"mode": "loopback"})
        assert server.runtime.limiter.sessions.refused == 1


async def test_messages_are_rate_limited_and_uploads_keep_their_credit(tmp_path: Path) -> None:
    """Past the message budget each message gets rate_limited; a refused upload's credit comes
    back, so the client can go on once the budget refills."""
    settings = make_settings(
        tmp_path, rate_messages_per_s=0.001, rate_burst_messages=4, upload_credit_messages=4
    )
    async with run_server(settings) as server, await server.client() as client:
        await client.create_session({"mode": "loopback"})  # 1 message
        await client.wait_for(FlowCredit)
        await client.send(InputText(text="ok", id="t1"))  # 2
        await client.wait_for(ResponseDone)
        for i in range(6):  # 3, 4 admitted; 5.. refused
            await client.send(InputSensor(channel="c", ts=float(i), values=(1.0,), id=f"u{i}"))
        errors: list[Error] = []
        while len(errors) < 4:
            msg = await client.recv(5)
            if isinstance(msg, Error):
                errors.append(msg)
        assert {e.code for e in errors} == {"rate_limited"}
        assert [e.ref for e in errors] == ["u2", "u3", "u4", "u5"]
        assert all(e.retry_after_ms and e.retry_after_ms > 0 for e in errors)
        assert client.credits[0] > 0  # the refused uploads' credit came back


def test_slots_cap_what_one_subject_runs_at_once() -> None:
    """A subject holds at most ``limit`` slots; a release (once, however often called) makes
    room; another subject has its own."""
    slots = Slots("things", limit=2, setting="max_things")
    alice = Principal("alice", "acme", frozenset({"session"}), 0.0)
    held = [slots.acquire(alice), slots.acquire(alice)]
    with pytest.raises(RateLimitedError, match="max_things") as refused:
        slots.acquire(alice)
    assert refused.value.retry_after_ms and refused.value.retry_after_ms > 0
    slots.acquire(Principal("bob", "acme", frozenset({"session"}), 0.0))
    held[0].release()
    held[0].release()  # again: no effect
    held.append(slots.acquire(alice))
    with pytest.raises(RateLimitedError):
        slots.acquire(alice)
    assert slots.stats() == {
        "limit": 2,
        "held": 3,
        "subjects": 2,
        "admitted": 4,
        "refused": 2,
    }


async def test_api_requests_are_rate_limited_with_retry_after(tmp_path: Path) -> None:
    """Past rate_burst_requests, the API answers 429 with Retry-After and retry_after_ms."""
    settings = make_settings(tmp_path, rate_requests_per_s=0.5, rate_burst_requests=2)
    async with run_server(settings) as server, httpx.AsyncClient(base_url=server.http) as http:
        auth = {"Authorization": f"Bearer {server.token()}"}
        assert [(await http.get("/v1/sessions", headers=auth)).status_code for _ in range(2)] == [
            200,
            200,
        ]
        resp = await http.get("/v1/sessions", headers=auth)
        assert resp.status_code == 429
        assert resp.headers["Retry-After"] == "2"
        err = resp.json()["error"]
        assert err["code"] == "rate_limited" and 1000 < err["retry_after_ms"] <= 2000
        other = {"Authorization": f"Bearer {server.token(subject='dave')}"}
        assert (await http.get("/v1/sessions", headers=other)).status_code == 200


async def test_api_origin_allow_list_and_cors(tmp_path: Path) -> None:
    """A browser origin not on allowed_origins is refused (403); a listed one gets CORS
    headers and an answered preflight."""
    good = "https://app.example"
    settings = make_settings(tmp_path, allowed_origins=(good,))
    async with run_server(settings) as server, httpx.AsyncClient(base_url=server.http) as http:
        auth = {"Authorization": f"Bearer {server.token()}"}
        bad = await http.get("/v1/sessions", headers={**auth, "Origin": "https://evil.example"})
        assert bad.status_code == 403
        assert "TIDEGATE_ALLOWED_ORIGINS" in bad.json()["error"]["message"]
        ok = await http.get("/v1/sessions", headers={**auth, "Origin": good})
        assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == good
        pre = await http.options(
            "/v1/sessions/s_x",
            headers={"Origin": good, "Access-Control-Request-Method": "DELETE"},
        )
        assert pre.status_code == 204 and "DELETE" in pre.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in pre.headers["Access-Control-Allow-Headers"]
        no_origin = await http.get("/v1/sessions", headers=auth)  # not a browser
        assert no_origin.status_code == 200
        assert "Access-Control-Allow-Origin" not in no_origin.headers
