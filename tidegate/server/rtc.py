"""A session's WebRTC media at the edge: the media settings, the ICE servers a client is told,
and ``POST /v1/sessions/{id}/offer``.

The session's side of the media (one :class:`~tidegate.media.MediaPeer`, signalling over the
control channel) is the media lane, :class:`tidegate.pipelines.media.SessionMedia`.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tidegate.media import ice_server_records
from tidegate.pipelines.media import SessionMedia
from tidegate.protocol.messages import IceServer
from tidegate.sessions.session import Session

from . import edge, params
from .auth import Principal
from .errors import InvalidConfigError, UnsupportedError
from .modes import media_config
from .settings import Settings

if TYPE_CHECKING:
    from .runtime import Runtime


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


@edge.handler(shape=edge.flat)
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
