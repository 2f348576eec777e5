"""The control channel against a real server on a loopback port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import cbor2
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from tests.support import scaled
from tidegate.protocol import CloseCode
from tidegate.protocol.client import Client, ConnectionClosedError, RefusedError
from tidegate.protocol.messages import (
    Error,
    FlowCredit,
    InputAudio,
    InputFrame,
    InputSensor,
    InputText,
    OutputAudio,
    ResponseCreated,
    ResponseDone,
    ResponseTextDelta,
    ServerMessage,
    SessionUpdate,
    SessionUpdated,
)

from .conftest import LiveServer, make_settings, run_server

ENCODINGS = ["cbor", "msgpack", "json"]


async def recv_bytes(ws: ClientConnection) -> bytes:
    """The next message of a raw connection, a binary one (CBOR)."""
    data = await ws.recv()
    assert isinstance(data, bytes), data
    return data


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_session_ping_and_text(server: LiveServer, encoding: str) -> None:
    """A client creates a session, measures the clock and gets its text echoed (loopback)."""
    async with await server.client(encoding=encoding) as client:
        created = await client.create_session({"mode": "loopback"})
        assert created.session_id.startswith("s_")
        assert created.config == {"mode": "loopback"}
        assert created.limits["max_message_bytes"] == server.settings.max_message_bytes
        credit = await client.wait_for(FlowCredit)
        assert credit == FlowCredit(seq=2, t=credit.t, messages=64, bytes=2_097_152)
        assert credit.t == pytest.approx(created.t, abs=1000)
        sample = await client.sync_clock(3)
        assert sample.rtt_ms > 0
        assert abs(sample.offset_ms) < 50  # same host, same clock
        await client.send(InputText(text="hello tide", id="m1"))
        created_r = await client.wait_for(ResponseCreated)
        delta = await client.wait_for(ResponseTextDelta)
        done = await client.wait_for(ResponseDone)
        assert created_r.ref == delta.ref == done.ref == "m1"
        assert delta.delta == "hello tide"
        assert done.status == "completed" and done.text == "hello tide"
        closed = await client.close_session()
        assert closed.reason == "closed by the client"
        how = await client.wait_closed()
        assert how.close_code == CloseCode.NORMAL


async def test_seq_increases_and_timing_is_server_time(server: LiveServer) -> None:
    """Every server message carries an increasing seq and a server time t."""
    async with await server.client() as client:
        await client.create_session({"mode": "loopback"})
        seen: list[ServerMessage | None] = [client.session]
        for i in range(3):
            await client.send(InputText(text=f"n{i}"))
        for _ in range(10):
            seen.append(await client.recv(5))
        seqs = [m.seq for m in seen if m is not None]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        ts = [m.t for m in seen if m is not None]
        assert ts == sorted(ts)


async def test_audio_echo_and_credit(server: LiveServer) -> None:
    """WS-only audio is echoed in loopback mode and its credit is handed back."""
    async with await server.client() as client:
        await client.create_session({"mode": "loopback"})
        await client.wait_for(FlowCredit)
        pcm = bytes(range(256)) * 10
        for i in range(100):  # more than the initial 64-message credit
            await client.send(
                InputAudio(pcm=pcm, format="s16le", sample_rate=16000, channels=1, ts=i * 80.0)
            )
        echoes: list[OutputAudio] = []
        while len(echoes) < 100:
            event = await client.recv(5)
            if isinstance(event, OutputAudio):
                echoes.append(event)
        assert [e.ts for e in echoes] == [i * 80.0 for i in range(100)]
        assert all(e.pcm == pcm for e in echoes)


async def test_upload_without_credit_is_refused(tmp_path: Path) -> None:
    """An upload larger than the credit granted is refused with flow_violation and dropped;
    the connection goes on."""
    settings = make_settings(tmp_path, upload_credit_bytes=4096)
    async with run_server(settings) as live:
        ws = await websockets.connect(
            live.url,
            subprotocols=[Subprotocol("tidegate.v1.cbor")],
            additional_headers={"Authorization": f"Bearer {live.token()}"},
        )
        try:
            await ws.send(cbor2.dumps({"type": "session.create", "config": {"mode": "loopback"}}))
            replies = [cbor2.loads(await recv_bytes(ws)) for _ in range(2)]
            assert [r["type"] for r in replies] == ["session.created", "flow.credit"]
            assert replies[1]["bytes"] == 4096
            frame = {"type": "input.frame", "image": b"\xff" * 5000, "encoding": "jpeg", "id": "f1"}
            await ws.send(cbor2.dumps(frame))
            error = cbor2.loads(await asyncio.wait_for(recv_bytes(ws), scaled(5)))
            assert error["type"] == "error"
            assert error["code"] == "flow_violation"
            assert error["ref"] == "f1"
            assert "credit" in error["message"]
            await ws.send(cbor2.dumps({"type": "ping", "t_client": 1.0, "id": "p"}))
            assert cbor2.loads(await asyncio.wait_for(recv_bytes(ws), scaled(5)))["type"] == "pong"
        finally:
            await ws.close()


async def test_frames_and_sensors_are_counted(server: LiveServer) -> None:
    """Loopback mode reports the frames it saw, the session's sensor lane the readings."""
    async with await server.client() as client:
        created = await client.create_session({"mode": "loopback"})
        for i in range(5):
            await client.send(
                InputFrame(image=b"\x00" * 12, encoding="rgb24", width=2, height=2, ts=i * 33.0)
            )
            await client.send(InputSensor(channel="temp", ts=i * 10.0, values=(20.5, 21.0)))
        await client.send(InputText(text="sync", id="sync"))
        await client.wait_for(ResponseDone)
        session = server.runtime.registry.get(created.session_id)
        assert session is not None and session.mode is not None
        stats = session.mode.stats()
        assert stats["frames"] == 5
        assert stats["last_frame"] == {
            "ts": 132.0,
            "encoding": "rgb24",
            "width": 2,
            "height": 2,
            "bytes": 12,
        }
        assert session.stats()["sensors"]["readings"] == {"temp": 5}


