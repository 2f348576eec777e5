"""A session's WebRTC media: signalling over the control channel and over HTTP.

:class:`SessionMedia` holds at most one :class:`~tidegate.media.MediaPeer` per session. An
``rtc.offer`` (or ``POST /v1/sessions/{id}/offer``) creates it (a new offer replaces the old
peer) and is answered with ``rtc.answer``; over the control channel our candidates are then
trickled as ``rtc.candidate`` (they are in the answer as well, so an HTTP client needs nothing
more), ending with an empty one. Client candidates arrive as ``rtc.candidate``.

What a mode does with the media (echo it, feed the engines) is the mode's ``on_media``
callback, called once per peer right after the answer.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tidegate.media import (
    IceConfigError,
    IcePolicy,
    LocalMediaError,
    MediaConfig,
    MediaError,
    MediaPeer,
    MediaStateError,
    ice_server_records,
)
from tidegate.protocol.messages import (
    FlowLag,
    IceServer,
    RtcAnswer,
    RtcCandidate,
    ServerRtcCandidate,
)

from . import edge, params
from .auth import Principal
from .errors import (
    InvalidConfigError,
    NotFoundError,
    OverloadedError,
    RefusalError,
    UnsupportedError,
)
from .session import Session
from .settings import Settings

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

NO_PORT_RETRY_MS = 1_000.0


class MediaRefusalError(RefusalError):
    """A media error the client must hear about, with the media error's wire code."""

    def __init__(self, error: MediaError) -> None:
        super().__init__(error.message)
        self.code = error.code


@functools.lru_cache(maxsize=8)
def media_config(settings: Settings) -> MediaConfig:
    """The media part of the settings (validated by Settings.validate)."""
    s = settings
    return MediaConfig(
        ice=IcePolicy.from_settings(s.ice_hosts, s.ice_ports, s.ice_servers),
        jitter_target_ms=s.jitter_target_ms,
        jitter_max_gap_packets=s.jitter_max_gap_packets,
        audio_fec=s.audio_fec,
        audio_buffer_s=s.audio_buffer_s,
        audio_silence_dbfs=s.audio_silence_dbfs,
        audio_lag_report_ms=s.audio_lag_report_ms,
        audio_out_buffer_s=s.audio_out_buffer_s,
        audio_out_bitrate_bps=s.audio_out_bitrate_bps,
        audio_out_complexity=s.audio_out_complexity,
        audio_out_lead_ms=s.audio_out_lead_ms,
        video_max_pixels=s.frame_max_pixels,
        video_decoder_max_frames=s.video_decoder_max_frames,
    )


def ice_servers_for(session: Session) -> tuple[IceServer, ...]:
    """The ICE servers a client is told in ``session.created``: ours, and TURN with
    credentials minted for this session (valid ``turn_ttl_s``)."""
    s = session.settings
    records = ice_server_records(
        media_config(s).ice,
        turn_urls=s.turn_urls,
        turn_secret=s.turn_secret,
        turn_ttl_s=s.turn_ttl_s,
        user=session.id,
        now_s=time.time(),
    )
    return tuple(
        IceServer(urls=tuple(r["urls"]), username=r.get("username"), credential=r.get("credential"))
        for r in records
    )


class SessionMedia:
    """The WebRTC side of one session (see the module docstring)."""

    def __init__(self, session: Session, on_media: Callable[[MediaPeer], None]) -> None:
        self.session = session
        self.on_media = on_media
        self.peer: MediaPeer | None = None
        self.offers = 0
        self._lock = asyncio.Lock()

    async def accept_offer(self, sdp: str) -> tuple[MediaPeer, str]:
        """Create a peer for ``sdp`` (closing any previous one) and return it and the answer."""
        async with self._lock:
            if self.peer is not None:
                old, self.peer = self.peer, None
                await old.close()
            peer = MediaPeer(media_config(self.session.settings), on_lag=self._lag)
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


# -- HTTP: POST /v1/sessions/{session_id}/offer ----------------------------------------------


@edge.handler(shape=edge.flat)
async def offer_endpoint(request: Request, runtime: Runtime, principal: Principal) -> Response:
    """Answer an SDP offer for one of the caller's sessions.

    Body: ``{"type": "offer", "sdp": "..."}`` (JSON). Reply: ``{"type": "answer", "sdp": ...}``.
    Errors: ``{"code": ..., "message": ...}`` with 400/401/403/404/409/413/421/429/503.
    """
    sid = params.path_id(request, "session_id")
    session = runtime.registry.get(sid)
    # Another tenant's session looks exactly like a missing one: no existence oracle.
    if session is None or session.closed or session.tenant != principal.tenant:
        await runtime.cluster.wrong_node(sid, principal.tenant, "offer")
        raise NotFoundError("no such session (closed, expired or unknown)")
    if session.principal.subject != principal.subject and not principal.is_admin:
        raise NotFoundError("no such session (closed, expired or unknown)")
    media = getattr(session.mode, "media", None)
    if not isinstance(media, SessionMedia):
        raise UnsupportedError(f"mode {session.config.get('mode')!r} takes no WebRTC media")
    sdp = _offer_sdp(await edge.read_body(request, runtime.settings.http_max_body_bytes))
    _, answer = await media.accept_offer(sdp)
    return JSONResponse({"type": "answer", "sdp": answer})


def _offer_sdp(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        raise InvalidConfigError('body: expected JSON {"type": "offer", "sdp": "..."}') from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sdp"), str) or not doc["sdp"]:
        raise InvalidConfigError(
            'body: expected JSON {"type": "offer", "sdp": "..."} with a non-empty sdp'
        )
    if doc.get("type", "offer") != "offer":
        raise InvalidConfigError(f"body.type: expected 'offer', got {doc.get('type')!r}")
    return str(doc["sdp"])
