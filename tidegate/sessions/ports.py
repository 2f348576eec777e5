"""The ports of the session runtime: what ``cluster`` (Redis) and ``store`` implement, and
this package implements in process. ``cluster`` and ``store`` import this package, never the
reverse.

- the sensor bus: :class:`tidegate.sessions.sensorbus.SensorBus` (local:
  ``LocalSensorBus``; Redis: ``tidegate.cluster.sensorbus.RedisSensorBus``);
- shared rate limits: :class:`tidegate.sessions.limits.SharedBuckets` (Redis:
  ``tidegate.cluster.ratelimit.RedisBuckets``);
- the recorder: :class:`tidegate.pipelines.records.Recorder` (``tidegate.store.writer``);
- the result caches: :class:`tidegate.pipelines.port.ReplyCaches`
  (``tidegate.cluster.caches.ResultCaches``);
- the directory: :class:`tidegate.sessions.session.Directory` (``tidegate.cluster.Cluster``).
"""

from __future__ import annotations

from tidegate.pipelines.port import ReplyCaches
from tidegate.pipelines.records import Recorder

from .errors import SharedStateDownError
from .limits import SharedBuckets
from .sensorbus import SensorBus
from .session import Directory

__all__ = [
    "Directory",
    "Recorder",
    "ReplyCaches",
    "SensorBus",
    "SharedBuckets",
    "SharedStateDownError",
]
