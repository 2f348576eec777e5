"""The session registry's expiry, with an injected clock."""

from __future__ import annotations

from pathlib import Path

from tests.server.conftest import make_settings
from tidegate.server.auth import Principal
from tidegate.sessions.session import SessionRegistry

ALICE = Principal("alice", "acme", frozenset({"session"}), 0.0)


async def test_a_session_never_attached_expires(tmp_path: Path) -> None:
    """A session whose connection failed before attaching it expires like a detached one."""
    now = [100.0]
    registry = SessionRegistry(make_settings(tmp_path, session_resume_s=30.0), clock=lambda: now[0])
    session = registry.create(ALICE, {"mode": "loopback"})
    now[0] += 29.0
    assert await registry.expire() == 0
    now[0] += 1.0
    assert await registry.expire() == 1
    assert registry.get(session.id) is None and session.closed
