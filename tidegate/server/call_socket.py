"""A Realtime WebRTC call's event socket (:mod:`.realtime_calls`) and its sidebands.

The call's ``oai-events`` data channel is served by the WebSocket shell
(:class:`~.realtime.RealtimeChannel`) through :class:`CallSocket`, which gives it a
WebSocket's surface. A *sideband* is a WebSocket a server opens to the same call
(``/v1/realtime?call_id=<the id the call's Location header ends with>``, as OpenAI's API has
it): it gets the session as it is (``session.created``), then every event the call's client
gets, and what it sends is handled as the client's events are (a backend keeps its tools and
its instructions out of the browser). Bounds: ``realtime_call_max_sidebands`` per call (more
are refused, 4429), ``realtime_sideband_max_pending_events`` queued for each (past it that
sideband is closed, 4408; the call goes on), one inbox of ``INBOX_FRAMES`` for what the client
and the sidebands send. The call's end closes its sidebands (1000); a sideband's end leaves
the call alone; its token's expiry closes it (4401). Only a subject of the call's tenant (or
an admin) may attach, on the node that holds the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from tidegate.media.datachannel import DataChannelClosedError, EventChannel
from tidegate.protocol import CloseCode
from tidegate.protocol.realtime import RealtimeTranslator

from .asgi_ws import AsgiWebSocket, Disconnected
from .auth import Principal
from .errors import ConnectionLimitError, ForbiddenError

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

INBOX_FRAMES = 64  # a call's events (its client's and its sidebands') waiting to be read


class CallSocket:
    """The ``oai-events`` data channel with the WebSocket shell's surface (``receive``,
    ``send``, ``close``, ``scope``): text frames in and out; the end of the channel is the
    shell's ``Disconnected``.

    It also carries the call's *sidebands* (:func:`serve_sideband`): every frame the shell
    sends goes to each sideband too, through a bounded queue of its own (a sideband that falls
    ``realtime_sideband_max_pending_events`` behind is closed with 4408; the call goes on),
    and what a sideband sends is read with the client's events, in arrival order, through one
    inbox of ``INBOX_FRAMES`` (a reader that finds it full waits: a flooding sideband is slowed
    at its own socket), checked as theirs are (a run of bad events from either closes the
    call, as the translator has it). A pump task, owned here and cancelled by
    :meth:`close`, moves the channel's events into that inbox."""

    def __init__(
        self,
        channel: EventChannel,
        scope: dict[str, Any],
        translator: RealtimeTranslator,
        *,
        tenant: str,
        max_sidebands: int,
        max_pending: int,
        send_timeout_s: float,
    ) -> None:
        self.channel = channel
        self.scope = scope
        self.translator = translator  # for a sideband's first event: the session now
        self.tenant = tenant
        self.max_sidebands = max_sidebands
        self.max_pending = max_pending
        self.send_timeout_s = send_timeout_s
        self.closed = False
        self.sidebands: list[Sideband] = []
        self._inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue(INBOX_FRAMES)
        self._pump = asyncio.get_running_loop().create_task(
            self._pump_channel(), name="realtime-call-events"
        )

    async def _pump_channel(self) -> None:
        while (message := await self.channel.receive()) is not None:
            await self._inbox.put(message)
        await self._inbox.put(None)  # the channel ended: so does the shell's reader

    async def receive(self) -> str | bytes:
        message = await self._inbox.get()
        if message is None:
            raise Disconnected(None)
        return message

    async def send(self, payload: str | bytes) -> None:
        text = payload if isinstance(payload, str) else payload.decode()
        for sideband in self.sidebands:
            sideband.offer(text)
        try:
            await self.channel.send(text)
        except DataChannelClosedError:
            raise Disconnected(None) from None

    async def close(self, code: int, reason: str = "") -> None:
        """A data channel carries no close code: it is closed (the code is logged); each
        sideband is closed with 1000."""
        if not self.closed:
            self.closed = True
            log.debug("realtime call channel closed with %s (%s)", code, reason)
            self.channel.close()
            self._pump.cancel()
            for sideband in self.sidebands:
                sideband.end(CloseCode.NORMAL, "the call ended")
            await asyncio.gather(self._pump, return_exceptions=True)

    async def attach(self, sideband: Sideband) -> None:
        """Serve ``sideband`` until it or the call ends: the session as it is now first,
        then every frame the call sends; its events are read with the client's."""
        if self.closed:  # ended while the sideband's socket was being accepted
            sideband.end(CloseCode.NORMAL, "the call ended")
        else:
            sideband.offer(self.translator.session_event())
        self.sidebands.append(sideband)
        try:
            await sideband.run(self._inbox)
        finally:
            self.sidebands.remove(sideband)