async def test_frames_are_checked_in_loopback_mode_too(server: LiveServer) -> None:
    """Loopback mode decodes no frame, but checks each header as the assistant does: a GIF
    sent as png, an MP4 sent as jpeg, a PNG bomb and a wrong raw size are refused with
    invalid_field (not counted); a real PNG is counted."""
    from ..media.imagefiles import png_bomb, still, video

    bad = [
        ("gif", InputFrame(id="gif", image=still("GIF"), encoding="png"), "GIF"),
        ("mp4", InputFrame(id="mp4", image=video(), encoding="jpeg"), "MP4"),
        ("bomb", InputFrame(id="bomb", image=png_bomb(), encoding="png"), "frame_max_pixels"),
        ("raw", InputFrame(id="raw", image=bytes(11), encoding="rgb24", width=2, height=2), "12"),
    ]
    async with await server.client() as client:
        created = await client.create_session({"mode": "loopback"})
        for name, frame, word in bad:
            await client.send(frame)
            error = await client.wait_for(Error)
            assert (error.code, error.ref) == ("invalid_field", name)
            assert word in error.message
        await client.send(InputFrame(image=still("PNG"), encoding="png", ts=1.0))
        await client.send(InputText(text="sync", id="sync"))
        await client.wait_for(ResponseDone)
        session = server.runtime.registry.get(created.session_id)
        assert session is not None and session.mode is not None
        assert session.mode.stats()["frames"] == 1


async def test_garbage_gets_errors_and_other_sessions_keep_working(server: LiveServer) -> None:
    """Garbage on one connection is answered with errors, then closed; another is unaffected."""
    async with await server.client() as good:
        await good.create_session({"mode": "loopback"})
        bad = await websockets.connect(
            server.url,
            subprotocols=[Subprotocol("tidegate.v1.cbor")],
            additional_headers={"Authorization": f"Bearer {server.token()}"},
        )
        await bad.send(b"\xff\xfe\x00garbage")
        reply = cbor2.loads(await recv_bytes(bad))
        assert reply["type"] == "error" and reply["code"] == "bad_message"
        assert "not valid CBOR" in reply["message"]
        await bad.send("text frames are not CBOR")
        reply = cbor2.loads(await recv_bytes(bad))
        assert reply["code"] == "bad_message"
        await bad.send(cbor2.dumps({"type": "input.text", "text": "before create", "id": "x"}))
        reply = cbor2.loads(await recv_bytes(bad))
        assert reply["code"] == "unexpected_message" and reply["ref"] == "x"
        await bad.send(cbor2.dumps({"type": "nope"}))
        assert cbor2.loads(await recv_bytes(bad))["code"] == "unknown_type"
        await bad.send(cbor2.dumps({"type": "ping", "t_client": "soon"}))
        reply = cbor2.loads(await recv_bytes(bad))
        assert reply["code"] == "invalid_field" and "ping.t_client" in reply["message"]
        for _ in range(server.settings.max_bad_messages):
            await bad.send(b"\x1c")
        with pytest.raises(websockets.ConnectionClosed) as caught:
            while True:
                await asyncio.wait_for(bad.recv(), scaled(5))
        assert caught.value.rcvd is not None
        assert caught.value.rcvd.code == CloseCode.PROTOCOL_VIOLATION
        # The well-behaved session is untouched.
        await good.send(InputText(text="still here"))
        done = await good.wait_for(ResponseDone)
        assert done.text == "still here"


