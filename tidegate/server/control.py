"""The control WebSocket (``/v1/control``): the I/O shell around the sans-I/O connection.

One reader (the endpoint's coroutine) feeds received payloads to the
:class:`~tidegate.protocol.Connection` and hands the resulting messages to the session; the
replies the protocol produces itself (``pong``, ``error``) go out at once from the reader. One
writer task drains the session's outbox. Both send under one lock, so ordering holds and an
idle writer adds no task hop to a ping's round trip.

A send that does not complete within ``send_timeout_s`` (the client stopped reading and the
socket's buffers are full) is caught by the runtime's watchdog, which closes the connection
with 4408; no timer is armed per send.

Refusals before the session exists (subprotocol, origin, token) are sent as an ``error`` and a
close code, after accepting the socket, because browsers cannot read an HTTP refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

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
    UPLOAD_TYPES,
    Error,
    SessionClose,
    SessionClosed,
    SessionCreate,
    SessionCreated,
    SessionUpdate,
    SessionUpdated,
    upload_size,
)

from .asgi_ws import AsgiWebSocket, Disconnected
from .auth import SCOPE_SESSION, Principal, bearer_from_header
from .db.records import client_info
from .errors import (
    ForbiddenError,
    InvalidConfigError,
    NotFoundError,
    OverloadedError,
    RefusalError,
)
from .modes import ENGINE_MODES, resolve_config, start_mode
from .rtc import ice_servers_for
from .sensors import SENSOR_TYPES, SensorLane
from .session import Session
from .settings import Settings

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

ENGINE_WARMUP_RETRY_MS = 1_000.0
ROUTE_COOKIE = "tidegate_route"


def now_ms() -> float:
    return time.time() * 1000.0


def _close_reason(text: str) -> str:
    """A close reason must fit in a control frame (123 bytes)."""
    return text.encode()[:120].decode(errors="ignore")


def route_cookie(settings: Settings) -> list[tuple[str, str]]:
    """Behind NGINX, this node's route id as a cookie on the WebSocket handshake: a browser
    that reconnects to resume its session comes back to this node (nginx/nginx.conf)."""
    if not settings.route_id:
        return []
    cookie = f"{ROUTE_COOKIE}={settings.route_id}; Path=/v1/control; HttpOnly; SameSite=Strict"
    return [("set-cookie", cookie)]


async def control_endpoint(ws: AsgiWebSocket, runtime: Runtime) -> None:
    """Serve one control connection: negotiate, authenticate, then run the channel."""
    try:
        negotiated = negotiate(ws.subprotocols)
    except NegotiationError as e:
        await ws.accept()
        await ws.close(CloseCode.PROTOCOL_VIOLATION, _close_reason(e.message))
        return
    token = bearer_from_header(ws.headers.get("authorization")) or negotiated.bearer_token
    try:
        origin = ws.headers.get("origin")
        if not runtime.origin_allowed(origin, ws.headers.get("host")):
            raise ForbiddenError(f"origin {origin!r} is not allowed; see TIDEGATE_ALLOWED_ORIGINS")
        principal = await runtime.verifier.verify(token, SCOPE_SESSION)
    except RefusalError as e:
        runtime.counters["auth_refused"] += 1
        await _refuse(ws, negotiated.subprotocol, negotiated.encoding, e)
        return
    try:
        await ws.accept(subprotocol=negotiated.subprotocol, headers=route_cookie(runtime.settings))
    except Disconnected:
        return
    channel = ControlChannel(ws, runtime, negotiated.encoding, principal)
    runtime.channels.add(channel)
    try:
        await channel.run()
    finally:
        runtime.channels.discard(channel)


async def _refuse(
    ws: AsgiWebSocket, subprotocol: str | None, encoding: str, e: RefusalError
) -> None:
    try:
        await ws.accept(subprotocol=subprotocol)
        conn = Connection(Role.SERVER, encoding=encoding)
        conn.send(Error(code=e.code.value, message=e.message), now_ms())
        for payload in conn.data_to_send():
            await ws.send(payload)
    except (Disconnected, OSError):
        return
    await ws.close(e.close_code or CloseCode.FORBIDDEN, _close_reason(e.message))


class ControlChannel:
    """One accepted control connection and the session attached to it."""

    def __init__(
        self, ws: AsgiWebSocket, runtime: Runtime, encoding: str, principal: Principal
    ) -> None:
        s = runtime.settings
        self.ws = ws
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
        #: monotonic time the send in progress began (None: not sending); read by the watchdog
        self.send_started: float | None = None
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[Any] | None = None
        self._receiving = False  # the reader is parked in receive() (safe to cancel)
        self._writer: asyncio.Task[None] | None = None
        self._close_code: int | None = None
        self._close_reason = ""

    # -- Attachment protocol (called by the session) ------------------------------------------

    def too_slow(self) -> None:
        self._fail(CloseCode.TOO_SLOW, "client does not read its events fast enough")

    def superseded(self) -> None:
        """Another connection resumed our session: stop writing from it, and close."""
        self._fail(CloseCode.NORMAL, "session resumed on another connection")
        self.session = None
        if self._writer is not None:
            self._writer.cancel()
        self._stop_reader()

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

    # -- watchdog -----------------------------------------------------------------------------

    def check_send_stuck(self, now_s: float) -> bool:
        """Called by the runtime's watchdog: abort a send stuck past ``send_timeout_s``."""
        started = self.send_started
        if started is None or now_s - started < self.runtime.settings.send_timeout_s:
            return False
        self._fail(CloseCode.TOO_SLOW, "send timed out: the client does not read")
        if self._reader is not None:
            self._reader.cancel()
        if self._writer is not None:
            self._writer.cancel()
        return True

    # -- main loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        self._reader = asyncio.current_task()
        try:
            await self._read_loop()
        except (Disconnected, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("control channel failed")
            self._fail(CloseCode.INTERNAL, "internal error")
        finally:
            if self._writer is not None:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._writer
            code = CloseCode.NORMAL if self._close_code is None else self._close_code
            await self.ws.close(code, self._close_reason)
            if self.session is not None:
                self.session.detach(self, self.runtime.registry.clock())

    def _stop_reader(self) -> None:
        """Make the reader notice a close: cancel it if it waits for input; otherwise it
        sees the close code when it finishes the message in hand."""
        if self._reader is not None and self._receiving:
            self._reader.cancel()

    async def _read_loop(self) -> None:
        receive = self.ws.receive
        conn = self.conn
        while self._close_code is None:
            self._receiving = True
            try:
                data = await receive()
            finally:
                self._receiving = False
            conn.receive_data(data, now_ms())
            for event in conn.events_received():
                if type(event) is BadInput:
                    self.runtime.counters["bad_messages"] += 1
                    if event.fatal:
                        code = conn.close_code or CloseCode.PROTOCOL_VIOLATION
                        self._fail(code, conn.close_reason)
                    continue
                await self._dispatch(event)  # type: ignore[arg-type]
            await self._flush()

    async def _dispatch(self, msg: ClientMessage) -> None:
        try:
            await self.runtime.limiter.admit_message(self.principal, msg, self.session)
            kind = type(msg)
            if kind is SessionCreate:
                await self._create(msg)  # type: ignore[arg-type]
            elif kind is SessionClose:
                await self._end_session(msg)
            elif kind is SessionUpdate:
                self._update(msg)  # type: ignore[arg-type]
            elif msg.TYPE in SENSOR_TYPES:
                assert self.session is not None and self.session.sensors is not None
                await self.session.sensors.handle(msg)
            else:
                session = self.session
                assert session is not None
                assert session.mode is not None
                await session.mode.handle(msg)
        except RefusalError as e:
            self.runtime.refusals[e.code.value] += 1
            self._give_back_credit(msg)
            error = Error(
                code=e.code.value, message=e.message, ref=msg.id, retry_after_ms=e.retry_after_ms
            )
            self.conn.send(error, now_ms())
            if e.close_code is not None:
                self._fail(e.close_code, e.message)
        except Exception:
            self._give_back_credit(msg)
            log.exception("handling %s failed", msg.TYPE)
            self.runtime.counters["internal_errors"] += 1
            error = Error(
                code=ErrorCode.INTERNAL.value,
                message="internal error; the server log has the details",
                ref=msg.id,
            )
            self.conn.send(error, now_ms())

    def _give_back_credit(self, msg: ClientMessage) -> None:
        """An upload that was refused was consumed, not kept: its credit goes back (modes
        that refuse an upload never return its credit themselves)."""
        if self.session is not None and msg.TYPE in UPLOAD_TYPES:
            self.session.return_credit(upload_size(msg))

    async def _create(self, msg: SessionCreate) -> None:
        registry = self.runtime.registry
        if msg.session_id is not None:
            try:
                session = registry.resume(msg.session_id, self.principal, self._client_info())
            except NotFoundError:  # another node's? then say which
                tenant = self.principal.tenant
                await self.runtime.cluster.wrong_node(msg.session_id, tenant, msg.TYPE)
                raise
            resumed = True
            if msg.config is not None:
                config = resolve_config(
                    msg.config, session.config["mode"], self.runtime.engines, **self._tool_limits()
                )
                if config != session.config:
                    raise InvalidConfigError(
                        "session.create: a resumed session keeps its config; use session.update"
                    )
        else:
            engines = self.runtime.engines
            mode = (msg.config or {}).get("mode", self.runtime.settings.default_mode)
            if mode in ENGINE_MODES and self.runtime.engines_warming:
                raise OverloadedError(
                    "the engines are still warming up; try again shortly",
                    retry_after_ms=ENGINE_WARMUP_RETRY_MS,
                )
            self.runtime.admission.check(mode, engines)  # an engine it needs is saturated?
            config = resolve_config(
                msg.config, self.runtime.settings.default_mode, engines, **self._tool_limits()
            )
            cluster = self.runtime.cluster
            ticket = await cluster.admit(self.principal)  # quotas and limits across the nodes
            try:
                session = registry.create(self.principal, config, self._client_info())
            except BaseException:
                await cluster.cancel(ticket)
                raise
            await cluster.register(session, ticket)
            session.mode = start_mode(session, engines)
            session.sensors = SensorLane(
                session, self.runtime.sensor_bus, registry.get, self.runtime.cluster.held_elsewhere
            )
            interval = self.runtime.settings.metrics_interval_s
            if interval > 0:
                session.spawn(session.run_metrics(interval), "metrics")
            resumed = False
        self.session = session
        self.conn.continue_seq(session.last_seq)
        session.attach(self)
        now = now_ms()
        created = SessionCreated(
            session_id=session.id,
            config=session.config,
            limits=self.runtime.limits(),
            ice_servers=ice_servers_for(session),
            resumed=resumed,
            ref=msg.id,
        )
        self.conn.send(created, now)
        self.conn.send(session.initial_credit(), now)
        session.last_seq = self.conn.last_seq
        self._writer = asyncio.get_running_loop().create_task(
            self._write_loop(session), name=f"{session.id}:writer"
        )

    def _tool_limits(self) -> dict[str, int]:
        s = self.runtime.settings
        return {
            "max_tools_items": s.assistant_max_tools_items,
            "max_tools_bytes": s.assistant_max_tools_bytes,
        }

    def _client_info(self) -> dict[str, Any]:
        return client_info(self.ws.scope, self.conn.codec.name)

    def _update(self, msg: SessionUpdate) -> None:
        assert self.session is not None
        current = self.session.config
        merged = resolve_config(
            {**current, **msg.config}, current["mode"], self.runtime.engines, **self._tool_limits()
        )
        if merged["mode"] != current["mode"]:
            raise InvalidConfigError("session.update: the mode of a session cannot change")
        self.session.config = merged
        self.session.emit(SessionUpdated(config=merged, ref=msg.id))

    async def _end_session(self, msg: ClientMessage) -> None:
        session = self.session
        assert session is not None
        await self._drain_outbox(session)
        self.conn.send(SessionClosed(reason="closed by the client", ref=msg.id), now_ms())
        await self._flush()
        self.session = None
        await self.runtime.registry.remove(session)
        self._fail(CloseCode.NORMAL, "session closed")

    # -- writing --------------------------------------------------------------------------------

    async def _write_loop(self, session: Session) -> None:
        outbox = session.outbox
        while True:
            await outbox.wait()
            if self._close_code is not None:
                self._stop_reader()  # the reader closes the socket as it unwinds
                return
            await self._drain_outbox(session)

    async def _drain_outbox(self, session: Session) -> None:
        if self.conn.state is State.CLOSED:
            return
        async with self._lock:
            conn = self.conn
            stages = self.runtime.stage_times
            for msg in session.outbox.take_all():
                sent = now_ms()
                conn.send(msg, sent)
                stages.observe(msg, sent)
            session.last_seq = conn.last_seq
            await self._send_all()

    async def _flush(self) -> None:
        async with self._lock:
            await self._send_all()
            if self.session is not None:
                self.session.last_seq = self.conn.last_seq

    async def _send_all(self) -> None:
        payloads = self.conn.data_to_send()
        if payloads:
            self.send_started = time.monotonic()
            send = self.ws.send
            for payload in payloads:
                await send(payload)
            self.send_started = None

    def _fail(self, code: int, reason: str) -> None:
        """Close the connection with ``code``: the reader closes the socket after the message
        it is handling, or as soon as the writer wakes and cancels it (whichever is first)."""
        if self._close_code is None:
            self._close_code = code
            self._close_reason = _close_reason(reason)
            if code == CloseCode.TOO_SLOW:
                self.runtime.counters["too_slow"] += 1
        if self.session is not None:
            self.session.outbox.wake()
