"""The client side of the deployment tests, run inside the test's network namespace.

``python -m tests.deploy.probe SCENARIO '{json args}'`` prints one JSON object (the last line
of its output) with what it saw. It speaks to NGINX's public address only, like a client on
the internet would; TLS is verified against the test's own certificate (``SSL_CERT_FILE``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import sys
from typing import Any
from urllib.parse import urlsplit

import httpx
from aioice import turn
from aiortc import RTCConfiguration, RTCPeerConnection
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from tests.support import scaled
from tidegate.protocol.client import Client, RefusedError


def _tls() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])


def _alpn(host: str, port: int) -> str | None:
    """The application protocol NGINX picks when a client offers HTTP/2 and HTTP/1.1."""
    ctx = _tls()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection((host, port), timeout=scaled(10)) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return tls.selected_alpn_protocol()


async def _offer_sdp() -> str:
    """A real WebRTC offer (audio), gathered on this namespace's addresses."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction="sendrecv")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


async def sticky(args: dict[str, Any]) -> dict[str, Any]:
    """New sessions spread over the nodes; each is resumed (control channel, ?session=) and
    offered to (HTTP) through NGINX; resuming on the other node directly is refused."""
    base, token = args["base"], args["token"]
    host = urlsplit(base).hostname or ""
    ws = base.replace("https://", "wss://") + "/v1/control"
    out: dict[str, Any] = {"alpn": _alpn(host, 443), "sessions": []}
    for _ in range(args["sessions"]):
        async with await Client.connect(ws, token) as c:
            created = await c.create_session({"mode": "loopback"})
            pong = await c.ping()
            out["sessions"].append({"id": created.session_id, "ping_rtt_ms": pong.rtt_ms})
    sdp = await _offer_sdp()
    async with httpx.AsyncClient(verify=_tls(), timeout=scaled(20)) as http:
        ready = await http.get(base + "/readyz")
        out["readyz"] = [ready.status_code, ready.json()]
        for s in out["sessions"]:
            async with await Client.connect(f"{ws}?session={s['id']}", token) as c:
                resumed = await c.create_session(session_id=s["id"])
                s["resumed"] = resumed.resumed and resumed.session_id == s["id"]
            r = await http.post(
                f"{base}/v1/sessions/{s['id']}/offer",
                json={"type": "offer", "sdp": sdp},
                headers={"Authorization": f"Bearer {token}"},
            )
            s["offer_status"] = r.status_code
            answer = r.json()
            s["answer_candidates"] = [
                line.split()[4:6]
                for line in answer.get("sdp", "").splitlines()
                if line.startswith("a=candidate:")
            ]
            # The same resume sent straight to the node that does not hold the session.
            other = args["other_node"][s["id"][2:].split(".", 1)[0]]
            async with await Client.connect(f"ws://{other}/v1/control", token) as c:
                try:
                    await c.create_session(session_id=s["id"])
                    s["elsewhere"] = "resumed"
                except RefusedError as e:
                    s["elsewhere"] = e.error.code
    return out


async def turn_allocations(args: dict[str, Any]) -> dict[str, Any]:
    """TURN allocations over every URL the server lists, with the credentials it minted."""
    ws = args["base"].replace("https://", "wss://") + "/v1/control"
    async with await Client.connect(ws, args["token"]) as c:
        created = await c.create_session({"mode": "loopback"})
        await c.close_session()
    out: dict[str, Any] = {"session_id": created.session_id, "allocations": []}
    for server in created.ice_servers:
        for url in server.urls:
            scheme, rest = url.split(":", 1)
            hostport, _, query = rest.partition("?")
            host, port = hostport.rsplit(":", 1)
            transport = query.partition("=")[2] or "udp"
            tls = _tls() if scheme == "turns" else None
            entry: dict[str, Any] = {"url": url, "username": server.username}
            try:
                t, _ = await turn.create_turn_endpoint(
                    asyncio.DatagramProtocol,
                    server_addr=(host, int(port)),
                    username=server.username,
                    password=server.credential,
                    transport=transport,
                    ssl=tls,
                )
                entry["relayed"] = list(t.get_extra_info("sockname"))
                t.close()
            except Exception as e:  # reported, and asserted on by the test
                entry["error"] = f"{type(e).__name__}: {e}"
            out["allocations"].append(entry)
        if server.username:
            try:  # the same URL with a password that was not minted by the server
                t, _ = await turn.create_turn_endpoint(
                    asyncio.DatagramProtocol,
                    server_addr=(args["turn_host"], 3478),
                    username=server.username,
                    password="not-minted",
                    transport="udp",
                )
                t.close()
                out["forged"] = "allocated"
            except Exception as e:
                out["forged"] = f"{type(e).__name__}: {e}"
    return out


