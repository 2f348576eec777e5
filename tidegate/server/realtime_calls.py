"""The Realtime dialect over WebRTC: ``POST /v1/realtime/calls`` (docs/realtime.md).

As OpenAI's GA API: the client posts its SDP offer (``Content-Type: application/sdp``, or
``multipart/form-data`` with an ``sdp`` part and an optional ``session`` part holding a GA
session object as JSON), authenticated by tidegate's JWT (``Authorization: Bearer``), and gets
the SDP answer back (201, ``application/sdp``, ``Location: /v1/realtime/calls/{call_id}``).
Microphone audio and the spoken reply travel as WebRTC audio (tidegate's media plane: the
session's :class:`~tidegate.media.MediaPeer`, jitter buffer and Opus both ways); the
Realtime events travel on the data channel the client opens, named ``oai-events``.

What happens, in order:

1. the route opens the session through :class:`~tidegate.sessions.api.Sessions` (mode
   ``assistant``, or ``transcribe`` for ``?intent=transcription``; admission, quotas and
   limits as for every transport; a refusal is the HTTP error of the edge's one table) and
   has its media lane answer the offer, taking the ``oai-events`` channel
   (:meth:`~tidegate.pipelines.media.SessionMedia.accept_offer`); an offer without an
   ``m=application`` section is refused (``bad_sdp``);
2. a call task, owned by the runtime, waits up to ``realtime_call_connect_s`` for the channel
   to open (else the session is closed), then serves it with
   :class:`~tidegate.server.realtime.RealtimeChannel`: the WebSocket shell's reader/writer
   pair, translator, budgets, send watchdog and one end path, over a :class:`CallSocket`
   instead of a WebSocket. The session is attached then, and the client gets
   ``session.created`` (and what the session said meanwhile) as its first events; a
   ``session`` part of the offer is applied as the client's first ``session.update``;
3. the call ends when the data channel closes, the peer connection fails or closes, or the
   channel shell closes it (a close code is not sent: a data channel has none; the channel is
   closed, and with the session its peer connection). The session is closed with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import logging
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tidegate.media import MediaPeer
from tidegate.media.datachannel import DataChannelClosedError
from tidegate.pipelines.media import SessionMedia
from tidegate.pipelines.records import client_info
from tidegate.protocol import CloseCode
from tidegate.protocol.messages import SessionCreate
from tidegate.protocol.realtime import Handshake, RealtimeTranslator
from tidegate.protocol.realtime.events import MAX_EVENT_BYTES
from tidegate.sessions.session import Session

from . import edge
from .auth import Principal
from .call_socket import CallSocket
from .errors import InvalidConfigError, UnsupportedError
from .realtime import END_REASON, RealtimeChannel, realtime_translator

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

CALLS_PATH = "/v1/realtime/calls"
EVENTS_LABEL = "oai-events"  # the data channel the API names
CALL_DIALECT = "realtime-webrtc"


@edge.handler()
async def calls_endpoint(request: Request, runtime: Runtime, principal: Principal) -> Response:
    """Answer a Realtime WebRTC offer (see the module docstring)."""
    s = runtime.settings
    body = await edge.read_body(request, s.http_max_body_bytes)
    sdp, session_json = _offer(request.headers.get("content-type", ""), body)
    query = dict(request.query_params)
    if query.get("intent") not in (None, "transcription"):
        raise InvalidConfigError(f"?intent: expected 'transcription', got {query['intent']!r}")
    hs = Handshake(
        token="",
        subprotocol=None,
        model=query.get("model") or "tidegate",
        session_type="transcription" if query.get("intent") == "transcription" else "realtime",
    )
    t = realtime_translator(runtime, hs, track_audio=True)
    t.start(0.0)
    (create,) = t.to_session()
    assert isinstance(create, SessionCreate)  # start() asks for nothing else
    scope = dict(request.scope)
    client = client_info(request.scope, CALL_DIALECT)
    session = await runtime.sessions.open(principal, create.config, client=client)
    try:
        media = getattr(session.mode, "media", None)
        if not isinstance(media, SessionMedia):
            raise UnsupportedError(f"mode {session.config.get('mode')!r} takes no WebRTC media")
        peer, answer = await media.accept_offer(sdp, data_channels=(EVENTS_LABEL,))
    except BaseException:
        await runtime.sessions.close(session, "closed", "the call's offer was refused")
        raise
    runtime.spawn_call(
        _serve_call(runtime, principal, hs, t, create.id, session, peer, session_json, scope),
        name=f"{session.id}:realtime-call",
    )
    return Response(
        answer,
        status_code=201,
        media_type="application/sdp",
        headers={"Location": f"{CALLS_PATH}/{session.id}"},
    )


async def _serve_call(
    runtime: Runtime,
    principal: Principal,
    hs: Handshake,
    t: RealtimeTranslator,
    create_id: str | None,
    session: Session,
    peer: MediaPeer,
    session_json: bytes | None,
    scope: dict[str, Any],
) -> None:
    """Wait for the client's ``oai-events`` channel, then serve the call until it ends."""
    try:
        try:
            async with asyncio.timeout(runtime.settings.realtime_call_connect_s):
                events = await peer.event_channel(EVENTS_LABEL)
        except (TimeoutError, DataChannelClosedError) as e:
            log.info("realtime call %s: no %s channel (%s)", session.id, EVENTS_LABEL, e)
            runtime.counters["realtime_calls_unconnected"] += 1
            return
        s = runtime.settings
        socket = CallSocket(
            events,
            scope,
            t,
            tenant=session.tenant,
            max_sidebands=s.realtime_call_max_sidebands,
            max_pending=s.realtime_sideband_max_pending_events,
            send_timeout_s=s.send_timeout_s,
        )
        channel = RealtimeChannel(
            socket,  # type: ignore[arg-type]
            runtime,
            principal,
            hs,
            translator=t,
            opened=(session, create_id),
            first_events=[_session_update(session_json)] if session_json else [],
        )
        runtime.counters["realtime_calls"] += 1
        runtime.call_sockets[session.id] = socket
        try:
            await channel.run()
        finally:
            runtime.call_sockets.pop(session.id, None)
            await socket.close(CloseCode.NORMAL, "the call ended")
    finally:
        if not session.closed:
            with contextlib.suppress(Exception):
                await runtime.sessions.close(session, "closed", END_REASON)


