"""The shipped NGINX and coturn configurations, in front of two tidegate nodes, for real.

See conftest.py for the namespace's addresses. The rate-limit flood runs last: it leaves
NGINX's per-address counters full for a moment.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.netns import chromium

from .conftest import MEDIA_PORTS, NODES, PUBLIC, Stack

PAGE_JS = (Path(__file__).parents[1] / "server" / "browser" / "page.js").read_text()
pytestmark = pytest.mark.slow


def _in_range(port: int, ports: str) -> bool:
    low, high = (int(p) for p in ports.split("-"))
    return low <= port <= high


def test_shipped_configs_pass_nginx_t(stack: Stack) -> None:
    """``nginx -t`` accepts the shipped nginx.conf (rendered with the test's addresses)."""
    assert "syntax is ok" in stack.nginx_test and "test is successful" in stack.nginx_test


def test_sessions_stay_on_their_node_through_tls(stack: Stack) -> None:
    """Over TLS (HTTP/2 offered), the control channel works through NGINX; new sessions land
    on both nodes, and each session's resume and HTTP offer reach the node that holds it."""
    nodes = {n: f"{addr}:8080" for n, addr in NODES.items()}
    other = {"a": nodes["b"], "b": nodes["a"]}
    out = stack.probe("sticky", base=stack.base, token=stack.token(), sessions=6, other_node=other)
    assert out["alpn"] == "h2"
    assert out["readyz"][0] == 200 and out["readyz"][1]["status"] == "ready"
    sessions = out["sessions"]
    owners = {s["id"][2:].split(".", 1)[0] for s in sessions}
    assert owners == set(NODES), sessions  # least_conn spread new sessions over both nodes
    for s in sessions:
        node = s["id"][2:].split(".", 1)[0]
        assert s["resumed"], s
        assert s["offer_status"] == 200, s
        # The answer's candidates are NGINX's public address, in the owning node's range.
        assert s["answer_candidates"], s
        for addr, port in s["answer_candidates"]:
            assert addr == PUBLIC and _in_range(int(port), MEDIA_PORTS[node]), s
        # Without NGINX's routing the same resume on the other node finds nothing.
        assert s["elsewhere"] == "not_found", s


def test_a_reconnecting_browser_returns_to_its_node_by_cookie(stack: Stack) -> None:
    """The control handshake sets ``tidegate_route`` (the node's route id); reconnections that
    carry it (and no ?session=) resume on that node, and one naming the other node cannot."""
    first = stack.probe(
        "cookie", base=stack.base, token=stack.token(), resumes=4, wrong_cookie="tidegate_route=x"
    )
    node = first["session_id"][2:].split(".", 1)[0]
    assert first["set_cookie"].startswith(f"tidegate_route={node};"), first
    assert "HttpOnly" in first["set_cookie"] and "Path=/v1/control" in first["set_cookie"]
    assert first["with_cookie"] == [True] * 4, first
    other = next(n for n in NODES if n != node)
    second = stack.probe(
        "cookie",
        base=stack.base,
        token=stack.token(),
        resumes=1,
        wrong_cookie=f"tidegate_route={other}",
    )
    assert second["with_cookie"] == [True], second
    assert second["wrong_cookie"] == "not_found", second


def test_turn_credentials_from_the_server_allocate_through_nginx(stack: Stack) -> None:
    """The TURN credentials in ``session.created`` allocate relays on coturn through NGINX's
    stream block over UDP, TCP and TLS; a password the server did not mint is refused."""
    out = stack.probe("turn", base=stack.base, token=stack.token(), turn_host=PUBLIC)
    allocations = out["allocations"]
    assert {a["url"].split(":")[0] for a in allocations} == {"turn", "turns"}
    assert len(allocations) == 3, allocations
    for a in allocations:
        assert "error" not in a, a
        assert a["username"].endswith(":" + out["session_id"]), a
        assert a["relayed"][0] == "10.250.0.4" and 49160 <= a["relayed"][1] <= 49200, a
    assert "401" in out["forged"], out["forged"]


def test_relay_only_browser_reaches_a_node_through_coturn(stack: Stack, tmp_path: Path) -> None:
    """Chromium with ``iceTransportPolicy: 'relay'`` on the HTTPS origin: its media goes
    through coturn (reached through NGINX) to the node's public media port (forwarded by
    NGINX), and the loopback echo comes back."""
    with chromium(stack.netns, tmp_path / "profile", ["--ignore-certificate-errors"]) as page:
        page.navigate(f"{stack.base}/healthz")
        args = {
            "url": f"wss://{PUBLIC}/v1/control",
            "token": stack.token("browser"),
            "ice_transport_policy": "relay",
        }
        result = page.run(PAGE_JS, args, timeout_s=60)
    # Relay-only: every candidate Chromium gathered is a TURN relay, and the pair the media
    # took sits on its relay (Chromium may call that side "prflx": the node answers checks
    # from the address NGINX forwards them from, so the relay learns a new mapped address).
    assert result["local"] and all(" typ relay " in c for c in result["local"]), result["local"]
    pair = result["pair"]
    assert pair["local"]["relayProtocol"] in ("udp", "tcp", "tls"), pair
    assert pair["remote"]["address"] == PUBLIC, pair
    session_id = result["log"][0].split()[-1]
    node = session_id[2:].split(".", 1)[0]
    assert _in_range(pair["remote"]["port"], MEDIA_PORTS[node]), pair
    coturn = [line for line in stack.log("coturn.log").splitlines() if session_id in line]
    assert any("ALLOCATE processed, success" in line for line in coturn), coturn[-5:]
    assert any("CREATE_PERMISSION processed, success" in line for line in coturn), coturn[-5:]
    rtc, media = result["rtc"], result["media"]
    assert media["state"] == "connected"
    assert rtc["audio_chunks"] > 100, rtc
    assert rtc["frames"] > 10, rtc
    inbound = result["inbound"]
    assert inbound is not None and inbound["packetsReceived"] > 50, inbound
    assert inbound["totalAudioEnergy"] > 0, inbound


def test_connection_limits_refuse_a_flood_of_websockets(stack: Stack) -> None:
    """100 control WebSockets at once from one address, held open: NGINX's ``limit_conn``
    (64 per address) and ``limit_req`` refuse the rest with 429; the accepted ones are real
    control channels."""
    out = stack.probe("ws_flood", base=stack.base, token=stack.token(), connections=100)
    statuses = out["statuses"]
    assert set(statuses) <= {"101", "429"}, statuses
    assert 0 < statuses.get("101", 0) <= 64, statuses
    assert statuses.get("429", 0) >= 36, statuses


def test_rate_limit_refuses_a_flood_of_requests(stack: Stack) -> None:
    """A burst far above ``limit_req`` (20/s, burst 40) from one address: NGINX answers part
    of it 429 and passes the rest to the nodes."""
    out = stack.probe("flood", base=stack.base, requests=400, connections=60)
    statuses = out["statuses"]
    assert statuses.get("429", 0) > 0, statuses
    assert statuses.get("200", 0) > 0, statuses
    assert set(statuses) <= {"200", "429"}, statuses
