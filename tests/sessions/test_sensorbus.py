"""The sensor bus: tenant-scoped fan-out, latest-wins per channel for a slow subscriber.

``BUSES`` lists the implementations; every test runs against each (a Redis bus joins the list
with a factory of its own)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from tests.support import scaled
from tidegate.sessions.sensorbus import LocalSensorBus, SensorBus, SensorReading, SensorSubscription

BUSES: dict[str, Callable[[], SensorBus]] = {"local": LocalSensorBus}


@pytest.fixture(params=sorted(BUSES))
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[SensorBus]:
    b = BUSES[request.param]()
    yield b
    await b.close()


async def _settle() -> None:
    """Let a bus that delivers through a task of its own catch up."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_readings_reach_subscribers_of_that_session_and_tenant(bus: SensorBus) -> None:
    """A reading reaches the subscribers of its tenant and session only, in order."""
    mine = bus.subscribe("acme", "s1")
    other_session = bus.subscribe("acme", "s2")
    other_tenant = bus.subscribe("evil", "s1")
    bus.publish("acme", "s1", "temp", 1.0, (20.5,))
    await _settle()
    assert mine.take() == [SensorReading("s1", "temp", 1.0, (20.5,), 0)]
    assert other_session.take() == [] and other_tenant.take() == []


async def test_a_slow_subscriber_gets_the_latest_per_channel_with_dropped(
    bus: SensorBus,
) -> None:
    """Readings pile up while nobody reads: one per channel is kept (the newest), and
    ``dropped`` says how many were coalesced away."""
    sub = bus.subscribe("acme", "s1")
    for i in range(10):
        bus.publish("acme", "s1", "temp", float(i), (float(i),))
    bus.publish("acme", "s1", "hum", 3.0, (40.0,))
    await _settle()
    assert sub.take() == [
        SensorReading("s1", "temp", 9.0, (9.0,), 9),
        SensorReading("s1", "hum", 3.0, (40.0,), 0),
    ]
    assert sub.dropped == 9 and len(sub) == 0


async def test_channel_filter_and_unsubscribe(bus: SensorBus) -> None:
    """A subscription to some channels gets only those; a closed one gets nothing more and
    its reader ends."""
    sub = bus.subscribe("acme", "s1", ["temp"])
    bus.publish("acme", "s1", "hum", 1.0, (1.0,))
    bus.publish("acme", "s1", "temp", 2.0, (2.0,))
    await _settle()
    assert [r.channel for r in sub.take()] == ["temp"]
    sub.close()
    bus.publish("acme", "s1", "temp", 3.0, (3.0,))
    await _settle()
    assert sub.take() == []
    assert [r async for r in sub] == []


async def test_reader_waits_for_the_next_reading(bus: SensorBus) -> None:
    """``async for`` yields readings as they come."""
    sub = bus.subscribe("acme", "s1")

    async def first() -> SensorReading:
        async for r in sub:
            return r
        raise AssertionError("ended")

    task = asyncio.ensure_future(first())
    await asyncio.sleep(0.01)
    assert not task.done()
    bus.publish("acme", "s1", "temp", 5.0, (1.0, 2.0))
    reading = await asyncio.wait_for(task, scaled(5))
    assert reading == SensorReading("s1", "temp", 5.0, (1.0, 2.0), 0)


def test_pending_channels_are_bounded() -> None:
    """Beyond max_channels pending channels, a new channel's reading is dropped and counted
    (on that channel's next delivered reading)."""
    sub = SensorSubscription("acme", "s1", max_channels=2)
    for ch in ("a", "b", "c"):
        sub.offer(SensorReading("s1", ch, 1.0, (1.0,)))
    assert [r.channel for r in sub.take()] == ["a", "b"]
    sub.offer(SensorReading("s1", "c", 2.0, (2.0,)))
    assert sub.take() == [SensorReading("s1", "c", 2.0, (2.0,), 1)]
    assert sub.dropped == 1
