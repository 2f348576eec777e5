"""The sans-I/O connection: two state machines wired back to back, no sockets, no clock."""

from __future__ import annotations

from typing import TypedDict, Unpack

import pytest

from tidegate.protocol import (
    BadInput,
    CloseCode,
    Connection,
    LocalProtocolError,
    Role,
    State,
)
from tidegate.protocol.messages import (
    AsrPartial,
    Error,
    FlowCredit,
    InputAudio,
    InputText,
    Message,
    Ping,
    Pong,
    SessionClose,
    SessionClosed,
    SessionCreate,
    SessionCreated,
    Timing,
)

AUDIO = InputAudio(pcm=b"\x00" * 640, format="s16le", sample_rate=16000, channels=1)


class ServerLimits(TypedDict, total=False):
    """The server connection's limits that these tests set."""

    max_message_bytes: int
    max_bad_messages: int
    bad_messages_window_ms: float


def pair(encoding: str = "cbor", **kw: Unpack[ServerLimits]) -> tuple[Connection, Connection]:
    return Connection(Role.CLIENT, encoding=encoding), Connection(
        Role.SERVER, encoding=encoding, **kw
    )


def pump(src: Connection, dst: Connection, now: float = 0.0) -> list[Message | BadInput]:
    for payload in src.data_to_send():
        dst.receive_data(payload, now)
    return dst.events_received()


def open_pair(encoding: str = "cbor", **kw: Unpack[ServerLimits]) -> tuple[Connection, Connection]:
    client, server = pair(encoding, **kw)
    client.send(SessionCreate(id="c1", config={"mode": "loopback"}), 0)
    [create] = pump(client, server)
    assert isinstance(create, SessionCreate)
    server.send(
        SessionCreated(session_id="s1", config={}, limits={}, ice_servers=(), ref="c1"), 1.0
    )
    pump(server, client)
    return client, server


@pytest.mark.parametrize("encoding", ["cbor", "msgpack", "json"])
def test_session_lifecycle(encoding: str) -> None:
    """create -> created -> close -> closed moves both ends through the states."""
    client, server = pair(encoding)
    assert client.state is State.AWAITING_SESSION and server.state is State.AWAITING_SESSION
    client.send(SessionCreate(id="c1"), 0)
    [create] = pump(client, server)
    assert create == SessionCreate(id="c1")
    server.send(
        SessionCreated(session_id="s1", config={}, limits={}, ice_servers=(), ref="c1"), 5.0
    )
    [created] = pump(server, client)
    assert isinstance(created, SessionCreated)
    assert created.seq == 1 and created.t == 5.0 and created.ref == "c1"
    # mypy keeps the states narrowed by the first assert across the sends that opened them
    assert server.state is State.OPEN and client.state is State.OPEN  # type: ignore[comparison-overlap]
    assert client.session_id == server.session_id == "s1"
    client.send(SessionClose(id="c2"), 6.0)
    assert client.state is State.CLOSING
    [close] = pump(client, server)
    assert isinstance(close, SessionClose) and server.state is State.CLOSING
    server.send(SessionClosed(reason="bye", ref="c2"), 7.0)
    assert server.state is State.CLOSED
    [closed] = pump(server, client)
    assert isinstance(closed, SessionClosed) and client.state is State.CLOSED
    assert client.close_code == CloseCode.NORMAL


def test_ping_is_answered_by_the_protocol_in_any_state() -> None:
    """A ping gets a pong carrying t_client and the server's now, before a session exists."""
    client, server = pair()
    client.send(Ping(id="p", t_client=100.0), 100.0)
    assert pump(client, server, now=250.0) == []
    [pong] = pump(server, client)
    assert pong == Pong(seq=1, t=250.0, ref="p", t_client=100.0, t_server=250.0)


def test_messages_before_create_are_refused() -> None:
    """Anything but session.create or ping before a session gets unexpected_message."""
    client, server = pair()
    server.receive_data(client.codec.encode({"type": "input.text", "text": "hi", "id": "x"}), 0)
    [bad] = server.events_received()
    assert isinstance(bad, BadInput) and not bad.fatal
    [err] = pump(server, client)
    assert isinstance(err, Error)
    assert err.code == "unexpected_message" and err.ref == "x"
    assert "session.create first" in err.message


