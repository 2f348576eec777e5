"""ICE configuration: which addresses and UDP ports we gather on, which servers we use, and
short-lived TURN credentials for clients.

aioice (under aiortc) gathers host candidates on every interface but loopback, on random ports,
and aiortc falls back to a public STUN server when given no list. Neither is acceptable for a
server: :class:`IcePolicy` states the addresses (``hosts``: bind here, and advertise this, for
a 1:1 NAT), the UDP port range, and the STUN/TURN servers (none by default), and
:func:`apply_ice_policy` makes a peer connection's ICE agents gather exactly that.

TURN: coturn's shared-secret ("REST API") scheme. The username is ``<expiry unix time>:<user>``
and the password ``base64(HMAC-SHA1(secret, username))``; coturn checks both with the same
secret (``use-auth-secret``, ``static-auth-secret``) and refuses the credential once expired.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import ipaddress
import random
import socket
from dataclasses import dataclass, field
from typing import Any

from aioice import Candidate
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import Connection, StunProtocol, get_host_addresses
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from ._aiortc import ice_connections, replace_gathering
from .errors import IceConfigError

ALL_INTERFACES = "*"
UDP_RCVBUF_BYTES = 1_048_576


@dataclass(frozen=True, slots=True)
class HostAddress:
    """Gather a host candidate bound to ``bind`` and advertised as ``advertise``."""

    advertise: str
    bind: str


@dataclass(frozen=True, slots=True)
class IcePolicy:
    """Where and how our ICE agent gathers. ``hosts`` empty: every interface but loopback
    (aioice's own choice); ``ports`` None: ephemeral ports; ``rng`` picks where in the range
    a peer starts looking for a free port."""

    hosts: tuple[HostAddress, ...] = (HostAddress("127.0.0.1", "127.0.0.1"),)
    ports: tuple[int, int] | None = None
    servers: tuple[str, ...] = ()
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    @classmethod
    def from_settings(
        cls, hosts: tuple[str, ...], ports: str, servers: tuple[str, ...]
    ) -> IcePolicy:
        return cls(parse_hosts(hosts), parse_port_range(ports), parse_servers(servers))

    def configuration(self) -> RTCConfiguration:
        """An RTCConfiguration with exactly our servers (never aiortc's public default)."""
        return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in self.servers])


def parse_hosts(values: tuple[str, ...] | list[str]) -> tuple[HostAddress, ...]:
    """``ADDR`` (bind and advertise it), ``ADVERTISED=BIND`` (a 1:1 NAT: bind to the private
    or wildcard address, advertise the public one), or ``*`` alone (every interface)."""
    values = [v.strip() for v in values if v.strip()]
    if values == [ALL_INTERFACES]:
        return ()
    if not values:
        raise IceConfigError(
            "ice_hosts: name at least one address (e.g. 127.0.0.1), or '*' for every interface"
        )
    out = []
    for value in values:
        advertise, _, bind = value.partition("=")
        bind = bind or advertise
        for what, addr in (("advertised", advertise), ("bind", bind)):
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise IceConfigError(
                    f"ice_hosts: {value!r}: the {what} address {addr!r} is not an IP address; "
                    "expected ADDR or ADVERTISED=BIND"
                ) from None
        out.append(HostAddress(advertise, bind))
    return tuple(out)


def parse_port_range(text: str) -> tuple[int, int] | None:
    """``LOW-HIGH`` (inclusive) or empty for ephemeral ports."""
    text = text.strip()
    if not text:
        return None
    lo, sep, hi = text.partition("-")
    try:
        low, high = int(lo), int(hi if sep else lo)
    except ValueError:
        raise IceConfigError(
            f"ice_ports: expected LOW-HIGH (e.g. 40000-40100), got {text!r}"
        ) from None
    if not 1 <= low <= high <= 65535:
        raise IceConfigError(f"ice_ports: expected 1 <= LOW <= HIGH <= 65535, got {text!r}")
    return low, high


def parse_servers(urls: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    out = []
    for url in urls:
        url = url.strip()
        if not url:
            continue
        if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
            raise IceConfigError(
                f"ice_servers: {url!r} is not a stun:, stuns:, turn: or turns: URL"
            )
        out.append(url)
    return tuple(out)


def turn_credentials(secret: str, *, user: str, ttl_s: float, now_s: float) -> tuple[str, str]:
    """(username, password) for coturn's shared-secret scheme, valid for ``ttl_s``."""
    username = f"{int(now_s + ttl_s)}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


# -- gathering --------------------------------------------------------------------------------


def apply_ice_policy(pc: RTCPeerConnection, policy: IcePolicy) -> None:
    """Make every ICE agent of ``pc`` gather as ``policy`` says. Call before
    ``setLocalDescription`` (which gathers), after the transceivers exist."""
    for conn in ice_connections(pc):
        replace_gathering(conn, functools.partial(_bind_hosts, policy=policy))


async def _bind_hosts(conn: Connection, component: int, *, policy: IcePolicy) -> list[StunProtocol]:
    """One bound protocol (a host candidate) per host address of ``policy``, for
    ``component``; all or none."""
    hosts = policy.hosts or tuple(
        HostAddress(a, a) for a in get_host_addresses(use_ipv4=True, use_ipv6=True)
    )
    protocols: list[StunProtocol] = []
    try:
        for host in hosts:
            protocols.append(await _bind(conn, component, host, policy))
    except BaseException:
        for p in protocols:
            await p.close()
        raise
    return protocols


async def _bind(
    conn: Connection, component: int, host: HostAddress, policy: IcePolicy
) -> StunProtocol:
    loop = asyncio.get_running_loop()
    if policy.ports is None:
        ports = [0]
    else:
        low, high = policy.ports
        span = high - low + 1
        first = policy.rng.randrange(span)
        ports = [low + (first + i) % span for i in range(span)]
    last_error: OSError | None = None
    for port in ports:
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: StunProtocol(conn), local_addr=(host.bind, port)
            )
        except OSError as e:
            last_error = e
            continue
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF_BYTES)
        bound_port = transport.get_extra_info("sockname")[1]
        protocol.local_candidate = Candidate(
            foundation=candidate_foundation("host", "udp", host.advertise),
            component=component,
            transport="udp",
            priority=candidate_priority(component, "host"),
            host=host.advertise,
            port=bound_port,
            type="host",
        )
        return protocol
    if policy.ports is None:
        where = "an ephemeral port"
    else:
        where = f"a free port in {policy.ports[0]}-{policy.ports[1]}"
    raise IceConfigError(f"ICE: cannot bind {where} on {host.bind}: {last_error}")


def ice_server_records(
    policy: IcePolicy,
    *,
    turn_urls: tuple[str, ...],
    turn_secret: str | None,
    turn_ttl_s: float,
    user: str,
    now_s: float,
) -> list[dict[str, Any]]:
    """What a client is told to use: our STUN/TURN servers, and TURN with fresh credentials."""
    out: list[dict[str, Any]] = []
    if policy.servers:
        out.append({"urls": list(policy.servers)})
    if turn_urls and turn_secret:
        username, credential = turn_credentials(
            turn_secret, user=user, ttl_s=turn_ttl_s, now_s=now_s
        )
        out.append({"urls": list(turn_urls), "username": username, "credential": credential})
    return out
