"""The node's connection to Redis, and what happens when Redis is away.

Every shared implementation (limits, directory, caches, sensor fan-out) goes through one
:class:`RedisLink`. A command that fails (connection refused, reset, timeout past
``redis_timeout_s``) marks the link *down*: the warning is logged once per outage and counted
(``failures``, ``outages``), and while it is down, shared operations are not even tried —
callers get :class:`RedisDownError` at once and use their local fallback (``fallbacks``). A
probe task pings every ``redis_retry_s``; when Redis answers, the link is *up* again, the
outage's end is logged, and the ``on_up`` callbacks run (the directory republishes the node
and its sessions, the sensor bus re-subscribes), so shared state resumes by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tidegate.server.errors import ServerError

log = logging.getLogger(__name__)

T = TypeVar("T")


def key_part(text: str) -> str:
    """``text`` made safe as one part of a key: ``%`` and ``:`` percent-encoded."""
    return text.replace("%", "%25").replace(":", "%3A")


class RedisDownError(ServerError):
    """Redis is unreachable: use the local fallback."""


class RedisLink:
    """One Redis client for the node, with its health (see the module docstring)."""

    def __init__(
        self, url: str, *, prefix: str, timeout_s: float = 0.5, retry_s: float = 1.0
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=0,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),  # a failure goes down at once; the probe retries
            decode_responses=False,
        )
        self.up = False
        self.failures = 0
        self.outages = 0
        self.fallbacks = 0
        self.recoveries = 0
        self.down_since: float | None = time.monotonic()
        self.last_error: str | None = None
        self._on_up: list[Callable[[], Awaitable[None]]] = []
        self._probe: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def key(self, *parts: str) -> str:
        """A key or channel name under this deployment's prefix (each part escaped, so that
        no tenant or subject name can reach another's key)."""
        return self.prefix + ":".join(key_part(p) for p in parts)

    def on_up(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` each time Redis comes back (and once at start if it is up)."""
        self._on_up.append(callback)

    async def start(self) -> None:
        """Connect (a Redis that is down now is not an error: the probe keeps trying)."""
        if not await self._try_up():
            self.outages += 1
            self._log_down()
        self._probe = asyncio.get_running_loop().create_task(self._run_probe(), name="redis-probe")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()

    async def call(self, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run ``fn(client)``; RedisDownError when Redis is (or just went) down."""
        if not self.up:
            self.fallbacks += 1
            raise RedisDownError(f"redis is down: {self.last_error}")
        try:
            return await fn(self.client)
        except (TimeoutError, RedisConnectionError, RedisTimeoutError, OSError) as e:
            self.failed(e)
            self.fallbacks += 1
            raise RedisDownError(f"redis is down: {self.last_error}") from None

    def failed(self, error: BaseException) -> None:
        """A command failed for want of Redis: go down (logged once per outage)."""
        self.failures += 1
        self.last_error = f"{type(error).__name__}: {error}"
        if self.up:
            self.up = False
            self.outages += 1
            self.down_since = time.monotonic()
            self._log_down()
            self._wake.set()

    def _log_down(self) -> None:
        log.warning(
            "redis %s unreachable (%s): this node works locally (limits, directory, caches, "
            "sensor fan-out) until it answers again",
            self.url,
            self.last_error,
        )

    async def _try_up(self) -> bool:
        try:
            if not self.up:  # pooled connections from before the outage are dead: drop them
                await self.client.connection_pool.disconnect()
            await self.client.ping()
        except (TimeoutError, RedisError, OSError) as e:
            self.last_error = f"{type(e).__name__}: {e}"
            return False
        was_down_s = None if self.down_since is None else time.monotonic() - self.down_since
        self.up = True
        self.down_since = None
        if self.outages:
            self.recoveries += 1
            log.warning("redis %s is back after %.1f s: shared state resumes", self.url, was_down_s)
        for callback in self._on_up:
            try:
                await callback()
            except RedisDownError:
                return False
            except Exception:
                log.exception("redis: resuming shared state failed")
        return self.up

    async def _run_probe(self) -> None:
        while True:
            if self.up:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(self.retry_s)
            await self._try_up()

    def stats(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "up": self.up,
            "failures": self.failures,
            "outages": self.outages,
            "recoveries": self.recoveries,
            "fallbacks": self.fallbacks,
            "down_s": None if self.down_since is None else time.monotonic() - self.down_since,
            "last_error": self.last_error,
        }
