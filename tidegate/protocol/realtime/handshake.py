"""The opening of a ``/v1/realtime`` WebSocket: the token, the subprotocol, the model.

Realtime clients authenticate as OpenAI's API expects, and tidegate takes its own JWT in the
same places:

- ``Authorization: Bearer <jwt>`` (the Python and Node SDKs, server-side clients);
- browsers, which cannot set headers on a WebSocket, offer subprotocols instead:
  ``["realtime", "openai-insecure-api-key.<jwt>"]``. The server answers ``realtime`` and never
  echoes the key entry; ``openai-organization.*`` and ``openai-project.*`` entries are ignored.

``?intent=transcription`` (the beta API's way, still used) opens a transcription session;
otherwise the first ``session.update`` may switch the kind (``session.type``). ``?model=`` is
accepted and echoed in the session (tidegate serves its configured engines
whatever it says). The beta protocol (``OpenAI-Beta: realtime=v1`` header, or the
``openai-beta.realtime-v1`` subprotocol) names other event shapes: it is refused, naming it,
rather than answered with GA events the client would misread. ``?call_id=`` attaches the
connection to a WebRTC call as its *sideband* (a server's control of a call a browser holds:
docs/realtime.md); the shell checks the call exists and is the subject's tenant's.

:func:`accept` does no I/O: the shell passes what the HTTP upgrade carried and verifies the
token it returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from .errors import RealtimeCode, RealtimeError
from .session import DEFAULT_MODEL

SUBPROTOCOL = "realtime"
KEY_PREFIX = "openai-insecure-api-key."
IGNORED_PREFIXES = ("openai-organization.", "openai-project.")
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"
MAX_MODEL_CHARS = 128
MAX_CALL_ID_CHARS = 64


@dataclasses.dataclass(frozen=True, slots=True)
class Handshake:
    token: str | None  # None: no credentials offered (the shell refuses with 4401)
    subprotocol: str | None  # to answer with ("realtime" when offered)
    model: str
    session_type: str  # "realtime", or "transcription" for ?intent=transcription
    call_id: str | None = None  # ?call_id=: a sideband of that WebRTC call


def accept(
    subprotocols: Iterable[str], headers: Mapping[str, str], query: Mapping[str, str]
) -> Handshake:
    """What the upgrade request offers (header names lower-case); raises RealtimeError."""
    token: str | None = None
    answer: str | None = None
    for raw in subprotocols:
        entry = raw.strip()
        if entry == SUBPROTOCOL:
            answer = SUBPROTOCOL
        elif entry.startswith(KEY_PREFIX):
            token = token or entry[len(KEY_PREFIX) :] or None
        elif entry == BETA_SUBPROTOCOL:
            raise _beta()
    if "realtime=v1" in headers.get("openai-beta", "").replace(" ", "").split(","):
        raise _beta()
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        token = value.strip()  # the header wins over a subprotocol key
    call_id = query.get("call_id")
    if call_id is not None and not (
        0 < len(call_id) <= MAX_CALL_ID_CHARS
        and all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in call_id)
    ):
        raise RealtimeError(
            RealtimeCode.INVALID_VALUE,
            f"Invalid 'call_id': expected 1 to {MAX_CALL_ID_CHARS} letters, digits, '_' or "
            "'-' (the id the call's Location header ends with).",
            param="call_id",
        )
    model = query.get("model") or DEFAULT_MODEL
    if len(model) > MAX_MODEL_CHARS or not model.isprintable():
        raise RealtimeError(
            RealtimeCode.INVALID_VALUE,
            f"Invalid 'model': expected 1 to {MAX_MODEL_CHARS} printable characters.",
            param="model",
        )
    intent = query.get("intent") or "realtime"
    if intent not in ("realtime", "transcription"):
        raise RealtimeError(
            RealtimeCode.INVALID_VALUE,
            "Invalid 'intent': expected 'realtime' or 'transcription'.",
            param="intent",
        )
    return Handshake(
        token=token, subprotocol=answer, model=model, session_type=intent, call_id=call_id
    )


def _beta() -> RealtimeError:
    return RealtimeError(
        RealtimeCode.UNSUPPORTED_PARAMETER,
        "This server speaks the GA Realtime events only; the beta protocol "
        "(OpenAI-Beta: realtime=v1) is not supported. Drop the beta header or subprotocol.",
        param="OpenAI-Beta",
    )
