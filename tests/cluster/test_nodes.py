"""Two server processes sharing one real Redis: limits, quotas and the session directory span
them, and a killed node's sessions expire from the directory.

The two nodes are shared by the tests of this module (starting a node takes seconds); each
test uses tenants and subjects of its own, so that their counts do not meet.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import httpx
import pytest

from tests.cluster.nodes import Node
from tests.cluster.redis_server import eventually
from tests.server.conftest import make_settings, run_server
from tests.support import scaled
from tidegate.protocol.client import RefusedError
from tidegate.protocol.messages import InputSensor, SensorReading, SensorSubscribe

pytestmark = pytest.mark.slow

KEY = secrets.token_hex(32)


class NodeSettings(TypedDict):
    """The nodes' settings (Node passes them on as environment variables)."""

    rate_burst_sessions: str
    rate_sessions_per_s: str
    max_sessions_per_tenant: str


SETTINGS: NodeSettings = {
    "rate_burst_sessions": "2",
    "rate_sessions_per_s": "0.01",
    "max_sessions_per_tenant": "3",
}
OFFER = {"type": "offer", "sdp": "v=0"}


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, module_prefix: str
) -> Iterator[tuple[Node, Node]]:
    folder = tmp_path_factory.mktemp("nodes")
    a = Node(folder, "na", KEY, redis_url, module_prefix, **SETTINGS)
    b = Node(folder, "nb", KEY, redis_url, module_prefix, **SETTINGS)
    try:
        yield a.wait_ready(), b.wait_ready()
    finally:
        a.stop()
        b.stop()


async def test_session_rate_limit_holds_across_nodes(pair: tuple[Node, Node]) -> None:
    """A subject's new-session burst (2) is spent across both nodes: the third session is
    refused rate_limited with the one-node error; another subject is not affected."""
    a, b = pair
    token = a.token(tenant="rate", subject="alice")
    for n in (a, b):
        async with await n.client(token=token) as c:
            await c.create_session({"mode": "loopback"})
            await c.close_session()
    async with await a.client(token=token) as c:
        with pytest.raises(RefusedError) as e:
            await c.create_session({"mode": "loopback"})
    err = e.value.error
    assert err.code == "rate_limited" and "new sessions" in err.message
    assert err.retry_after_ms is not None and err.retry_after_ms > 1000
    async with await b.client(token=b.token(tenant="rate", subject="carol")) as c:
        await c.create_session({"mode": "loopback"})
    stats = (await b.cluster())["node"]
    assert stats["shared"] and stats["redis"]["up"] and stats["directory"]["refused"] == 0


async def test_tenant_quota_counts_both_nodes(pair: tuple[Node, Node]) -> None:
    """max_sessions_per_tenant (3) counts the tenant's sessions on every node; closing one
    frees a place on either node; another tenant has its own quota."""
    a, b = pair
    held = []
    for i, n in enumerate((a, b, a)):
        c = await n.client(token=n.token(tenant="quota", subject=f"s{i}"))
        await c.create_session({"mode": "loopback"})
        held.append(c)
    async with await b.client(token=b.token(tenant="quota", subject="s3")) as c:
        with pytest.raises(RefusedError) as e:
            await c.create_session({"mode": "loopback"})
    assert e.value.error.code == "rate_limited"
    assert "tenant holds 3 sessions, its quota across the cluster" in e.value.error.message
    async with await a.client(token=a.token(tenant="quota-other")) as c:
        await c.create_session({"mode": "loopback"})
    await held[0].close_session()
    async with await b.client(token=b.token(tenant="quota", subject="s4")) as c:
        await c.create_session({"mode": "loopback"})
    for c in held:
        await c.close()


async def test_requests_about_a_session_on_another_node_name_it(pair: tuple[Node, Node]) -> None:
    """An offer or DELETE for a session held by node A, sent to node B, gets 421 naming A
    (body and X-Tidegate-Node); a resume on B says which node holds it; another tenant gets
    the plain 404 (no existence oracle)."""
    a, b = pair
    async with await a.client(token=a.token(tenant="route")) as c:
        sid = (await c.create_session({"mode": "loopback"})).session_id
        auth = b.auth(tenant="route")
        async with httpx.AsyncClient(base_url=b.http) as http:
            r = await http.post(f"/v1/sessions/{sid}/offer", json=OFFER, headers=auth)
            assert r.status_code == 421, r.text
            assert r.headers["X-Tidegate-Node"] == "na"
            body = r.json()
            assert body["node"] == "na" and body["node_url"] == a.http
            assert body["code"] == "not_found" and "held by node na" in body["message"]
            r = await http.delete(f"/v1/sessions/{sid}", headers=auth)
            assert r.status_code == 421, r.text
            assert r.headers["X-Tidegate-Node"] == "na" and r.json()["error"]["node"] == "na"
            other = b.auth(tenant="route-other")
            r = await http.post(f"/v1/sessions/{sid}/offer", json=OFFER, headers=other)
            assert r.status_code == 404 and "X-Tidegate-Node" not in r.headers
        async with await b.client(token=b.token(tenant="route")) as elsewhere:
            with pytest.raises(RefusedError) as e:
                await elsewhere.create_session(session_id=sid)
        assert e.value.error.code == "not_found" and "held by node na" in e.value.error.message


