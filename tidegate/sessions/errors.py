"""Exceptions of the session runtime: the refusals (:mod:`tidegate.pipelines.errors`,
re-exported for the layers above that may not import ``pipelines``: ``cluster``), and the
shared-state outage its ports raise."""

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

__all__ = [
    "ConfigError",
    "ConnectionLimitError",
    "ForbiddenError",
    "InvalidConfigError",
    "NotFoundError",
    "OverloadedError",
    "RateLimitedError",
    "RefusalError",
    "SharedStateDownError",
    "UnauthorizedError",
    "UnsupportedError",
]


class SharedStateDownError(Exception):
    """Shared state (Redis) is unreachable: the caller falls back to its local behaviour."""


class ConfigError(Exception):
    """A setting has a value we cannot use; the message names it (raised where the setting is
    read: the server's settings, the store, the cluster; ``tidegate.server.errors`` re-exports
    it)."""
