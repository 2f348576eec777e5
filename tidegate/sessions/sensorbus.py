"""The sensor bus: fan-out of one session's sensor readings to the sessions that subscribe to
them (dashboards), scoped by tenant.

The interface is three calls (:class:`SensorBus`): ``publish`` (never waits), ``subscribe``
(a :class:`SensorSubscription` to read from) and ``close``. :class:`LocalSensorBus` is the
in-process implementation a single node uses; a cluster replaces it with one over Redis
(DESIGN.md, "Beyond one machine") that keeps the same shape: its reader task hands what it
receives to :meth:`SensorSubscription.offer`, exactly as :meth:`LocalSensorBus.publish` does.

Flow policy of a subscription (DESIGN.md's "outbound events" for sensor readings):
**latest wins per channel**. A subscription holds at most one pending reading per channel; a
newer reading of that channel replaces the pending one, and the replaced one is counted in the
next delivered reading's ``dropped``. Its memory is bounded by ``max_channels`` (a reading of a
channel beyond that bound, while that many channels are pending, is dropped and counted). A
subscriber that reads slowly therefore sees every channel's freshest value, never a backlog.

Tenancy: a subscription names the tenant it belongs to; a bus delivers a publication only to
subscriptions of the same tenant and session. Whether the publishing session exists (and is the
subscriber's tenant's) is checked by the caller before it subscribes, never by the bus.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class SensorReading:
    """One reading as delivered: the publishing session, channel, its media time (ms), the
    values, and how many readings of this channel were coalesced away before it."""

    session_id: str
    channel: str
    ts: float
    values: tuple[float, ...]
    dropped: int = 0


class SensorSubscription:
    """One subscriber's view of one publishing session: latest-wins per channel (see the
    module docstring). ``offer`` is called by the bus (never waits); the subscriber awaits
    :meth:`wait` and then :meth:`take`, or iterates (``async for reading in sub``)."""

    def __init__(
        self,
        tenant: str,
        session_id: str,
        channels: Iterable[str] | None = None,
        *,
        max_channels: int = 64,
        on_close: Callable[[SensorSubscription], None] | None = None,
    ) -> None:
        if max_channels < 1:
            raise ValueError(f"max_channels must be at least 1, got {max_channels}")
        self.tenant = tenant
        self.session_id = session_id
        self.channels: frozenset[str] | None = None if channels is None else frozenset(channels)
        self.max_channels = max_channels
        self._on_close = on_close
        # channel -> (latest reading, readings it replaced); dicts keep insertion order, so
        # the channel waiting longest is delivered first.
        self._pending: dict[str, tuple[SensorReading, int]] = {}
        self._dropped_unsent: dict[str, int] = {}
        self._ready = asyncio.Event()
        self.closed = False
        self.offered = 0
        self.delivered = 0
        self.dropped = 0  # coalesced away (latest wins) or over max_channels

    def wants(self, channel: str) -> bool:
        return self.channels is None or channel in self.channels

    def offer(self, reading: SensorReading) -> None:
        """A new reading of the publishing session (from the bus; never waits)."""
        if self.closed or not self.wants(reading.channel):
            return
        self.offered += 1
        pending = self._pending
        old = pending.get(reading.channel)
        if old is not None:
            pending[reading.channel] = (reading, old[1] + 1)
            self.dropped += 1
        elif len(pending) >= self.max_channels:
            self._dropped_unsent[reading.channel] = self._dropped_unsent.get(reading.channel, 0) + 1
            self.dropped += 1
            return
        else:
            pending[reading.channel] = (reading, self._dropped_unsent.pop(reading.channel, 0))
        self._ready.set()

    async def wait(self) -> None:
        """Until a reading is pending or the subscription is closed."""
        while not self._pending and not self.closed:
            self._ready.clear()
            await self._ready.wait()

    def take(self) -> list[SensorReading]:
        """Every pending reading (one per channel, ``dropped`` filled in), oldest first."""
        out = [
            reading if n == 0 else _with_dropped(reading, reading.dropped + n)
            for reading, n in self._pending.values()
        ]
        self._pending.clear()
        self.delivered += len(out)
        return out

    def __len__(self) -> int:
        return len(self._pending)

    def __aiter__(self) -> SensorSubscription:
        return self

    async def __anext__(self) -> SensorReading:
        await self.wait()
        if self.closed:
            raise StopAsyncIteration
        channel = next(iter(self._pending))
        reading, n = self._pending.pop(channel)
        self.delivered += 1
        return reading if n == 0 else _with_dropped(reading, reading.dropped + n)

    def close(self) -> None:
        """Stop receiving; a waiting reader wakes and ends. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        self._ready.set()
        if self._on_close is not None:
            self._on_close(self)

    def stats(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "channels": None if self.channels is None else sorted(self.channels),
            "offered": self.offered,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "pending": len(self._pending),
        }


def _with_dropped(reading: SensorReading, dropped: int) -> SensorReading:
    return SensorReading(reading.session_id, reading.channel, reading.ts, reading.values, dropped)


class SensorBus(Protocol):
    """Fan-out of sensor readings between sessions of one tenant (see the module docstring)."""

    def publish(
        self, tenant: str, session_id: str, channel: str, ts: float, values: tuple[float, ...]
    ) -> None:
        """Hand a reading to every subscription of ``(tenant, session_id)``; never waits (an
        implementation that does I/O queues it, bounded, and counts what it drops)."""
        ...

    def subscribe(
        self,
        tenant: str,
        session_id: str,
        channels: Iterable[str] | None = None,
        *,
        max_channels: int = 64,
    ) -> SensorSubscription:
        """Subscribe to ``session_id``'s readings (``channels``: None = all); close the
        returned subscription to end it."""
        ...

    async def close(self) -> None:
        """Close every subscription and release the bus's resources."""
        ...


class LocalSensorBus:
    """The in-process :class:`SensorBus`: subscriptions in a dict, delivered synchronously."""

    def __init__(self) -> None:
        self._subs: dict[tuple[str, str], set[SensorSubscription]] = {}
        self.published = 0

    def publish(
        self, tenant: str, session_id: str, channel: str, ts: float, values: tuple[float, ...]
    ) -> None:
        self.published += 1
        if (tenant, session_id) in self._subs:
            self.deliver(tenant, SensorReading(session_id, channel, ts, values))

    def deliver(self, tenant: str, reading: SensorReading) -> None:
        """Offer ``reading`` to this process's subscriptions of its session (a bus that spans
        processes calls this with what arrives from elsewhere)."""
        for sub in self._subs.get((tenant, reading.session_id), ()):
            sub.offer(reading)

    def watched(self) -> Iterable[tuple[str, str]]:
        """The ``(tenant, session id)`` pairs that have a subscription in this process now."""
        return self._subs.keys()

    def subscribe(
        self,
        tenant: str,
        session_id: str,
        channels: Iterable[str] | None = None,
        *,
        max_channels: int = 64,
    ) -> SensorSubscription:
        sub = SensorSubscription(
            tenant, session_id, channels, max_channels=max_channels, on_close=self._forget
        )
        self._subs.setdefault((tenant, session_id), set()).add(sub)
        return sub

    def _forget(self, sub: SensorSubscription) -> None:
        key = (sub.tenant, sub.session_id)
        subs = self._subs.get(key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[key]

    async def close(self) -> None:
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.close()
        self._subs.clear()

    def stats(self) -> dict[str, int]:
        return {
            "published": self.published,
            "subscriptions": sum(len(s) for s in self._subs.values()),
        }
