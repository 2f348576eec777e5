"""The connection gate: caps on open TCP connections, and the deadline of their handshake.

Every connection the server accepts, HTTP or WebSocket, passes the gate before a byte of it
is parsed:

- At most ``max_connections`` are open at once, lowered to the process's open-file limit less
  ``fd_reserve_files`` and twice ``listen_backlog_connections`` (the event loop accepts up to
  a backlog of connections in one go before any is counted here), so that the server never
  runs out of file descriptors for the database, the journal and the models, nor for
  ``/healthz``. At the cap, a new connection
  takes the place of the oldest one still in its handshake (idle or half-sent sockets make
  room for clients that speak); when none is, the new one is answered 503 and closed.
- At most ``max_connections_per_address`` are open from one peer address
  (``proxy_addresses`` exempt); more are answered 429 and closed.
- A connection must finish its handshake within ``handshake_timeout_s``: a whole HTTP request
  after it connects or starts its next request (uvicorn's keep-alive timeout covers the idle
  time between requests), and a WebSocket must be accepted within it of connecting. One that
  does not is dropped (aborted: nothing more is written).
- A WebSocket whose peer does not read (its transport paused for writing) cannot take a close
  frame: when the application closes it, or at shutdown, the connection is aborted instead of
  waiting for ever for its buffer to drain.

uvicorn parses (its httptools HTTP and websockets-sansio WebSocket protocols); the two
subclasses here only add these hooks, bound to one gate by :meth:`ConnectionGate.protocols`.
The counts reach ``/metrics`` (docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from collections.abc import Iterable
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .settings import Settings

log = logging.getLogger(__name__)

REFUSED_PER_ADDRESS = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\nretry-after: 1\r\n"
    b"connection: close\r\n\r\n"
)
REFUSED_AT_CAP = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\n"
    b"connection: close\r\n\r\n"
)


def open_file_limit() -> int | None:
    """The process's soft limit on open files (None: unlimited or unknown)."""
    try:
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _address(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None  # a Unix socket: no address to cap


class ConnectionGate:
    """Counts open connections, refuses those over the caps, drops slow handshakes."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_connections_per_address: int,
        handshake_timeout_s: float,
        proxy_addresses: Iterable[str] = (),
        fd_reserve_files: int = 0,
        open_files: int | None = None,
    ) -> None:
        self.max_connections = max_connections
        if open_files is not None:  # fd_reserve_files counts the accept batches too
            self.max_connections = max(1, min(max_connections, open_files - fd_reserve_files))
        self.max_connections_per_address = max_connections_per_address
        self.handshake_timeout_s = handshake_timeout_s
        self.proxy_addresses = frozenset(proxy_addresses)
        self._open: dict[asyncio.BaseTransport, str | None] = {}
        self._per_address: Counter[str] = Counter()
        # Connections in their handshake, oldest first, with their deadline (None: no limit).
        self._handshaking: dict[asyncio.BaseTransport, asyncio.TimerHandle | None] = {}
        self.peak = 0
        self.counts: Counter[str] = Counter()  # refused_address, refused_cap, evicted, ...

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionGate:
        s = settings
        gate = cls(
            max_connections=s.max_connections,
            max_connections_per_address=s.max_connections_per_address,
            handshake_timeout_s=s.handshake_timeout_s,
            proxy_addresses=s.proxy_addresses,
            fd_reserve_files=s.fd_reserve_files + 2 * s.listen_backlog_connections,
            open_files=open_file_limit(),
        )
        if gate.max_connections < s.max_connections:
            log.info(
                "connection cap %d (max_connections %d, lowered to fit the open-file limit)",
                gate.max_connections,
                s.max_connections,
            )
        return gate

    def __len__(self) -> int:
        return len(self._open)

    # -- called by the protocols ----------------------------------------------------------------

    def admit(self, transport: asyncio.Transport) -> bool:
        """A new connection: admit it (and start its handshake deadline), or answer it with a
        refusal and close it (False)."""
        address = _address(transport)
        if (
            address is not None
            and address not in self.proxy_addresses
            and self._per_address[address] >= self.max_connections_per_address
        ):
            self.counts["refused_address"] += 1
            self._refuse(transport, REFUSED_PER_ADDRESS)
            return False
        if len(self._open) >= self.max_connections:
            victim = next(iter(self._handshaking), None)
            if victim is None:
                self.counts["refused_cap"] += 1
                self._refuse(transport, REFUSED_AT_CAP)
                return False
            self.counts["evicted"] += 1
            self._drop(victim)
        self._open[transport] = address
        if address is not None:
            self._per_address[address] += 1
        self.peak = max(self.peak, len(self._open))
        self.handshake_started(transport)
        return True

    def handshake_started(self, transport: asyncio.BaseTransport) -> None:
        """A request begins (or the connection opened): it must complete within the timeout.
        A deadline already running is kept."""
        if transport in self._handshaking or transport not in self._open:
            return
        timer = None
        if self.handshake_timeout_s > 0:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self.handshake_timeout_s, self._timed_out, transport)
        self._handshaking[transport] = timer

    def handshake_done(self, transport: asyncio.BaseTransport) -> None:
        timer = self._handshaking.pop(transport, None)
        if timer is not None:
            timer.cancel()

    def closed(self, transport: asyncio.BaseTransport) -> None:
        """The connection is gone (idempotent)."""
        self.handshake_done(transport)
        if transport not in self._open:
            return
        address = self._open.pop(transport)
        if address is not None:
            n = self._per_address[address] - 1
            if n > 0:
                self._per_address[address] = n
            else:
                del self._per_address[address]

    def abort_stalled(self, transport: asyncio.BaseTransport) -> None:
        """A connection whose peer does not read is being closed: drop it at once."""
        self.counts["aborted_stalled"] += 1
        self._drop(transport)

    # -- internals --------------------------------------------------------------------------------

    def _timed_out(self, transport: asyncio.BaseTransport) -> None:
        if transport in self._handshaking:
            self.counts["handshake_timeouts"] += 1
            self._drop(transport)

    def _drop(self, transport: asyncio.BaseTransport) -> None:
        self.closed(transport)
        abort = getattr(transport, "abort", None)
        if abort is not None:
            abort()
        else:
            transport.close()

    def _refuse(self, transport: asyncio.Transport, response: bytes) -> None:
        try:
            transport.write(response)
        finally:
            transport.close()

    # -- wiring -----------------------------------------------------------------------------------

    def protocols(self) -> tuple[type[asyncio.Protocol], type[asyncio.Protocol]]:
        """The HTTP and WebSocket protocol classes for uvicorn (its ``http`` and ``ws``
        options), bound to this gate."""
        http = type("GatedHttpProtocol", (GatedHttpProtocol,), {"gate": self})
        ws = type("GatedWebSocketProtocol", (GatedWebSocketProtocol,), {"gate": self})
        return http, ws

    def stats(self) -> dict[str, Any]:
        return {
            "open": len(self._open),
            "handshaking": len(self._handshaking),
            "peak": self.peak,
            "max_connections": self.max_connections,
            "addresses": len(self._per_address),
            **self.counts,
        }


class GatedHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, admitted by the gate and held to its handshake deadline."""

    gate: ClassVar[ConnectionGate]
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not self.gate.admit(transport):
            self._refused = True
            return
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self.gate.closed(self.transport)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def on_message_begin(self) -> None:
        self.gate.handshake_started(self.transport)
        super().on_message_begin()

    def on_message_complete(self) -> None:
        if not self.parser.should_upgrade():  # a WebSocket's ends when it is accepted
            self.gate.handshake_done(self.transport)
        super().on_message_complete()


class GatedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol: the gate's count ends with it; a peer that does not read
    is aborted when closed."""

    gate: ClassVar[ConnectionGate]

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate.closed(self.transport)
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if not self.writable.is_set() and not self.disconnected:
            self.gate.abort_stalled(self.transport)
            return
        super().shutdown()

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == "websocket.close" and not self.writable.is_set() and not self.disconnected:
            self.gate.abort_stalled(self.transport)  # its close frame could never go out
            return
        if kind == "websocket.send" and self.transport.is_closing() and not self.close_sent:
            # Reset by the peer, its loss not yet reported: writing on would only warn.
            raise ClientDisconnected()
        await super().send(message)
        if kind == "websocket.accept":
            self.gate.handshake_done(self.transport)
