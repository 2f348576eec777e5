"""The client's WebSocket: websockets' sans-I/O ``ClientProtocol`` on an asyncio transport.

Received messages are handed to a callback straight from ``data_received``, so a reply wakes
the coroutine waiting for it with no reader task in between. Backpressure: the owner calls
:meth:`pause` when it cannot take more and :meth:`resume` when it can; while paused, the socket
is not read and TCP pushes back on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Sequence

from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

CLOSE_TIMEOUT_S = 5.0
WRITE_HIGH_WATER_BYTES = 256 * 1024

OnMessage = Callable[[bytes | str], None]
OnClose = Callable[[int | None, str], None]


class HandshakeError(Exception):
    """The server refused the WebSocket handshake (HTTP status other than 101)."""


class WireProtocol(asyncio.Protocol):
    """One WebSocket connection. Create with :func:`open_wire`."""

    def __init__(self, ws: ClientProtocol, on_message: OnMessage, on_close: OnClose) -> None:
        self.ws = ws
        self.on_message = on_message
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.set_write_buffer_limits(WRITE_HIGH_WATER_BYTES)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        self._process()

    def eof_received(self) -> None:
        self.ws.receive_eof()
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()
        if not self.handshake.done():
            self.handshake.set_exception(
                exc or ConnectionError("connection closed during handshake")
            )
        if not self.lost.done():
            self.lost.set_result(None)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self._close_timer is not None:
            self._close_timer.cancel()
        code = self.ws.close_code
        self.on_close(code, self.ws.close_reason or ("" if code is not None else "connection lost"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # -- frames ---------------------------------------------------------------------------------

    def _process(self) -> None:
        events = self.ws.events_received()
        self._flush()
        for event in events:
            if isinstance(event, Response):
                if self.ws.handshake_exc is not None:
                    self.handshake.set_exception(HandshakeError(str(self.ws.handshake_exc)))
                else:
                    self.handshake.set_result(event)
            elif isinstance(event, Frame):
                self._frame(event)
        if self.ws.close_expected() and self._close_timer is None:
            # The server should drop the connection now; if it does not, we do.
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self._abort)

    def _frame(self, frame: Frame) -> None:
        op = frame.opcode
        if op is Opcode.TEXT or op is Opcode.BINARY:
            if frame.fin:
                data = bytes(frame.data)
                self.on_message(data.decode() if op is Opcode.TEXT else data)
            else:
                self._fragments = [bytes(frame.data)]
                self._fragment_text = op is Opcode.TEXT
        elif op is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data = b"".join(self._fragments)
                self._fragments = []
                self.on_message(data.decode() if self._fragment_text else data)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.ws.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                with contextlib.suppress(OSError, RuntimeError):
                    transport.write_eof()
            else:
                transport.close()

    def _abort(self) -> None:
        if self.transport is not None and not self.lost.done():
            self.transport.abort()

    # -- owner API ------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.ws.state is State.OPEN

    def send(self, payload: bytes | str) -> None:
        """Queue one message on the socket (call :meth:`drain` to respect backpressure)."""
        if isinstance(payload, str):
            self.ws.send_text(payload.encode())
        else:
            self.ws.send_binary(payload)
        self._flush()

    async def drain(self) -> None:
        """Wait while the socket's write buffer is above its high-water mark."""
        if self._write_paused and not self.lost.done():
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Closing handshake, then wait (bounded) for the server to drop the connection."""
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, reason)
            self._flush()
        self.resume()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await asyncio.shield(self.lost)
        except TimeoutError:
            self._abort()


async def open_wire(
    url: str,
    *,
    subprotocols: Sequence[str],
    headers: dict[str, str],
    origin: str | None,
    max_size: int,
    on_message: OnMessage,
    on_close: OnClose,
    timeout_s: float,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[WireProtocol, str | None]:
    """Connect and complete the handshake; returns the protocol and the chosen subprotocol."""
    uri = parse_uri(url)
    ws = ClientProtocol(
        uri,
        origin=Origin(origin) if origin else None,
        subprotocols=[Subprotocol(s) for s in subprotocols],
        max_size=max_size,
    )
    request = ws.connect()
    for name, value in headers.items():
        request.headers[name] = value
    loop = asyncio.get_running_loop()
    if uri.secure and ssl_context is None:
        ssl_context = ssl.create_default_context()
    async with asyncio.timeout(timeout_s):
        _, proto = await loop.create_connection(
            lambda: WireProtocol(ws, on_message, on_close),
            uri.host,
            uri.port,
            ssl=ssl_context if uri.secure else None,
        )
        ws.send_request(request)
        proto._flush()
        response = await proto.handshake
    sock = proto.transport.get_extra_info("socket") if proto.transport else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    chosen = Headers(response.headers).get("Sec-WebSocket-Protocol")
    return proto, chosen
