"""Prometheus families of the cluster part (docs/metrics.md, "Cluster"): result caches, the
Redis link and the sensor bus, read at scrape time from the counters they keep."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .sensorbus import RedisSensorBus

if TYPE_CHECKING:
    from . import Cluster


class ClusterCollector(Collector):
    """The cluster's families for the server's registry."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def collect(self) -> Iterator[Metric]:
        c = self.cluster
        lookups = CounterMetricFamily(
            "tidegate_cache_lookups",
            "Result cache lookups, by cache (tts, llm) and result: hit_local, hit_shared "
            "(from Redis), miss.",
            labels=["cache", "result"],
        )
        size = GaugeMetricFamily(
            "tidegate_cache_bytes", "Bytes held by the in-process result cache.", labels=["cache"]
        )
        evicted = CounterMetricFamily(
            "tidegate_cache_evictions",
            "Entries dropped from the in-process result cache (least recently used).",
            labels=["cache"],
        )
        for name, cache in (("tts", c.caches.tts), ("llm", c.caches.llm)):
            n = cache.counts
            lookups.add_metric([name, "hit_local"], n["local_hits"])
            lookups.add_metric([name, "hit_shared"], n["shared_hits"])
            lookups.add_metric([name, "miss"], n["misses"])
            size.add_metric([name], cache.local.bytes)
            evicted.add_metric([name], cache.local.evicted)
        yield lookups
        yield size
        yield evicted
        link = c.link
        yield GaugeMetricFamily(
            "tidegate_redis_up",
            "1 while Redis answers (0: this node works locally); 0 without redis_url too.",
            value=1 if link is not None and link.up else 0,
        )
        yield CounterMetricFamily(
            "tidegate_redis_outages",
            "Times Redis became unreachable (each logged once).",
            value=link.outages if link is not None else 0,
        )
        yield CounterMetricFamily(
            "tidegate_redis_fallbacks",
            "Shared operations done locally instead because Redis was unreachable.",
            value=link.fallbacks if link is not None else 0,
        )
        bus = c.sensor_bus
        if isinstance(bus, RedisSensorBus):
            yield CounterMetricFamily(
                "tidegate_sensor_bus_sent",
                "Sensor readings published to Redis for other nodes.",
                value=bus.sent,
            )
            yield CounterMetricFamily(
                "tidegate_sensor_bus_received",
                "Sensor readings received from other nodes through Redis.",
                value=bus.received,
            )
            yield CounterMetricFamily(
                "tidegate_sensor_bus_dropped",
                "Sensor readings not published to Redis (queue full or Redis away).",
                value=bus.publish_dropped,
            )
