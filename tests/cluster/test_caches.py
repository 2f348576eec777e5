"""Result caches on the real Piper voice and SmolLM2: in process, shared between two nodes'
caches through a real Redis (a redis-server of this module's own, stopped at the end to see
the caches carry on without it), bounded by bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from tests.cluster.redis_server import OwnRedis, eventually
from tests.server.conftest import make_settings
from tests.support import prepare_models
from tidegate.cluster.caches import ByteLru, ResultCaches
from tidegate.cluster.link import RedisLink
from tidegate.engines.llm import SamplingParams
from tidegate.engines.registry import TTS
from tidegate.engines.service import EngineService
from tidegate.server.engines import engine_specs

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

ROOT = Path(__file__).resolve().parents[3]
CACHE = ROOT / ".cache"
MODELS = ("smollm2-135m", "piper-joe")
GREETING = "Hello! How can I help you today?"
MESSAGES = [{"role": "user", "content": "Say hello."}]


@dataclass
class Nodes:
    engines: EngineService
    redis: OwnRedis
    a: ResultCaches
    b: ResultCaches
    links: tuple[RedisLink, RedisLink]


@pytest.fixture(scope="module")
def prepared() -> Path:
    """The data folder with the LLM and the voice prepared (by make setup, or here)."""
    return prepare_models(*MODELS)


@pytest.fixture(scope="module")
def module_redis() -> Iterator[OwnRedis]:
    own = OwnRedis()
    own.start()
    try:
        yield own
    finally:
        own.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def nodes(
    tmp_path_factory: pytest.TempPathFactory, prepared: Path, module_redis: OwnRedis
) -> AsyncIterator[Nodes]:
    """The engines once, and two nodes' caches on one Redis."""
    tmp = tmp_path_factory.mktemp("caches")
    settings = make_settings(
        tmp, engines=("llm", "tts"), redis_url=module_redis.url, redis_retry_s=0.1
    )
    engines = EngineService(engine_specs(settings), prepared)
    await engines.start()
    links = tuple(
        RedisLink(module_redis.url, prefix="tgcache:", timeout_s=0.5, retry_s=0.1) for _ in range(2)
    )
    for link in links:
        await link.start()
    a, b = ResultCaches(settings, links[0]), ResultCaches(settings, links[1])
    try:
        yield Nodes(engines, module_redis, a, b, links)  # type: ignore[arg-type]
    finally:
        for c in (a, b):
            await c.close()
        for link in links:
            await link.close()
        await engines.close()


async def test_tts_audio_is_cached_and_shared(nodes: Nodes) -> None:
    """The second synthesis of a sentence is the first one's audio from the process, and the
    other node gets it from Redis: the voice runs once for all three."""
    tts = nodes.engines.get(TTS)
    before = tts.stats()["submitted"]
    first = await nodes.a.synthesize(tts, GREETING, voice="piper-joe")
    again = await nodes.a.synthesize(tts, GREETING, voice="piper-joe")
    elsewhere = await nodes.b.synthesize(tts, GREETING, voice="piper-joe")
    assert first.dtype == np.int16 and first.size > 24_000  # over half a second at 48 kHz
    assert np.array_equal(first, again) and np.array_equal(first, elsewhere)
    assert tts.stats()["submitted"] == before + 1
    a, b = nodes.a.stats()["tts"], nodes.b.stats()["tts"]
    assert (a["misses"], a["local_hits"], a["stored"]) == (1, 1, 1)
    assert (b["hits"], b["shared_hits"], b["misses"]) == (1, 1, 0)
    other = await nodes.b.synthesize(tts, GREETING, voice="another-voice")
    assert tts.stats()["submitted"] == before + 2 and other.size > 0  # the voice is in the key


async def test_greedy_completion_is_cached_and_shared(nodes: Nodes) -> None:
    """A greedy completion's reply comes back whole and at once the second time, on either
    node, with its finish reason and token counts; a sampled one is never cached."""
    llm = nodes.engines.llm()
    params = SamplingParams(temperature=0.0, max_tokens=12)
    gen = await nodes.a.generate(llm, MESSAGES, params, session="s1")
    text = await gen.text()
    assert text and gen.finish_reason in ("stop", "length")

    async def stored() -> bool:
        return nodes.a.stats()["llm"]["stored"] == 1 and not nodes.a._pending

    await eventually(stored, 30, "the completion is stored")
    for caches in (nodes.a, nodes.b):
        hit = await caches.generate(llm, MESSAGES, params, session="s2")
        assert hit.done and hit.output == text  # whole before anyone iterates
        assert await hit.text() == text
        assert (hit.finish_reason, hit.completion_tokens) == (
            gen.finish_reason,
            gen.completion_tokens,
        )
    assert nodes.a.stats()["llm"]["local_hits"] == 1
    assert nodes.b.stats()["llm"]["shared_hits"] == 1
    sampled = await nodes.b.generate(llm, MESSAGES, SamplingParams(temperature=0.8, max_tokens=4))
    await sampled.text()
    assert nodes.b.stats()["llm"]["uncacheable"] == 1
    other = await nodes.b.generate(llm, MESSAGES, SamplingParams(temperature=0.0, max_tokens=5))
    assert not other.done  # max_tokens is part of the key
    await other.text()


async def test_caches_carry_on_without_redis(nodes: Nodes) -> None:
    """With Redis stopped, a lookup counts the shared tier unavailable and the engine runs:
    no error reaches the caller; what is in process still hits."""
    tts = nodes.engines.get(TTS)
    nodes.redis.stop()
    audio = await nodes.b.synthesize(tts, "Redis is away.", voice="piper-joe")
    assert audio.size > 0
    stats = nodes.b.stats()["tts"]
    assert stats["shared_unavailable"] >= 1 and not nodes.links[1].up
    again = await nodes.b.synthesize(tts, "Redis is away.", voice="piper-joe")
    assert np.array_equal(audio, again)


async def test_byte_lru_is_bounded_by_bytes() -> None:
    """Past max_bytes the least recently used entries go; an entry over the item bound is
    refused; a lookup makes an entry recent."""
    lru = ByteLru(max_bytes=10, max_item_bytes=6)
    assert lru.put("a", b"1234") and lru.put("b", b"1234")
    assert lru.get("a") == b"1234"  # now b is the oldest
    assert lru.put("c", b"1234")
    assert lru.get("b") is None and lru.get("a") is not None and lru.bytes == 8
    assert not lru.put("big", b"1234567") and lru.too_large == 1
    assert lru.evicted == 1 and len(lru) == 2
