"""Per-token rate limits: token buckets keyed by the token's subject (tenant + ``sub``).

Three buckets per subject: new sessions, control messages (every inbound one: uploads, pings
and invalid ones included; the control channel takes the token before it handles a message)
and HTTP API requests. A refusal is a :class:`~tidegate.server.errors.RateLimitedError` with
``retry_after_ms`` (the time until one token is back): on the wire an ``error`` with code
``rate_limited``, over HTTP a 429 with ``Retry-After``. Keying by subject rather than by the
token string means a subject cannot reset its budget by fetching a fresh token.

The buckets live in memory on each node; a full bucket is the same as none, so full buckets
are pruned once the table holds ``PRUNE_AT_KEYS`` subjects. With ``redis_url`` set, the
asynchronous path (:meth:`TokenBuckets.acquire`) counts in Redis instead, so a subject's
limit holds across every node (:mod:`tidegate.cluster.ratelimit`); when Redis is away
it counts in these local buckets, as one node would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tidegate.cluster.link import RedisDownError

from .auth import Principal
from .errors import RateLimitedError
from .settings import Settings

PRUNE_AT_KEYS = 10_000


LEASE_RATE_S = 0.05  # a lease holds at most this many seconds' worth of a bucket's rate...
LEASE_BURST_SHARE = 0.1  # ...and at most this share of its burst (1 token: no lease)
LEASE_MAX_AGE_S = 1.0  # leased tokens not used within this are given up (never returned)


class SharedBuckets(Protocol):
    """Token buckets shared by the nodes (raises when they cannot be reached)."""

    async def take(
        self, what: str, key: tuple[str, str], *, rate_per_s: float, burst: float, want: int = 1
    ) -> tuple[int, float | None]: ...


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at_s: float


class TokenBuckets:
    """One token bucket per key: ``rate_per_s`` refill, ``burst`` capacity (rate 0: no limit)."""

    def __init__(
        self,
        what: str,
        *,
        rate_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self.admitted = 0
        self.refused = 0
        self.shared: SharedBuckets | None = None
        # Tokens taken from the shared bucket ahead of use: one round trip per lease.
        self.lease_tokens = max(
            1, int(min(self.burst * LEASE_BURST_SHARE, rate_per_s * LEASE_RATE_S))
        )
        self._leases: dict[tuple[str, str], _Bucket] = {}
        self.shared_admitted = 0
        self.shared_refused = 0
        self.shared_fallbacks = 0

    def take(self, key: tuple[str, str]) -> float | None:
        """Take one token; None if admitted, else the milliseconds until one is back."""
        if self.rate_per_s <= 0:
            self.admitted += 1
            return None
        now = self.clock()
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= PRUNE_AT_KEYS:
                self._prune(now)
            b = self._buckets[key] = _Bucket(self.burst, now)
        else:
            b.tokens = min(self.burst, b.tokens + (now - b.at_s) * self.rate_per_s)
            b.at_s = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            self.admitted += 1
            return None
        self.refused += 1
        return (1.0 - b.tokens) / self.rate_per_s * 1000.0

    async def acquire(self, principal: Principal) -> None:
        """:meth:`check`, counted across the cluster when the buckets are shared."""
        key = (principal.tenant, principal.subject)
        if self.shared is None or self.rate_per_s <= 0:
            wait_ms = self.take(key)
        else:
            wait_ms = await self._take_shared(self.shared, key)
        self._refuse(wait_ms)

    async def _take_shared(self, shared: SharedBuckets, key: tuple[str, str]) -> float | None:
        now = self.clock()
        lease = self._leases.get(key)
        if lease is not None and lease.tokens >= 1 and now - lease.at_s < LEASE_MAX_AGE_S:
            lease.tokens -= 1
            self.shared_admitted += 1
            return None
        try:
            granted, wait_ms = await shared.take(
                self.what,
                key,
                rate_per_s=self.rate_per_s,
                burst=self.burst,
                want=self.lease_tokens,
            )
        except RedisDownError:
            self.shared_fallbacks += 1
            return self.take(key)
        if wait_ms is not None:
            self.shared_refused += 1
            return wait_ms
        self.shared_admitted += 1
        if granted > 1:
            if len(self._leases) >= PRUNE_AT_KEYS:
                self._leases = {
                    k: b for k, b in self._leases.items() if now - b.at_s < LEASE_MAX_AGE_S
                }
            self._leases[key] = _Bucket(float(granted - 1), now)
        else:
            self._leases.pop(key, None)
        return None

    def check(self, principal: Principal) -> None:
        """Take one token for ``principal`` or raise RateLimitedError (this node's count)."""
        self._refuse(self.take((principal.tenant, principal.subject)))

    def _refuse(self, wait_ms: float | None) -> None:
        if wait_ms is not None:
            raise RateLimitedError(
                f"too many {self.what}: the limit is {self.rate_per_s:g} per second (burst "
                f"{self.burst:g}) per subject; retry in {wait_ms:.0f} ms",
                retry_after_ms=round(wait_ms, 1),
            )

    def _prune(self, now: float) -> None:
        full = [
            k
            for k, b in self._buckets.items()
            if b.tokens + (now - b.at_s) * self.rate_per_s >= self.burst
        ]
        for k in full:
            del self._buckets[k]

    def stats(self) -> dict[str, Any]:
        return {
            "rate_per_s": self.rate_per_s,
            "burst": self.burst,
            "subjects": len(self._buckets),
            "admitted": self.admitted,
            "refused": self.refused,
            "shared": self.shared is not None,
            "shared_admitted": self.shared_admitted,
            "shared_refused": self.shared_refused,
            "shared_fallbacks": self.shared_fallbacks,
            "lease_tokens": self.lease_tokens,
        }


SLOT_RETRY_MS = 1_000.0  # the hint given with a refused slot: when one may have ended


class Slot:
    """One place taken in :class:`Slots`; ``release()`` gives it back (once; again is a no-op)."""

    __slots__ = ("_key", "_slots")

    def __init__(self, slots: Slots, key: tuple[str, str]) -> None:
        self._slots: Slots | None = slots
        self._key = key

    def release(self) -> None:
        if self._slots is not None:
            slots, self._slots = self._slots, None
            slots._release(self._key)


class Slots:
    """At most ``limit`` things at once per subject, counted on this node: a concurrency limit
    beside the buckets (chat completions generating at once). A refusal is a
    :class:`RateLimitedError` naming ``setting``, with a retry hint of ``SLOT_RETRY_MS``."""

    def __init__(self, what: str, *, limit: int, setting: str) -> None:
        self.what = what
        self.limit = limit
        self.setting = setting
        self._held: dict[tuple[str, str], int] = {}
        self.admitted = 0
        self.refused = 0

    def acquire(self, principal: Principal) -> Slot:
        key = (principal.tenant, principal.subject)
        held = self._held.get(key, 0)
        if held >= self.limit:
            self.refused += 1
            raise RateLimitedError(
                f"too many {self.what} at once: {held} running, the limit is {self.limit} "
                f"per subject ({self.setting}); retry when one has ended",
                retry_after_ms=SLOT_RETRY_MS,
            )
        self._held[key] = held + 1
        self.admitted += 1
        return Slot(self, key)

    def _release(self, key: tuple[str, str]) -> None:
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)

    def stats(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "held": sum(self._held.values()),
            "subjects": len(self._held),
            "admitted": self.admitted,
            "refused": self.refused,
        }


class Limiter:
    """The rate limits of one node."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        s = settings
        self.sessions = TokenBuckets(
            "new sessions",
            rate_per_s=s.rate_sessions_per_s,
            burst=s.rate_burst_sessions,
            clock=clock,
        )
        self.messages = TokenBuckets(
            "messages", rate_per_s=s.rate_messages_per_s, burst=s.rate_burst_messages, clock=clock
        )
        self.requests = TokenBuckets(
            "API requests",
            rate_per_s=s.rate_requests_per_s,
            burst=s.rate_burst_requests,
            clock=clock,
        )
        self.completions = Slots(
            "chat completions",
            limit=s.max_completions_per_subject,
            setting="max_completions_per_subject",
        )

    def share(self, shared: SharedBuckets) -> None:
        """Count every bucket across the cluster (see the module docstring)."""
        for buckets in (self.sessions, self.messages, self.requests):
            buckets.shared = shared

    def stats(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions.stats(),
            "messages": self.messages.stats(),
            "requests": self.requests.stats(),
            "completions": self.completions.stats(),
        }
