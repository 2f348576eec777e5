"""Limits of the control channel against a real server: every inbound message counts toward
the message rate limit (pings and invalid ones too), invalid messages between valid ones
still close the connection, timeouts for connections without a session, the cap on a
subject's connections without a session, and the close at token expiry."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import cbor2
import pytest
import websockets
from websockets.typing import Subprotocol

from tests.support import scaled
from tidegate.protocol import CloseCode
from tidegate.protocol.client import Client, RefusedError
from tidegate.protocol.messages import Error, InputText, Ping, ResponseDone

from .conftest import LiveServer, make_settings, run_server

CLOSED_WITHIN_S = 10.0


async def raw(live: LiveServer, token: str | None = None) -> Any:
    return await websockets.connect(
        live.url,
        subprotocols=[Subprotocol("tidegate.v1.cbor")],
        additional_headers={"Authorization": f"Bearer {token or live.token()}"},
    )


async def close_code(ws: Any) -> int:
    """Read until the server closes; its close code."""
    with pytest.raises(websockets.ConnectionClosed) as caught:
        async with asyncio.timeout(CLOSED_WITHIN_S):
            while True:
                await ws.recv()
    assert caught.value.rcvd is not None
    return caught.value.rcvd.code


async def test_pings_count_toward_the_message_rate_limit(tmp_path: Path) -> None:
    """Past the budget, a ping is answered rate_limited (with its ref), not with a pong."""
    settings = make_settings(tmp_path, rate_messages_per_s=0.001, rate_burst_messages=3)
    async with run_server(settings) as live, await live.client() as client:
        for _ in range(3):
            await client.ping()
        with pytest.raises(RefusedError) as caught:
            await client.request(Ping(t_client=1.0, id="over"))
        err = caught.value.error
        assert err.code == "rate_limited" and err.ref == "over"
        assert err.retry_after_ms is not None and err.retry_after_ms > 0
        assert live.runtime.limiter.messages.refused == 1


async def test_invalid_messages_count_toward_the_message_rate_limit(tmp_path: Path) -> None:
    """Invalid messages spend the budget too: after them, a valid message is rate_limited."""
    settings = make_settings(
        tmp_path, rate_messages_per_s=0.001, rate_burst_messages=4, max_bad_messages=16
    )
    async with run_server(settings) as live, await live.client() as client:
        await client.create_session({"mode": "loopback"})  # 1
        for _ in range(3):  # 2, 3, 4
            await client.send_raw(b"\x1c")
        await client.send(InputText(text="hi", id="t"))
        err = await client.wait_for(Error, 5)
        while err.code == "bad_message":
            err = await client.wait_for(Error, 5)
        assert err.code == "rate_limited" and err.ref == "t"


async def test_refusals_that_go_on_close_with_rate_limited(tmp_path: Path) -> None:
    """A connection that keeps sending past its budget is closed with 4429."""
    settings = make_settings(
        tmp_path, rate_messages_per_s=0.001, rate_burst_messages=2, max_bad_messages=4
    )
    async with run_server(settings) as live:
        ws = await raw(live)
        for i in range(8):
            await ws.send(cbor2.dumps({"type": "ping", "t_client": 1.0, "id": f"{i}"}))
        assert await close_code(ws) == CloseCode.RATE_LIMITED


async def test_invalid_messages_between_pings_close_the_connection(tmp_path: Path) -> None:
    """Invalid messages interleaved with pings still close with 4400 (max_bad_messages within
    bad_messages_window_s), and another session keeps working."""
    settings = make_settings(tmp_path, max_bad_messages=4, rate_messages_per_s=0.0)
    async with run_server(settings) as live, await live.client() as good:
        await good.create_session({"mode": "loopback"})
        ws = await raw(live)
        for i in range(4):
            await ws.send(b"\x1c")
            await ws.send(cbor2.dumps({"type": "ping", "t_client": 1.0, "id": f"{i}"}))
        assert await close_code(ws) == CloseCode.PROTOCOL_VIOLATION
        await good.send(InputText(text="still here"))
        assert (await good.wait_for(ResponseDone)).text == "still here"


async def test_silent_connection_is_closed_after_the_first_message_timeout(
    tmp_path: Path,
) -> None:
    """A control connection that sends nothing is closed with 4409."""
    settings = make_settings(tmp_path, first_message_timeout_s=0.3)
    async with run_server(settings) as live:
        ws = await raw(live)
        assert await close_code(ws) == CloseCode.IDLE_TIMEOUT
        assert live.runtime.sessionless == {}


async def test_idle_connection_without_a_session_is_closed(tmp_path: Path) -> None:
    """A connection without a session that goes quiet is closed with 4409; one with a session
    is not."""
    settings = make_settings(tmp_path, first_message_timeout_s=5.0, sessionless_idle_s=0.3)
    async with run_server(settings) as live, await live.client() as with_session:
        await with_session.create_session({"mode": "loopback"})
        ws = await raw(live)
        await ws.send(cbor2.dumps({"type": "ping", "t_client": 1.0}))
        assert await close_code(ws) == CloseCode.IDLE_TIMEOUT
        await asyncio.sleep(0.5)
        await with_session.ping()  # still open


async def test_connections_without_a_session_are_capped_per_subject(tmp_path: Path) -> None:
    """A subject holds at most max_sessionless_connections_per_subject connections without a
    session: the next is refused (rate_limited, 4429); one with a session does not count."""
    settings = make_settings(tmp_path, max_sessionless_connections_per_subject=2)
    async with run_server(settings) as live:
        held = [await live.client() for _ in range(2)]
        ws = await raw(live)
        err = cbor2.loads(await ws.recv())
        assert err["code"] == "rate_limited" and "without a session" in err["message"]
        assert await close_code(ws) == CloseCode.RATE_LIMITED
        other = await live.client(token=live.token(subject="bob"))  # another subject
        await held[0].create_session({"mode": "loopback"})  # no longer sessionless
        third = await live.client()
        await third.ping()
        for c in [*held, other, third]:
            await c.close()
        async with asyncio.timeout(scaled(5)):
            while live.runtime.sessionless:
                await asyncio.sleep(0.02)


async def test_connection_closes_at_token_expiry_and_the_session_resumes(tmp_path: Path) -> None:
    """At its token's exp the connection is closed with 4401; the session waits, and the client
    resumes it with a fresh token."""
    settings = make_settings(tmp_path, jwt_leeway_s=0.0)
    async with run_server(settings) as live:
        client = await Client.connect(live.url, live.token(ttl_s=2.0))
        created = await client.create_session({"mode": "loopback"})
        closed = await client.wait_closed(timeout_s=CLOSED_WITHIN_S)
        assert closed.close_code == CloseCode.UNAUTHORIZED and "expired" in closed.reason
        await client.close()
        async with await live.client() as again:
            resumed = await again.create_session(session_id=created.session_id)
            assert resumed.resumed is True
            await again.send(InputText(text="back"))
            assert (await again.wait_for(ResponseDone)).text == "back"
