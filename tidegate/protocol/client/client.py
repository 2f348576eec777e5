"""The asyncio client shell. See the package docstring."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ..connection import BadInput, Connection, Role
from ..errors import CloseCode, ProtocolError
from ..messages import (
    UPLOAD_TYPES,
    ClientMessage,
    Error,
    Ping,
    Pong,
    ServerMessage,
    SessionClose,
    SessionClosed,
    SessionCreate,
    SessionCreated,
)
from ..negotiation import bearer_subprotocol, subprotocol_for
from ..schema import MAX_MESSAGE_BYTES

MAX_EVENTS = 1_024
OPEN_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 10.0

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
    """One control-channel connection. Create with :meth:`connect`."""

    def __init__(
        self,
        ws: ClientConnection,
        conn: Connection,
        *,
        max_events: int = MAX_EVENTS,
    ) -> None:
        self._ws = ws
        self._conn = conn
        self._events: asyncio.Queue[ServerMessage | BaseException] = asyncio.Queue(max_events)
        self._waiters: dict[str, asyncio.Future[ServerMessage]] = {}
        self._ids = itertools.count(1)
        self._credit = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._closed: ConnectionClosedError | None = None
        self.clock_offset_ms = 0.0
        self.session: SessionCreated | None = None
        self.bad_inputs: list[BadInput] = []
        self._reader = asyncio.get_running_loop().create_task(
            self._read(), name="tidegate-client-reader"
        )

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
        ws = await connect(
            url,
            subprotocols=subprotocols,  # type: ignore[arg-type]
            additional_headers=headers,
            max_size=2 * max_message_bytes,
            compression=None,
            open_timeout=open_timeout_s,
            origin=origin,  # type: ignore[arg-type]
            ping_interval=None,
        )
        chosen = ws.subprotocol or subprotocol_for("cbor")
        conn = Connection(
            Role.CLIENT,
            encoding=chosen.rsplit(".", 1)[-1],
            max_message_bytes=2 * max_message_bytes,
        )
        return cls(ws, conn, max_events=max_events)

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

    # -- reading --------------------------------------------------------------------------------

    async def _read(self) -> None:
        conn = self._conn
        try:
            async for payload in self._ws:
                conn.receive_data(payload, now_ms())
                for event in conn.events_received():
                    if isinstance(event, BadInput):
                        self.bad_inputs.append(event)
                        continue
                    await self._dispatch(event)  # type: ignore[arg-type]
            self._closed = self._close_error()
        except ConnectionClosed:
            self._closed = self._close_error()
        except asyncio.CancelledError:
            self._closed = ConnectionClosedError(CloseCode.NORMAL, "closed by the client")
            raise
        except Exception as e:  # a bug: surface it to whoever waits
            self._closed = ConnectionClosedError(None, f"client reader failed: {e!r}")
        finally:
            closed = self._closed or ConnectionClosedError(None, "closed")
            for fut in self._waiters.values():
                if not fut.done():
                    fut.set_exception(closed)
            self._waiters.clear()
            self._credit.set()
            try:
                self._events.put_nowait(closed)
            except asyncio.QueueFull:
                pass

    def _close_error(self) -> ConnectionClosedError:
        code = self._ws.close_code
        reason = self._ws.close_reason
        return ConnectionClosedError(
            code, reason if code is not None and reason else "connection lost"
        )

    async def _dispatch(self, event: ServerMessage) -> None:
        if event.ref is not None:
            fut = self._waiters.pop(event.ref, None)
            if fut is not None and not fut.done():
                fut.set_result(event)
                return
        if type(event) is Pong:
            return  # a pong nobody waits for any more (timed out)
        if self._conn.credits.messages > 0:
            self._credit.set()
        await self._events.put(event)  # block: stop reading when the application does not

    def __aiter__(self) -> AsyncIterator[ServerMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ServerMessage]:
        while True:
            try:
                yield await self.recv()
            except ConnectionClosedError:
                return

    async def recv(self, timeout_s: float | None = None) -> ServerMessage:
        """The next event (raises ConnectionClosedError once the connection has closed)."""
        if self._closed is not None and self._events.empty():
            raise self._closed
        async with asyncio.timeout(timeout_s):
            item = await self._events.get()
        if isinstance(item, BaseException):
            self._events.put_nowait(item)  # keep it for the next caller
            raise item
        return item

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
        """Send a message (uploads wait for credit first)."""
        if self._closed is not None:
            raise self._closed
        if msg.TYPE in UPLOAD_TYPES:
            await self._wait_credit(msg)
        async with self._send_lock:
            self._conn.send(msg, now_ms())
            try:
                for payload in self._conn.data_to_send():
                    await self._ws.send(payload)
            except ConnectionClosed:
                raise self._close_error() from None

    async def _wait_credit(self, msg: Any) -> None:
        size = (
            len(msg.pcm)
            if hasattr(msg, "pcm")
            else len(msg.image)
            if hasattr(msg, "image")
            else 8 * len(msg.values)
        )
        while not self._conn.credits.can_consume(size):
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
        return self._conn.credits.messages, self._conn.credits.bytes

    @property
    def closed(self) -> ConnectionClosedError | None:
        return self._closed

    async def close_session(self, timeout_s: float = REPLY_TIMEOUT_S) -> SessionClosed:
        reply = await self.request(SessionClose(id=self.next_id()), timeout_s)
        if not isinstance(reply, SessionClosed):
            raise ClientError(f"expected session.closed, got {reply.TYPE}")
        return reply

    async def close(self) -> None:
        """Close the WebSocket and stop the reader."""
        await self._ws.close()
        self._reader.cancel()
        try:
            await self._reader
        except asyncio.CancelledError:
            pass

    async def wait_closed(self, timeout_s: float = REPLY_TIMEOUT_S) -> ConnectionClosedError:
        """Wait for the server to close the connection; returns how it closed."""
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(self._reader)
        assert self._closed is not None
        return self._closed
