"""A session's sensor lane: ``input.sensor`` readings in, ``sensor.subscribe`` subscriptions
out. Every mode has one (the control channel hands it the three sensor message types before
the mode sees anything).

Readings (WS-only devices, DESIGN.md "WS-only uploads"):

- validated: the channel name is 1 to 64 of ``A-Z a-z 0-9 _ . : / -`` starting with a letter or
  digit; values are finite (the protocol refuses NaN and infinities too); a session publishes at
  most ``sensor_max_channels`` channels;
- time-ordered per channel: a reading whose ``ts`` is not after its channel's last accepted
  reading is refused (``invalid_field``), naming both times;
- rate-limited per session: a token bucket of ``sensor_rate_readings_per_s`` with a burst of
  ``sensor_rate_burst_readings`` (refused: ``rate_limited`` with ``retry_after_ms``);
- accepted readings go to persistence in batches (``SensorBatcher``) and to the sensor bus
  (:mod:`tidegate.server.sensorbus`) for subscribers; their upload credit goes back at once.
  A refused reading's credit goes back too (the dispatcher does it).

Subscriptions (``sensor.subscribe``): to a session of the same tenant (any other session id,
and another tenant's, is ``not_found`` alike), at most ``sensor_max_subscriptions`` per
session. Each has a forwarding task that moves pending readings into the session's outbox as
``sensor.reading``, but only while the outbox holds fewer than
``sensor_subscriber_backlog_messages`` events and the session is attached: otherwise the
readings wait in the subscription, latest-wins per channel, and ``dropped`` tells how many a
delivered reading replaced. A slow dashboard sees fresh values, never a backlog, and is never
cut for sensor traffic alone.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tidegate.pipelines.records import SensorBatcher
from tidegate.protocol import ClientMessage
from tidegate.protocol.messages import InputSensor, SensorSubscribe, SensorUnsubscribe, upload_size
from tidegate.protocol.messages import SensorReading as SensorReadingEvent

from .errors import InvalidConfigError, NotFoundError, RateLimitedError
from .limits import TokenBuckets
from .sensorbus import SensorBus, SensorSubscription

if TYPE_CHECKING:
    from .session import Session

SENSOR_TYPES = frozenset({InputSensor.TYPE, SensorSubscribe.TYPE, SensorUnsubscribe.TYPE})
CHANNEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}")
BACKLOG_POLL_S = 0.02  # how often a held-back subscription looks at the outbox again


class SensorLane:
    """See the module docstring. ``lookup`` finds a session of this node by id."""

    def __init__(
        self,
        session: Session,
        bus: SensorBus,
        lookup: Callable[[str], Session | None],
        elsewhere: Callable[[str, str], Awaitable[bool]] | None = None,
    ) -> None:
        s = session.settings
        self.session = session
        self.bus = bus
        self.lookup = lookup
        self.elsewhere = elsewhere  # (session id, tenant): held by another node of the cluster?
        self.batcher = SensorBatcher(
            session.record, max_readings=s.sensor_batch_max_readings, max_age_s=s.sensor_batch_max_s
        )
        self.rate = TokenBuckets(
            "sensor readings",
            rate_per_s=s.sensor_rate_readings_per_s,
            burst=s.sensor_rate_burst_readings,
        )
        self._key = (session.tenant, session.id)
        self._last_ts: dict[str, float] = {}
        self.readings: dict[str, int] = {}
        self.refused = {"rate_limited": 0, "out_of_order": 0, "invalid": 0, "channels": 0}
        self._subs: dict[str, tuple[SensorSubscription, asyncio.Task[Any]]] = {}
        self.held_back = 0  # times a subscription waited for the outbox to drain

    async def handle(self, msg: ClientMessage) -> None:
        kind = type(msg)
        if kind is InputSensor:
            assert isinstance(msg, InputSensor)
            self._reading(msg)
        elif kind is SensorSubscribe:
            assert isinstance(msg, SensorSubscribe)
            await self._subscribe(msg)
        elif kind is SensorUnsubscribe:
            assert isinstance(msg, SensorUnsubscribe)
            self._unsubscribe(msg.session_id)

    # -- readings -------------------------------------------------------------------------------
    def _reading(self, msg: InputSensor) -> None:
        wait_ms = self.rate.take(self._key)
        if wait_ms is not None:
            self.refused["rate_limited"] += 1
            s = self.session.settings
            raise RateLimitedError(
                f"input.sensor: more than {s.sensor_rate_readings_per_s:g} readings per second "
                f"(burst {s.sensor_rate_burst_readings}) on this session "
                f"(sensor_rate_readings_per_s); retry in {wait_ms:.0f} ms",
                retry_after_ms=round(wait_ms, 1),
            )
        channel = msg.channel
        if CHANNEL_RE.fullmatch(channel) is None:
            self.refused["invalid"] += 1
            raise InvalidConfigError(
                f"input.sensor.channel: {channel[:64]!r} is not a channel name; expected 1 to 64 "
                "letters, digits or _ . : / - starting with a letter or digit"
            )
        if not all(math.isfinite(v) for v in msg.values):
            self.refused["invalid"] += 1
            raise InvalidConfigError("input.sensor.values: every value must be a finite number")
        last = self._last_ts.get(channel)
        if last is None:
            limit = self.session.settings.sensor_max_channels
            if len(self._last_ts) >= limit:
                self.refused["channels"] += 1
                raise RateLimitedError(
                    f"input.sensor.channel: this session already publishes {limit} channels "
                    f"(sensor_max_channels); {channel!r} is one too many"
                )
        elif msg.ts <= last:
            self.refused["out_of_order"] += 1
            raise InvalidConfigError(
                f"input.sensor.ts: {msg.ts:g} ms is not after channel {channel!r}'s last "
                f"reading at {last:g} ms; a channel's readings must come in time order"
            )
        self._last_ts[channel] = msg.ts
        self.readings[channel] = self.readings.get(channel, 0) + 1
        self.batcher.add(channel, msg.ts, msg.values)
        self.bus.publish(self.session.tenant, self.session.id, channel, msg.ts, msg.values)
        self.session.return_credit(upload_size(msg))

    # -- subscriptions --------------------------------------------------------------------------
    async def _subscribe(self, msg: SensorSubscribe) -> None:
        s = self.session
        target = self.lookup(msg.session_id)
        # Another tenant's session looks exactly like a missing one: no existence oracle.
        if target is None and self.elsewhere is not None:
            remote = await self.elsewhere(msg.session_id, s.tenant)  # the cluster's directory
        else:
            remote = False
        if not remote and (target is None or target.closed or target.tenant != s.tenant):
            raise NotFoundError(f"sensor.subscribe: no session {msg.session_id!r} to subscribe to")
        old = self._subs.get(msg.session_id)
        if old is None and len(self._subs) >= s.settings.sensor_max_subscriptions:
            raise RateLimitedError(
                f"sensor.subscribe: this session holds {len(self._subs)} subscriptions, its "
                "limit (sensor_max_subscriptions); unsubscribe from one first"
            )
        if old is not None:  # subscribing again replaces the channel list
            self._drop(msg.session_id)
        sub = self.bus.subscribe(
            s.tenant, msg.session_id, msg.channels, max_channels=s.settings.sensor_max_channels
        )
        task = s.spawn(self._forward(sub), f"sensor-sub-{msg.session_id}")
        self._subs[msg.session_id] = (sub, task)

    def _unsubscribe(self, session_id: str) -> None:
        if session_id not in self._subs:
            raise NotFoundError(f"sensor.unsubscribe: no subscription to {session_id!r}")
        self._drop(session_id)

    def _drop(self, session_id: str) -> None:
        sub, task = self._subs.pop(session_id)
        sub.close()
        task.cancel()

    async def _forward(self, sub: SensorSubscription) -> None:
        s = self.session
        backlog = s.settings.sensor_subscriber_backlog_messages
        while not sub.closed:
            await sub.wait()
            while not sub.closed and (len(s.outbox) >= backlog or s.attachment is None):
                self.held_back += 1  # readings coalesce in the subscription meanwhile
                await asyncio.sleep(BACKLOG_POLL_S)
            for r in sub.take():
                s.emit(
                    SensorReadingEvent(
                        session_id=r.session_id,
                        channel=r.channel,
                        ts=r.ts,
                        values=r.values,
                        dropped=r.dropped,
                    )
                )

    # -- the rest -------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "readings": dict(self.readings),
            "refused": dict(self.refused),
            "batches": self.batcher.batches,
            "subscriptions": [sub.stats() for sub, _ in self._subs.values()],
            "held_back": self.held_back,
        }

    def close(self) -> None:
        """Write what is batched; end the subscriptions (their tasks belong to the session)."""
        self.batcher.flush()
        for session_id in list(self._subs):
            self._drop(session_id)
