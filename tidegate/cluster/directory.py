"""The session directory: which node holds which session, the quotas counted over it, and the
load of every node.

Two implementations with one shape. :class:`LocalDirectory` (the default) knows this node
only. :class:`RedisDirectory` shares it through Redis:

- ``node:<id>`` (hash: url, sessions, max_sessions, ready, draining) and the ``nodes`` sorted
  set (member: node id, score: expiry in Redis time, ms);
- ``session:<id>`` (hash: node, tenant, subject; expires with the node);
- ``sessions`` and ``tenant:<tenant>:sessions`` (sorted sets, member: session id, score:
  expiry) over which the cluster's session count and a tenant's quota are counted, atomically
  in one Lua script that also admits the new session.

Every entry carries an expiry (``cluster_node_ttl_s``) that the node's heartbeat
(``cluster_heartbeat_s``) pushes forward, so the sessions of a node that died drop out of the
directory and the quotas by themselves. The heartbeat writes the node's whole state, so after
Redis was away (or lost its data) the next heartbeat puts it all back.

When Redis is down, admission counts this node's sessions only (as one node would), and
lookups answer "not known elsewhere".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis

from .link import RedisDownError, RedisLink, key_part

log = logging.getLogger(__name__)

ADMITTED, TENANT_FULL, CLUSTER_FULL = 0, 1, 2

# KEYS: tenant set, cluster set. ARGV: ticket id, tenant quota, cluster limit (0: none), ttl
# ms. Returns {status, sessions held (the tenant's or the cluster's)}.
ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[2]) then return {1, held} end
local limit = tonumber(ARGV[3])
local all = redis.call('ZCARD', KEYS[2])
if limit > 0 and all >= limit then return {2, all} end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return {0, held + 1}
"""

# KEYS: tenant set, cluster set, session hash. ARGV: ticket ('' for none), session id, ttl ms,
# node, tenant, subject. The session takes its ticket's place in the counts.
SWAP_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('HSET', KEYS[3], 'node', ARGV[4], 'tenant', ARGV[5], 'subject', ARGV[6])
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
"""

# KEYS: nodes set, node hash, cluster set. ARGV: node id, ttl ms, key prefix, field/value pairs of
# the node hash, '--', then (session id, tenant, tenant as a key part, subject) quadruples.
# Refreshes every expiry.
HEARTBEAT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local prefix = ARGV[3]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
local i = 4
local fields = {}
while ARGV[i] ~= '--' do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  i = i + 2
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('PEXPIRE', KEYS[2], ttl)
i = i + 1
while ARGV[i] do
  local sid, tenant, subject = ARGV[i], ARGV[i + 1], ARGV[i + 3]
  local tkey = prefix .. 'tenant:' .. ARGV[i + 2] .. ':sessions'
  local skey = prefix .. 'session:' .. sid
  redis.call('ZADD', tkey, now + ttl, sid)
  redis.call('PEXPIRE', tkey, ttl)
  redis.call('ZADD', KEYS[3], now + ttl, sid)
  redis.call('HSET', skey, 'node', ARGV[1], 'tenant', tenant, 'subject', subject)
  redis.call('PEXPIRE', skey, ttl)
  i = i + 4
end
redis.call('PEXPIRE', KEYS[3], ttl)
return now
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Owner:
    """Where a session lives."""

    node: str
    tenant: str
    subject: str
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to "may this session start": ``status`` (ADMITTED, TENANT_FULL,
    CLUSTER_FULL), the count that decided it, and where it was counted (``cluster`` or
    ``node``)."""

    status: int
    held: int
    scope: str


@dataclass(frozen=True, slots=True)
class LocalSession:
    id: str
    tenant: str
    subject: str


class Directory(Protocol):
    """The session directory's interface (see the module docstring)."""

    node_id: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def admit(
        self, session: LocalSession, *, tenant_held_here: int, tenant_quota: int
    ) -> Admission: ...

    async def release(self, session_id: str, tenant: str) -> None: ...

    async def owner(self, session_id: str) -> Owner | None: ...

    async def nodes(self) -> list[dict[str, Any]]: ...

    def stats(self) -> dict[str, Any]: ...


