"""What many tests share: timeouts that scale, prepared models, waiting for readiness, and a
SQLite database held locked by another writer.

Timeouts: every timeout a test sets (an ``asyncio.timeout``, a subprocess' ``timeout=``, a
wait loop's bound, and pytest-timeout's per-test limit) is ``scaled(seconds)``: the seconds
times ``TIDEGATE_TEST_TIMEOUT_FACTOR`` (default 1). On a slow or shared machine, run with e.g.
``TIDEGATE_TEST_TIMEOUT_FACTOR=3``; the factor only lengthens how long a test may wait for
something that will happen, never what it asserts (tests assert no wall-clock numbers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import httpx

from tidegate.engines import models

TIMEOUT_FACTOR_ENV = "TIDEGATE_TEST_TIMEOUT_FACTOR"
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
DATA = CACHE / "data"
ASSETS = CACHE / "assets"
READY_POLL_S = 0.05


def timeout_factor() -> float:
    """The factor from ``TIDEGATE_TEST_TIMEOUT_FACTOR`` (a positive number; 1 when unset)."""
    raw = os.environ.get(TIMEOUT_FACTOR_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        factor = float(raw)
    except ValueError:
        factor = 0.0
    if not factor > 0:
        raise ValueError(f"{TIMEOUT_FACTOR_ENV} must be a positive number, got {raw!r}")
    return factor


TIMEOUT_FACTOR = timeout_factor()


def scaled(seconds: float) -> float:
    """A test's timeout of ``seconds``, times ``TIDEGATE_TEST_TIMEOUT_FACTOR``."""
    return seconds * TIMEOUT_FACTOR


# -- models -----------------------------------------------------------------------------------


def prepare_models(*names: str, assets: tuple[str, ...] = ()) -> Path:
    """The data folder with the models ``names`` prepared (and the files ``assets`` present in
    the assets folder): ``make setup`` did it, or it is done here (scripts/fetch_assets.py,
    which needs no network when the shared cache holds the downloads)."""
    missing = any(models.verify(DATA, n, deep=False) for n in names)
    missing = missing or not all((ASSETS / a).is_file() for a in assets)
    if missing:
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "fetch_assets.py"), str(CACHE)],
            check=True,
            timeout=scaled(1800),
        )
    return DATA


# -- readiness --------------------------------------------------------------------------------


Exited = Callable[[], int | None]


def _check_alive(exited: Exited | None) -> None:
    code = None if exited is None else exited()
    if code is not None:
        raise RuntimeError(f"the server exited with {code} before it was ready")


async def wait_ready(
    base_url: str, *, timeout_s: float = 90.0, exited: Exited | None = None
) -> None:
    """Wait until ``base_url``'s /readyz answers 200 (engines load after the server starts);
    ``timeout_s`` is scaled. A timeout says what /readyz answered last. ``exited``: the exit
    code of the server's process, or None while it runs (its exit ends the wait at once)."""
    last = "no answer"
    async with httpx.AsyncClient(base_url=base_url, timeout=scaled(10)) as http:
        try:
            async with asyncio.timeout(scaled(timeout_s)):
                while True:
                    _check_alive(exited)
                    try:
                        r = await http.get("/readyz")
                    except httpx.TransportError as e:
                        last = f"{type(e).__name__}: {e}"
                    else:
                        if r.status_code == 200:
                            return
                        last = f"{r.status_code} {r.text[:500]}"
                    await asyncio.sleep(READY_POLL_S)
        except TimeoutError:
            raise TimeoutError(
                f"{base_url}/readyz not 200 after {scaled(timeout_s):.0f} s; last: {last}"
            ) from None


def wait_ready_blocking(
    base_url: str, *, timeout_s: float = 90.0, exited: Exited | None = None, poll_s: float = 0.2
) -> None:
    """:func:`wait_ready` for code that has no event loop (a server in a child process)."""
    last = "no answer"
    deadline = time.monotonic() + scaled(timeout_s)
    while time.monotonic() < deadline:
        _check_alive(exited)
        try:
            r = httpx.get(f"{base_url}/readyz", timeout=scaled(2))
        except httpx.TransportError as e:
            last = f"{type(e).__name__}: {e}"
        else:
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:500]}"
        time.sleep(poll_s)
    raise TimeoutError(f"{base_url}/readyz not 200 after {scaled(timeout_s):.0f} s; last: {last}")


# -- SQLite held by another writer --------------------------------------------------------------


class SqliteLock:
    """Another writer on a SQLite file: :meth:`lock` holds an exclusive transaction (every
    other writer and reader of the file waits or fails), :meth:`unlock` rolls it back. Used as
    a context manager, whatever is still held is released at exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._held: list[sqlite3.Connection] = []

    def lock(self) -> None:
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        self._held.append(conn)

    def unlock(self) -> None:
        conn = self._held.pop()
        conn.execute("ROLLBACK")
        conn.close()

    def __enter__(self) -> SqliteLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for conn in self._held:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._held.clear()