async def test_oversized_message_is_refused(server: LiveServer) -> None:
    """A message over max_message_bytes is refused with too_large; the connection goes on."""
    async with await server.client() as client:
        await client.create_session({"mode": "loopback"})
        big = b"\x00" * (server.settings.max_message_bytes + 10)
        await client.send_raw(cbor2.dumps({"type": "input.text", "text": "x", "pad": big}))
        err = await client.wait_for(Error)
        assert err.code == "too_large" and "exceeds the limit" in err.message
        await client.send(InputText(text="after"))
        assert (await client.wait_for(ResponseDone)).text == "after"


async def test_far_too_large_frame_closes_the_socket(server: LiveServer) -> None:
    """A frame beyond the transport's hard limit closes the connection with 1009."""
    async with await server.client(max_message_bytes=8 * 1024 * 1024) as client:
        await client.create_session({"mode": "loopback"})
        await client.send_raw(b"\x00" * (3 * server.settings.max_message_bytes))
        closed = await client.wait_closed()
        assert closed.close_code == CloseCode.MESSAGE_TOO_BIG


async def test_unknown_and_unavailable_modes(server: LiveServer) -> None:
    """An unknown mode is invalid_field; a mode whose engines are missing is unsupported."""
    async with await server.client() as client:
        with pytest.raises(RefusedError) as caught:
            await client.create_session({"mode": "karaoke"})
        assert caught.value.server_code == "invalid_field"
        assert "config.mode" in str(caught.value)
    async with await server.client() as client:
        with pytest.raises(RefusedError) as caught:
            await client.create_session({"mode": "transcribe"})
        assert caught.value.server_code == "unsupported"


async def test_session_update(server: LiveServer) -> None:
    """session.update answers session.updated; changing the mode is refused."""
    async with await server.client() as client:
        await client.create_session({"mode": "loopback"})
        reply = await client.request(SessionUpdate(id="u1", config={}))
        assert isinstance(reply, SessionUpdated) and reply.config == {"mode": "loopback"}
        with pytest.raises(RefusedError) as caught:
            await client.request(SessionUpdate(id="u2", config={"mode": "assistant"}))
        assert caught.value.server_code in ("invalid_field", "unsupported")


async def test_resume_after_disconnect(server: LiveServer) -> None:
    """A session survives its connection and resumes with its seq continuing."""
    first = await server.client()
    created = await first.create_session({"mode": "loopback"})
    await first.ping()
    last_seq = first.last_seq
    await first.close()
    async with await server.client() as second:
        resumed = await second.create_session(session_id=created.session_id)
        assert resumed.resumed is True
        assert resumed.session_id == created.session_id
        assert resumed.seq > last_seq
        await second.send(InputText(text="back"))
        assert (await second.wait_for(ResponseDone)).text == "back"
    # Another tenant cannot resume it, and cannot tell it exists.
    async with await server.client(token=server.token(tenant="other")) as intruder:
        with pytest.raises(RefusedError) as caught:
            await intruder.create_session(session_id=created.session_id)
        assert caught.value.server_code == "not_found"


async def test_resume_takes_over_a_live_connection(server: LiveServer) -> None:
    """Resuming a session that is still attached closes the old connection normally."""
    first = await server.client()
    created = await first.create_session({"mode": "loopback"})
    async with await server.client() as second:
        await second.create_session(session_id=created.session_id)
        closed = await first.wait_closed()
        assert closed.close_code == CloseCode.NORMAL
        assert "another connection" in closed.reason
        await second.send(InputText(text="mine now"))
        assert (await second.wait_for(ResponseDone)).text == "mine now"
    await first.close()