async def test_killed_nodes_sessions_expire_from_the_directory(
    tmp_path: Path, pair: tuple[Node, Node], redis_url: str, module_prefix: str
) -> None:
    """SIGKILL a node: within cluster_node_ttl_s its sessions leave the directory (the other
    node no longer names it) and the tenant's quota they held is free again."""
    _, b = pair
    doomed = Node(tmp_path, "nc", KEY, redis_url, module_prefix, **SETTINGS).wait_ready()
    try:
        held = []
        for i in range(3):
            c = await doomed.client(token=doomed.token(tenant="kill", subject=f"k{i}"))
            held.append((await c.create_session({"mode": "loopback"})).session_id)

        async def published() -> bool:  # the next heartbeat publishes the node's load
            nodes = {n["node_id"]: n for n in (await b.cluster())["nodes"]}
            return {"na", "nb"} <= set(nodes) and nodes.get("nc", {}).get("sessions") == "3"

        await eventually(published, 30, "node nc's load is published")
        token = b.token(tenant="kill", subject="k9")
        async with await b.client(token=token) as c2:
            with pytest.raises(RefusedError):
                await c2.create_session({"mode": "loopback"})
        doomed.kill()
        auth = b.auth(tenant="kill")

        async def forgotten() -> bool:
            async with httpx.AsyncClient(base_url=b.http) as http:
                r = await http.post(f"/v1/sessions/{held[0]}/offer", json=OFFER, headers=auth)
            return r.status_code == 404

        await eventually(forgotten, 30, "node nc's session expires from the directory")
        live = {n["node_id"] for n in (await b.cluster())["nodes"]}
        assert "nc" not in live
        async with await b.client(token=token) as c3:
            await c3.create_session({"mode": "loopback"})
    finally:
        doomed.stop()


async def test_sensor_readings_cross_nodes_in_order_and_stay_in_their_tenant(
    pair: tuple[Node, Node],
) -> None:
    """A subscriber on node B receives what a session on node A publishes, each channel in
    order; another tenant's sensor.subscribe to that session is not_found."""
    a, b = pair
    kiosk = await a.client(token=a.token(tenant="sense", subject="kiosk"))
    pub = (await kiosk.create_session({"mode": "loopback"})).session_id
    dash = await b.client(token=b.token(tenant="sense", subject="dash"))
    await dash.create_session({"mode": "loopback"})
    eve = await b.client(token=b.token(tenant="sense-other", subject="eve"))
    await eve.create_session({"mode": "loopback"})
    with pytest.raises(RefusedError) as e:
        await eve.request(SensorSubscribe(id="e1", session_id=pub))
    assert e.value.error.code == "not_found"
    await dash.send(SensorSubscribe(session_id=pub, channels=("temp",)))
    ts = 0.0

    async def publish(n: int) -> None:
        nonlocal ts
        for _ in range(n):
            ts += 1.0
            await kiosk.send(InputSensor(channel="temp", ts=ts, values=(ts, -ts)))
            await kiosk.send(InputSensor(channel="hum", ts=ts, values=(1.0,)))

    first = None
    for _ in range(100):  # the subscription reaches Redis within a poll of node B's listener
        await publish(2)
        with contextlib.suppress(TimeoutError):
            first = await dash.wait_for(SensorReading, timeout_s=scaled(0.3))
            break
    assert first is not None and first.session_id == pub and first.channel == "temp"
    assert first.values == (first.ts, -first.ts)
    await publish(60)
    seen = [first.ts]
    while seen[-1] < ts:
        reading = await dash.wait_for(SensorReading, timeout_s=scaled(10))
        assert reading.channel == "temp" and reading.values == (reading.ts, -reading.ts)
        seen.append(reading.ts)
    assert seen == sorted(set(seen))  # in order, none twice
    bus = (await b.cluster())["node"]["sensor_bus"]
    assert bus["received"] >= len(seen) and bus["redis_channels"] >= 1
    for c in (kiosk, dash, eve):
        await c.close()


async def test_a_full_node_names_a_node_with_room(
    tmp_path: Path, pair: tuple[Node, Node], redis_url: str, module_prefix: str
) -> None:
    """A node at max_sessions refuses with overloaded and a retry hint, naming a node of the
    cluster that has room (from the directory's published load)."""
    settings = make_settings(
        tmp_path,
        jwt_secret=KEY,
        redis_url=redis_url,
        redis_key_prefix=module_prefix,
        node_id="nfull",
        max_sessions=1,
        cluster_heartbeat_s=0.2,
        cluster_node_ttl_s=1.5,
    )
    async with run_server(settings) as full:
        token = full.token(tenant="full")
        async with await full.client(token=token) as c1, await full.client(token=token) as c2:
            await c1.create_session({"mode": "loopback"})
            with pytest.raises(RefusedError) as e:
                await c2.create_session({"mode": "loopback"})
    err = e.value.error
    assert err.code == "overloaded" and err.retry_after_ms is not None
    assert "this node holds 1 sessions, its limit; node n" in err.message
    assert "has room" in err.message and "nfull" not in err.message.split(";")[1]
