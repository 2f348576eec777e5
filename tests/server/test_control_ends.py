"""Every way a control connection ends detaches its session, which then expires after
``session_resume_s``: a clean close, a reset, a client that stops reading (4408, by the outbox
or by the send watchdog, whose cancellation lands while the connection closes), a protocol
violation (4400) and a server shutdown; ordinary ends are not logged as errors."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
import websockets
from websockets.typing import Subprotocol

from tests.support import scaled
from tidegate.protocol import CloseCode
from tidegate.sessions.session import Session

from .conftest import LiveServer, make_settings, run_server

RESUME_S = 0.5
# The longest a session may take to go once its connection ended: the send watchdog's tick and
# timeout (1 s + send_timeout_s), the resume window, the reaper's tick (1 s), and slack for a
# loaded machine. Without the fix the stalled cases never go.
GONE_WITHIN_S = 15.0
FLOOD_TEXT = "x" * 8_000
FLOOD_SEND_TIMEOUT_S = 2.0


async def raw_connect(live: LiveServer, *, rcvbuf_bytes: int | None = None) -> Any:
    """A plain WebSocket client (no tidegate client logic) with the session token."""
    sock = None
    if rcvbuf_bytes is not None:  # a small receive window, set before connecting
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", live.port))
    return await websockets.connect(
        live.url,
        sock=sock,
        subprotocols=[Subprotocol("tidegate.v1.cbor")],
        additional_headers={"Authorization": f"Bearer {live.token()}"},
        max_queue=1,
    )


async def the_session(live: LiveServer, created_before: int) -> Session:
    """The session created after ``created_before`` sessions (waits for it)."""
    registry = live.runtime.registry
    async with asyncio.timeout(scaled(10)):
        while registry.created <= created_before:
            await asyncio.sleep(0.01)
    session: Session = list(registry)[-1]  # the registry iterates as Any
    return session


async def stalled_client(live: LiveServer) -> tuple[Session, Any]:
    """A client that creates a session and then never reads again while it floods the server
    with text whose echo piles up: the server's sends back up until it gives up on it."""
    before = live.runtime.registry.created
    ws = await raw_connect(live, rcvbuf_bytes=4096)
    ws.transport.set_write_buffer_limits(0)
    await ws.send(cbor2.dumps({"type": "session.create", "config": {"mode": "loopback"}}))
    ws.transport.pause_reading()
    session = await the_session(live, before)
    for i in range(2_000):
        if live.runtime.counters["too_slow"]:
            break
        try:  # a send that does not complete: the server stopped reading us
            async with asyncio.timeout(FLOOD_SEND_TIMEOUT_S):
                await ws.send(cbor2.dumps({"type": "input.text", "text": FLOOD_TEXT, "id": f"{i}"}))
        except (TimeoutError, websockets.ConnectionClosed, OSError):
            break
    return session, ws


async def gone(live: LiveServer, session: Session) -> None:
    """Wait until the session has been detached and then expired (fails after GONE_WITHIN_S)."""
    async with asyncio.timeout(GONE_WITHIN_S):
        while live.runtime.registry.get(session.id) is not None:
            await asyncio.sleep(0.05)
    assert session.closed
    assert live.runtime.channels == set()  # and no connection is left behind


async def end_clean(live: LiveServer) -> tuple[Session, Any]:
    before = live.runtime.registry.created
    client = await live.client()
    await client.create_session({"mode": "loopback"})
    await client.close()  # a WebSocket close, no session.close
    return await the_session(live, before), None


async def end_reset(live: LiveServer) -> tuple[Session, Any]:
    before = live.runtime.registry.created
    ws = await raw_connect(live)
    await ws.send(cbor2.dumps({"type": "session.create", "config": {"mode": "loopback"}}))
    session = await the_session(live, before)
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()  # linger 0: a TCP reset, no close frame
    return session, None


async def end_reset_while_events_flow(live: LiveServer) -> tuple[Session, Any]:
    before = live.runtime.registry.created
    ws = await raw_connect(live)
    await ws.send(cbor2.dumps({"type": "session.create", "config": {"mode": "loopback"}}))
    session = await the_session(live, before)
    for i in range(200):  # the echoes and pongs are on their way when the reset comes
        await ws.send(cbor2.dumps({"type": "input.text", "text": FLOOD_TEXT, "id": f"{i}"}))
        await ws.send(cbor2.dumps({"type": "ping", "t_client": 1.0, "id": f"p{i}"}))
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()
    return session, None


async def end_stalled(live: LiveServer) -> tuple[Session, Any]:
    return await stalled_client(live)  # the client stays connected, never reading


