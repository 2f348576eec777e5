"""Fixtures of the persistence tests: a real PostgreSQL (see postgres.py), a fresh database
per test on either backend, and a TCP proxy that can cut the database's port."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.store.postgres import (
    DEFAULT_URL,
    create_database,
    drop_database,
    server_reachable,
    throwaway_cluster,
)
from tests.store.proxy import TcpProxy

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server we may create databases on."""
    url = os.environ.get("TIDEGATE_TEST_POSTGRES_URL") or DEFAULT_URL
    if server_reachable(url):
        yield url
        return
    with throwaway_cluster() as cluster:
        yield cluster.url


def _run(coro: Any) -> Any:
    """Run a coroutine to completion in a thread of its own (fixtures set up outside, or
    inside, the test's event loop alike)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture
def pg_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (dropped after)."""
    url = _run(create_database(postgres_server))
    try:
        yield url
    finally:
        _run(drop_database(postgres_server, url))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database of the test's backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'records.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def pg_proxy(pg_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A proxy in front of this test's PostgreSQL database, and the database URL through it."""
    from urllib.parse import urlsplit

    parts = urlsplit(pg_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    try:
        yield proxy, pg_url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}")
    finally:
        with contextlib.suppress(Exception):
            await proxy.close()
