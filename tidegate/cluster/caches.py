"""Result caches: the TTS audio of text spoken before (greetings, fixed prompts, a repeated
answer) and greedy LLM completions (``temperature`` 0: the same messages give the same reply).

Each cache is two tiers. In process: an LRU bounded by bytes (``cache_tts_max_bytes``,
``cache_llm_max_bytes``; an entry over ``cache_item_max_bytes`` is not kept). With
``redis_url``: the same entries shared by every node under ``cache:tts:<hash>`` and
``cache:llm:<hash>``, each with a TTL (``cache_ttl_s``) and the same per-entry bound, so that a
Redis with ``maxmemory`` and an LRU eviction policy holds them comfortably. A lookup tries the
process, then Redis (a hit there is kept in process too); a miss runs the engine and stores
its result in both. Keys are SHA-256 digests of everything the result depends on: the voice
and the text for TTS; the model, the messages and the sampling parameters for the LLM. Only
greedy generations that end by themselves (``stop`` or ``length``) are cached.

Hits and misses are counted per tier (``stats()``: in every session's ``metrics`` event under
``caches``, in ``/v1/cluster``, and in ``/metrics`` as ``tidegate_cache_*``). A Redis that is
away counts as a miss of that tier, never as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import redis.asyncio as aioredis

from tidegate.engines.llm import Generation, LlmEngine, SamplingParams

from .config import CacheSettings
from .link import RedisDownError, RedisLink

if TYPE_CHECKING:
    from tidegate.engines.runtime import Array
    from tidegate.engines.scheduler import Scheduler

log = logging.getLogger(__name__)

CACHEABLE_FINISH = ("stop", "length")
MAX_PENDING_STORES = 64  # completions being written to the shared tier at once; more skip it


class ByteLru:
    """An LRU of byte strings bounded by their total size."""

    def __init__(self, max_bytes: int, max_item_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_item_bytes = max_item_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self.bytes = 0
        self.evicted = 0
        self.too_large = 0

    def get(self, key: str) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> bool:
        if len(value) > min(self.max_item_bytes, self.max_bytes):
            self.too_large += 1
            return False
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= len(old)
        self._items[key] = value
        self.bytes += len(value)
        while self.bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= len(dropped)
            self.evicted += 1
        return True

    def __len__(self) -> int:
        return len(self._items)


class TieredCache:
    """One cache: the in-process LRU, then (when configured) Redis."""

    def __init__(
        self,
        name: str,
        link: RedisLink | None,
        *,
        max_bytes: int,
        max_item_bytes: int,
        ttl_s: float,
    ) -> None:
        self.name = name
        self.link = link
        self.local = ByteLru(max_bytes, max_item_bytes)
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.counts = {
            "hits": 0,
            "misses": 0,
            "local_hits": 0,
            "shared_hits": 0,
            "shared_misses": 0,
            "shared_unavailable": 0,
            "stored": 0,
        }

    def key(self, digest: str) -> str:
        assert self.link is not None
        return self.link.key("cache", self.name, digest)

    async def get(self, digest: str) -> bytes | None:
        value = self.local.get(digest)
        if value is not None:
            self.counts["hits"] += 1
            self.counts["local_hits"] += 1
            return value
        if self.link is not None:
            try:
                value = await self.link.call(self._fetch(digest))
            except RedisDownError:
                self.counts["shared_unavailable"] += 1
            else:
                if value is not None:
                    self.counts["hits"] += 1
                    self.counts["shared_hits"] += 1
                    self.local.put(digest, value)
                    return bytes(value)
                self.counts["shared_misses"] += 1
        self.counts["misses"] += 1
        return None

    def _fetch(self, digest: str) -> Callable[[aioredis.Redis], Awaitable[bytes | None]]:
        async def fetch(r: aioredis.Redis) -> bytes | None:
            value = await r.get(self.key(digest))
            return value if isinstance(value, bytes) else None  # the client returns bytes

        return fetch

    async def put(self, digest: str, value: bytes) -> None:
        if not self.local.put(digest, value):
            return
        self.counts["stored"] += 1
        if self.link is not None:
            try:
                await self.link.call(lambda r: r.set(self.key(digest), value, px=self.ttl_ms))
            except RedisDownError:
                self.counts["shared_unavailable"] += 1

    def stats(self) -> dict[str, Any]:
        return {
            **self.counts,
            "items": len(self.local),
            "bytes": self.local.bytes,
            "max_bytes": self.local.max_bytes,
            "evicted": self.local.evicted,
            "too_large": self.local.too_large,
            "shared": self.link is not None,
        }


def _digest(*parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()


class ResultCaches:
    """The TTS and LLM caches of one node (see the module docstring)."""

    def __init__(self, settings: CacheSettings, link: RedisLink | None, *, llm_model: str) -> None:
        s = settings
        self.enabled = s.result_caches
        #: the model the LLM cache keys replies by (another model's are not this one's)
        self.llm_model = llm_model
        self.tts = TieredCache(
            "tts",
            link,
            max_bytes=s.cache_tts_max_bytes,
            max_item_bytes=s.cache_item_max_bytes,
            ttl_s=s.cache_ttl_s,
        )
        self.llm = TieredCache(
            "llm",
            link,
            max_bytes=s.cache_llm_max_bytes,
            max_item_bytes=s.cache_item_max_bytes,
            ttl_s=s.cache_ttl_s,
        )
        self.llm_uncacheable = 0
        self.store_skipped = 0
        self._pending: set[asyncio.Task[None]] = set()

    # -- TTS ------------------------------------------------------------------------------------
    async def synthesize(
        self, tts: Scheduler[Any, Any], text: str, *, voice: str, urgent: bool = False
    ) -> Array:
        """``tts.submit(text, urgent=urgent)``, or the audio it gave before (int16, the
        voice's rate)."""
        if not self.enabled:
            result: Array = await tts.submit(text, urgent=urgent)
            return result
        digest = _digest("tts", voice, text)
        cached = await self.tts.get(digest)
        if cached is not None:
            return np.frombuffer(cached, dtype=np.int16)
        audio: Array = await tts.submit(text, urgent=urgent)
        await self.tts.put(digest, np.ascontiguousarray(audio, dtype=np.int16).tobytes())
        return audio

    # -- LLM ------------------------------------------------------------------------------------
    async def generate(
        self,
        llm: LlmEngine,
        messages: Sequence[Mapping[str, Any]],
        params: SamplingParams,
        *,
        session: str | None = None,
    ) -> Generation:
        """``llm.submit(messages, params)``, or, for a greedy request seen before, a
        generation that yields the reply it gave then at once."""
        if not self.enabled or not params.greedy:
            self.llm_uncacheable += 1
            return await llm.submit(messages, params, session=session)
        digest = _digest(
            "llm",
            self.llm_model,
            [dict(m) for m in messages],
            params.max_tokens,
            list(params.stop),
        )
        cached = await self.llm.get(digest)
        if cached is not None:
            entry = orjson.loads(cached)
            return Generation.finished(
                f"cached-{digest[:12]}-{time.monotonic_ns()}",
                entry["text"],
                params,
                finish_reason=entry["finish_reason"],
                prompt_tokens=entry["prompt_tokens"],
                completion_tokens=entry["completion_tokens"],
                session=session,
            )
        gen = await llm.submit(messages, params, session=session)
        gen.add_done_callback(lambda g: self._store(digest, g))
        return gen

    def _store(self, digest: str, gen: Generation) -> None:
        if gen.cancelled or gen.finish_reason not in CACHEABLE_FINISH:
            return
        entry = orjson.dumps(
            {
                "text": gen.output,
                "finish_reason": gen.finish_reason,
                "prompt_tokens": gen.prompt_tokens,
                "completion_tokens": gen.completion_tokens,
            }
        )
        # A callback cannot await: the store runs as a task this cache owns (bounded, and
        # cancelled by close()).
        if len(self._pending) >= MAX_PENDING_STORES:
            self.store_skipped += 1
            return
        task = asyncio.get_running_loop().create_task(self.llm.put(digest, entry))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        for task in list(self._pending):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "tts": self.tts.stats(),
            "llm": {
                **self.llm.stats(),
                "uncacheable": self.llm_uncacheable,
                "store_skipped": self.store_skipped,
            },
        }
