"""The errors of the Realtime dialect: each becomes one ``error`` server event.

``RealtimeError`` carries the wire fields of a Realtime error object: ``type`` (the family:
``invalid_request_error`` for what the client sent, ``server_error`` for ours), ``code`` (the
documented list below and in docs/realtime.md), ``message`` in plain words, ``param`` (the
JSON path to blame) and ``event_id`` (the offending client event's).
"""

from __future__ import annotations

import enum

from ..errors import ProtocolError, RemoteProtocolError


class RealtimeCode(enum.StrEnum):
    """The ``code`` of a Realtime ``error`` event sent by tidegate."""

    INVALID_JSON = "invalid_json"  # the text frame is not JSON, or not a JSON object
    EVENT_TOO_LARGE = "event_too_large"  # the frame exceeds max_event_bytes
    UNKNOWN_EVENT = "unknown_event"  # `type` names no client event of the GA API
    UNSUPPORTED_EVENT = "unsupported_event"  # a GA client event tidegate does not serve
    MISSING_PARAMETER = "missing_required_parameter"
    UNKNOWN_PARAMETER = "unknown_parameter"
    INVALID_TYPE = "invalid_type"  # a parameter of the wrong JSON type
    INVALID_VALUE = "invalid_value"  # right type, value not allowed (range, choice, length)
    UNSUPPORTED_PARAMETER = "unsupported_parameter"  # a GA parameter tidegate does not serve
    INVALID_AUDIO = "invalid_audio"  # base64 that does not decode, or not whole samples
    BUFFER_FULL = "input_audio_buffer_full"  # see docs/realtime.md, "Input audio buffer"
    BUFFER_EMPTY = "input_audio_buffer_commit_empty"
    ITEM_NOT_FOUND = "item_not_found"
    RESPONSE_NOT_ACTIVE = "response_cancel_not_active"
    RESPONSE_ACTIVE = "conversation_already_has_active_response"
    SESSION_NOT_READY = "session_not_ready"  # an event that needs the session before it exists
    INVALID_STATE = "invalid_state"  # valid, but not in this session kind or state


class RealtimeError(RemoteProtocolError):
    """A client event refused; safe to send back (as an ``error`` event)."""

    def __init__(
        self,
        code: RealtimeCode | str,
        message: str,
        *,
        param: str | None = None,
        event_id: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message, ref=event_id)
        self.realtime_code = str(code)
        self.param = param
        self.event_id = event_id
        self.error_type = error_type


__all__ = ["ProtocolError", "RealtimeCode", "RealtimeError"]