def test_second_create_is_refused() -> None:
    """session.create on an open connection is refused; the session stays open."""
    _client, server = open_pair()
    server.receive_data(server.codec.encode({"type": "session.create"}), 0)
    [bad] = server.events_received()
    assert isinstance(bad, BadInput)
    assert server.state is State.OPEN


def test_pipelined_messages_after_create_are_accepted() -> None:
    """A client may send right after session.create; the server sees them in order."""
    client, server = pair()
    client.send(SessionCreate(id="c1"), 0)
    client.send(InputText(text="one"), 0)
    payloads = client.data_to_send()
    server.receive_data(payloads[0], 0)
    assert [type(e) for e in server.events_received()] == [SessionCreate]
    server.send(SessionCreated(session_id="s", config={}, limits={}, ice_servers=()), 1)
    server.receive_data(payloads[1], 1)
    assert server.events_received() == [InputText(text="one")]


def test_uploads_need_credit() -> None:
    """Uploads consume credit; without it the server refuses with flow_violation."""
    client, server = open_pair()
    with pytest.raises(LocalProtocolError, match="credit"):
        client.send(AUDIO, 0)
    server.send(FlowCredit(messages=2, bytes=1300), 0)
    pump(server, client)
    assert client.credits.messages == 2
    client.send(AUDIO, 0)
    events = pump(client, server)
    assert events == [AUDIO]
    assert server.credits.messages == 1 and server.credits.bytes == 660
    # A misbehaving client that ignores credit:
    raw = client.codec.encode(AUDIO.to_wire())
    server.receive_data(raw, 0)
    server.receive_data(raw, 0)
    events = server.events_received()
    assert events[0] == AUDIO
    assert isinstance(events[1], BadInput)
    assert events[1].error.code.value == "flow_violation"


def test_too_many_bad_messages_fail_the_connection() -> None:
    """After max_bad_messages bad messages in a row the connection fails with 4400."""
    client, server = pair(max_bad_messages=3, bad_messages_window_ms=1_000.0)
    t = 0.0  # far apart: only the run of bad messages counts, not the window
    for _ in range(2):
        t += 5_000.0
        server.receive_data(b"\xff", t)
    server.receive_data(client.codec.encode(Ping(t_client=0.0).to_wire()), t)  # resets the run
    for _ in range(2):
        t += 5_000.0
        server.receive_data(b"\xff", t)
    assert server.state is State.AWAITING_SESSION
    server.receive_data(b"\xff", t + 5_000.0)
    events = server.events_received()
    assert isinstance(events[-1], BadInput) and events[-1].fatal
    # mypy keeps server.state narrowed by the assert above across the receive_data that closed it
    assert server.state is State.CLOSED  # type: ignore[comparison-overlap]
    assert server.close_code == CloseCode.PROTOCOL_VIOLATION
    server.receive_data(b"\xff", 0)  # ignored once closed
    assert server.events_received() == []


def test_bad_messages_between_valid_ones_still_fail_the_connection() -> None:
    """max_bad_messages bad messages within the window fail the connection with 4400, even
    with valid messages (pings) between them; spread wider than the window, they do not."""
    client, server = pair(max_bad_messages=3, bad_messages_window_ms=1_000.0)
    ping = client.codec.encode(Ping(t_client=0.0).to_wire())
    for t in (0.0, 600.0, 1_200.0, 1_800.0):  # any three span more than the window
        server.receive_data(b"\xff", t)
        server.receive_data(ping, t)
    assert server.state is State.AWAITING_SESSION
    for t in (2_000.0, 2_100.0):
        server.receive_data(ping, t)
        server.receive_data(b"\xff", t)
    events = server.events_received()
    assert isinstance(events[-1], BadInput) and events[-1].fatal
    assert server.close_code == CloseCode.PROTOCOL_VIOLATION
    assert "within 1 s" in server.close_reason