async def flood(args: dict[str, Any]) -> dict[str, Any]:
    """Many requests at once from one address: NGINX's limits answer some of them 429."""
    limits = httpx.Limits(max_connections=args["connections"])
    statuses: dict[str, int] = {}
    async with httpx.AsyncClient(verify=_tls(), timeout=scaled(20), limits=limits) as http:

        async def one() -> None:
            r = await http.get(args["base"] + "/healthz")
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1

        await asyncio.gather(*(one() for _ in range(args["requests"])))
    return {"statuses": statuses}


async def _create(
    ws_url: str, token: str, cookie: str | None, body: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """One control connection as a browser makes it (JSON encoding, cookie if it has one):
    the answer to ``session.create`` and the cookie the handshake set."""
    headers = {"Authorization": f"Bearer {token}"}
    if cookie:
        headers["Cookie"] = cookie
    async with ws_connect(
        ws_url,
        ssl=_tls(),
        subprotocols=[Subprotocol("tidegate.v1.json")],
        additional_headers=headers,
    ) as ws:
        assert ws.response is not None
        set_cookie = ws.response.headers.get("Set-Cookie")
        await ws.send(json.dumps({"type": "session.create", "id": "c1", **body}))
        while True:
            msg = json.loads(await ws.recv())
            if msg["type"] in ("session.created", "error"):
                return msg, set_cookie


async def cookie(args: dict[str, Any]) -> dict[str, Any]:
    """A browser-like client that resumes without ?session=: the route cookie set by the node
    brings each reconnection back to it; a cookie naming the other node does not."""
    ws_url = args["base"].replace("https://", "wss://") + "/v1/control"
    created, set_cookie = await _create(
        ws_url, args["token"], None, {"config": {"mode": "loopback"}}
    )
    out: dict[str, Any] = {"session_id": created.get("session_id"), "set_cookie": set_cookie}
    jar = (set_cookie or "").split(";", 1)[0]
    resume = {"session_id": created.get("session_id")}
    out["with_cookie"] = []
    for _ in range(args["resumes"]):
        msg, _ = await _create(ws_url, args["token"], jar, resume)
        out["with_cookie"].append(msg.get("resumed", msg.get("code")))
    msg, _ = await _create(ws_url, args["token"], args["wrong_cookie"], resume)
    out["wrong_cookie"] = msg.get("resumed", msg.get("code"))
    return out


async def ws_flood(args: dict[str, Any]) -> dict[str, Any]:
    """Many control WebSockets opened at once from one address and held open until every
    attempt has its answer: past NGINX's limits the handshakes are refused (429)."""
    ws_url = args["base"].replace("https://", "wss://") + "/v1/control"
    headers = {"Authorization": f"Bearer {args['token']}"}
    held: list[ClientConnection] = []
    statuses: dict[str, int] = {}

    async def one() -> None:
        try:
            ws = await ws_connect(
                ws_url,
                ssl=_tls(),
                subprotocols=[Subprotocol("tidegate.v1.json")],
                additional_headers=headers,
                open_timeout=30,
            )
        except InvalidStatus as e:
            status = str(e.response.status_code)
        else:
            held.append(ws)
            status = "101"
        statuses[status] = statuses.get(status, 0) + 1

    try:
        await asyncio.gather(*(one() for _ in range(args["connections"])))
    finally:
        await asyncio.gather(*(ws.close() for ws in held))
    return {"statuses": statuses}


async def ready(args: dict[str, Any]) -> dict[str, Any]:
    """Poll each URL's /readyz until every one answers 200 (or the time is up)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args["timeout_s"]
    last: dict[str, Any] = {}
    async with httpx.AsyncClient(verify=_tls(), timeout=scaled(5)) as http:
        while loop.time() < deadline:
            for url in args["urls"]:
                try:
                    r = await http.get(url + "/readyz")
                    last[url] = r.status_code
                except httpx.TransportError as e:
                    last[url] = type(e).__name__
            if all(v == 200 for v in last.values()):
                break
            await asyncio.sleep(0.5)
    return {"status": last}


async def records(args: dict[str, Any]) -> dict[str, Any]:
    """The rows of ``args["ids"]`` in the sessions table of ``args["db"]``, polled until all
    are there (the record writer commits in batches)."""
    from tests.store.helpers import query

    loop = asyncio.get_running_loop()
    deadline = loop.time() + args["timeout_s"]
    while True:
        rows = await query(
            args["db"], "SELECT id, node_id, status FROM sessions ORDER BY created_at_ms"
        )
        if {r["id"] for r in rows} >= set(args["ids"]) or loop.time() > deadline:
            return {"sessions": rows}
        await asyncio.sleep(0.5)


SCENARIOS = {
    "ready": ready,
    "records": records,
    "sticky": sticky,
    "cookie": cookie,
    "turn": turn_allocations,
    "flood": flood,
    "ws_flood": ws_flood,
}

if __name__ == "__main__":
    scenario, raw = sys.argv[1], sys.argv[2]
    result = asyncio.run(SCENARIOS[scenario](json.loads(raw)))
    print(json.dumps(result))
