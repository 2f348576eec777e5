"""The control WebSocket (``/v1/control``): the I/O shell around the sans-I/O connection.

One reader (the endpoint's coroutine) feeds received payloads to the
:class:`~tidegate.protocol.Connection` and hands the resulting messages to the session; the
replies the protocol produces itself (``pong``, ``error``) go out at once from the reader. One
writer task drains the session's outbox. Both send under one lock, so ordering holds and an
idle writer adds no task hop to a ping's round trip.

A send that does not complete within ``send_timeout_s`` (the client stopped reading and the
socket's buffers are full) is caught by the runtime's watchdog, which closes the connection
with 4408; no timer is armed per send.

Refusals before the session exists (subprotocol, origin, token, too many connections of one
subject without a session) are sent as an ``error`` and a close code, after accepting the
socket, because browsers cannot read an HTTP refusal.

Every inbound message counts against its subject's message budget before it is handled,
whether it parses or not, pings included; one over the budget is answered ``rate_limited``
instead. A connection without a session must send its first message within
``first_message_timeout_s`` and is closed after ``sessionless_idle_s`` without one (4409); a
connection is closed with 4401 when its token expires.

How a connection ends: whatever the cause (the client closes, resets or stops reading; we
close it for a reason; its reader is cancelled by the watchdog or a shutdown), the reader's
``finally`` runs :meth:`ControlChannel._end`, the one place an end is handled. It first does,
without awaiting anything (so that no cancellation can skip it), what must happen: stop the
writer, detach the session (its resume window starts), give back the subject's slot, log the
end; only then does it close the socket, for at most ``send_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from tidegate.pipelines.records import client_info
from tidegate.protocol import (
    BadInput,
    ClientMessage,
    CloseCode,
    Connection,
    EncodeError,
    ErrorCode,
    NegotiationError,
    RecentCount,
    Role,
    ServerMessage,
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
from tidegate.sessions.session import Session

from . import edge
from .asgi_ws import AsgiWebSocket, Disconnected
from .auth import SCOPE_SESSION, Principal, bearer_from_header
from .errors import (
    ConnectionLimitError,
    RateLimitedError,
    RefusalError,
    UnauthorizedError,
)
from .rtc import ice_servers_for
from .settings import Settings

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

ROUTE_COOKIE = "tidegate_route"
SESSIONLESS_RETRY_MS = 1_000.0
# Close codes that end a connection for something the client did (logged at info, no
# traceback); the client's own closes are logged at debug; only our faults are errors.
CLIENT_CAUSED = frozenset(
    {
        CloseCode.PROTOCOL_VIOLATION,
        CloseCode.UNAUTHORIZED,
        CloseCode.FORBIDDEN,
        CloseCode.TOO_SLOW,
        CloseCode.IDLE_TIMEOUT,
        CloseCode.TOO_LARGE,
        CloseCode.RATE_LIMITED,
    }
)


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
        try:
            await ws.accept()
        except Disconnected:
            return
        await ws.close(CloseCode.PROTOCOL_VIOLATION, _close_reason(e.message))
        return
    token = bearer_from_header(ws.headers.get("authorization")) or negotiated.bearer_token
    try:
        principal = await edge.admit(runtime, ws.headers, token, SCOPE_SESSION)  # in-band refusal
        _hold_sessionless(runtime, principal)
    except RefusalError as e:
        key = "connections_refused" if isinstance(e, ConnectionLimitError) else "auth_refused"
        runtime.counters[key] += 1
        await _refuse(ws, negotiated.subprotocol, negotiated.encoding, e)
        return
    try:
        await ws.accept(subprotocol=negotiated.subprotocol, headers=route_cookie(runtime.settings))
    except Disconnected:
        _release_sessionless(runtime, principal)
        return
    except BaseException:  # cancelled (a shutdown): the slot goes back all the same
        _release_sessionless(runtime, principal)
        raise
    channel = ControlChannel(ws, runtime, negotiated.encoding, principal)
    await channel.run()


def _subject(principal: Principal) -> tuple[str, str]:
    return (principal.tenant, principal.subject)


def _hold_sessionless(runtime: Runtime, principal: Principal) -> None:
    """Count a new connection against its subject's connections without a session, or refuse
    it (ConnectionLimitError) when they are at ``max_sessionless_connections_per_subject``."""
    key = _subject(principal)
    cap = runtime.settings.max_sessionless_connections_per_subject
    held = runtime.sessionless[key]
    if held >= cap:
        raise ConnectionLimitError(
            f"this subject holds {held} connections without a session, its limit "
            "(max_sessionless_connections_per_subject); create a session on one, or close one",
            retry_after_ms=SESSIONLESS_RETRY_MS,
        )
    runtime.sessionless[key] = held + 1


def _release_sessionless(runtime: Runtime, principal: Principal) -> None:
    key = _subject(principal)
    n = runtime.sessionless[key] - 1
    if n > 0:
        runtime.sessionless[key] = n
    else:
        del runtime.sessionless[key]


async def _refuse(
    ws: AsgiWebSocket, subprotocol: str | None, encoding: str, e: RefusalError
) -> None:
    try:
        await ws.accept(subprotocol=subprotocol)
        conn = Connection(Role.SERVER, encoding=encoding)
        conn.send(
            Error(code=e.code.value, message=e.message, retry_after_ms=e.retry_after_ms),
            now_ms(),
        )
        for payload in conn.data_to_send():
            await ws.send(payload)
    except Disconnected:
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
            bad_messages_window_ms=s.bad_messages_window_s * 1000.0,
        )
        self.session: Session | None = None
        #: monotonic time the send in progress began (None: not sending); read by the watchdog
        self.send_started: float | None = None
        self._lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._reader: asyncio.Task[Any] | None = None
        self._receiving = False  # the reader is parked in receive() (safe to cancel)
        self._writer: asyncio.Task[None] | None = None
        self._close_code: int | None = None
        self._close_reason = ""
        self._ending = False
        self._sessionless = True  # holds one of its subject's sessionless slots (see above)
        self._rate_refusals = RecentCount(s.max_bad_messages, s.bad_messages_window_s * 1000.0)
        self._last_in_s: float | None = None  # loop time of the last message, while sessionless
        self._idle_timer: asyncio.TimerHandle | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None

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
        if (
            self._ending
            or started is None
            or now_s - started < self.runtime.settings.send_timeout_s
        ):
            return False
        self._fail(CloseCode.TOO_SLOW, "send timed out: the client does not read")
        if self._reader is not None:
            self._reader.cancel()
        if self._writer is not None:
            self._writer.cancel()
        return True

    # -- timers ---------------------------------------------------------------------------------

    def _start_timers(self) -> None:
        s = self.runtime.settings
        now = self._loop.time()
        if s.first_message_timeout_s > 0:
            self._idle_timer = self._loop.call_at(now + s.first_message_timeout_s, self._idle)
        elif s.sessionless_idle_s > 0:
            self._last_in_s = now
            self._idle_timer = self._loop.call_at(now + s.sessionless_idle_s, self._idle)
        expires_at_s = self.principal.expires_at_s
        if expires_at_s > 0:  # wall-clock seconds; the verifier's leeway applies here too
            delay_s = expires_at_s + s.jwt_leeway_s - time.time()
            self._expiry_timer = self._loop.call_at(now + max(0.0, delay_s), self._expired)

    def _idle(self) -> None:
        """The first-message or sessionless-idle deadline passed: close, or wait on."""
        self._idle_timer = None
        if self.session is not None or self._close_code is not None:
            return
        s = self.runtime.settings
        last = self._last_in_s
        if last is None:
            reason = f"no message within {s.first_message_timeout_s:g} s of connecting"
        else:
            if s.sessionless_idle_s <= 0:
                return
            due = last + s.sessionless_idle_s
            if self._loop.time() < due:
                self._idle_timer = self._loop.call_at(due, self._idle)
                return
            reason = f"no session and no message for {s.sessionless_idle_s:g} s"
        self.runtime.counters["idle_closes"] += 1
        self._fail(CloseCode.IDLE_TIMEOUT, reason)
        self._stop_reader()

    def _expired(self) -> None:
        """The token expired: close with 4401 (the client resumes with a fresh token)."""
        self._expiry_timer = None
        self.runtime.counters["token_expired_closes"] += 1
        error = UnauthorizedError(
            "token expired; reconnect with a fresh token and resume the session"
        )
        if self.conn.state is not State.CLOSED and self._close_code is None:
            self.conn.send(Error(code=error.code.value, message=error.message), now_ms())
        self._fail(CloseCode.UNAUTHORIZED, error.message)
        self._stop_reader()

    def _stop_timers(self) -> None:
        for timer in (self._idle_timer, self._expiry_timer):
            if timer is not None:
                timer.cancel()
        self._idle_timer = self._expiry_timer = None

    # -- main loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends, whatever ends it (see the module docstring)."""
        self._reader = asyncio.current_task()
        self.runtime.channels.add(self)
        peer_code: int | None = None
        try:
            self._start_timers()
            await self._read_loop()
        except Disconnected as e:  # 1006: gone without a close frame (a reset)
            peer_code = 1006 if e.code is None else e.code
        except asyncio.CancelledError:
            # Ours (a close from a timer, the watchdog, a takeover) or a shutdown: either way
            # this connection ends here, and the end below must run to completion.
            if self._reader is not None:
                self._reader.uncancel()
        except Exception:
            log.exception("control channel failed")
            self.runtime.counters["internal_errors"] += 1
            self._fail(CloseCode.INTERNAL, "internal error")
        finally:
            await self._end(peer_code)

    async def _end(self, peer_code: int | None) -> None:
        """The one place a connection's end is handled (see the module docstring)."""
        self._ending = True
        self._stop_timers()
        writer = self._writer
        if writer is not None:
            writer.cancel()
        session = self.session
        if session is not None:
            session.detach(self, self.runtime.registry.clock())
        if self._sessionless:
            self._sessionless = False
            _release_sessionless(self.runtime, self.principal)
        self.runtime.channels.discard(self)
        code = CloseCode.NORMAL if self._close_code is None else self._close_code
        self._log_end(code, peer_code, session)
        try:
            if writer is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
            if peer_code is None:  # the client has not closed: we do, if it lets us
                async with asyncio.timeout(self.runtime.settings.send_timeout_s or None):
                    await self.ws.close(code, self._close_reason)
        except (TimeoutError, asyncio.CancelledError):
            self.runtime.counters["close_timeouts"] += 1
            if self._reader is not None and self._reader.cancelling():
                self._reader.uncancel()

    def _log_end(self, code: int, peer_code: int | None, session: Session | None) -> None:
        sid = session.id if session is not None else "-"
        if peer_code is not None and self._close_code is None:
            log.debug("control connection closed by the client (%s); session %s", peer_code, sid)
        elif code in CLIENT_CAUSED:
            log.info(
                "control connection closed with %s (%s); session %s", code, self._close_reason, sid
            )
        else:
            log.debug(
                "control connection closed with %s (%s); session %s", code, self._close_reason, sid
            )

    def _stop_reader(self) -> None:
        """Make the reader notice a close: cancel it if it waits for input; otherwise it
        sees the close code when it finishes the message in hand."""
        if self._reader is not None and self._receiving:
            self._reader.cancel()

    async def _read_loop(self) -> None:
        receive = self.ws.receive
        conn = self.conn
        budget = self.runtime.limiter.messages
        principal = self.principal
        while self._close_code is None:
            self._receiving = True
            try:
                data = await receive()
            finally:
                self._receiving = False
            if self._sessionless:
                self._last_in_s = self._loop.time()
            refusal: RateLimitedError | None = None
            try:  # every inbound message counts, valid or not, pings included
                if budget.shared is None:
                    budget.check(principal)  # no coroutine on the hot path
                else:
                    await budget.acquire(principal)
            except RateLimitedError as e:
                refusal = e
            now = now_ms()
            conn.receive_data(data, now, handle=refusal is None)
            for event in conn.events_received():
                if type(event) is BadInput:
                    self.runtime.counters["bad_messages"] += 1
                    if event.fatal:
                        code = conn.close_code or CloseCode.PROTOCOL_VIOLATION
                        self._fail(code, conn.close_reason)
                    continue
                if refusal is not None:
                    self._refused(event, refusal)  # type: ignore[arg-type]
                    if self._rate_refusals.hit(now):
                        self._fail(
                            CloseCode.RATE_LIMITED,
                            f"{self._rate_refusals.limit} messages refused as rate_limited "
                            "within the window: slow down",
                        )
                    continue
                await self._dispatch(event)  # type: ignore[arg-type]
            await self._flush()

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
                assert self.session is not None  # the protocol's state machine checked it
                await self.runtime.sessions.handle(self.session, msg)
        except RefusalError as e:
            self._refused(msg, e)
        except Disconnected:
            raise
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

    def _refused(self, msg: ClientMessage, e: RefusalError) -> None:
        """Answer a refused message with its error (and close, if the refusal says so)."""
        self.runtime.refusals[e.code.value] += 1
        self._give_back_credit(msg)
        error = Error(
            code=e.code.value, message=e.message, ref=msg.id, retry_after_ms=e.retry_after_ms
        )
        self.conn.send(error, now_ms())
        if e.close_code is not None:
            self._fail(e.close_code, e.message)

    def _give_back_credit(self, msg: ClientMessage) -> None:
        """An upload that was refused was consumed, not kept: its credit goes back (modes
        that refuse an upload never return its credit themselves)."""
        if self.session is not None and msg.TYPE in UPLOAD_TYPES:
            self.session.return_credit(upload_size(msg))

    async def _create(self, msg: SessionCreate) -> None:
        sessions = self.runtime.sessions
        if msg.session_id is not None:
            session = await sessions.resume(
                msg.session_id, self.principal, client=self._client_info(), config=msg.config
            )
            resumed = True
        else:
            session = await sessions.open(self.principal, msg.config, client=self._client_info())
            resumed = False
        self.session = session
        self.conn.continue_seq(session.last_seq)
        session.attach(self)
        if self._sessionless:  # no longer a connection without a session
            self._sessionless = False
            _release_sessionless(self.runtime, self.principal)
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
        now = now_ms()
        created = SessionCreated(
            session_id=session.id,
            config=session.config,
            limits=self.runtime.limits(),
            ice_servers=ice_servers_for(self.runtime.settings, session),
            resumed=resumed,
            ref=msg.id,
        )
        self.conn.send(created, now)
        self.conn.send(session.initial_credit(), now)
        session.last_seq = self.conn.last_seq
        self._writer = asyncio.get_running_loop().create_task(
            self._write_loop(session), name=f"{session.id}:writer"
        )

    def _client_info(self) -> dict[str, Any]:
        return client_info(self.ws.scope, self.conn.codec.name)

    def _update(self, msg: SessionUpdate) -> None:
        assert self.session is not None
        merged = self.runtime.sessions.update(self.session, msg.config)
        self.session.emit(SessionUpdated(config=merged, ref=msg.id))

    async def _end_session(self, msg: ClientMessage) -> None:
        session = self.session
        assert session is not None
        await self._drain_outbox(session)
        self.conn.send(SessionClosed(reason="closed by the client", ref=msg.id), now_ms())
        await self._flush()
        self.session = None
        await self.runtime.sessions.close(session)
        self._fail(CloseCode.NORMAL, "session closed")

    # -- writing --------------------------------------------------------------------------------

    async def _write_loop(self, session: Session) -> None:
        outbox = session.outbox
        try:
            while self._close_code is None:
                await outbox.wait()
                if self._close_code is None:
                    await self._drain_outbox(session)
        except Disconnected:
            pass  # the client went away: the reader hears of it too
        except Exception:
            log.exception("control channel writer failed")
            self.runtime.counters["internal_errors"] += 1
            self._fail(CloseCode.INTERNAL, "internal error")
        self._stop_reader()  # the reader ends the connection as it unwinds

    async def _drain_outbox(self, session: Session) -> None:
        if self.conn.state is State.CLOSED:
            return
        async with self._lock:
            conn = self.conn
            stages = self.runtime.stage_times
            for msg in session.outbox.take_all():
                sent = now_ms()
                try:
                    conn.send(msg, sent)
                except EncodeError as e:  # ours: the event goes, an `error` says so
                    self._encode_failed(msg, e, sent)
                    continue
                stages.observe(msg, sent)
            session.last_seq = conn.last_seq
            await self._send_all()

    def _encode_failed(self, msg: ServerMessage, e: EncodeError, now: float) -> None:
        """An event the encoding cannot carry: logged, counted, and replaced by an ``error``
        event, so that the stream goes on and the client knows one event is missing."""
        self.runtime.counters["encode_errors"] += 1
        session_id = self.session.id if self.session is not None else None
        log.error("session %s: event dropped: %s", session_id, e.message)
        text = (
            f"a {msg.TYPE} event could not be encoded as {self.conn.codec.name} and was "
            "dropped; the server log has the details"
        )
        self.conn.send(Error(code=ErrorCode.INTERNAL.value, message=text, ref=msg.ref), now)

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
            try:
                for payload in payloads:
                    await send(payload)
            finally:
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
