"""A session's WebRTC media at the edge: the media settings, the ICE servers a client is told,
and ``POST /v1/sessions/{id}/offer``.

The session's side of the media (one :class:`~tidegate.media.MediaPeer`, signalling over the
control channel) is the media lane, :class:`tidegate.pipelines.media.SessionMedia`.
"""

from __future__ import annotations

import functools
import json
import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tidegate.media import IcePolicy, MediaConfig, ice_server_records
from tidegate.pipelines.media import SessionMedia
from tidegate.protocol.messages import IceServer
from tidegate.sessions.session import Session

from . import edge, params
from .auth import Principal
from .errors import InvalidConfigError, UnsupportedError
from .settings import Settings

if TYPE_CHECKING:
    from .runtime import Runtime


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


def ice_servers_for(settings: Settings, session: Session) -> tuple[IceServer, ...]:
    """The ICE servers a client is told in ``session.created``: ours, and TURN with
    credentials minted for this session (valid ``turn_ttl_s``)."""
    s = settings
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


# -- HTTP: POST /v1/sessions/{session_id}/offer ----------------------------------------------


@edge.endpoint("POST, OPTIONS", shape=edge.flat)
async def offer_endpoint(request: Request, runtime: Runtime, principal: Principal) -> Response:
    """Answer an SDP offer for one of the caller's sessions.

    Body: ``{"type": "offer", "sdp": "..."}`` (JSON). Reply: ``{"type": "answer", "sdp": ...}``.
    Errors: ``{"code": ..., "message": ...}`` with 400/401/403/404/409/413/421/429/503.
    """
    sid = params.path_id(request, "session_id")
    session = await runtime.sessions.find(sid, principal, "offer")
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
