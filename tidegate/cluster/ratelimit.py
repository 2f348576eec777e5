"""Token buckets counted in Redis, so that a subject's rate limit holds across every node.

One hash per bucket (``rl:<what>:<tenant>:<subject>``: tokens, at) updated by one Lua script
that refills by Redis' own clock (``TIME``, so node clocks do not matter), takes a token or
says how long until one is back, and sets the hash to expire once it would be full again
(a full bucket is the same as none). The script is the whole operation, so two nodes taking
from one bucket at once cannot both take its last token.

A node may take several tokens at once (a lease, see :class:`~tidegate.server.limits.
TokenBuckets`), so that a busy bucket (control messages) costs one round trip per lease, not
per message. Tokens are taken from the shared bucket before they are used, so the cluster never
goes over the limit; a node may refuse a little early while another holds unused leased tokens.
"""

from __future__ import annotations

from typing import Any

from .link import RedisLink

# KEYS: the bucket. ARGV: rate per second, burst, tokens wanted. Returns {tokens granted (at
# least 1, at most wanted), '-1'} or {0, the wait in ms until one token is back}.
TAKE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1])
local at = tonumber(b[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local granted = math.min(want, math.floor(tokens))
local wait = -1
if granted >= 1 then
  tokens = tokens - granted
else
  granted = 0
  wait = (1 - tokens) / rate * 1000
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at',
  string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {granted, string.format('%.3f', wait)}
"""


class RedisBuckets:
    """Shared token buckets: ``take`` is :meth:`TokenBuckets.take` counted in Redis
    (RedisDownError when Redis is away: the caller counts locally instead)."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self._take = link.client.register_script(TAKE_LUA)
        self.calls = 0

    async def take(
        self, what: str, key: tuple[str, str], *, rate_per_s: float, burst: float, want: int = 1
    ) -> tuple[int, float | None]:
        """Take up to ``want`` tokens: (tokens granted, None), or (0, ms until one is back)."""
        name = self.link.key("rl", what.replace(" ", "_"), *key)
        granted, wait = await self.link.call(
            lambda r: self._take(keys=[name], args=[rate_per_s, burst, want], client=r)
        )
        self.calls += 1
        if int(granted) >= 1:
            return int(granted), None
        return 0, float(wait)

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls}