async def end_protocol_violation(live: LiveServer) -> tuple[Session, Any]:
    before = live.runtime.registry.created
    ws = await raw_connect(live)
    await ws.send(cbor2.dumps({"type": "session.create", "config": {"mode": "loopback"}}))
    session = await the_session(live, before)
    for _ in range(live.settings.max_bad_messages):
        await ws.send(b"\x1c")
    with pytest.raises(websockets.ConnectionClosed) as caught:
        async with asyncio.timeout(scaled(10)):
            while True:
                await ws.recv()
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == CloseCode.PROTOCOL_VIOLATION
    return session, None


Ending = Callable[[LiveServer], Awaitable[tuple[Session, Any]]]
WAYS: dict[str, tuple[Ending, dict[str, Any]]] = {
    "clean_close": (end_clean, {}),
    "reset": (end_reset, {}),
    "too_slow_outbox": (end_stalled, {"outbox_max_messages": 8}),
    "too_slow_send_watchdog": (
        end_stalled,
        {"outbox_max_messages": 100_000, "outbox_max_bytes": 1 << 30, "send_timeout_s": 0.5},
    ),
    "protocol_violation": (end_protocol_violation, {}),
}


@pytest.mark.parametrize("way", list(WAYS))
async def test_no_session_outlives_its_resume_window(tmp_path: Path, way: str) -> None:
    """However its connection ended, a session is detached and expires after session_resume_s
    (a stalled client included: it is never resumed, its socket is never read)."""
    end, overrides = WAYS[way]
    settings = make_settings(
        tmp_path, session_resume_s=RESUME_S, rate_messages_per_s=0.0, **overrides
    )
    async with run_server(settings) as live:
        session, ws = await end(live)
        await gone(live, session)
        assert live.runtime.registry.expired == 1
        if ws is not None:
            ws.transport.abort()


async def test_stalled_client_is_closed_with_too_slow(tmp_path: Path) -> None:
    """A client that stops reading is closed with 4408 and its session detached at once, not
    when (if ever) it reads again."""
    settings = make_settings(
        tmp_path, outbox_max_messages=100_000, outbox_max_bytes=1 << 30, send_timeout_s=0.5
    )
    async with run_server(settings) as live:
        session, ws = await stalled_client(live)
        async with asyncio.timeout(GONE_WITHIN_S):
            while session.attachment is not None:
                await asyncio.sleep(0.05)
        assert session.detached_at is not None
        assert live.runtime.counters["too_slow"] >= 1
        ws.transport.abort()


async def test_shutdown_ends_connections_and_sessions(tmp_path: Path) -> None:
    """A server shutdown ends every connection (a stalled one included) and closes every
    session as shutdown; nothing is left running."""
    settings = make_settings(tmp_path, outbox_max_messages=100_000, outbox_max_bytes=1 << 30)
    live_ref: list[LiveServer] = []
    async with run_server(settings) as live:
        live_ref.append(live)
        _, ws = await stalled_client(live)
        client = await live.client()
        await client.create_session({"mode": "loopback"})
        sessions = list(live.runtime.registry)
        assert len(sessions) == 2
    live = live_ref[0]
    assert len(live.runtime.registry) == 0
    assert all(s.closed for s in sessions)
    assert live.runtime.channels == set()
    await client.close()
    ws.transport.abort()


async def test_ordinary_disconnects_are_not_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Clean closes, resets (also while events flow) and stalled clients are logged below
    WARNING, without a traceback; the end of each connection is logged once."""
    settings = make_settings(
        tmp_path,
        session_resume_s=RESUME_S,
        rate_messages_per_s=0.0,
        outbox_max_messages=100_000,
        outbox_max_bytes=1 << 30,
        send_timeout_s=0.5,
    )
    caplog.set_level(logging.DEBUG)
    async with run_server(settings) as live:
        for end in (end_clean, end_reset, end_reset_while_events_flow, end_stalled):
            _, ws = await end(live)
            async with asyncio.timeout(GONE_WITHIN_S):
                while live.runtime.channels:
                    await asyncio.sleep(0.05)
            if ws is not None:
                ws.transport.abort()
    server = [r for r in caplog.records if r.name.startswith(("tidegate", "uvicorn", "asyncio"))]
    loud = [r for r in server if r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]
    assert not [r for r in server if r.exc_info], "a traceback for an ordinary end"
    ends = [r.getMessage() for r in server if r.name == "tidegate.server.control"]
    assert any("closed by the client" in m for m in ends)
    assert any("closed with 4408" in m for m in ends)
