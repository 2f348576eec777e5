"""The session state machine of one control-channel connection, as one transition table.

:data:`TRANSITIONS` says, for each role, in each :class:`Phase`, what each :class:`Trigger`
does: move to a phase (possibly the same one), or refuse with a :class:`Refusal` — a
:class:`~tidegate.protocol.errors.UnexpectedMessageError` when the peer sent it (the connection
answers ``unexpected_message`` and stays), a
:class:`~tidegate.protocol.errors.LocalProtocolError` when our own side tried to send it.
Nothing else decides a state: :class:`~tidegate.protocol.connection.Connection` looks every
session message up here (:func:`next_phase`), and docs/protocol.md renders the table
(:func:`mermaid`, :func:`markdown`), checked by tests/protocol/test_docs.py.

A role's messages are the ones it sends, so the role and the trigger tell the direction: a
server *receives* ``session.create`` and *sends* ``session.created``; a client the reverse.
The public :class:`State` of a connection is its phase with ``idle`` and ``creating`` both
shown as ``awaiting_session`` (``creating``: the client has sent ``session.create``, or the
server has received it, and ``session.created`` has not passed yet; a client may pipeline
messages after ``session.create``, but not before it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .errors import LocalProtocolError, ProtocolError, UnexpectedMessageError


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    """What a connection shows of its phase (the public API)."""

    AWAITING_SESSION = "awaiting_session"  # connected; no session yet
    OPEN = "open"  # a session is attached
    CLOSING = "closing"  # session.close sent/received; waiting for session.closed
    CLOSED = "closed"  # nothing more is sent or accepted


class Phase(enum.Enum):
    """The states of the table."""

    IDLE = "idle"  # connected; no session.create yet
    CREATING = "creating"  # session.create has passed; session.created has not
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"

    @property
    def state(self) -> State:
        return _STATE_OF[self]


_STATE_OF = {
    Phase.IDLE: State.AWAITING_SESSION,
    Phase.CREATING: State.AWAITING_SESSION,
    Phase.OPEN: State.OPEN,
    Phase.CLOSING: State.CLOSING,
    Phase.CLOSED: State.CLOSED,
}


class Trigger(enum.Enum):
    """What can move a connection: a message of a kind, or the connection failing."""

    CREATE = "session.create"
    CREATED = "session.created"
    CLOSE = "session.close"
    CLOSED = "session.closed"
    PING = "ping"
    CLIENT_MESSAGE = "other client message"  # input.*, session.update, response.*, rtc.*, ...
    SERVER_MESSAGE = "other server message"  # events, error, pong, flow.credit, ...
    FAIL = "fail()"  # the connection gave up (too many bad messages, a shell's decision)


CLIENT_TRIGGERS = frozenset({Trigger.CREATE, Trigger.CLOSE, Trigger.PING, Trigger.CLIENT_MESSAGE})
SERVER_TRIGGERS = frozenset({Trigger.CREATED, Trigger.CLOSED, Trigger.SERVER_MESSAGE})


@dataclass(frozen=True, slots=True)
class Refusal:
    """A trigger this phase does not allow. ``text`` may name the message as ``{type}``."""

    error: type[ProtocolError]
    text: str

    def exception(self, message_type: str, ref: str | None = None) -> ProtocolError:
        return self.error(self.text.format(type=message_type), ref=ref)


Outcome = Phase | Refusal

# The peer sent it: answered with unexpected_message; the connection stays.
_BEFORE_SESSION = Refusal(
    UnexpectedMessageError, "{type} before a session exists; send session.create first"
)
_ALREADY_OPEN = Refusal(
    UnexpectedMessageError,
    "a session is already open on this connection; use session.update to change it",
)
_AFTER_CLOSE = Refusal(UnexpectedMessageError, "{type} after session.close; the session is closing")
# Our own side tried to send it.
_CREATE_FIRST = Refusal(LocalProtocolError, "send session.create before {type}")
_CLIENT_OPEN = Refusal(LocalProtocolError, "a session is already open on this connection")
_CREATED_TWICE = Refusal(LocalProtocolError, "session.created sent twice on one connection")
_SEND_CLOSED = Refusal(LocalProtocolError, "cannot send {type}: the connection is closed")

_P = Phase
_T = Trigger

TRANSITIONS: dict[Role, dict[Phase, dict[Trigger, Outcome]]] = {
    Role.SERVER: {
        _P.IDLE: {
            _T.CREATE: _P.CREATING,
            _T.CLOSE: _BEFORE_SESSION,
            _T.PING: _P.IDLE,
            _T.CLIENT_MESSAGE: _BEFORE_SESSION,
            _T.CREATED: _P.OPEN,  # a resumed or re-created session may be announced at once
            _T.CLOSED: _P.CLOSED,
            _T.SERVER_MESSAGE: _P.IDLE,
            _T.FAIL: _P.CLOSED,
        },
        _P.CREATING: {
            _T.CREATE: _P.CREATING,  # again after a refusal
            _T.CLOSE: _BEFORE_SESSION,
            _T.PING: _P.CREATING,
            _T.CLIENT_MESSAGE: _BEFORE_SESSION,
            _T.CREATED: _P.OPEN,
            _T.CLOSED: _P.CLOSED,
            _T.SERVER_MESSAGE: _P.CREATING,
            _T.FAIL: _P.CLOSED,
        },
        _P.OPEN: {
            _T.CREATE: _ALREADY_OPEN,
            _T.CLOSE: _P.CLOSING,
            _T.PING: _P.OPEN,
            _T.CLIENT_MESSAGE: _P.OPEN,
            _T.CREATED: _CREATED_TWICE,
            _T.CLOSED: _P.CLOSED,
            _T.SERVER_MESSAGE: _P.OPEN,
            _T.FAIL: _P.CLOSED,
        },
        _P.CLOSING: {
            _T.CREATE: _AFTER_CLOSE,
            _T.CLOSE: _AFTER_CLOSE,
            _T.PING: _P.CLOSING,
            _T.CLIENT_MESSAGE: _AFTER_CLOSE,
            _T.CREATED: _CREATED_TWICE,
            _T.CLOSED: _P.CLOSED,
            _T.SERVER_MESSAGE: _P.CLOSING,  # what was queued is still delivered
            _T.FAIL: _P.CLOSED,
        },
        _P.CLOSED: {
            **{t: _P.CLOSED for t in CLIENT_TRIGGERS},  # received: dropped unread
            **{t: _SEND_CLOSED for t in SERVER_TRIGGERS},
            _T.FAIL: _P.CLOSED,
        },
    },
    Role.CLIENT: {
        _P.IDLE: {
            _T.CREATE: _P.CREATING,
            _T.CLOSE: _CREATE_FIRST,
            _T.PING: _P.IDLE,
            _T.CLIENT_MESSAGE: _CREATE_FIRST,
            _T.CREATED: _P.OPEN,
            _T.CLOSED: _P.CLOSED,
            _T.SERVER_MESSAGE: _P.IDLE,
            _T.FAIL: _P.CLOSED,
        },
        _P.CREATING: {
            _T.CREATE: _P.CREATING,  # again after a refusal
            _T.CLOSE: _P.CLOSING,
            _T.PING: _P.CREATING,
            _T.CLIENT_MESSAGE: _P.CREATING,  # pipelined: the server handles them in order
            _T.CREATED: _P.OPEN,
            _T.CLOSED: _P.CLOSED,
            _T.SERVER_MESSAGE: _P.CREATING,
            _T.FAIL: _P.CLOSED,
        },
        _P.OPEN: {
            _T.CREATE: _CLIENT_OPEN,
            _T.CLOSE: _P.CLOSING,
            _T.PING: _P.OPEN,
            _T.CLIENT_MESSAGE: _P.OPEN,
            _T.CREATED: _P.OPEN,
            _T.CLOSED: _P.CLOSED,
            _T.SERVER_MESSAGE: _P.OPEN,
            _T.FAIL: _P.CLOSED,
        },
        _P.CLOSING: {
            _T.CREATE: _CLIENT_OPEN,
            _T.CLOSE: _P.CLOSING,
            _T.PING: _P.CLOSING,
            _T.CLIENT_MESSAGE: _P.CLOSING,
            _T.CREATED: _P.CLOSING,  # an answer to a create overtaken by our close
            _T.CLOSED: _P.CLOSED,
            _T.SERVER_MESSAGE: _P.CLOSING,
            _T.FAIL: _P.CLOSED,
        },
        _P.CLOSED: {
            **{t: _SEND_CLOSED for t in CLIENT_TRIGGERS},
            **{t: _P.CLOSED for t in SERVER_TRIGGERS},  # received: dropped unread
            _T.FAIL: _P.CLOSED,
        },
    },
}


def next_phase(role: Role, phase: Phase, trigger: Trigger) -> Outcome:
    """What ``trigger`` does to a ``role`` connection in ``phase``: the next phase, or a
    :class:`Refusal`."""
    return TRANSITIONS[role][phase][trigger]


def sends(role: Role, trigger: Trigger) -> bool:
    """Whether ``trigger`` is a message that ``role`` sends (else one it receives; FAIL: own)."""
    if trigger is Trigger.FAIL:
        return True
    return (trigger in CLIENT_TRIGGERS) is (role is Role.CLIENT)


# -- rendering (docs/protocol.md) ---------------------------------------------------------------


def _label(role: Role, trigger: Trigger) -> str:
    if trigger is Trigger.FAIL:
        return trigger.value
    return ("sends " if sends(role, trigger) else "receives ") + trigger.value


def mermaid(role: Role) -> str:
    """The phase changes of ``role`` as a Mermaid state diagram (self-loops and refusals are
    in :func:`markdown`'s table)."""
    lines = ["stateDiagram-v2", "    [*] --> idle"]
    for phase, row in TRANSITIONS[role].items():
        for trigger, outcome in row.items():
            if isinstance(outcome, Phase) and outcome is not phase:
                lines.append(f"    {phase.value} --> {outcome.value}: {_label(role, trigger)}")
    lines.append("    closed --> [*]")
    return "\n".join(lines)


def markdown(role: Role) -> str:
    """The whole table of ``role``: one row per phase, one column per trigger."""
    triggers = list(Trigger)
    head = "| phase (state) | " + " | ".join(f"{_label(role, t)}" for t in triggers) + " |"
    out = [head, "| --- |" + " --- |" * len(triggers)]
    for phase, row in TRANSITIONS[role].items():
        cells = []
        for t in triggers:
            outcome = row[t]
            if isinstance(outcome, Phase):
                if phase is Phase.CLOSED and not sends(role, t):
                    cells.append("dropped")
                else:
                    cells.append("·" if outcome is phase else f"→ {outcome.value}")
            elif outcome.error is LocalProtocolError:
                cells.append("local error")
            else:
                cells.append("`unexpected_message`")
        out.append(f"| {phase.value} ({phase.state.value}) | " + " | ".join(cells) + " |")
    return "\n".join(out)
