"""The Realtime WebSocket (``/v1/realtime``): the I/O shell around the sans-I/O translator.

A client of OpenAI's Realtime API (GA events, docs/realtime.md) connects here with tidegate's
JWT as its key. The dialect itself is :class:`~tidegate.protocol.realtime.RealtimeTranslator`;
this module only moves bytes and calls the sessions layer, and it does so on the control
channel's code path: :class:`RealtimeChannel` is a :class:`~.control.ControlChannel` whose wire
is the translator instead of tidegate's own protocol. What it inherits unchanged:

- the one end path (:meth:`ControlChannel.run` / ``_end``): writer stopped, session detached,
  the subject's sessionless slot given back, the socket closed within ``send_timeout_s``,
  whatever ended the connection; a Realtime session cannot be resumed (the API has no way to
  name one), so the end also closes it (recorded ``closed``, reason "the Realtime connection
  ended"); should that be cut short, the detached session expires after ``session_resume_s``;
- the send watchdog (4408 for a client that stops reading, ``send_timeout_s``), and 4408 when
  the session's outbox overflows;
- the first-message and sessionless-idle timers and the token-expiry close (4401);
- the per-subject message budget (``rate_messages_per_s``): every frame counts, and one over
  the budget is answered with an ``error`` (``rate_limit_error``) instead of being handled;
  refusals that go on close with 4429.

Before the socket is accepted, the same checks as the control channel's: the origin
allow-list, the token (``Authorization: Bearer`` or the browsers' ``openai-insecure-api-key.``
subprotocol, read by :func:`~tidegate.protocol.realtime.accept`), the subject's cap on
connections without a session. A refusal is one Realtime ``error`` event and a close code.

The session opens at once (a Realtime client waits for ``session.created`` without sending
anything): mode ``assistant``, or ``transcribe`` for ``?intent=transcription`` or a first
``session.update`` of ``type: "transcription"``, through :class:`~tidegate.sessions.api.Sessions`
like every other transport. The reader feeds each text frame to the translator and hands what
it asks of the session to the sessions layer, as the control channel does; the writer drains
the session's outbox through the translator into JSON text frames. The translator's
commands (a manual commit, a clear, a ``response.create`` with per-response options) go to
the session like its messages: the mode's lanes take them (the audio lane commits and
clears, the reply lane takes the options); a commit is answered once the finals of the audio
before it are out, so the reader waits that long (about one ASR final) before the next event.

Per-event timing: each tidegate event handed to the translator is observed in the node's
stage histograms with ``dialect="realtime"`` (docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from tidegate.media.realtime_audio import RealtimeAudioCodec
from tidegate.pipelines.records import client_info
from tidegate.protocol import CloseCode, ErrorCode
from tidegate.protocol.messages import (
    ClientMessage,
    Error,
    SessionClose,
    SessionCreate,
    SessionCreated,
    SessionUpdate,
)
from tidegate.protocol.realtime import (
    Command,
    Handshake,
    RealtimeError,
    RealtimeTranslator,
    accept,
)
from tidegate.protocol.realtime.events import MAX_EVENT_BYTES
from tidegate.sessions.session import Session

from . import edge
from .asgi_ws import AsgiWebSocket, Disconnected
from .auth import SCOPE_SESSION, Principal
from .call_socket import find_call, serve_sideband
from .control import (
    ControlChannel,
    _close_reason,
    _hold_sessionless,
    _release_sessionless,
    now_ms,
)
from .errors import ConnectionLimitError, RateLimitedError, RefusalError, UnsupportedError

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

REALTIME_PATH = "/v1/realtime"
DIALECT = "realtime"
END_REASON = "the Realtime connection ended"


def _query(scope: dict[str, Any] | Any) -> dict[str, str]:
    raw = scope.get("query_string") or b""
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))


def max_event_bytes(runtime: Runtime) -> int:
    """The translator's frame bound: the dialect's 4 MiB, or the transport's own
    (``ws_max_size``: twice ``max_message_bytes``) when that is lower."""
    return min(MAX_EVENT_BYTES, 2 * runtime.settings.max_message_bytes)


async def realtime_endpoint(ws: AsgiWebSocket, runtime: Runtime) -> None:
    """Serve one Realtime connection: read the opening, authenticate, then run the channel."""
    query = _query(ws.scope)
    try:
        hs = accept(ws.subprotocols, ws.headers, query)
    except RealtimeError as e:
        await _refuse(ws, _offered(ws), e, CloseCode.PROTOCOL_VIOLATION)
        return
    if hs.call_id is not None:
        await _sideband(ws, runtime, hs)
        return
    try:
        principal = await edge.admit(runtime, ws.headers, hs.token, SCOPE_SESSION)
        _hold_sessionless(runtime, principal)
    except RefusalError as e:
        key = "connections_refused" if isinstance(e, ConnectionLimitError) else "auth_refused"
        runtime.counters[key] += 1
        await _refuse(ws, hs.subprotocol, e, e.close_code or CloseCode.FORBIDDEN)
        return
    try:
        await ws.accept(subprotocol=hs.subprotocol)
    except Disconnected:
        _release_sessionless(runtime, principal)
        return
    except BaseException:  # cancelled (a shutdown): the slot goes back all the same
        _release_sessionless(runtime, principal)
        raise
    channel = RealtimeChannel(ws, runtime, principal, hs)
    await channel.run()


async def _sideband(ws: AsgiWebSocket, runtime: Runtime, hs: Handshake) -> None:
    """``?call_id=``: the connection is that WebRTC call's sideband (realtime_calls.py): the
    same token checks, then the call must be open here and the subject's tenant's."""
    try:
        principal = await edge.admit(runtime, ws.headers, hs.token, SCOPE_SESSION)
        assert hs.call_id is not None
        call = find_call(runtime, principal, hs.call_id)
    except RefusalError as e:
        runtime.counters["realtime_sidebands_refused"] += 1
        await _refuse(ws, hs.subprotocol, e, e.close_code or CloseCode.FORBIDDEN)
        return
    try:
        await ws.accept(subprotocol=hs.subprotocol)
    except Disconnected:
        return
    runtime.counters["realtime_sidebands"] += 1
    await serve_sideband(ws, call, principal, leeway_s=runtime.settings.jwt_leeway_s)


def _offered(ws: AsgiWebSocket) -> str | None:
    return "realtime" if "realtime" in (p.strip() for p in ws.subprotocols) else None


async def _refuse(
    ws: AsgiWebSocket, subprotocol: str | None, e: RealtimeError | RefusalError, code: int
) -> None:
    """Accept, send the refusal as one Realtime ``error`` event, close with ``code``."""
    t = RealtimeTranslator(audio=RealtimeAudioCodec())
    if isinstance(e, RealtimeError):
        message = Error(code=e.realtime_code, message=e.message)
    else:
        message = Error(code=e.code.value, message=e.message, retry_after_ms=e.retry_after_ms)
    t.receive_message(message, now_ms())
    try:
        await ws.accept(subprotocol=subprotocol)
        for text in t.data_to_send():
            await ws.send(text)
    except Disconnected:
        return
    await ws.close(code, _close_reason(e.message))


def realtime_translator(
    runtime: Runtime, hs: Handshake, *, track_audio: bool = False
) -> RealtimeTranslator:
    """A connection's translator, with the node's bounds (``track_audio``: a WebRTC call's)."""
    return RealtimeTranslator(
        audio=RealtimeAudioCodec(),
        model=hs.model,
        session_type=hs.session_type,
        max_event_bytes=max_event_bytes(runtime),
        max_bad_events=runtime.settings.max_bad_messages,
        track_audio=track_audio,
    )


class RealtimeChannel(ControlChannel):
    """One accepted Realtime connection: the control channel's shell, the translator's wire.

    A WebRTC call (:mod:`.realtime_calls`) is served by the same class over its data channel:
    its session was opened before the answer (``opened``: the session and the id of the
    translator's ``session.create``, with ``translator`` the one that asked), so the channel
    starts attached, and its session cannot change its type; ``first_events`` are client
    events handled first (the offer's ``session`` part)."""

    def __init__(
        self,
        ws: AsgiWebSocket,
        runtime: Runtime,
        principal: Principal,
        hs: Handshake,
        *,
        translator: RealtimeTranslator | None = None,
        opened: tuple[Session, str | None] | None = None,
        first_events: list[str] | None = None,
    ) -> None:
        super().__init__(ws, runtime, "json", principal)
        self.t = translator if translator is not None else realtime_translator(runtime, hs)
        self._opened = opened
        self._first_events = list(first_events or ())
        if opened is not None:
            self._sessionless = False  # it never held a slot: its session came with the call
        self._received = 0
        self._received_bytes = 0
        self._sent = 0
        self._sent_bytes = 0

    # -- Attachment protocol ------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "encoding": DIALECT,
            "received": self._received,
            "received_bytes": self._received_bytes,
            "sent": self._sent,
            "sent_bytes": self._sent_bytes,
            **{f"realtime_{k}": v for k, v in self.t.stats.items()},
        }

    def _expired(self) -> None:
        """The token expired: an ``error`` event, then 4401 (as the control channel)."""
        self._expiry_timer = None
        self.runtime.counters["token_expired_closes"] += 1
        reason = "token expired; reconnect with a fresh token"
        if self._close_code is None:
            self.t.receive_message(
                Error(code=ErrorCode.UNAUTHORIZED.value, message=reason), now_ms()
            )
        self._fail(CloseCode.UNAUTHORIZED, reason)
        self._stop_reader()

    # -- the end ------------------------------------------------------------------------------

    async def _end(self, peer_code: int | None) -> None:
        """The control channel's end, then the session closed: a Realtime session has no
        resume (if this is cut short, the detached session expires after its window)."""
        session = self.session
        try:
            await super()._end(peer_code)
        finally:
            if session is not None and self.session is session and not session.closed:
                self.session = None
                await self.runtime.sessions.close(session, "closed", END_REASON)

    # -- reading ------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        t = self.t
        if self._opened is not None:  # a call: its session is open already
            session, create_id = self._opened
            await self._dispatch_rt(SessionCreate(config=session.config, id=create_id))
            for text in self._first_events:
                t.receive_text(text, now_ms())
        else:
            t.start(now_ms())  # the session opens now: clients wait for session.created
        await self._serve_translator()
        receive = self.ws.receive
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
            self._received += 1
            self._received_bytes += len(data)
            refusal: RateLimitedError | None = None
            try:  # every inbound frame counts, valid or not
                if budget.shared is None:
                    budget.check(principal)
                else:
                    await budget.acquire(principal)
            except RateLimitedError as e:
                refusal = e
            now = now_ms()
            if refusal is not None:
                self.runtime.refusals[refusal.code.value] += 1
                t.receive_message(_error(refusal), now)
                if self._rate_refusals.hit(now):
                    self._fail(
                        CloseCode.RATE_LIMITED,
                        f"{self._rate_refusals.limit} events refused as rate_limited "
                        "within the window: slow down",
                    )
            else:
                t.receive_text(data, now)
            await self._serve_translator()

    async def _serve_translator(self) -> None:
        """Hand the translator's requests to the session, send its frames, and close when
        it says so."""
        t = self.t
        for item in t.to_session():
            if self._close_code is not None:
                break
            await self._dispatch_rt(item)
        if t.close_code is not None:
            self._fail(t.close_code, t.close_reason)
        await self._flush()

    async def _dispatch_rt(self, item: ClientMessage | Command) -> None:
        try:
            kind = type(item)
            if kind is SessionCreate:
                if self.session is not None:  # a call's session keeps its type
                    raise UnsupportedError(
                        "a call's session cannot change its type; start the call with "
                        "?intent=transcription for a transcription session"
                    )
                await self._open(item)  # type: ignore[arg-type]
            elif kind is SessionClose:  # a session.type change: this one goes, another opens
                if self._opened is not None:
                    raise UnsupportedError("a call's session cannot change its type")
                await self._close_for_switch()
            elif self.session is None:
                raise _NoSession()
            elif kind is SessionUpdate:
                self._update(item)  # type: ignore[arg-type]
            else:
                await self.runtime.sessions.handle(self.session, item)
        except _NoSession:
            self.t.receive_message(
                Error(
                    code=ErrorCode.UNEXPECTED_MESSAGE.value,
                    message="no session: it could not be opened",
                    ref=item.id,
                ),
                now_ms(),
            )
        except RefusalError as e:
            self.runtime.refusals[e.code.value] += 1
            self.t.receive_message(_error(e, item.id), now_ms())
            if e.close_code is not None:
                self._fail(e.close_code, e.message)
        except Disconnected:
            raise
        except Exception:
            log.exception("handling %s failed", item.TYPE)
            self.runtime.counters["internal_errors"] += 1
            error = Error(
                code=ErrorCode.INTERNAL.value,
                message="internal error; the server log has the details",
                ref=item.id,
            )
            self.t.receive_message(error, now_ms())

    async def _open(self, msg: SessionCreate) -> None:
        if self._opened is not None:  # a call's: opened before its answer
            session = self._opened[0]
        else:
            client = client_info(self.ws.scope, DIALECT)
            try:
                session = await self.runtime.sessions.open(
                    self.principal, msg.config, client=client
                )
            except RefusalError as e:
                if self.session is None:  # nothing to serve without one: refuse, then close
                    self._fail(e.close_code or _CLOSE_WITHOUT_SESSION, e.message)
                raise
        self.session = session
        session.attach(self)
        if self._sessionless:  # no longer a connection without a session
            self._sessionless = False
            _release_sessionless(self.runtime, self.principal)
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
        created = SessionCreated(
            session_id=session.id,
            config=session.config,
            limits=self.runtime.limits(),
            ice_servers=(),
            resumed=False,
            ref=msg.id,
        )
        self.t.receive_message(created, now_ms())
        self._writer = asyncio.get_running_loop().create_task(
            self._write_loop(session), name=f"{session.id}:realtime-writer"
        )

    async def _close_for_switch(self) -> None:
        """Close the untouched session before the other kind opens (translator's switch)."""
        session = self.session
        if session is None:
            return
        writer = self._writer
        self._writer = None
        if writer is not None:
            writer.cancel()
            try:
                await writer
            except asyncio.CancelledError:
                if self._reader is not None and self._reader.cancelling():
                    raise
        await self._drain_outbox(session)
        session.detach(self, self.runtime.registry.clock())
        self.session = None
        await self.runtime.sessions.close(session, "closed", "session.type changed")

    # -- writing ------------------------------------------------------------------------------

    async def _drain_outbox(self, session: Session) -> None:
        async with self._lock:
            t = self.t
            stages = self.runtime.stage_times
            for msg in session.outbox.take_all():
                now = now_ms()
                t.receive_message(msg, now)
                stages.observe(msg, now, DIALECT)
            if t.close_code is not None and t.close_code == CloseCode.NORMAL:
                self._fail(t.close_code, t.close_reason)  # session.closed
            await self._send_all()

    async def _flush(self) -> None:
        async with self._lock:
            await self._send_all()

    async def _send_all(self) -> None:
        frames = self.t.data_to_send()
        if frames:
            self.send_started = time.monotonic()
            send = self.ws.send
            try:
                for text in frames:
                    await send(text)
                    self._sent += 1
                    self._sent_bytes += len(text)
            finally:
                self.send_started = None


class _NoSession(Exception):
    pass


# A session refused at the opening (overloaded, quota): the connection has nothing to serve.
_CLOSE_WITHOUT_SESSION = CloseCode.OVERLOADED


def _error(e: RefusalError, ref: str | None = None) -> Error:
    return Error(code=e.code.value, message=e.message, ref=ref, retry_after_ms=e.retry_after_ms)


__all__ = ["REALTIME_PATH", "RealtimeChannel", "realtime_endpoint", "realtime_translator"]
