"""Cluster settings: the node's name, the heartbeat and TTL check, and one node without Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.server.conftest import make_settings, run_server
from tests.support import scaled
from tidegate.protocol.messages import Metrics
from tidegate.server.errors import ConfigError
from tidegate.server.runtime import Runtime
from tidegate.server.sensorbus import LocalSensorBus
from tidegate.server.settings import Settings


def test_node_id_is_the_setting_then_the_route_id_then_the_writers(tmp_path: Path) -> None:
    """node_id names the node; unset, the route id NGINX routes on; else the writer's id."""
    assert Runtime(make_settings(tmp_path, node_id="n1", route_id="a")).cluster.node_id == "n1"
    assert Runtime(make_settings(tmp_path, route_id="a")).cluster.node_id == "a"
    rt = Runtime(make_settings(tmp_path))
    assert rt.cluster.node_id == rt.recorder.node_id


def test_node_ttl_must_exceed_the_heartbeat() -> None:
    """A TTL at or under the heartbeat would expire live nodes: refused, naming both."""
    env = {"TIDEGATE_CLUSTER_HEARTBEAT_S": "5", "TIDEGATE_CLUSTER_NODE_TTL_S": "5"}
    with pytest.raises(ConfigError, match=r"cluster_node_ttl_s .* must exceed cluster_heartbeat_s"):
        Settings.load(env)


async def test_one_node_needs_no_redis(tmp_path: Path) -> None:
    """Without redis_url nothing is shared: no link, the in-process sensor bus, and the
    cluster's node list is this node."""
    rt = Runtime(make_settings(tmp_path))
    c = rt.cluster
    assert c.link is None and not c.shared and isinstance(rt.sensor_bus, LocalSensorBus)
    assert [n["node_id"] for n in await c.nodes()] == [c.node_id]
    assert c.stats()["caches"]["tts"]["shared"] is False


async def test_metrics_events_carry_the_cache_counts(tmp_path: Path) -> None:
    """Every session's metrics event has the node's result cache counts (hits, misses)."""
    settings = make_settings(tmp_path, metrics_interval_s=0.05)
    async with run_server(settings) as server, await server.client() as c:
        await c.create_session({"mode": "loopback"})
        event = await c.wait_for(Metrics, timeout_s=scaled(10))
    caches = event.stats["caches"]
    assert caches["enabled"] is True
    for name in ("tts", "llm"):
        assert {"hits", "misses", "local_hits", "shared_hits", "bytes"} <= set(caches[name])
