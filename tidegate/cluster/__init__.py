"""What spans the nodes of one deployment (docs/cluster.md): shared rate limits and session
quotas, the session directory, result caches and sensor fan-out.

:class:`Cluster` is the node's side of it. Without ``redis_url`` every part is in process
(one node needs no Redis); with it, each part goes through one :class:`RedisLink` and falls
back to its local behaviour while Redis is away.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidegate.sessions.errors import NotFoundError, OverloadedError, RateLimitedError
from tidegate.sessions.principal import Principal
from tidegate.sessions.sensorbus import LocalSensorBus

from .caches import ResultCaches
from .config import ClusterSettings
from .directory import (
    ADMITTED,
    TENANT_FULL,
    Directory,
    LocalDirectory,
    LocalSession,
    Owner,
    RedisDirectory,
)
from .link import RedisDownError, RedisLink
from .ratelimit import RedisBuckets
from .sensorbus import RedisSensorBus

if TYPE_CHECKING:
    from tidegate.sessions.limits import Limiter
    from tidegate.sessions.session import Session, SessionRegistry

log = logging.getLogger(__name__)

FULL_RETRY_AFTER_MS = 1_000.0

__all__ = [
    "NODE_HEADER",
    "Cluster",
    "Owner",
    "RedisDownError",
    "RedisLink",
    "Ticket",
    "WrongNodeError",
]


NODE_HEADER = "X-Tidegate-Node"
WRONG_NODE_STATUS = 421  # Misdirected Request


class WrongNodeError(NotFoundError):
    """A request about a session that another node holds: ``owner`` says which. Over HTTP:
    421 with the node in ``X-Tidegate-Node`` and in the body (``node``, ``node_url``); on the
    control channel: ``not_found`` whose message names the node."""

    def __init__(self, message: str, owner: Owner) -> None:
        super().__init__(message)
        self.owner = owner

    def http(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, body with the owner added, headers) of the HTTP answer."""
        extra = {"node": self.owner.node, "node_url": self.owner.url}
        return WRONG_NODE_STATUS, {**body, **extra}, {NODE_HEADER: self.owner.node}


@dataclass(frozen=True, slots=True)
class Ticket:
    """A place reserved in the cluster's counts for a session about to be created."""

    id: str
    tenant: str
    subject: str


