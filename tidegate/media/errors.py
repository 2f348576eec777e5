"""Exceptions of the media package.

Errors the peer caused (an SDP offer or candidate that does not parse, media we cannot take)
are :class:`RemoteMediaError`; their message is safe to send back and names what was wrong.
Errors we caused are :class:`LocalMediaError`; their text stays in the server log.
"""

from __future__ import annotations

from tidegate.protocol import ErrorCode


class MediaError(Exception):
    """Root of every exception raised by ``tidegate.media``."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RemoteMediaError(MediaError):
    """The peer sent something we cannot use. The message is safe to send back."""

    code = ErrorCode.INVALID_FIELD


class BadSdpError(RemoteMediaError):
    """An SDP offer or ICE candidate that does not parse, or offers nothing we can take."""

    code = ErrorCode.BAD_SDP


class MediaStateError(RemoteMediaError):
    """A request that the media connection's state does not allow (e.g. a candidate first)."""

    code = ErrorCode.UNEXPECTED_MESSAGE


class LocalMediaError(MediaError):
    """Something failed on our side (a codec library missing, no port free in the range)."""

    code = ErrorCode.INTERNAL


class CodecError(LocalMediaError):
    """libopus could not be loaded or refused a call."""


class IceConfigError(LocalMediaError):
    """An ICE setting (hosts, port range, server URL) has a value we cannot use."""
