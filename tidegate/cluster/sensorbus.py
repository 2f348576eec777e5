"""The sensor bus over Redis pub/sub: a subscriber on one node receives the readings a session
publishes on another (:class:`~tidegate.sessions.sensorbus.SensorBus`: the in-process bus keeps
this node's subscriptions; this one carries readings between nodes).

- **Channels.** A session's readings go to ``sensor:<tenant>:<session id>``. A subscription
  listens on its *own* tenant's channel for the session it names, so a tenant can never
  receive another tenant's readings, whatever ids it guesses.
- **Publishing** never waits: the reading is delivered to this node's subscribers at once (the
  in-process bus), and queued for Redis in a bounded buffer (``cluster_sensor_backlog_readings``,
  policy ``drop_oldest``, counted as ``publish_dropped``). One publisher task sends what is
  queued in one pipeline, in order, on one connection, so a channel's readings keep their order.
- **Receiving.** One listener task per node holds the pub/sub connection, subscribed to the
  channels that this node's subscriptions need (and no others), and hands each reading to
  them through :meth:`SensorSubscription.offer`: latest wins per channel for a slow subscriber,
  exactly as on one node. A node skips the readings it published itself (its subscribers had
  them from the in-process bus).
- **Redis away.** Publishing drops what is queued (counted) and local delivery goes on; the
  listener waits for the link to come back, then subscribes again to every channel it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import orjson
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from tidegate.protocol.flow import BoundedBuffer, Overflow
from tidegate.sessions.sensorbus import LocalSensorBus, SensorReading, SensorSubscription

from .link import RedisDownError, RedisLink

log = logging.getLogger(__name__)

LISTEN_POLL_S = 0.05  # the listener applies new (un)subscriptions at least this often
PUBLISH_BATCH_ITEMS = 256  # readings sent in one pipeline, at most


class RedisSensorBus:
    """See the module docstring."""

    def __init__(self, link: RedisLink, node_id: str, *, backlog_readings: int = 1024) -> None:
        self.link = link
        self.node_id = node_id
        self.local = LocalSensorBus()  # this node's subscriptions
        self._out: BoundedBuffer[tuple[str, bytes]] = BoundedBuffer(
            "cluster.sensor_publish", max_items=backlog_readings, policy=Overflow.DROP_OLDEST
        )
        self._out_ready = asyncio.Event()
        self._subscribed: dict[str, str] = {}  # redis channel -> tenant, as last subscribed
        self._pubsub: PubSub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.sent = 0
        self.publish_dropped = 0
        self.received = 0
        self.received_own = 0
        self.bad = 0
        self.resubscribes = 0
        link.on_up(self._resubscribe)

    @property
    def published(self) -> int:
        return self.local.published

    def _channel(self, tenant: str, session_id: str) -> str:
        return self.link.key("sensor", tenant, session_id)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._publisher(), name="sensor-bus-publisher"))
        self._tasks.append(loop.create_task(self._listener(), name="sensor-bus-listener"))

    # -- SensorBus -------------------------------------------------------------------------------
    def publish(
        self, tenant: str, session_id: str, channel: str, ts: float, values: tuple[float, ...]
    ) -> None:
        self.local.publish(tenant, session_id, channel, ts, values)
        if not self.link.up:
            self.publish_dropped += 1
            return
        payload = orjson.dumps(
            {"n": self.node_id, "s": session_id, "c": channel, "t": ts, "v": list(values)}
        )
        before = self._out.stats.dropped
        self._out.push((self._channel(tenant, session_id), payload))
        self.publish_dropped += self._out.stats.dropped - before
        self._out_ready.set()

    def subscribe(
        self,
        tenant: str,
        session_id: str,
        channels: Iterable[str] | None = None,
        *,
        max_channels: int = 64,
    ) -> SensorSubscription:
        return self.local.subscribe(tenant, session_id, channels, max_channels=max_channels)

    async def close(self) -> None:
        await self.local.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self._drop_pubsub()

    # -- publishing -------------------------------------------------------------------------------
    async def _publisher(self) -> None:
        while True:
            if not self._out:
                self._out_ready.clear()
                await self._out_ready.wait()
                continue
            batch: list[tuple[str, bytes]] = []
            while self._out and len(batch) < PUBLISH_BATCH_ITEMS:
                batch.append(self._out.pop())

            async def send(r: Any, batch: list[tuple[str, bytes]] = batch) -> None:
                async with r.pipeline(transaction=False) as p:
                    for channel, payload in batch:
                        p.publish(channel, payload)
                    await p.execute()

            try:
                await self.link.call(send)
                self.sent += len(batch)
            except RedisDownError:
                self.publish_dropped += len(batch)

    # -- receiving --------------------------------------------------------------------------------
    async def _listener(self) -> None:
        while True:
            if not self.link.up:
                await asyncio.sleep(self.link.retry_s)
                continue
            try:
                await self._sync_subscriptions()
                pubsub = self._pubsub
                if pubsub is None or not self._subscribed:
                    await asyncio.sleep(LISTEN_POLL_S)
                    continue
                msg = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=LISTEN_POLL_S
                )
            except (RedisError, OSError) as e:
                self.link.failed(e)
                await self._drop_pubsub()
                continue
            if msg is not None and msg.get("type") == "message":
                self._deliver(msg)
                # Let the subscribers' forwarders run before the next buffered message, or a
                # burst from Redis would coalesce for subscribers that are not slow at all.
                await asyncio.sleep(0)

    async def _sync_subscriptions(self) -> None:
        """Subscribe to the channels wanted now, unsubscribe from the others."""
        wanted = {self._channel(t, s): t for t, s in self.local.watched()}
        if wanted.keys() == self._subscribed.keys():
            return
        if self._pubsub is None:
            self._pubsub = self.link.client.pubsub()
        new = wanted.keys() - self._subscribed.keys()
        old = self._subscribed.keys() - wanted.keys()
        if new:
            await self._pubsub.subscribe(*new)
        if old:
            await self._pubsub.unsubscribe(*old)
        self._subscribed = wanted

    async def _resubscribe(self) -> None:
        """Redis is back: the listener subscribes again to everything on a new connection."""
        self.resubscribes += 1
        await self._drop_pubsub()

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._subscribed = {}
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                # untyped before redis 8.2, typed since: the ignore is for the older ones
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    def _deliver(self, msg: dict[str, Any]) -> None:
        channel = msg.get("channel")
        key = channel.decode() if isinstance(channel, bytes) else str(channel)
        tenant = self._subscribed.get(key)
        try:
            doc = orjson.loads(msg["data"])
            node = doc["n"]
            reading = SensorReading(
                str(doc["s"]), str(doc["c"]), float(doc["t"]), tuple(float(v) for v in doc["v"])
            )
        except (ValueError, KeyError, TypeError):
            self.bad += 1
            return
        if node == self.node_id:
            self.received_own += 1  # delivered by the in-process path already
            return
        if tenant is None or key != self._channel(tenant, reading.session_id):
            return  # unsubscribed meanwhile (or not what the channel carries)
        self.received += 1
        self.local.deliver(tenant, reading)

    def stats(self) -> dict[str, Any]:
        return {
            **self.local.stats(),
            "shared": True,
            "sent": self.sent,
            "publish_queue": self._out.stats.as_dict(),
            "publish_dropped": self.publish_dropped,
            "received": self.received,
            "received_own": self.received_own,
            "bad": self.bad,
            "redis_channels": len(self._subscribed),
            "resubscribes": self.resubscribes,
        }
