"""The shared test support (tests/support.py): timeouts scale with one factor, a held SQLite
lock really blocks other writers, and waiting for readiness says what it saw."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest

from tests import support
from tests.support import SqliteLock, scaled, timeout_factor, wait_ready


def test_the_factor_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """TIDEGATE_TEST_TIMEOUT_FACTOR sets the factor (1 when unset); nonsense is refused."""
    monkeypatch.delenv(support.TIMEOUT_FACTOR_ENV, raising=False)
    assert timeout_factor() == 1.0
    monkeypatch.setenv(support.TIMEOUT_FACTOR_ENV, "2.5")
    assert timeout_factor() == 2.5
    for bad in ("0", "-1", "fast", "nan"):
        monkeypatch.setenv(support.TIMEOUT_FACTOR_ENV, bad)
        with pytest.raises(ValueError, match=support.TIMEOUT_FACTOR_ENV):
            timeout_factor()


def test_scaled_multiplies_by_the_factor() -> None:
    """scaled(s) is s times the factor this run was started with."""
    assert scaled(10) == 10 * support.TIMEOUT_FACTOR
    assert timeout_factor() == support.TIMEOUT_FACTOR


def test_the_per_test_limit_is_scaled(request: pytest.FixtureRequest) -> None:
    """pytest-timeout's limit for this test is the configured one times the factor."""
    marker = request.node.get_closest_marker("timeout")
    assert marker is not None
    assert marker.args[0] == scaled(float(request.config.getini("timeout")))


def test_sqlite_lock_blocks_writers_until_unlocked(tmp_path: Path) -> None:
    """While locked, another writer fails at once with 'database is locked'; after unlock it
    writes; leaving the block releases a lock still held."""
    path = tmp_path / "x.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t (x INTEGER)")
    other = sqlite3.connect(path, timeout=0)
    try:
        with SqliteLock(path) as held:
            held.lock()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("INSERT INTO t VALUES (1)")
            held.unlock()
            other.execute("INSERT INTO t VALUES (2)")
            other.commit()
            held.lock()
        other.execute("INSERT INTO t VALUES (3)")  # released at exit
        other.commit()
        assert [r[0] for r in other.execute("SELECT x FROM t ORDER BY x")] == [2, 3]
    finally:
        other.close()


async def test_wait_ready_gives_up_naming_the_last_answer() -> None:
    """Nothing listening: the wait ends with a TimeoutError that says what it last saw."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    with pytest.raises(TimeoutError, match="ConnectError"):
        await wait_ready(f"http://127.0.0.1:{port}", timeout_s=0.3)


async def test_wait_ready_stops_when_the_server_exited() -> None:
    """A server process that exited ends the wait at once, with its exit code."""
    with pytest.raises(RuntimeError, match="exited with 3"):
        await wait_ready("http://127.0.0.1:9", timeout_s=60, exited=lambda: 3)
