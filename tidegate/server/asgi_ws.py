"""A minimal WebSocket over raw ASGI, for the control channel's hot path.

Starlette's ``WebSocket`` adds state checks and, through its router and middleware, a wrapper
around every ``send``; on a ping's round trip that is a measurable share of the server's time.
The control channel speaks ASGI directly through this class instead; everything else stays on
starlette.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Disconnected(Exception):
    """The client went away (``code``: its close code, when it sent one)."""

    def __init__(self, code: int | None = None) -> None:
        super().__init__(code)
        self.code = code


class AsgiWebSocket:
    """Accept, receive payloads, send payloads, close: nothing else."""

    __slots__ = ("_receive", "_send", "accepted", "closed", "headers", "scope")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.headers: dict[str, str] = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())
        }
        self.accepted = False
        self.closed = False

    @property
    def subprotocols(self) -> list[str]:
        return list(self.scope.get("subprotocols") or ())

    async def accept(
        self, subprotocol: str | None = None, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        message = await self._receive()
        if message["type"] != "websocket.connect":
            raise Disconnected(message.get("code"))
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        try:
            await self._send(
                {"type": "websocket.accept", "subprotocol": subprotocol, "headers": extra}
            )
        except OSError:  # the server's ClientDisconnected
            raise Disconnected() from None
        self.accepted = True

    async def receive(self) -> bytes | str:
        """The next message's payload (bytes or str); raises Disconnected at the end."""
        message = await self._receive()
        if message["type"] == "websocket.receive":
            data = message.get("bytes")
            if data is None:
                data = message.get("text")
            return data if data is not None else b""
        raise Disconnected(message.get("code"))

    async def send(self, payload: bytes | str) -> None:
        """Send one payload; raises Disconnected when the client is gone."""
        try:
            if type(payload) is bytes:
                await self._send({"type": "websocket.send", "bytes": payload})
            else:
                await self._send({"type": "websocket.send", "text": payload})
        except OSError:  # the server's ClientDisconnected: an ordinary end, not our fault
            raise Disconnected() from None

    async def close(self, code: int, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except (OSError, RuntimeError):
            pass  # already gone


WebSocketHandler = Callable[["AsgiWebSocket"], Awaitable[None]]


class WebSocketFront:
    """An ASGI app that serves its WebSocket paths with their handlers (one dict lookup) and
    all else with ``app``."""

    def __init__(self, app: Any, handlers: Mapping[str, WebSocketHandler]) -> None:
        self.app = app
        self.handlers = dict(handlers)

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.handlers.get(scope.get("path", "")) if scope["type"] == "websocket" else None
        if handler is not None:
            await handler(AsgiWebSocket(scope, receive, send))
        else:
            await self.app(scope, receive, send)
