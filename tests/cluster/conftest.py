"""Fixtures of the cluster tests: a real Redis, a key prefix per test, and server nodes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis

from tests.cluster.redis_server import OwnRedis, shared_or_own


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The machine's Redis on 6379 when it answers; else one of our own for the session."""
    with shared_or_own() as url:
        yield url


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    """A Redis of this test alone (it may be stopped and started again)."""
    own = OwnRedis()
    own.start()
    try:
        yield own
    finally:
        own.close()


def _delete_keys(url: str, prefix: str) -> None:
    r = redis.Redis.from_url(url)
    try:
        keys = list(r.scan_iter(match=prefix + "*", count=500))
        if keys:
            r.delete(*keys)
    finally:
        r.close()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test; its keys are deleted after it."""
    p = f"tgtest:{secrets.token_hex(6)}:"
    yield p
    _delete_keys(redis_url, p)


@pytest.fixture(scope="module")
def module_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of one test module (for nodes it shares between its tests)."""
    p = f"tgtest:{secrets.token_hex(6)}:"
    yield p
    _delete_keys(redis_url, p)
