"""Who a session belongs to: the principal a verified token speaks for (the edge's
:mod:`tidegate.server.auth` verifies tokens and makes these)."""

from __future__ import annotations

from dataclasses import dataclass

SCOPE_SESSION = "session"
SCOPE_ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    subject: str
    tenant: str
    scopes: frozenset[str]
    expires_at_s: float

    @property
    def is_admin(self) -> bool:
        return SCOPE_ADMIN in self.scopes
