"""Error codes, close codes and the exceptions of the wire protocol.

Every error the protocol raises has a string ``code`` that travels in ``error`` messages and,
for fatal cases, a WebSocket close code. Errors the peer caused (:class:`RemoteProtocolError`)
are kept apart from errors we caused (:class:`LocalProtocolError`); the text of a local error
never reaches the peer.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """The ``code`` field of an ``error`` message. Documented in docs/protocol.md."""

    BAD_MESSAGE = "bad_message"  # the bytes do not decode with the negotiated encoding
    UNKNOWN_TYPE = "unknown_type"  # `type` names no message of this direction
    INVALID_FIELD = "invalid_field"  # a field is missing, of the wrong type, or out of range
    TOO_LARGE = "too_large"  # the message exceeds max_message_bytes
    UNEXPECTED_MESSAGE = "unexpected_message"  # valid, but not allowed in this state
    FLOW_VIOLATION = "flow_violation"  # an upload sent without credit
    UNAUTHORIZED = "unauthorized"  # no token, or a token that does not verify
    FORBIDDEN = "forbidden"  # a valid token without the needed scope or tenant
    NOT_FOUND = "not_found"  # a session, response or resource that does not exist
    UNSUPPORTED = "unsupported"  # a mode, engine or feature this server does not offer
    RATE_LIMITED = "rate_limited"  # too many requests; retry later
    OVERLOADED = "overloaded"  # the server or an engine is saturated; retry later
    TIMEOUT = "timeout"  # work missed its deadline
    BAD_SDP = "bad_sdp"  # an SDP offer or candidate that does not parse
    INTERNAL = "internal"  # our fault; details are in the server log, never on the wire


class CloseCode(enum.IntEnum):
    """WebSocket close codes used for fatal cases. Documented in docs/protocol.md."""

    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009  # the transport refused a frame larger than its hard limit
    PROTOCOL_VIOLATION = 4400  # too many bad messages, or no usable subprotocol
    UNAUTHORIZED = 4401  # no valid token, or the token expired during the connection
    FORBIDDEN = 4403
    TOO_SLOW = 4408  # the client does not read its events fast enough
    IDLE_TIMEOUT = 4409  # nothing arrived in time: no first message, or idle without a session
    TOO_LARGE = 4413
    RATE_LIMITED = 4429  # too many connections of one subject, or refusals that go on
    INTERNAL = 4500
    OVERLOADED = 4503


CLOSE_CODE_FOR_ERROR: dict[ErrorCode, CloseCode] = {
    ErrorCode.UNAUTHORIZED: CloseCode.UNAUTHORIZED,
    ErrorCode.FORBIDDEN: CloseCode.FORBIDDEN,
    ErrorCode.TOO_LARGE: CloseCode.TOO_LARGE,
    ErrorCode.RATE_LIMITED: CloseCode.RATE_LIMITED,
    ErrorCode.OVERLOADED: CloseCode.OVERLOADED,
    ErrorCode.INTERNAL: CloseCode.INTERNAL,
}


class ProtocolError(Exception):
    """Root of every exception raised by ``tidegate.protocol``."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, ref: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.ref = ref


class RemoteProtocolError(ProtocolError):
    """The peer sent something wrong. The message is safe to send back to it."""

    code = ErrorCode.BAD_MESSAGE


class DecodeError(RemoteProtocolError):
    """The bytes are not a valid document in the negotiated encoding."""

    code = ErrorCode.BAD_MESSAGE


class UnknownTypeError(RemoteProtocolError):
    """The message's ``type`` names no message of its direction."""

    code = ErrorCode.UNKNOWN_TYPE


class InvalidFieldError(RemoteProtocolError):
    """A field is missing, has the wrong type, or is out of range."""

    code = ErrorCode.INVALID_FIELD


class MessageTooLargeError(RemoteProtocolError):
    """The message is larger than the connection's ``max_message_bytes``."""

    code = ErrorCode.TOO_LARGE


class UnexpectedMessageError(RemoteProtocolError):
    """A valid message that the connection's state does not allow."""

    code = ErrorCode.UNEXPECTED_MESSAGE


class FlowViolationError(RemoteProtocolError):
    """An upload was sent without enough credit."""

    code = ErrorCode.FLOW_VIOLATION


class NegotiationError(RemoteProtocolError):
    """The WebSocket subprotocols offered name no encoding we speak, or name it badly."""

    code = ErrorCode.BAD_MESSAGE


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol forbids (a bug on our side)."""

    code = ErrorCode.INTERNAL
