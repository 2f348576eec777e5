"""The session state machine is one transition table, and a real Connection does exactly what
it says for every (role, phase, trigger): an allowed trigger moves it to the table's next
phase, a refused one raises or reports the table's documented error and leaves it where it was.
"""

from __future__ import annotations

import itertools

import pytest

from tidegate.protocol import BadInput, CloseCode, Connection, ErrorCode, LocalProtocolError
from tidegate.protocol.messages import (
    ClientMessage,
    Error,
    InputText,
    Ping,
    ServerMessage,
    SessionClose,
    SessionClosed,
    SessionCreate,
    SessionCreated,
)
from tidegate.protocol.state import (
    CLIENT_TRIGGERS,
    SERVER_TRIGGERS,
    TRANSITIONS,
    Phase,
    Refusal,
    Role,
    State,
    Trigger,
    next_phase,
    sends,
)

SAMPLES: dict[Trigger, ClientMessage | ServerMessage] = {
    Trigger.CREATE: SessionCreate(id="m"),
    Trigger.CREATED: SessionCreated(session_id="s", config={}, limits={}, ice_servers=()),
    Trigger.CLOSE: SessionClose(id="m"),
    Trigger.CLOSED: SessionClosed(reason="client"),
    Trigger.PING: Ping(id="m", t_client=0.0),
    Trigger.CLIENT_MESSAGE: InputText(id="m", text="hi"),
    Trigger.SERVER_MESSAGE: Error(code="internal", message="x"),
}


def _apply(conn: Connection, trigger: Trigger) -> list[object]:
    """Make ``trigger`` happen to ``conn`` the way it does in use: our own messages are sent,
    the peer's arrive as bytes, FAIL is fail(). Returns the events it produced."""
    if trigger is Trigger.FAIL:
        conn.fail(CloseCode.INTERNAL, "test")
        return []
    msg = SAMPLES[trigger]
    if sends(conn.role, trigger):
        conn.send(msg, 0.0)
        return []
    if conn.role is Role.SERVER:
        wire = msg.to_wire()
    else:
        assert isinstance(msg, ServerMessage)  # what a client receives, with seq and t
        wire = msg.to_wire(conn.last_seq + 1, 0.0)
    conn.receive_data(conn.codec.encode(wire), 0.0)
    return list(conn.events_received())


ROUTE: dict[Phase, list[Trigger]] = {  # how a new connection reaches each phase
    Phase.IDLE: [],
    Phase.CREATING: [Trigger.CREATE],
    Phase.OPEN: [Trigger.CREATE, Trigger.CREATED],
    Phase.CLOSING: [Trigger.CREATE, Trigger.CREATED, Trigger.CLOSE],
    Phase.CLOSED: [Trigger.FAIL],
}


def _connection_in(role: Role, phase: Phase) -> Connection:
    conn = Connection(role, max_bad_messages=10**6)
    for trigger in ROUTE[phase]:
        _apply(conn, trigger)
        conn.data_to_send()
    assert conn.phase is phase
    return conn


def test_the_table_is_complete() -> None:
    """Every role has a row for every phase and every row an outcome for every trigger."""
    for role in Role:
        assert set(TRANSITIONS[role]) == set(Phase)
        for phase in Phase:
            assert set(TRANSITIONS[role][phase]) == set(Trigger), (role, phase)
    assert CLIENT_TRIGGERS | SERVER_TRIGGERS | {Trigger.FAIL} == set(Trigger)


@pytest.mark.parametrize(
    ("role", "phase", "trigger"),
    list(itertools.product(Role, Phase, Trigger)),
    ids=lambda x: x.value,
)
def test_connection_follows_the_table(role: Role, phase: Phase, trigger: Trigger) -> None:
    """Allowed: the connection moves to the table's next phase. Refused: our own send raises
    LocalProtocolError, the peer's message becomes unexpected_message (answered to a client),
    each with the table's text; the phase stays."""
    conn = _connection_in(role, phase)
    outcome = next_phase(role, phase, trigger)
    msg_type = SAMPLES[trigger].TYPE if trigger is not Trigger.FAIL else ""
    if isinstance(outcome, Phase):
        events = _apply(conn, trigger)
        assert conn.phase is outcome
        assert not any(isinstance(e, BadInput) for e in events)
        return
    text = outcome.text.format(type=msg_type)
    if sends(role, trigger):
        assert outcome.error is LocalProtocolError
        with pytest.raises(LocalProtocolError) as e:
            _apply(conn, trigger)
        assert e.value.message == text
    else:
        [bad] = _apply(conn, trigger)
        assert isinstance(bad, BadInput) and not bad.fatal
        assert bad.error.code is ErrorCode.UNEXPECTED_MESSAGE
        assert bad.error.message == text and bad.error.ref == "m"
    assert conn.phase is phase


def test_a_closed_connection_drops_what_it_receives() -> None:
    """Received while closed: no event, no reply, no count."""
    for role in Role:
        conn = _connection_in(role, Phase.CLOSED)
        for trigger in CLIENT_TRIGGERS if role is Role.SERVER else SERVER_TRIGGERS:
            assert _apply(conn, trigger) == []
        assert conn.data_to_send() == [] and conn.stats.received == 0


def test_the_public_state_shows_idle_and_creating_as_awaiting_session() -> None:
    """Connection.state keeps its four public values."""
    assert {p.state for p in Phase} == set(State)
    assert Phase.IDLE.state is Phase.CREATING.state is State.AWAITING_SESSION
    conn = _connection_in(Role.CLIENT, Phase.CREATING)
    assert conn.state is State.AWAITING_SESSION


def test_the_rules_of_docs_protocol_md() -> None:
    """The rules the docs state in words are the table's: ping is allowed wherever a message
    is read; nothing but session.create and ping before a session; a second create refused;
    after session.close only ping; a client may pipeline only after session.create."""
    server, client = TRANSITIONS[Role.SERVER], TRANSITIONS[Role.CLIENT]
    for phase in (Phase.IDLE, Phase.CREATING, Phase.OPEN, Phase.CLOSING):
        assert server[phase][Trigger.PING] is phase and client[phase][Trigger.PING] is phase
    for phase in (Phase.IDLE, Phase.CREATING):
        assert isinstance(server[phase][Trigger.CLIENT_MESSAGE], Refusal)
        assert isinstance(server[phase][Trigger.CLOSE], Refusal)
    assert isinstance(server[Phase.OPEN][Trigger.CREATE], Refusal)
    assert all(
        isinstance(server[Phase.CLOSING][t], Refusal)
        for t in (Trigger.CREATE, Trigger.CLOSE, Trigger.CLIENT_MESSAGE)
    )
    assert isinstance(client[Phase.IDLE][Trigger.CLIENT_MESSAGE], Refusal)
    assert client[Phase.CREATING][Trigger.CLIENT_MESSAGE] is Phase.CREATING