class LocalDirectory:
    """One node: every session is here, quotas are this node's."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def admit(
        self, session: LocalSession, *, tenant_held_here: int, tenant_quota: int
    ) -> Admission:
        if tenant_held_here >= tenant_quota:
            return Admission(TENANT_FULL, tenant_held_here, "node")
        return Admission(ADMITTED, tenant_held_here + 1, "node")

    async def release(self, session_id: str, tenant: str) -> None:
        return None

    async def owner(self, session_id: str) -> Owner | None:
        return None

    async def nodes(self) -> list[dict[str, Any]]:
        return []

    def stats(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "shared": False}


class RedisDirectory:
    """The directory in Redis (see the module docstring)."""

    def __init__(
        self,
        link: RedisLink,
        node_id: str,
        *,
        sessions: Callable[[], Iterable[LocalSession]],
        load: Callable[[], dict[str, Any]],
        heartbeat_s: float,
        node_ttl_s: float,
        cluster_max_sessions: int | None = None,
        node_url: str | None = None,
    ) -> None:
        self.link = link
        self.node_id = node_id
        self.node_url = node_url
        self._sessions = sessions
        self._load = load
        self.heartbeat_s = heartbeat_s
        self.ttl_ms = max(1, round(node_ttl_s * 1000))
        self.cluster_max_sessions = cluster_max_sessions
        self._admit = link.client.register_script(ADMIT_LUA)
        self._swap = link.client.register_script(SWAP_LUA)
        self._heartbeat = link.client.register_script(HEARTBEAT_LUA)
        self._task: asyncio.Task[None] | None = None
        self.heartbeats = 0
        self.heartbeat_failures = 0
        self.admitted = 0
        self.refused = 0
        self.local_admissions = 0
        link.on_up(self.heartbeat)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cluster-heartbeat")

    async def close(self) -> None:
        """Stop the heartbeat and take this node out of the directory (its sessions are gone)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(RedisDownError):
            await self.link.call(self._remove_node)

    async def _remove_node(self, r: aioredis.Redis) -> None:
        async with r.pipeline(transaction=False) as p:
            p.zrem(self.link.key("nodes"), self.node_id)
            p.delete(self.link.key("node", self.node_id))
            await p.execute()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            with contextlib.suppress(RedisDownError):
                await self.heartbeat()

    async def heartbeat(self) -> None:
        """Publish this node and refresh the expiry of everything it holds."""
        node = {"url": self.node_url or "", **{k: str(v) for k, v in self._load().items()}}
        args: list[str] = [self.node_id, str(self.ttl_ms), self.link.prefix]
        for k, v in node.items():
            args += [k, v]
        args.append("--")
        for s in self._sessions():
            args += [s.id, s.tenant, key_part(s.tenant), s.subject]
        keys = [self.link.key("nodes"), self.link.key("node", self.node_id), self._all_key()]
        try:
            await self.link.call(lambda r: self._heartbeat(keys=keys, args=args, client=r))
        except RedisDownError:
            self.heartbeat_failures += 1
            raise
        self.heartbeats += 1

    def _all_key(self) -> str:
        return self.link.key("sessions")

    def _tenant_key(self, tenant: str) -> str:
        return self.link.key("tenant", tenant, "sessions")

    async def admit(
        self, session: LocalSession, *, tenant_held_here: int, tenant_quota: int
    ) -> Admission:
        """Count ``session`` in the tenant's quota and the cluster's limit, over every node."""
        keys = [self._tenant_key(session.tenant), self._all_key()]
        args: list[str | int] = [
            session.id,
            tenant_quota,
            self.cluster_max_sessions or 0,
            self.ttl_ms,
        ]
        try:
            status, held = await self.link.call(
                lambda r: self._admit(keys=keys, args=args, client=r)
            )
        except RedisDownError:
            self.local_admissions += 1
            local = await LocalDirectory(self.node_id).admit(
                session, tenant_held_here=tenant_held_here, tenant_quota=tenant_quota
            )
            return local
        if status == ADMITTED:
            self.admitted += 1
        else:
            self.refused += 1
        return Admission(int(status), int(held), "cluster")

    async def swap(self, ticket: str | None, session: LocalSession) -> None:
        """``session`` takes the place its ``ticket`` reserved (or a new one) in the counts,
        and is named in the directory."""
        keys = [
            self._tenant_key(session.tenant),
            self._all_key(),
            self.link.key("session", session.id),
        ]
        args: list[str | int] = [
            ticket or "",
            session.id,
            self.ttl_ms,
            self.node_id,
            session.tenant,
            session.subject,
        ]
        with contextlib.suppress(RedisDownError):  # the next heartbeat names it
            await self.link.call(lambda r: self._swap(keys=keys, args=args, client=r))

    async def release(self, session_id: str, tenant: str) -> None:
        async def remove(r: aioredis.Redis) -> None:
            async with r.pipeline(transaction=False) as p:
                p.zrem(self._tenant_key(tenant), session_id)
                p.zrem(self._all_key(), session_id)
                p.delete(self.link.key("session", session_id))
                await p.execute()

        with contextlib.suppress(RedisDownError):  # the entry expires by itself
            await self.link.call(remove)

    async def owner(self, session_id: str) -> Owner | None:
        """The node that holds ``session_id`` (None: unknown, expired, or Redis is down)."""

        async def lookup(r: aioredis.Redis) -> tuple[dict[str, str], str]:
            raw = await r.hgetall(self.link.key("session", session_id))
            entry = {_text(k): _text(v) for k, v in raw.items()}
            url = ""
            if entry.get("node"):
                url = _text(await r.hget(self.link.key("node", entry["node"]), "url") or "")
            return entry, url

        try:
            entry, url = await self.link.call(lookup)
        except RedisDownError:
            return None
        if not entry.get("node"):
            return None
        return Owner(
            node=entry["node"],
            tenant=entry.get("tenant", ""),
            subject=entry.get("subject", ""),
            url=url or None,
        )

    async def nodes(self) -> list[dict[str, Any]]:
        """Live nodes with their load, as their last heartbeat published it."""

        async def read(r: aioredis.Redis) -> list[dict[str, Any]]:
            now_s, now_us = await r.time()
            now_ms = now_s * 1000 + now_us // 1000
            ids = await r.zrangebyscore(self.link.key("nodes"), now_ms, "+inf")
            out = []
            for raw in ids:
                node_id = _text(raw)
                fields = await r.hgetall(self.link.key("node", node_id))
                if fields:
                    out.append(
                        {"node_id": node_id, **{_text(k): _text(v) for k, v in fields.items()}}
                    )
            return out

        try:
            return await self.link.call(read)
        except RedisDownError:
            return []

    def stats(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "shared": True,
            "heartbeats": self.heartbeats,
            "heartbeat_failures": self.heartbeat_failures,
            "admitted": self.admitted,
            "refused": self.refused,
            "local_admissions": self.local_admissions,
        }
