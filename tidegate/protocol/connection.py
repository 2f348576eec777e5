"""The sans-I/O connection: WebSocket message payloads in, events out; messages in, payloads out.

One protocol message travels in one WebSocket message. The WebSocket framing itself belongs to
the I/O shell (the server's ASGI handler, or :mod:`tidegate.protocol.client`); this class holds
everything else: decoding, validation, the session state machine (driven by the transition table of
:mod:`tidegate.protocol.state`), envelope numbering, ping answers, upload credit and the limits
on what it accepts. Time is always an argument.

Server role::

    conn = Connection(Role.SERVER, encoding="cbor")
    conn.receive_data(payload, now_ms)   # a WebSocket message from the client
    for event in conn.events_received(): # client messages, or BadInput
        ...
    conn.send(SessionCreated(...), now_ms)
    for payload in conn.data_to_send():  # bytes (binary message) or str (text message)
        ...

Bad input never raises out of :meth:`receive_data`: it becomes a :class:`BadInput` event and,
in the server role, an ``error`` reply queued in :meth:`data_to_send`. After
``max_bad_messages`` bad messages in a row, or that many within ``bad_messages_window_ms``
(valid messages in between, pings included, do not reset that count), the connection fails
with close code 4400.

A message the shell refused before it was handled (``receive_data(..., handle=False)``: over
its rate budget) is parsed and comes out as an event like any other, but it is not answered
(not even a ping), changes no state (the transition table is not consulted), and only its
upload credit is consumed: the shell answers it with its refusal and gives the credit back.
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec import Codec, get_codec
from .errors import (
    CloseCode,
    EncodeError,
    ErrorCode,
    FlowViolationError,
    LocalProtocolError,
    MessageTooLargeError,
    ProtocolError,
    RemoteProtocolError,
)
from .flow import Credits, RecentCount
from .messages import (
    UPLOAD_TYPES,
    ClientMessage,
    Direction,
    Error,
    FlowCredit,
    Message,
    Ping,
    Pong,
    ServerMessage,
    SessionClose,
    SessionClosed,
    SessionCreate,
    SessionCreated,
    parse_message,
    upload_size,
)
from .schema import MAX_DEPTH, MAX_LIST_ITEMS, MAX_MESSAGE_BYTES, MAX_STRING_CHARS, Limits
from .state import Phase, Refusal, Role, State, Trigger, next_phase

__all__ = ["BadInput", "Connection", "ConnectionStats", "Event", "Role", "State"]

MAX_BAD_MESSAGES = 16
BAD_MESSAGES_WINDOW_MS = 10_000.0

_TRIGGERS: dict[type[Message], Trigger] = {
    SessionCreate: Trigger.CREATE,
    SessionCreated: Trigger.CREATED,
    SessionClose: Trigger.CLOSE,
    SessionClosed: Trigger.CLOSED,
    Ping: Trigger.PING,
}


def _trigger(msg: Message) -> Trigger:
    kind = _TRIGGERS.get(type(msg))
    if kind is not None:
        return kind
    return Trigger.CLIENT_MESSAGE if isinstance(msg, ClientMessage) else Trigger.SERVER_MESSAGE


@dataclass(frozen=True, slots=True)
class BadInput:
    """The peer sent something we refused. ``fatal`` means the connection has failed."""

    error: RemoteProtocolError
    fatal: bool = False


Event = Message | BadInput


@dataclass(slots=True)
class ConnectionStats:
    received: int = 0
    received_bytes: int = 0
    sent: int = 0
    sent_bytes: int = 0
    bad: int = 0
    pings: int = 0
    encode_errors: int = 0


class Connection:
    """The protocol state of one control-channel connection (either role)."""

    def __init__(
        self,
        role: Role,
        *,
        encoding: str = "cbor",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_depth: int = MAX_DEPTH,
        max_string_chars: int = MAX_STRING_CHARS,
        max_list_items: int = MAX_LIST_ITEMS,
        max_bad_messages: int = MAX_BAD_MESSAGES,
        bad_messages_window_ms: float = BAD_MESSAGES_WINDOW_MS,
    ) -> None:
        self.role = role
        self.codec: Codec = get_codec(encoding)
        self.limits = Limits(
            max_message_bytes=max_message_bytes,
            max_depth=max_depth,
            max_string_chars=max_string_chars,
            max_list_items=max_list_items,
        )
        self.max_bad_messages = max_bad_messages
        self.phase = Phase.IDLE
        self.session_id: str | None = None
        self.credits = Credits()
        self.stats = ConnectionStats()
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        self._seq = 0  # last seq sent (server) or received (client)
        self._bad_in_a_row = 0
        self._bad_recent = RecentCount(max_bad_messages, bad_messages_window_ms)
        self._events: list[Event] = []
        self._outgoing: list[bytes | str] = []
        self._peer_direction = Direction.CLIENT if role is Role.SERVER else Direction.SERVER

    @property
    def state(self) -> State:
        """The session state (the phase, with ``idle`` and ``creating`` as awaiting_session)."""
        return self.phase.state

    def _move(self, trigger: Trigger, msg: Message, *, received: bool) -> None:
        """Apply the transition table; a refusal raises its error (a received message's
        names the message's ``id`` as ``ref``)."""
        outcome = next_phase(self.role, self.phase, trigger)
        if isinstance(outcome, Refusal):
            ref = msg.id if received and isinstance(msg, ClientMessage) else None
            raise outcome.exception(msg.TYPE, ref=ref)
        self.phase = outcome

    # -- receiving ----------------------------------------------------------------------------

    def receive_data(self, data: bytes | str, now_ms: float, *, handle: bool = True) -> None:
        """Feed one WebSocket message payload received from the peer. ``handle=False``: the
        shell refused it already (server role; see the module docstring)."""
        if self.phase is Phase.CLOSED:
            return  # the table: whatever a closed connection receives is dropped unread
        self.stats.received += 1
        self.stats.received_bytes += len(data)
        try:
            if len(data) > self.limits.max_message_bytes:
                raise MessageTooLargeError(
                    f"message of {len(data)} bytes exceeds the limit of "
                    f"{self.limits.max_message_bytes} bytes"
                )
            obj = self.codec.decode(data)
            msg = parse_message(
                obj,
                self._peer_direction,
                limits=self.limits,
                strict=self.role is Role.SERVER,
                binary_decoder=self.codec.binary_decoder,
            )
            if self.role is Role.SERVER:
                if handle:
                    self._server_receive(msg, now_ms)  # type: ignore[arg-type]
                else:
                    self._server_refused(msg)  # type: ignore[arg-type]
            else:
                self._client_receive(msg)  # type: ignore[arg-type]
        except RemoteProtocolError as e:
            self._bad_input(e, now_ms)
            return
        self._bad_in_a_row = 0

    def _server_receive(self, msg: ClientMessage, now_ms: float) -> None:
        trigger = _trigger(msg)
        if trigger is Trigger.PING:  # allowed wherever a message is read: answered here
            self.stats.pings += 1
            self.send(Pong(t_client=msg.t_client, t_server=now_ms, ref=msg.id), now_ms)  # type: ignore[attr-defined]
            return
        if trigger is Trigger.CLIENT_MESSAGE and msg.TYPE in UPLOAD_TYPES:
            self._check_state(trigger, msg)  # the state first: credit only counts when open
            size = upload_size(msg)
            if not self.credits.try_consume(size):
                raise FlowViolationError(
                    f"{msg.TYPE} of {size} bytes without enough credit "
                    f"({self.credits.messages} messages, {self.credits.bytes} bytes left); "
                    "wait for flow.credit",
                    ref=msg.id,
                )
        self._move(trigger, msg, received=True)
        self._events.append(msg)

    def _server_refused(self, msg: ClientMessage) -> None:
        if msg.TYPE in UPLOAD_TYPES and self.phase is Phase.OPEN:
            size = upload_size(msg)
            if not self.credits.try_consume(size):
                raise FlowViolationError(
                    f"{msg.TYPE} of {size} bytes without enough credit; wait for flow.credit",
                    ref=msg.id,
                )
        self._events.append(msg)

    def _check_state(self, trigger: Trigger, msg: Message) -> None:
        """Raise the table's refusal, if any, without moving."""
        outcome = next_phase(self.role, self.phase, trigger)
        if isinstance(outcome, Refusal):
            ref = msg.id if isinstance(msg, ClientMessage) and self.role is Role.SERVER else None
            raise outcome.exception(msg.TYPE, ref=ref)

    def _client_receive(self, msg: ServerMessage) -> None:
        if msg.seq <= self._seq:
            raise RemoteProtocolError(
                f"{msg.TYPE}: seq {msg.seq} does not follow the previous seq {self._seq}"
            )
        self._seq = msg.seq
        kind = type(msg)
        self._move(_trigger(msg), msg, received=True)  # a client refuses no server message
        if kind is FlowCredit:
            self.credits.grant(msg.messages, msg.bytes)  # type: ignore[attr-defined]
        elif kind is SessionCreated and self.phase is Phase.OPEN:
            self.session_id = msg.session_id  # type: ignore[attr-defined]
        elif kind is SessionClosed:
            self.close_code = CloseCode.NORMAL
        self._events.append(msg)

    def _bad_input(self, error: RemoteProtocolError, now_ms: float) -> None:
        self.stats.bad += 1
        self._bad_in_a_row += 1
        in_a_row = self._bad_in_a_row >= self.max_bad_messages
        recent = self._bad_recent.hit(now_ms)
        fatal = in_a_row or recent
        if self.role is Role.SERVER:
            self.send(Error(code=error.code.value, message=error.message, ref=error.ref), now_ms)
        if fatal:
            window_s = self._bad_recent.window_ms / 1000.0
            self.fail(
                CloseCode.PROTOCOL_VIOLATION,
                f"{self._bad_in_a_row} invalid messages in a row"
                if in_a_row
                else f"{self.max_bad_messages} invalid messages within {window_s:g} s",
            )
        self._events.append(BadInput(error, fatal))

    def events_received(self) -> list[Event]:
        """Take the events produced since the last call, in order."""
        events = self._events
        self._events = []
        return events

    # -- sending ------------------------------------------------------------------------------

    def send(self, msg: Message, now_ms: float) -> None:
        """Encode a message for the peer; payloads come out of :meth:`data_to_send`.

        The transition table is checked first; a message the encoding cannot carry then raises
        :class:`EncodeError` and changes nothing (no seq is used, no credit taken, no phase
        moves): the caller can report it and go on."""
        trigger = _trigger(msg)
        if self.role is Role.SERVER:
            if not isinstance(msg, ServerMessage):
                raise LocalProtocolError(f"a server cannot send the client message {msg.TYPE}")
            kind = type(msg)
            self._check_state(trigger, msg)
            wire = msg.to_wire(self._seq + 1, now_ms)
            timing = wire.get("timing")
            if timing is not None and "sent" not in timing:
                timing["sent"] = now_ms
            payload = self._encode(msg, wire)
            self._move(trigger, msg, received=False)
            self._seq += 1
            if kind is SessionCreated:
                self.session_id = msg.session_id  # type: ignore[attr-defined]
            elif kind is FlowCredit:
                self.credits.grant(msg.messages, msg.bytes)  # type: ignore[attr-defined]
            elif kind is SessionClosed:
                self.close_code = CloseCode.NORMAL
        else:
            if not isinstance(msg, ClientMessage):
                raise LocalProtocolError(f"a client cannot send the server message {msg.TYPE}")
            self._check_state(trigger, msg)
            payload = self._encode(msg, msg.to_wire())
            if trigger is Trigger.CLIENT_MESSAGE and msg.TYPE in UPLOAD_TYPES:
                size = upload_size(msg)
                if not self.credits.try_consume(size):
                    raise LocalProtocolError(
                        f"{msg.TYPE} of {size} bytes exceeds the upload credit "
                        f"({self.credits.messages} messages, {self.credits.bytes} bytes): "
                        "wait for flow.credit"
                    )
            self._move(trigger, msg, received=False)
        self.stats.sent += 1
        self.stats.sent_bytes += len(payload)
        self._outgoing.append(payload)

    def _encode(self, msg: Message, wire: dict[str, object]) -> bytes | str:
        try:
            return self.codec.encode(wire)
        except Exception as e:  # each codec raises its own kinds (OverflowError, TypeError...)
            self.stats.encode_errors += 1
            raise EncodeError(
                f"{msg.TYPE} cannot be encoded as {self.codec.name}: {type(e).__name__}: {e}"
            ) from None

    def send_error(self, error: ProtocolError, now_ms: float) -> None:
        """Send an ``error`` for a refusal decided outside the protocol (auth, limits)."""
        code = error.code if isinstance(error, RemoteProtocolError) else ErrorCode.INTERNAL
        text = error.message if isinstance(error, RemoteProtocolError) else "internal error"
        self.send(Error(code=code.value, message=text, ref=error.ref), now_ms)

    def data_to_send(self) -> list[bytes | str]:
        """Take the payloads to send, in order: bytes go as binary messages, str as text."""
        out = self._outgoing
        self._outgoing = []
        return out

    def fail(self, code: CloseCode, reason: str) -> None:
        """Give up on the connection: the shell should close the WebSocket with ``code``."""
        if self.phase is not Phase.CLOSED:
            outcome = next_phase(self.role, self.phase, Trigger.FAIL)
            assert isinstance(outcome, Phase)  # the table refuses no failure
            self.phase = outcome
            self.close_code = code
            self.close_reason = reason.encode()[:120].decode(errors="ignore")  # fits a close frame

    def continue_seq(self, last_seq: int) -> None:
        """Number this connection's messages after ``last_seq`` (a resumed session's seq
        continues across connections). Server role, before ``session.created``."""
        if self.role is not Role.SERVER or self.state is not State.AWAITING_SESSION:
            raise LocalProtocolError(
                "continue_seq is for a server connection before session.created"
            )
        self._seq = max(self._seq, last_seq)

    @property
    def last_seq(self) -> int:
        return self._seq
