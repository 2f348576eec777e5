"""The asyncio client shell. See the package docstring."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from ..connection import BadInput, Connection, Role
from ..errors import CloseCode, ProtocolError
from ..messages import (
    UPLOAD_TYPES,
    ClientMessage,
    Error,
    FlowCredit,
    Ping,
    Pong,
    ServerMessage,
    SessionClose,
    SessionClosed,
    SessionCreate,
    SessionCreated,
    upload_size,
)
from ..negotiation import bearer_subprotocol, subprotocol_for
from ..schema import MAX_MESSAGE_BYTES
from .wire import HandshakeError, WireProtocol, open_wire

MAX_EVENTS = 1_024
OPEN_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 10.0
BAD_INPUTS_KEPT = 16

S = TypeVar("S", bound=ServerMessage)


def now_ms() -> float:
    """Wall-clock time in ms, the unit of every ``t`` on the wire."""
    return time.time() * 1000.0


class ClientError(ProtocolError):
    """Root of the client's exceptions."""


class RefusedError(ClientError):
    """The server answered a request with an ``error`` message."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}", ref=error.ref)
        self.error = error
        self.server_code = error.code
        self.retry_after_ms = error.retry_after_ms


class ConnectionClosedError(ClientError):
    """The connection closed; ``close_code`` and ``reason`` say how."""

    def __init__(self, close_code: int | None, reason: str) -> None:
        super().__init__(f"connection closed ({close_code}): {reason}")
        self.close_code = close_code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ClockSample:
    """One ping: round trip, and the server clock minus the client clock (ms)."""

    rtt_ms: float
    offset_ms: float


class Client:
    """One control-channel connection. Create with :meth:`connect`.

    Events the application has not taken yet wait in a queue of ``max_events``; when it is
    full the socket is no longer read (one read's worth may still arrive), so a slow consumer
    pushes back on the server, which closes the connection (4408) if it cannot keep up.
    """

    def __init__(self, *, max_events: int = MAX_EVENTS) -> None:
        self._wire: WireProtocol | None = None
        self._conn: Connection | None = None
        self._early: list[bytes | str] = []  # arrived before the handshake finished
        self._events: deque[ServerMessage] = deque()
        self._max_events = max_events
        self._paused = False
        self._getter: asyncio.Future[None] | None = None
        self._waiters: dict[str, asyncio.Future[ServerMessage]] = {}
        self._ids = itertools.count(1)
        self._credit = asyncio.Event()
        self._closed: ConnectionClosedError | None = None
        self.clock_offset_ms = 0.0
        self.session: SessionCreated | None = None
        self.bad_inputs: deque[BadInput] = deque(maxlen=BAD_INPUTS_KEPT)
        self.bad_input_count = 0

    @classmethod
    async def connect(
        cls,
        url: str,
        token: str | None,
        *,
        encoding: str = "cbor",
        token_in: str = "header",
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_events: int = MAX_EVENTS,
        open_timeout_s: float = OPEN_TIMEOUT_S,
        origin: str | None = None,
    ) -> Client:
        """Open the control WebSocket. ``token_in`` is ``header`` (Authorization: Bearer) or
        ``subprotocol`` (``tidegate.bearer.<token>``, as browsers do)."""
        subprotocols = [subprotocol_for(encoding)]
        headers: dict[str, str] = {}
        if token is not None:
            if token_in == "subprotocol":
                subprotocols.append(bearer_subprotocol(token))
            elif token_in == "header":
                headers["Authorization"] = f"Bearer {token}"
            else:
                raise ValueError(f"token_in must be 'header' or 'subprotocol', got {token_in!r}")
        client = cls(max_events=max_events)
        try:
            wire, chosen = await open_wire(
                url,
                subprotocols=subprotocols,
                headers=headers,
                origin=origin,
                max_size=2 * max_message_bytes,
                on_message=client._on_message,
                on_close=client._on_close,
                timeout_s=open_timeout_s,
            )
        except HandshakeError as e:
            raise ClientError(f"the server refused the WebSocket handshake: {e}") from None
        client._wire = wire
        client._conn = Connection(
            Role.CLIENT,
            encoding=(chosen or subprotocol_for("cbor")).rsplit(".", 1)[-1],
            max_message_bytes=2 * max_message_bytes,
        )
        early, client._early = client._early, []
        for payload in early:
            client._on_message(payload)
        return client

    # -- context manager ------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- receiving (called from the transport, no task in between) ------------------------------

    def _on_message(self, payload: bytes | str) -> None:
        conn = self._conn
        if conn is None:
            self._early.append(payload)
            return
        conn.receive_data(payload, now_ms())
        for event in conn.events_received():
            if isinstance(event, BadInput):
                self.bad_input_count += 1
                self.bad_inputs.append(event)
                continue
            assert isinstance(event, ServerMessage)
            if event.ref is not None:
                fut = self._waiters.pop(event.ref, None)
                if fut is not None and not fut.done():
                    fut.set_result(event)
                    continue
            kind = type(event)
            if kind is Pong:
                continue  # a pong nobody waits for any more (it timed out)
            if kind is FlowCredit:
                self._credit.set()
            self._events.append(event)
        if self._events:
            if len(self._events) >= self._max_events and not self._paused and self._wire:
                self._paused = True
                self._wire.pause()
            getter = self._getter
            if getter is not None and not getter.done():
                getter.set_result(None)

    def _on_close(self, code: int | None, reason: str) -> None:
        self._closed = ConnectionClosedError(code, reason)
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(self._closed)
        self._waiters.clear()
        self._credit.set()
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    def __aiter__(self) -> AsyncIterator[ServerMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ServerMessage]:
        while True:
            try:
                yield await self.recv()
            except ConnectionClosedError:
                return

    async def recv(self, timeout_s: float | None = None) -> ServerMessage:
        """The next event (raises ConnectionClosedError once the connection has closed and
        every event that arrived before has been taken)."""
        if not self._events:
            async with asyncio.timeout(timeout_s):
                while not self._events:
                    if self._closed is not None:
                        raise self._closed
                    self._getter = asyncio.get_running_loop().create_future()
                    try:
                        await self._getter
                    finally:
                        self._getter = None
        event = self._events.popleft()
        if self._paused and len(self._events) <= self._max_events // 2 and self._wire:
            self._paused = False
            self._wire.resume()
        return event

    async def wait_for(self, kind: type[S], timeout_s: float = REPLY_TIMEOUT_S) -> S:
        """Skip events until one of ``kind`` arrives (raises RefusedError on an ``error``)."""
        async with asyncio.timeout(timeout_s):
            while True:
                event = await self.recv()
                if isinstance(event, kind):
                    return event
                if isinstance(event, Error):
                    raise RefusedError(event)

    # -- sending --------------------------------------------------------------------------------

    def next_id(self) -> str:
        return f"c{next(self._ids)}"

    async def send(self, msg: ClientMessage) -> None:
        """Send a message (uploads wait for credit first; every send respects backpressure)."""
        if self._closed is not None:
            raise self._closed
        conn, wire = self._conn, self._wire
        assert conn is not None and wire is not None
        if msg.TYPE in UPLOAD_TYPES:
            await self._wait_credit(msg)
        if not wire.is_open:
            raise self._closed or ConnectionClosedError(
                wire.ws.close_code, wire.ws.close_reason or ""
            )
        conn.send(msg, now_ms())
        for payload in conn.data_to_send():
            wire.send(payload)
        await wire.drain()

    async def _wait_credit(self, msg: Any) -> None:
        conn = self._conn
        assert conn is not None
        size = upload_size(msg)
        while not conn.credits.can_consume(size):
            if self._closed is not None:
                raise self._closed
            self._credit.clear()
            await self._credit.wait()

    async def request(
        self, msg: ClientMessage, timeout_s: float = REPLY_TIMEOUT_S
    ) -> ServerMessage:
        """Send ``msg`` with an id and return the first server message that refers to it."""
        if msg.id is None:
            raise ValueError("request() needs a message with an id (use client.next_id())")
        fut: asyncio.Future[ServerMessage] = asyncio.get_running_loop().create_future()
        self._waiters[msg.id] = fut
        try:
            await self.send(msg)
            async with asyncio.timeout(timeout_s):
                reply = await fut
        finally:
            self._waiters.pop(msg.id, None)
        if isinstance(reply, Error):
            raise RefusedError(reply)
        return reply

    async def create_session(
        self, config: dict[str, Any] | None = None, *, session_id: str | None = None
    ) -> SessionCreated:
        """Create (or, with ``session_id``, resume) a session."""
        reply = await self.request(
            SessionCreate(id=self.next_id(), config=config, session_id=session_id)
        )
        if not isinstance(reply, SessionCreated):
            raise ClientError(f"expected session.created, got {reply.TYPE}")
        self.session = reply
        return reply

    async def ping(self, timeout_s: float = REPLY_TIMEOUT_S) -> ClockSample:
        """One clock probe."""
        t0 = now_ms()
        reply = await self.request(Ping(id=self.next_id(), t_client=t0), timeout_s)
        t1 = now_ms()
        assert isinstance(reply, Pong)
        rtt = t1 - t0
        return ClockSample(rtt, reply.t_server - (t0 + rtt / 2))

    async def sync_clock(self, samples: int = 5) -> ClockSample:
        """Ping ``samples`` times; keep the offset of the fastest round trip (least skewed)."""
        best = min([await self.ping() for _ in range(samples)], key=lambda s: s.rtt_ms)
        self.clock_offset_ms = best.offset_ms
        return best

    def to_client_time(self, server_ms: float) -> float:
        """Map a server time onto this client's clock (after :meth:`sync_clock`)."""
        return server_ms - self.clock_offset_ms

    @property
    def credits(self) -> tuple[int, int]:
        """Upload credit left: (messages, bytes)."""
        assert self._conn is not None
        return self._conn.credits.messages, self._conn.credits.bytes

    @property
    def last_seq(self) -> int:
        assert self._conn is not None
        return self._conn.last_seq

    @property
    def closed(self) -> ConnectionClosedError | None:
        return self._closed

    async def send_raw(self, payload: bytes | str) -> None:
        """Send bytes as they are, bypassing the protocol (for tests of bad input)."""
        assert self._wire is not None
        self._wire.send(payload)
        await self._wire.drain()

    async def close_session(self, timeout_s: float = REPLY_TIMEOUT_S) -> SessionClosed:
        reply = await self.request(SessionClose(id=self.next_id()), timeout_s)
        if not isinstance(reply, SessionClosed):
            raise ClientError(f"expected session.closed, got {reply.TYPE}")
        return reply

    async def close(self) -> None:
        """Close the WebSocket (closing handshake, bounded by a timeout)."""
        if self._wire is not None:
            await self._wire.close(CloseCode.NORMAL)

    async def wait_closed(self, timeout_s: float = REPLY_TIMEOUT_S) -> ConnectionClosedError:
        """Wait for the server to close the connection; returns how it closed."""
        assert self._wire is not None
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(self._wire.lost)
        assert self._closed is not None
        return self._closed