def _session_update(session_json: bytes) -> str:
    return (
        '{"type":"session.update","event_id":"call_session","session":'
        + (session_json.decode())
        + "}"
    )


def _offer(content_type: str, body: bytes) -> tuple[str, bytes | None]:
    """The offer's SDP and the ``session`` part's JSON (multipart), checked for shape."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/sdp":
        return _sdp(body), None
    if kind == "multipart/form-data":
        parts = _form_parts(content_type, body)
        if "sdp" not in parts:
            raise InvalidConfigError("body: multipart/form-data without an 'sdp' part")
        session = parts.get("session")
        if session is not None:
            try:
                doc = orjson.loads(session)
            except orjson.JSONDecodeError:
                raise InvalidConfigError("body: the 'session' part is not JSON") from None
            if not isinstance(doc, dict):
                raise InvalidConfigError("body: the 'session' part must be a JSON object")
            if len(session) > MAX_EVENT_BYTES:
                raise InvalidConfigError("body: the 'session' part is too large")
        return _sdp(parts["sdp"]), session
    raise InvalidConfigError(
        f"Content-Type: expected application/sdp or multipart/form-data, got {kind or 'none'!r}"
    )


def _sdp(raw: bytes) -> str:
    try:
        sdp = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidConfigError("body: the SDP offer is not UTF-8 text") from None
    if not sdp.strip():
        raise InvalidConfigError("body: empty SDP offer")
    return sdp


def _form_parts(content_type: str, body: bytes) -> dict[str, bytes]:
    """The named parts of a multipart/form-data body (the standard library's MIME parser)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise InvalidConfigError("body: not a multipart/form-data body (check its boundary)")
    parts: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            parts[name] = payload
    return parts


__all__ = ["CALLS_PATH", "EVENTS_LABEL", "calls_endpoint"]
