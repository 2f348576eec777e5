"""Token buckets shared through a real Redis by two nodes' limiters (two links), leases
included: the cluster never goes over a subject's limit, and refuses with the one-node error."""

from __future__ import annotations

import time

import pytest

from tidegate.cluster.link import RedisLink
from tidegate.cluster.ratelimit import RedisBuckets
from tidegate.server.auth import Principal
from tidegate.server.errors import RateLimitedError
from tidegate.server.limits import TokenBuckets

ALICE = Principal(subject="alice", tenant="acme", scopes=frozenset({"session"}), expires_at_s=1e12)


async def test_two_nodes_share_one_bucket_with_leases(redis_url: str, prefix: str) -> None:
    """A busy bucket (rate 40/s, burst 100: leases of 2 tokens) drawn from two nodes in turn
    admits at most burst + refill over the run, and at least burst less what leases hold;
    the refusal is rate_limited with retry_after_ms."""
    links = [RedisLink(redis_url, prefix=prefix) for _ in range(2)]
    nodes = []
    for link in links:
        await link.start()
        b = TokenBuckets("messages", rate_per_s=40.0, burst=100)
        b.shared = RedisBuckets(link)
        nodes.append(b)
    try:
        assert nodes[0].lease_tokens == 2
        admitted, refused = 0, None
        start = time.monotonic()
        for i in range(400):
            try:
                await nodes[i % 2].acquire(ALICE)
                admitted += 1
            except RateLimitedError as e:
                refused = e
                break
        elapsed = time.monotonic() - start
        assert refused is not None and refused.retry_after_ms is not None
        assert "too many messages" in refused.message
        assert 100 - 2 * 2 <= admitted <= 100 + 40.0 * elapsed + 1
        calls = sum(b.shared.calls for b in nodes)  # type: ignore[union-attr]
        assert calls < admitted  # leases: fewer round trips than messages
    finally:
        for link in links:
            await link.close()


async def test_rare_buckets_are_exact(redis_url: str, prefix: str) -> None:
    """A slow bucket (new sessions, 1/s, burst 3) takes one token per round trip: exactly
    three admissions across both nodes, then rate_limited."""
    links = [RedisLink(redis_url, prefix=prefix) for _ in range(2)]
    nodes = []
    for link in links:
        await link.start()
        b = TokenBuckets("new sessions", rate_per_s=0.01, burst=3)
        b.shared = RedisBuckets(link)
        nodes.append(b)
    try:
        assert nodes[0].lease_tokens == 1
        for i in range(3):
            await nodes[i % 2].acquire(ALICE)
        with pytest.raises(RateLimitedError):
            await nodes[1].acquire(ALICE)
        assert nodes[0].shared_admitted + nodes[1].shared_admitted == 3
    finally:
        for link in links:
            await link.close()