async def test_detached_session_expires(tmp_path: Path) -> None:
    """A detached session is closed once its resume window has passed."""
    settings = make_settings(tmp_path, session_resume_s=0.2)
    async with run_server(settings) as live:
        client = await live.client()
        created = await client.create_session({"mode": "loopback"})
        await client.close()
        async with asyncio.timeout(scaled(5)):
            while live.runtime.registry.get(created.session_id) is not None:
                await asyncio.sleep(0.1)
        async with await live.client() as again:
            with pytest.raises(RefusedError) as caught:
                await again.create_session(session_id=created.session_id)
            assert caught.value.server_code == "not_found"


async def test_slow_reader_is_closed_with_too_slow(tmp_path: Path) -> None:
    """A client that stops reading while events pile up is closed with 4408."""
    settings = make_settings(tmp_path, outbox_max_messages=8, outbox_max_bytes=1 << 20)
    async with run_server(settings) as live:
        ws = await websockets.connect(
            live.url,
            subprotocols=[Subprotocol("tidegate.v1.cbor")],
            additional_headers={"Authorization": f"Bearer {live.token()}"},
            max_queue=1,
        )
        # A tiny receive window: stop reading and let the server's sends back up.
        ws.transport.set_write_buffer_limits(0)
        await ws.send(cbor2.dumps({"type": "session.create", "config": {"mode": "loopback"}}))
        ws.transport.pause_reading()
        text = "x" * 60_000
        for i in range(400):
            await ws.send(cbor2.dumps({"type": "input.text", "text": text[:8000], "id": f"{i}"}))
        async with asyncio.timeout(scaled(20)):
            while live.runtime.counters["too_slow"] == 0:
                await asyncio.sleep(0.05)
        ws.transport.resume_reading()
        with pytest.raises(websockets.ConnectionClosed) as caught:
            async with asyncio.timeout(scaled(10)):
                while True:
                    await ws.recv()
        assert caught.value.rcvd is not None and caught.value.rcvd.code == CloseCode.TOO_SLOW


async def test_node_session_limit_refuses_with_retry_hint(tmp_path: Path) -> None:
    """Past max_sessions, session.create is refused with overloaded and a retry hint."""
    settings = make_settings(tmp_path, max_sessions=2)
    async with run_server(settings) as live:
        clients = [await live.client() for _ in range(3)]
        try:
            await clients[0].create_session({"mode": "loopback"})
            await clients[1].create_session({"mode": "loopback"})
            with pytest.raises(RefusedError) as caught:
                await clients[2].create_session({"mode": "loopback"})
            assert caught.value.server_code == "overloaded"
            assert caught.value.retry_after_ms and caught.value.retry_after_ms > 0
        finally:
            for c in clients:
                await c.close()


async def test_health_and_readiness(server: LiveServer) -> None:
    """/healthz answers while the process runs; /readyz once start-up is complete."""
    import httpx

    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"


async def test_subprotocol_without_a_known_encoding_is_refused(server: LiveServer) -> None:
    """Offering only an unknown tidegate subprotocol closes with 4400 and says what to offer."""
    ws = await websockets.connect(
        server.url,
        subprotocols=[Subprotocol("tidegate.v9.cbor")],
        additional_headers={"Authorization": f"Bearer {server.token()}"},
    )
    with pytest.raises(websockets.ConnectionClosed) as caught:
        await asyncio.wait_for(ws.recv(), scaled(5))
    assert caught.value.rcvd is not None
    assert caught.value.rcvd.code == CloseCode.PROTOCOL_VIOLATION
    assert "tidegate.v1.cbor" in caught.value.rcvd.reason


async def test_client_reports_closed_connection(server: LiveServer) -> None:
    """After the server closes, the client raises ConnectionClosedError on receive."""
    client = await Client.connect(server.url, server.token())
    await client.create_session({"mode": "loopback"})
    await client.close_session()
    await client.wait_closed()
    with pytest.raises(ConnectionClosedError) as caught:
        for _ in range(10):  # events queued before the close come first
            await client.recv(1)
    assert caught.value.close_code == CloseCode.NORMAL
    await client.close()
