"""The sensor bus over Redis, two nodes' buses in one process on a real Redis (a redis-server
of the test's own, so that it can be stopped): fan-out between nodes, tenant isolation by
channel, latest-wins for a slow subscriber, and Redis going away and coming back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.cluster.redis_server import OwnRedis, eventually
from tests.support import scaled
from tidegate.cluster.link import RedisLink
from tidegate.cluster.sensorbus import RedisSensorBus
from tidegate.sessions.sensorbus import SensorSubscription


@pytest.fixture
async def buses(own_redis: OwnRedis) -> AsyncIterator[tuple[RedisSensorBus, RedisSensorBus]]:
    out = []
    for node in ("na", "nb"):
        link = RedisLink(own_redis.url, prefix="tgbus:", timeout_s=0.3, retry_s=0.05)
        await link.start()
        bus = RedisSensorBus(link, node, backlog_readings=64)
        await bus.start()
        out.append(bus)
    try:
        yield out[0], out[1]
    finally:
        for bus in out:
            await bus.close()
            await bus.link.close()


async def _until_heard(a: RedisSensorBus, sub: SensorSubscription, tenant: str) -> float:
    """Publish on ``a`` until ``sub`` (on the other bus) has a reading; its ts."""
    for i in range(1, 200):
        a.publish(tenant, "s1", "temp", float(i), (float(i),))
        await asyncio.sleep(0.02)
        if len(sub):
            return sub.take()[-1].ts
    raise AssertionError("no reading crossed the nodes")


async def test_readings_cross_nodes_within_their_tenant(
    buses: tuple[RedisSensorBus, RedisSensorBus],
) -> None:
    """B's subscriber of tenant x hears x's session s1 published on A; a subscriber of tenant
    y to the same session id hears nothing, ever; A's own subscriber gets each reading once."""
    a, b = buses
    mine = b.subscribe("x", "s1")
    other = b.subscribe("y", "s1")
    local = a.subscribe("x", "s1")
    last = await _until_heard(a, mine, "x")
    a.publish("x", "s1", "temp", last + 1, (1.5, 2.5))
    reading = await asyncio.wait_for(mine.__anext__(), scaled(5))
    assert (reading.session_id, reading.channel, reading.ts, reading.values) == (
        "s1",
        "temp",
        last + 1,
        (1.5, 2.5),
    )
    assert len(other) == 0 and other.offered == 0
    assert local.offered == a.published  # in process, once: its own node's copy is skipped

    async def own_copies_skipped() -> bool:  # A listens on x:s1 too, and skips its own
        return bool(a.stats()["received_own"] >= 2 and b.stats()["received"] >= 2)

    await eventually(own_copies_skipped, 5, "B counted what it received")
    for s in (mine, other, local):
        s.close()
    assert b.stats()["subscriptions"] == 0


async def test_slow_subscriber_gets_the_latest_per_channel(
    buses: tuple[RedisSensorBus, RedisSensorBus],
) -> None:
    """A subscriber that does not read meanwhile holds one reading per channel, the newest,
    with ``dropped`` counting the ones it replaced."""
    a, b = buses
    sub = b.subscribe("x", "s1")
    last = await _until_heard(a, sub, "x")
    for i in range(1, 31):
        a.publish("x", "s1", "temp", last + i, (float(i),))
        a.publish("x", "s1", "hum", last + i, (float(-i),))

    async def all_there() -> bool:
        return bool(b.stats()["received"] >= 61)

    await eventually(all_there, 10, "B received every reading")
    got = {r.channel: r for r in sub.take()}
    assert set(got) == {"temp", "hum"}
    assert got["temp"].values == (30.0,) and got["temp"].dropped == 29
    assert got["hum"].values == (-30.0,) and got["hum"].dropped == 29
    sub.close()


async def test_redis_away_and_back(
    buses: tuple[RedisSensorBus, RedisSensorBus], own_redis: OwnRedis
) -> None:
    """With Redis stopped, local delivery goes on and cross-node readings are dropped and
    counted; once it is back, B subscribes again by itself and hears A."""
    a, b = buses
    remote = b.subscribe("x", "s1")
    local = a.subscribe("x", "s1")
    await _until_heard(a, remote, "x")
    own_redis.stop()
    for i in range(1000, 1020):
        a.publish("x", "s1", "temp", float(i), (0.0,))
        await asyncio.sleep(0.01)
    assert local.take()[-1].ts == 1019.0  # this node's subscriber did not notice
    assert a.stats()["publish_dropped"] >= 1 and not a.link.up
    own_redis.start()

    async def back() -> bool:
        return a.link.up and b.link.up

    await eventually(back, 20, "both links are up")
    remote.take()
    for i in range(2000, 2400):
        a.publish("x", "s1", "temp", float(i), (1.0,))
        await asyncio.sleep(0.02)
        if len(remote):
            break
    assert len(remote) and remote.take()[-1].ts >= 2000
    assert b.stats()["resubscribes"] >= 1
    remote.close()
    local.close()
