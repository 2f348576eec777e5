"""Exceptions of the server package. The refusals (each mapped to a wire error code) are
:mod:`tidegate.pipelines.errors`'s, re-exported here."""

from __future__ import annotations

from tidegate.pipelines.errors import (
    ConnectionLimitError,
    ForbiddenError,
    InvalidConfigError,
    NotFoundError,
    OverloadedError,
    RateLimitedError,
    RefusalError,
    UnauthorizedError,
    UnsupportedError,
)
from tidegate.sessions.errors import ConfigError

__all__ = [
    "ConfigError",
    "ConnectionLimitError",
    "ForbiddenError",
    "InvalidConfigError",
    "NotFoundError",
    "OverloadedError",
    "RateLimitedError",
    "RefusalError",
    "ServerError",
    "UnauthorizedError",
    "UnsupportedError",
]


class ServerError(Exception):
    """Root of every exception raised by ``tidegate.server``."""
