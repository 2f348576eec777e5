"""Token buckets counted in Redis, so that a subject's rate limit holds across every node.

One hash per bucket (``rl:<what>:<tenant>:<subject>``: tokens, at) updated by one Lua script
that refills by Redis' own clock (``TIME``, so node clocks do not matter), takes a token or
says how long until one is back, and sets the hash to expire once it would be full again
(a full bucket is the same as none). The script is the whole operation, so two nodes taking
from one bucket at once cannot both take its last token.
"""

from __future__ import annotations

from typing import Any

from .link import RedisLink

# KEYS: the bucket. ARGV: rate per second, burst. Returns the wait in ms ('-1': admitted).
TAKE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
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
local wait = -1
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate * 1000
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at',
  string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return string.format('%.3f', wait)
"""


class RedisBuckets:
    """Shared token buckets: ``take`` is :meth:`TokenBuckets.take` counted in Redis
    (RedisDownError when Redis is away: the caller counts locally instead)."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self._take = link.client.register_script(TAKE_LUA)
        self.calls = 0

    async def take(
        self, what: str, key: tuple[str, str], *, rate_per_s: float, burst: float
    ) -> float | None:
        name = self.link.key("rl", what.replace(" ", "_"), *key)
        raw = await self.link.call(
            lambda r: self._take(keys=[name], args=[rate_per_s, burst], client=r)
        )
        self.calls += 1
        wait_ms = float(raw)
        return None if wait_ms < 0 else wait_ms

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls}
