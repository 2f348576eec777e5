"""The control WebSocket (``/v1/control``): the I/O shell around the sans-I/O connection.

One reader (this endpoint's coroutine) feeds received payloads to the
:class:`~tidegate.protocol.Connection` and hands the resulting messages to the session; replies
the protocol produces itself (``pong``, ``error``) go out at once from the reader. One writer
task drains the session's outbox. Both send under one lock, so ordering holds and an idle
writer adds no task hop to a ping's round trip.

Refusals before the session exists (subprotocol, origin, token) are sent as an ``error`` and a
close code, after accepting the socket, because browsers cannot read an HTTP refusal.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from tidegate.protocol import (
    BadInput,
    ClientMessage,
    CloseCode,
    Connection,
    ErrorCode,
    NegotiationError,
    Role,
    State,
    negotiate,
)
from tidegate.protocol.messages import (
    Error,
    SessionClose,
    SessionClosed,
    SessionCreate,
    SessionCreated,
    SessionUpdate,
    SessionUpdated,
)

from .auth import SCOPE_SESSION, Principal, bearer_from_header
from .errors import ForbiddenError, InvalidConfigError, RefusalError
from .modes import resolve_config, start_mode
from .runtime import Runtime
from .session import Session

log = logging.getLogger(__name__)


def now_ms() -> float:
    return time.time() * 1000.0


async def control_endpoint(websocket: WebSocket) -> None:
    """ASGI WebSocket route handler."""
    runtime: Runtime = websocket.app.state.runtime
    offered = websocket.scope.get("subprotocols") or []
    try:
        negotiated = negotiate(offered)
    except NegotiationError as e:
        await websocket.accept()
        await websocket.close(CloseCode.PROTOCOL_VIOLATION, e.message[:120])
        return
    encoding, subprotocol = negotiated.encoding, negotiated.subprotocol
    origin = websocket.headers.get("origin")
    token = bearer_from_header(websocket.headers.get("authorization")) or negotiated.bearer_token
    try:
        if not runtime.origin_allowed(origin, websocket.headers.get("host")):
            raise_origin(origin)
        principal = runtime.verifier.verify(token, SCOPE_SESSION)
    except RefusalError as e:
        await _refuse(websocket, subprotocol, encoding, e)
        runtime.counters["auth_refused"] += 1
        return
    await websocket.accept(subprotocol=subprotocol)
    channel = ControlChannel(websocket, runtime, encoding, principal)
    await channel.run()


def raise_origin(origin: str | None) -> None:
    raise ForbiddenError(f"origin {origin!r} is not allowed; see TIDEGATE_ALLOWED_ORIGINS")


async def _refuse(
    websocket: WebSocket, subprotocol: str | None, encoding: str, e: RefusalError
) -> None:
    await websocket.accept(subprotocol=subprotocol)
    conn = Connection(Role.SERVER, encoding=encoding)
    conn.send(Error(code=e.code.value, message=e.message), now_ms())
    try:
        for payload in conn.data_to_send():
            await _send(websocket, payload)
        code = e.close_code or CloseCode.FORBIDDEN
        await websocket.close(code, e.message.encode()[:120].decode(errors="ignore"))
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass


async def _send(websocket: WebSocket, payload: bytes | str) -> None:
    if type(payload) is bytes:
        await websocket.send({"type": "websocket.send", "bytes": payload})
    else:
        await websocket.send({"type": "websocket.send", "text": payload})


class ControlChannel:
    """One accepted control connection and the session attached to it."""

    def __init__(
        self, websocket: WebSocket, runtime: Runtime, encoding: str, principal: Principal
    ) -> None:
        s = runtime.settings
        self.ws = websocket
        self.runtime = runtime
        self.principal = principal
        self.conn = Connection(
            Role.SERVER,
            encoding=encoding,
            max_message_bytes=s.max_message_bytes,
            max_depth=s.max_depth,
            max_string_chars=s.max_string_chars,
            max_bad_messages=s.max_bad_messages,
        )
        self.session: Session | None = None
        self._lock = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._close_code: int | None = None
        self._close_reason = ""
        self._closed = False

    # -- Attachment protocol (called by the session) ------------------------------------------

    def too_slow(self) -> None:
        self._fail(CloseCode.TOO_SLOW, "client does not read its events fast enough")

    def superseded(self) -> None:
        """Another connection resumed our session: stop writing from it, and close."""
        self._fail(CloseCode.NORMAL, "session resumed on another connection")
        self.session = None
        if self._writer is not None:
            self._writer.cancel()
        self._writer = asyncio.get_running_loop().create_task(
            self._close_socket(), name="control:close-superseded"
        )

    def stats(self) -> dict[str, Any]:
        st = self.conn.stats
        return {
            "encoding": self.conn.codec.name,
            "received": st.received,
            "received_bytes": st.received_bytes,
            "sent": st.sent,
            "sent_bytes": st.sent_bytes,
            "bad": st.bad,
            "pings": st.pings,
            "credit_messages": self.conn.credits.messages,
            "credit_bytes": self.conn.credits.bytes,
            "credit_refused": self.conn.credits.refused,
        }

    # -- main loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._read_loop()
        except WebSocketDisconnect:
            pass
        except Exception:
            log.exception("control channel failed")
            self._fail(CloseCode.INTERNAL, "internal error")
        finally:
            if self._writer is not None:
                self._writer.cancel()
                try:
                    await self._writer
                except (asyncio.CancelledError, Exception):
                    pass
            await self._close_socket()
            if self.session is not None:
                self.session.detach(self, self.runtime.registry.clock())

    async def _read_loop(self) -> None:
        ws = self.ws
        conn = self.conn
        while not self._closed:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                data = message.get("text")
                if data is None:
                    continue
            conn.receive_data(data, now_ms())
            for event in conn.events_received():
                if type(event) is BadInput:
                    self.runtime.counters["bad_messages"] += 1
                    if event.fatal:
                        self._fail(
                            conn.close_code or CloseCode.PROTOCOL_VIOLATION, conn.close_reason
                        )
                    continue
                await self._dispatch(event)  # type: ignore[arg-type]
            await self._flush()
            if self._close_code is not None:
                return

    async def _dispatch(self, msg: ClientMessage) -> None:
        try:
            kind = type(msg)
            if kind is SessionCreate:
                await self._create(msg)  # type: ignore[arg-type]
            elif kind is SessionClose:
                await self._end_session(msg)
            elif kind is SessionUpdate:
                self._update(msg)  # type: ignore[arg-type]
            else:
                assert self.session is not None and self.session.mode is not None
                await self.session.mode.handle(msg)
        except RefusalError as e:
            self.conn.send(
                Error(
                    code=e.code.value,
                    message=e.message,
                    ref=msg.id,
                    retry_after_ms=e.retry_after_ms,
                ),
                now_ms(),
            )
            if e.close_code is not None:
                self._fail(e.close_code, e.message)
        except Exception:
            log.exception("handling %s failed", msg.TYPE)
            self.runtime.counters["internal_errors"] += 1
            self.conn.send(
                Error(
                    code=ErrorCode.INTERNAL.value,
                    message="internal error; the server log has details",
                    ref=msg.id,
                ),
                now_ms(),
            )

    async def _create(self, msg: SessionCreate) -> None:
        registry = self.runtime.registry
        if msg.session_id is not None:
            session = registry.resume(msg.session_id, self.principal)
            resumed = True
            if (
                msg.config is not None
                and resolve_config(msg.config, session.config["mode"]) != session.config
            ):
                raise InvalidConfigError(
                    "session.create: a resumed session keeps its config; use session.update"
                )
        else:
            config = resolve_config(msg.config, self.runtime.settings.default_mode)
            session = registry.create(self.principal, config)
            session.mode = start_mode(session)
            if self.runtime.settings.metrics_interval_s > 0:
                session.spawn(
                    session.run_metrics(self.runtime.settings.metrics_interval_s), "metrics"
                )
            resumed = False
        self.session = session
        self.conn.continue_seq(session.last_seq)
        session.attach(self)
        now = now_ms()
        self.conn.send(
            SessionCreated(
                session_id=session.id,
                config=session.config,
                limits=self.runtime.limits(),
                ice_servers=(),
                resumed=resumed,
                ref=msg.id,
            ),
            now,
        )
        self.conn.send(session.initial_credit(), now)
        session.last_seq = self.conn.last_seq
        self._writer = asyncio.get_running_loop().create_task(
            self._write_loop(), name=f"{session.id}:writer"
        )

    def _update(self, msg: SessionUpdate) -> None:
        assert self.session is not None
        current = self.session.config
        merged = resolve_config({**current, **msg.config}, current["mode"])
        if merged["mode"] != current["mode"]:
            raise InvalidConfigError("session.update: the mode of a session cannot change")
        self.session.config = merged
        self.session.emit(SessionUpdated(config=merged, ref=msg.id))

    async def _end_session(self, msg: ClientMessage) -> None:
        session = self.session
        assert session is not None
        await self._drain_outbox()
        self.conn.send(SessionClosed(reason="closed by the client", ref=msg.id), now_ms())
        await self._flush()
        self.session = None
        await self.runtime.registry.remove(session)
        self._fail(CloseCode.NORMAL, "session closed")

    # -- writing --------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        session = self.session
        assert session is not None
        outbox = session.outbox
        while not self._closed:
            await outbox.wait()
            if self._close_code is not None:
                await self._close_socket()
                return
            await self._drain_outbox()

    async def _drain_outbox(self) -> None:
        session = self.session
        if session is None or self.conn.state is State.CLOSED:
            return
        async with self._lock:
            conn = self.conn
            for msg in session.outbox.take_all():
                conn.send(msg, now_ms())
            session.last_seq = conn.last_seq
            await self._send_all()

    async def _flush(self) -> None:
        async with self._lock:
            await self._send_all()
            if self.session is not None:
                self.session.last_seq = self.conn.last_seq

    async def _send_all(self) -> None:
        payloads = self.conn.data_to_send()
        if not payloads:
            return
        try:
            async with asyncio.timeout(self.runtime.settings.send_timeout_s):
                for payload in payloads:
                    await _send(self.ws, payload)
        except TimeoutError:
            self._fail(CloseCode.TOO_SLOW, "send timed out")

    def _fail(self, code: int, reason: str) -> None:
        """Close the connection with ``code``: the writer does it when it wakes, or the
        reader after the message it is handling (whichever comes first)."""
        if self._close_code is None:
            self._close_code = code
            self._close_reason = reason.encode()[:120].decode(errors="ignore")
            if code == CloseCode.TOO_SLOW:
                self.runtime.counters["too_slow"] += 1
        if self.session is not None:
            self.session.outbox.wake()

    async def _close_socket(self) -> None:
        if self._closed:
            return
        self._closed = True
        code = self._close_code if self._close_code is not None else CloseCode.NORMAL
        try:
            await self.ws.close(code, self._close_reason)
        except (RuntimeError, OSError, WebSocketDisconnect):
            pass