class Cluster:
    """This node's part in the deployment (see the module docstring)."""

    def __init__(
        self,
        settings: ClusterSettings,
        registry: SessionRegistry,
        limiter: Limiter,
        *,
        node_id: str,
        llm_model: str,
    ) -> None:
        s = settings
        self.settings = settings
        self.registry = registry
        self.limiter = limiter
        # The route id NGINX routes on names the node too (docs/deploy.md), so that a 421's
        # X-Tidegate-Node is what NGINX's maps know.
        self.node_id = s.node_id or s.route_id or node_id
        self.link: RedisLink | None = None
        self.directory: Directory
        if s.redis_url:
            self.link = RedisLink(
                s.redis_url,
                prefix=s.redis_key_prefix,
                timeout_s=s.redis_timeout_s,
                retry_s=s.redis_retry_s,
            )
            self.directory = RedisDirectory(
                self.link,
                self.node_id,
                sessions=self._local_sessions,
                load=self.load,
                heartbeat_s=s.cluster_heartbeat_s,
                node_ttl_s=s.cluster_node_ttl_s,
                cluster_max_sessions=s.cluster_max_sessions,
                node_url=s.node_url,
            )
            limiter.share(RedisBuckets(self.link))
        else:
            self.directory = LocalDirectory(self.node_id)
        self.caches = ResultCaches(s, self.link, llm_model=llm_model)
        self.sensor_bus: LocalSensorBus | RedisSensorBus = (
            LocalSensorBus()
            if self.link is None
            else RedisSensorBus(
                self.link, self.node_id, backlog_readings=s.cluster_sensor_backlog_readings
            )
        )
        registry.cluster = self
        registry.caches = self.caches

    @property
    def shared(self) -> bool:
        return self.link is not None

    async def start(self) -> None:
        if self.link is not None:
            await self.link.start()
        await self.directory.start()
        if isinstance(self.sensor_bus, RedisSensorBus):
            await self.sensor_bus.start()

    async def close(self) -> None:
        await self.sensor_bus.close()
        await self.caches.close()
        await self.directory.close()
        if self.link is not None:
            await self.link.close()

    # -- the node -----------------------------------------------------------------------------
    def _local_sessions(self) -> list[LocalSession]:
        return [
            LocalSession(s.id, s.tenant, s.principal.subject) for s in self.registry if not s.closed
        ]

    def load(self) -> dict[str, Any]:
        """What this node publishes about itself in the directory."""
        return {"sessions": len(self.registry), "max_sessions": self.settings.max_sessions}

    # -- admission ----------------------------------------------------------------------------
    async def admit(self, principal: Principal) -> Ticket | None:
        """Reserve a place for a new session of ``principal`` in the cluster's counts (tenant
        quota, ``cluster_max_sessions``) and take a token from its shared session rate limit;
        the same errors as one node gives. None: nothing to reserve (one node, or Redis is
        away), the registry's own checks decide. A node that is full says which has room."""
        s = self.settings
        if len(self.registry) >= s.max_sessions:
            self.registry.refused += 1
            raise OverloadedError(await self._full_message(), retry_after_ms=FULL_RETRY_AFTER_MS)
        if self.link is None:
            return None
        ticket = Ticket("t_" + secrets.token_urlsafe(9), principal.tenant, principal.subject)
        held_here = sum(1 for x in self.registry if x.tenant == principal.tenant)
        admission = await self.directory.admit(
            LocalSession(ticket.id, ticket.tenant, ticket.subject),
            tenant_held_here=held_here,
            tenant_quota=s.max_sessions_per_tenant,
        )
        if admission.status == TENANT_FULL:
            self.registry.refused += 1
            where = "across the cluster" if admission.scope == "cluster" else "on this node"
            raise RateLimitedError(
                f"tenant holds {admission.held} sessions, its quota {where}; close one first",
                retry_after_ms=FULL_RETRY_AFTER_MS,
            )
        if admission.status != ADMITTED:
            self.registry.refused += 1
            raise OverloadedError(
                f"the cluster holds {admission.held} sessions, its limit "
                "(cluster_max_sessions); try again later",
                retry_after_ms=FULL_RETRY_AFTER_MS,
            )
        if admission.scope != "cluster":
            return None
        try:
            await self.limiter.sessions.acquire(principal)
        except RateLimitedError:
            await self.directory.release(ticket.id, ticket.tenant)
            raise
        return ticket

    async def _full_message(self) -> str:
        text = f"this node holds {len(self.registry)} sessions, its limit"
        for node in await self.directory.nodes():
            if node["node_id"] == self.node_id:
                continue
            try:
                room = int(node.get("max_sessions", 0)) - int(node.get("sessions", 0))
            except ValueError:
                continue
            if room > 0:
                where = f" ({node['url']})" if node.get("url") else ""
                return f"{text}; node {node['node_id']}{where} has room for {room}"
        return f"{text}; try again later"

    async def cancel(self, ticket: Ticket | None) -> None:
        """A reserved place that was not used (the registry refused the session)."""
        if ticket is not None:
            await self.directory.release(ticket.id, ticket.tenant)

    async def register(self, session: Session, ticket: Ticket | None) -> None:
        """``session`` took its place: the directory names it (and this node) from now on."""
        if not isinstance(self.directory, RedisDirectory):
            return
        await self.directory.swap(
            ticket.id if ticket else None,
            LocalSession(session.id, session.tenant, session.principal.subject),
        )

    async def release(self, session: Session) -> None:
        """``session`` is gone from this node."""
        await self.directory.release(session.id, session.tenant)

    # -- lookups ------------------------------------------------------------------------------
    async def where(self, session_id: str, tenant: str | None) -> Owner | None:
        """The node that holds ``session_id`` if that is another node and the session is
        ``tenant``'s (None: any tenant's, for admins). Another tenant's looks missing."""
        if self.link is None or self.registry.get(session_id) is not None:
            return None
        owner = await self.directory.owner(session_id)
        if owner is None or owner.node == self.node_id:
            return None
        if tenant is not None and owner.tenant != tenant:
            return None
        return owner

    async def wrong_node(self, session_id: str, tenant: str | None, what: str) -> None:
        """Raise WrongNodeError when ``session_id`` lives on another node (see :meth:`where`)."""
        owner = await self.where(session_id, tenant)
        if owner is not None:
            where = f" ({owner.url})" if owner.url else ""
            raise WrongNodeError(
                f"{what}: session {session_id!r} is held by node {owner.node}{where}, not by "
                f"this node ({self.node_id}); send it there",
                owner,
            )

    async def held_elsewhere(self, session_id: str, tenant: str) -> bool:
        """``session_id`` is ``tenant``'s and lives on another node (sensor subscriptions)."""
        return await self.where(session_id, tenant) is not None

    async def nodes(self) -> list[dict[str, Any]]:
        if self.link is None:
            return [{"node_id": self.node_id, **{k: str(v) for k, v in self.load().items()}}]
        return await self.directory.nodes()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node_id": self.node_id,
            "shared": self.shared,
            "directory": self.directory.stats(),
            "caches": self.caches.stats(),
            "sensor_bus": self.sensor_bus.stats(),
        }
        if self.link is not None:
            out["redis"] = self.link.stats()
        return out