def test_refused_message_is_parsed_but_not_handled() -> None:
    """A message the shell refused (handle=False) comes out as an event, unanswered: a
    refused ping gets no pong."""
    client, server = pair()
    server.receive_data(client.codec.encode(Ping(t_client=1.0, id="p").to_wire()), 0)
    server.receive_data(client.codec.encode(Ping(t_client=2.0, id="q").to_wire()), 0, handle=False)
    assert [type(e) for e in server.events_received()] == [Ping]
    assert len(server.data_to_send()) == 1  # the pong of the handled ping only


def test_oversized_message_is_refused() -> None:
    """A payload over max_message_bytes is refused with too_large without decoding it."""
    _client, server = pair(max_message_bytes=100)
    server.receive_data(b"\x00" * 101, 0)
    [bad] = server.events_received()
    assert isinstance(bad, BadInput) and bad.error.code.value == "too_large"


def test_seq_increases_and_continues_after_resume() -> None:
    """seq counts up per session; a resumed session's new connection continues it."""
    client, server = open_pair()
    for _ in range(3):
        server.send(FlowCredit(messages=1, bytes=1), 0)
    seqs = [m.seq for m in pump(server, client)]  # type: ignore[union-attr]
    assert seqs == [2, 3, 4]
    resumed = Connection(Role.SERVER)
    resumed.continue_seq(server.last_seq)
    resumed.send(SessionCreated(session_id="s1", config={}, limits={}, ice_servers=()), 0)
    fresh = Connection(Role.CLIENT)
    fresh.send(SessionCreate(session_id="s1"), 0)
    [created] = pump(resumed, fresh)
    assert created.seq == 5  # type: ignore[union-attr]


def test_client_rejects_out_of_order_seq() -> None:
    """A server message whose seq does not increase is reported as bad input."""
    client, server = open_pair()
    server.send(FlowCredit(messages=1, bytes=1), 0)
    payload = server.data_to_send()[0]
    client.receive_data(payload, 0)
    client.receive_data(payload, 0)
    events = client.events_received()
    assert isinstance(events[0], FlowCredit)
    assert isinstance(events[1], BadInput) and "does not follow" in events[1].error.message


def test_timing_sent_is_stamped_at_send() -> None:
    """timing.sent is filled with the send time when the engine left it empty."""
    client, server = open_pair()
    server.send(
        AsrPartial(
            segment_id="g",
            text="hi",
            audio_start_ms=0.0,
            audio_end_ms=1.0,
            timing=Timing(received=1.0, engine_start=2.0, engine_end=3.0),
        ),
        42.0,
    )
    [partial] = pump(server, client)
    assert partial.timing == Timing(received=1.0, engine_start=2.0, engine_end=3.0, sent=42.0)  # type: ignore[union-attr]


def test_roles_cannot_send_the_other_sides_messages() -> None:
    """A server cannot send client messages and vice versa (local errors)."""
    client, server = pair()
    with pytest.raises(LocalProtocolError):
        server.send(Ping(t_client=0.0), 0)
    with pytest.raises(LocalProtocolError):
        client.send(Pong(t_client=0.0, t_server=0.0), 0)
    with pytest.raises(LocalProtocolError, match=r"session\.create before"):
        client.send(InputText(text="early"), 0)


def test_closed_connection_refuses_to_send() -> None:
    """Once failed, the connection sends nothing more."""
    _client, server = pair()
    server.fail(CloseCode.INTERNAL, "x" * 500)
    assert len(server.close_reason.encode()) <= 123
    with pytest.raises(LocalProtocolError):
        server.send(FlowCredit(messages=1, bytes=1), 0)


def test_client_may_create_again_after_a_refusal() -> None:
    """A refused session.create can be retried on the same connection; not once open."""
    client, server = pair()
    client.send(SessionCreate(id="c1", config={"mode": "nope"}), 0)
    pump(client, server)
    server.send(Error(code="invalid_field", message="config.mode", ref="c1"), 0)
    pump(server, client)
    client.send(SessionCreate(id="c2"), 0)
    [create] = pump(client, server)
    assert create == SessionCreate(id="c2")
    server.send(SessionCreated(session_id="s", config={}, limits={}, ice_servers=()), 0)
    pump(server, client)
    with pytest.raises(LocalProtocolError, match="already open"):
        client.send(SessionCreate(id="c3"), 0)
