"""Redis stopped in the middle of a test and started again: the node goes on alone (logged
and counted, also in /metrics), then shares its state again by itself. Uses a redis-server of
its own."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from tests.cluster.redis_server import OwnRedis, eventually
from tests.server.conftest import make_settings, run_server
from tests.server.test_metrics import documented, samples
from tidegate.protocol.client import RefusedError


async def test_redis_stopped_and_started_again(
    tmp_path: Path, own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """While Redis is down, sessions are still admitted (with this node's own quota and rate
    limits), a warning is logged once and the outage counted; when it is back, the heartbeat
    puts the node and every session it holds back in the directory."""
    settings = make_settings(
        tmp_path,
        redis_url=own_redis.url,
        redis_key_prefix="tgout:",
        redis_timeout_s=0.3,
        redis_retry_s=0.1,
        cluster_heartbeat_s=0.2,
        cluster_node_ttl_s=2.0,
        max_sessions_per_tenant=2,
    )
    r = aioredis.Redis.from_url(own_redis.url)
    caplog.set_level(logging.WARNING, logger="tidegate.cluster")
    try:
        async with run_server(settings) as server:
            cluster = server.runtime.cluster
            link = cluster.link
            assert link is not None and link.up
            c1 = await server.client()
            first = (await c1.create_session({"mode": "loopback"})).session_id
            assert (await r.hget(f"tgout:session:{first}", "node")) == cluster.node_id.encode()

            own_redis.stop()
            c2 = await server.client(token=server.token(subject="bob"))
            second = (await c2.create_session({"mode": "loopback"})).session_id
            assert not link.up and link.outages == 1 and link.fallbacks >= 1
            async with await server.client(token=server.token(subject="carol")) as c3:
                with pytest.raises(RefusedError) as e:  # the node's own quota still holds
                    await c3.create_session({"mode": "loopback"})
            assert "its quota on this node" in e.value.error.message
            down = [m for m in caplog.messages if "unreachable" in m]
            assert len(down) == 1 and "works locally" in down[0]

            own_redis.start()  # an empty Redis: everything must be put back

            async def republished() -> bool:
                try:
                    nodes = await r.zrange("tgout:nodes", 0, -1)
                    a = await r.hget(f"tgout:session:{first}", "node")
                    b = await r.hget(f"tgout:session:{second}", "node")
                except (OSError, aioredis.ConnectionError):
                    return False
                me = cluster.node_id.encode()
                return nodes == [me] and a == me and b == me

            await eventually(republished, 30, "the node and its sessions are back in Redis")
            assert link.up and link.recoveries == 1
            assert any("is back" in m for m in caplog.messages)
            assert await r.zcard("tgout:tenant:acme:sessions") == 2
            stats = cluster.stats()
            assert stats["redis"]["outages"] == 1 and stats["directory"]["local_admissions"] >= 1
            admin = {"Authorization": f"Bearer {server.token(scopes=('session', 'admin'))}"}
            async with httpx.AsyncClient(base_url=server.http) as http:
                text = (await http.get("/metrics", headers=admin)).text
            documented(text)
            got = samples(text)
            assert got[("tidegate_redis_up", ())] == 1.0
            assert got[("tidegate_redis_outages_total", ())] == 1.0
            assert got[("tidegate_redis_fallbacks_total", ())] >= 1.0
            assert ("tidegate_cache_lookups_total", (("cache", "tts"), ("result", "miss"))) in got
            assert ("tidegate_sensor_bus_sent_total", ()) in got
            await c1.close()
            await c2.close()
    finally:
        await r.aclose()
