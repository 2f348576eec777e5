"""Refusals: what a lane, a mode or a session refuses, each with its wire error code.

They live here, at the lowest layer that raises them, so that ``pipelines``, ``sessions`` and
the edge (``server``) share one family; ``tidegate.server.errors`` re-exports them.
"""

from __future__ import annotations

from tidegate.protocol import CloseCode, ErrorCode


class RefusalError(Exception):
    """A request refused for a reason the client caused or must know about.

    ``code`` travels in the ``error`` message; ``close_code`` is set when the refusal ends the
    connection; ``retry_after_ms`` hints when trying again may succeed.
    """

    code: ErrorCode = ErrorCode.FORBIDDEN
    close_code: CloseCode | None = None

    def __init__(self, message: str, *, retry_after_ms: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_ms = retry_after_ms


class UnauthorizedError(RefusalError):
    code = ErrorCode.UNAUTHORIZED
    close_code = CloseCode.UNAUTHORIZED


class ForbiddenError(RefusalError):
    code = ErrorCode.FORBIDDEN
    close_code = CloseCode.FORBIDDEN


class NotFoundError(RefusalError):
    code = ErrorCode.NOT_FOUND


class UnsupportedError(RefusalError):
    code = ErrorCode.UNSUPPORTED


class InvalidConfigError(RefusalError):
    code = ErrorCode.INVALID_FIELD


class OverloadedError(RefusalError):
    code = ErrorCode.OVERLOADED


class RateLimitedError(RefusalError):
    code = ErrorCode.RATE_LIMITED


class ConnectionLimitError(RateLimitedError):
    """Too many connections of one subject: refused, and the connection closed (4429)."""

    close_code = CloseCode.RATE_LIMITED