class Sideband:
    """One WebSocket attached to a call (:class:`CallSocket`): a writer draining its bounded
    queue to the socket and a reader putting its frames into the call's inbox, both owned by
    :meth:`run`, which ends them when either side (or the call, or the token) ends it."""

    def __init__(self, ws: AsgiWebSocket, max_pending: int, close_timeout_s: float) -> None:
        self.ws = ws
        self.max_pending = max_pending
        self.close_timeout_s = close_timeout_s  # a socket that takes no close frame is left
        self.close_code: int | None = None
        self.close_reason = ""
        self.sent = 0
        self.received = 0
        self._queue: deque[str] = deque()
        self._wake = asyncio.Event()
        self._done = asyncio.Event()

    def offer(self, text: str) -> None:
        """Queue one frame (never waits): past ``max_pending`` the sideband is closed."""
        if self.close_code is not None:
            return
        if len(self._queue) >= self.max_pending:
            self.end(CloseCode.TOO_SLOW, "the sideband does not read its events fast enough")
            return
        self._queue.append(text)
        self._wake.set()

    def end(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._done.set()

    async def run(self, inbox: asyncio.Queue[str | bytes | None]) -> None:
        writer = asyncio.create_task(self._write(), name="realtime-sideband-writer")
        reader = asyncio.create_task(self._read(inbox), name="realtime-sideband-reader")
        try:
            await self._done.wait()
        finally:  # both are this call's: ended here, whatever ended the sideband
            writer.cancel()
            reader.cancel()
            await asyncio.gather(writer, reader, return_exceptions=True)
            with contextlib.suppress(Disconnected, TimeoutError):
                async with asyncio.timeout(self.close_timeout_s):
                    await self.ws.close(self.close_code or CloseCode.NORMAL, self.close_reason)

    async def _write(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    await self.ws.send(self._queue.popleft())
                    self.sent += 1
        except Disconnected:
            self.end(CloseCode.NORMAL, "")

    async def _read(self, inbox: asyncio.Queue[str | bytes | None]) -> None:
        try:
            while True:
                message = await self.ws.receive()
                self.received += 1
                await inbox.put(message)
        except Disconnected:
            self.end(CloseCode.NORMAL, "")


def find_call(runtime: Runtime, principal: Principal, call_id: str) -> CallSocket:
    """The open call ``call_id`` of the principal's tenant on this node, with room for one
    more sideband; else a refusal (an unknown call and another tenant's read alike)."""
    call = runtime.call_sockets.get(call_id)
    if call is None or call.closed or (call.tenant != principal.tenant and not principal.is_admin):
        raise ForbiddenError(f"call_id: no call {call_id!r} of yours is open on this node")
    if len(call.sidebands) >= call.max_sidebands:
        raise ConnectionLimitError(
            f"call_id: the call has {call.max_sidebands} sidebands already "
            "(realtime_call_max_sidebands)"
        )
    assert isinstance(call, CallSocket)
    return call


async def serve_sideband(
    ws: AsgiWebSocket, call: CallSocket, principal: Principal, *, leeway_s: float
) -> None:
    """Serve an accepted ``/v1/realtime?call_id=`` WebSocket as ``call``'s sideband until it,
    the call or its token ends (4401, as every connection; ``leeway_s``: the verifier's)."""
    sideband = Sideband(ws, call.max_pending, call.send_timeout_s)
    expiry: asyncio.TimerHandle | None = None
    if principal.expires_at_s > 0:
        delay_s = principal.expires_at_s + leeway_s - time.time()
        expiry = asyncio.get_running_loop().call_later(
            max(0.0, delay_s),
            sideband.end,
            CloseCode.UNAUTHORIZED,
            "token expired; reconnect with a fresh token",
        )
    try:
        await call.attach(sideband)
    finally:
        if expiry is not None:
            expiry.cancel()


__all__ = ["CallSocket", "Sideband", "find_call", "serve_sideband"]
