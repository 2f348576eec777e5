"""A session's WebRTC media lane: one :class:`~tidegate.media.MediaPeer` per session.

An ``rtc.offer`` (or ``POST /v1/sessions/{id}/offer``, :mod:`tidegate.server.rtc`) creates it
(a new offer replaces the old peer) and is answered with ``rtc.answer``; over the control
channel our candidates are then trickled as ``rtc.candidate`` (they are in the answer as well,
so an HTTP client needs nothing more), ending with an empty one. Client candidates arrive as
``rtc.candidate``.

What the lanes do with the media (echo it, feed the engines) is the ``on_media`` callback
(the mode's: it hands the peer to each of its lanes), called once per peer right after the
answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from tidegate.media import (
    IceConfigError,
    LocalMediaError,
    MediaConfig,
    MediaError,
    MediaPeer,
    MediaStateError,
)
from tidegate.protocol.messages import (
    FlowLag,
    RtcAnswer,
    RtcCandidate,
    RtcOffer,
    ServerRtcCandidate,
)

from .errors import OverloadedError, RefusalError
from .port import Handler, SessionPort

log = logging.getLogger(__name__)

NO_PORT_RETRY_MS = 1_000.0


class MediaRefusalError(RefusalError):
    """A media error the client must hear about, with the media error's wire code."""

    def __init__(self, error: MediaError) -> None:
        super().__init__(error.message)
        self.code = error.code


class SessionMedia:
    """The WebRTC side of one session (see the module docstring)."""

    def __init__(
        self,
        session: SessionPort,
        config: MediaConfig,
        on_media: Callable[[MediaPeer], None],
    ) -> None:
        self.session = session
        self.config = config
        self.on_media = on_media
        self.peer: MediaPeer | None = None
        self.offers = 0
        #: the latest rtc.offer's echo_cancellation (None: it said nothing)
        self.client_echo_cancellation: bool | None = None
        #: the latest rtc.offer's playout_delay_ms, in s (None: it said nothing; such a client
        #: plays what it received to the end, so every sent frame counts as heard)
        self.client_playout_delay_s: float | None = None
        self._lock = asyncio.Lock()

    async def accept_offer(
        self, sdp: str, *, data_channels: tuple[str, ...] = ()
    ) -> tuple[MediaPeer, str]:
        """Create a peer for ``sdp`` (closing any previous one) and return it and the answer;
        ``data_channels``: the labels of the client's data channels the peer takes."""
        async with self._lock:
            if self.peer is not None:
                old, self.peer = self.peer, None
                await old.close()
            peer = MediaPeer(self.config, on_lag=self._lag, data_channels=data_channels)
            try:
                answer = await peer.accept_offer(sdp)
            except IceConfigError as e:  # no free UDP port: try again later
                await peer.close()
                raise OverloadedError(
                    f"media: {e.message}", retry_after_ms=NO_PORT_RETRY_MS
                ) from None
            except LocalMediaError:  # our fault: the details stay in the log
                await peer.close()
                log.exception("session %s: media setup failed", self.session.id)
                raise OverloadedError(
                    "media: cannot set up WebRTC media now; the server log has the details",
                    retry_after_ms=NO_PORT_RETRY_MS,
                ) from None
            except MediaError as e:
                await peer.close()
                raise MediaRefusalError(e) from None
            except BaseException:
                await peer.close()
                raise
            self.peer = peer
            self.offers += 1
            peer.client_echo_cancellation = self.client_echo_cancellation
            self.on_media(peer)
            return peer, answer

    async def handle_offer(self, sdp: str, ref: str | None) -> None:
        """``rtc.offer`` over the control channel: answer, then trickle our candidates."""
        peer, answer = await self.accept_offer(sdp)
        s = self.session
        s.emit(RtcAnswer(sdp=answer, ref=ref))
        for c in peer.local_candidates():
            s.emit(
                ServerRtcCandidate(
                    candidate=c.candidate, sdp_mid=c.sdp_mid, sdp_mline_index=c.sdp_mline_index
                )
            )
        s.emit(ServerRtcCandidate(candidate="", sdp_mid=None, sdp_mline_index=None))

    async def _offer(self, msg: RtcOffer) -> None:
        self.client_echo_cancellation = msg.echo_cancellation
        delay = msg.playout_delay_ms
        self.client_playout_delay_s = None if delay is None else delay / 1000.0
        await self.handle_offer(msg.sdp, msg.id)

    def handlers(self) -> Mapping[type[Any], Handler]:
        return {RtcOffer: self._offer, RtcCandidate: self.handle_candidate}

    async def handle_candidate(self, msg: RtcCandidate) -> None:
        if self.peer is None:
            raise MediaRefusalError(MediaStateError("rtc.candidate: send rtc.offer first"))
        try:
            await self.peer.add_candidate(msg.candidate, msg.sdp_mid, msg.sdp_mline_index)
        except MediaError as e:
            raise MediaRefusalError(e) from None

    def _lag(self, lag_ms: float, dropped_ms: float) -> None:
        self.session.emit(FlowLag(lane="audio", lag_ms=lag_ms, dropped_ms=dropped_ms))

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"offers": self.offers}
        if self.peer is not None:
            out.update(self.peer.stats())
        return out

    async def close(self) -> None:
        async with self._lock:
            if self.peer is not None:
                peer, self.peer = self.peer, None
                await peer.close()
