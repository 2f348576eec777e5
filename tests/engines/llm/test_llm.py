"""The LLM engine on the real SmolLM2-135M graphs: answers, streaming, cancellation, stop
sequences, batching, session caches; plus the pure parts (detokenizer, stop matcher, cache)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tidegate.engines import models
from tidegate.engines.errors import EngineClosedError, InferenceError, RequestError
from tidegate.engines.llm import LlmBatcher, LlmSettings, SamplingParams
from tidegate.engines.llm.config import LlamaConfig
from tidegate.engines.llm.model import KvCache
from tidegate.engines.llm.text import Detokenizer, StopMatcher

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = [
    "What is the capital of France?",
    "Name three colors.",
    "Who wrote Hamlet? Answer in one short sentence, please.",
    "What is 2+2?",
]


def _batcher(data_dir: Path, model: str) -> Iterator[LlmBatcher]:
    batcher = LlmBatcher(models.model_dir(data_dir, model), settings=LlmSettings())
    asyncio.run(batcher.start())
    yield batcher
    asyncio.run(batcher.close())


@pytest.fixture(scope="module")
def llm(data_dir: Path) -> Iterator[LlmBatcher]:
    yield from _batcher(data_dir, "smollm2-135m")


@pytest.fixture(scope="module")
def llm_fp32(data_dir: Path) -> Iterator[LlmBatcher]:
    yield from _batcher(data_dir, "smollm2-135m-fp32")


async def test_capital_of_france(llm: LlmBatcher) -> None:
    """The int8 model answers the capital question with Paris."""
    gen = llm.generate(FRANCE, SamplingParams(max_tokens=24))
    text = await gen.text()
    assert "Paris" in text, text
    assert gen.finish_reason in ("stop", "length")
    assert gen.prompt_tokens > 10 and gen.completion_tokens > 0


async def test_tokens_stream_in_order(llm: LlmBatcher) -> None:
    """Deltas arrive one step at a time, before the end, and concatenate to the reply."""
    params = SamplingParams(max_tokens=20)
    gen = llm.generate(FRANCE, params)
    deltas, done_at_delta = [], []
    async for delta in gen:
        deltas.append(delta)
        done_at_delta.append(gen.done)
    assert len(deltas) >= 5
    assert not done_at_delta[0], "the first delta came only with the end"
    assert gen.first_token_at is not None and gen.finished_at is not None
    assert gen.first_token_at < gen.finished_at
    again = await llm.generate(FRANCE, params).text()
    assert "".join(deltas) == again


async def test_cancel_stops_within_one_step(llm: LlmBatcher) -> None:
    """After cancel() the generation ends with at most one more token computed."""
    gen = llm.generate(
        [{"role": "user", "content": "Write a long story about a dragon."}],
        SamplingParams(max_tokens=400),
    )
    async for _ in gen:
        if gen.completion_tokens >= 3:
            break  # leaving the iterator cancels it
    at_cancel = gen.completion_tokens
    while not gen.done:
        await asyncio.sleep(0.01)
    assert gen.finish_reason == "cancelled"
    assert gen.completion_tokens - at_cancel <= 1
    assert llm.counters.cancelled >= 1


async def test_stop_sequence_and_max_tokens(llm: LlmBatcher) -> None:
    """A stop sequence ends the reply before it; max_tokens ends it with 'length'."""
    gen = llm.generate(FRANCE, SamplingParams(max_tokens=40, stop=("Paris",)))
    text = await gen.text()
    assert "Paris" not in text and gen.finish_reason == "stop"
    gen = llm.generate(FRANCE, SamplingParams(max_tokens=3))
    await gen.text()
    assert gen.completion_tokens == 3 and gen.finish_reason == "length"


async def test_sampling_is_seeded(llm: LlmBatcher) -> None:
    """Temperature sampling with a seed repeats; top-p keeps it valid text."""
    params = SamplingParams(temperature=0.9, top_p=0.9, max_tokens=12, seed=7)
    a = await llm.generate(FRANCE, params).text()
    b = await llm.generate(FRANCE, params).text()
    assert a == b and a


async def test_bad_requests_are_refused(llm: LlmBatcher) -> None:
    """Bad roles, empty chats, bad token ids and bad settings raise RequestError."""
    with pytest.raises(RequestError):
        llm.generate([{"role": "robot", "content": "hi"}])
    with pytest.raises(RequestError):
        llm.generate([])
    with pytest.raises(RequestError):
        llm.generate(prompt=[10**9])
    for bad in ({"top_p": 1.5}, {"top_p": -0.1}, {"seed": 2**63}, {"seed": -(2**63) - 1}):
        with pytest.raises(RequestError):
            SamplingParams(**bad)


async def test_a_failing_request_fails_only_itself(llm: LlmBatcher) -> None:
    """A request that raises inside the shared step (values no validator caught: a seed numpy
    refuses, a NaN temperature, a prompt the graph cannot run) fails alone with
    InferenceError; the generations beside it complete."""
    healthy = llm.generate(
        [{"role": "user", "content": "Write a long story about a dragon."}],
        SamplingParams(max_tokens=60),
    )
    while healthy.completion_tokens < 2:  # it is in the batch, decoding
        await asyncio.sleep(0.01)
    failed = llm.counters.failed
    for name, value in (("seed", "not a seed"), ("temperature", float("nan"))):
        params = SamplingParams(temperature=0.7, max_tokens=8, seed=1)
        object.__setattr__(params, name, value)  # as if the validation had a hole
        with pytest.raises(InferenceError):
            await llm.generate(FRANCE, params).text()
    # A prompt the graph cannot run (a token id past the vocabulary), prefilled together with
    # a good one: the batched prefill fails, each is run alone, only the bad one fails.
    with llm._cond:  # neither is taken by the worker before both are queued
        bad = llm.generate(FRANCE, SamplingParams(max_tokens=4))
        bad.prompt.append(10**9)
        good = llm.generate(FRANCE, SamplingParams(max_tokens=4))
    with pytest.raises(InferenceError):
        await bad.text()
    assert await good.text() and good.finish_reason in ("stop", "length")
    assert not healthy.done
    assert await healthy.text() and healthy.finish_reason in ("stop", "length")
    assert healthy.completion_tokens > 8
    assert llm.counters.failed == failed + 3


async def test_concurrent_greedy_equals_separate(llm_fp32: LlmBatcher) -> None:
    """N concurrent greedy generations (sharing steps, joining mid-flight) equal N separate
    ones, on the float graph."""
    params = SamplingParams(max_tokens=24)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    separate = [await llm_fp32.generate(c, params).text() for c in chats]
    steps_before = llm_fp32.counters.steps
    gens = [llm_fp32.generate(c, params) for c in chats[:2]]
    await asyncio.sleep(0.15)  # the others join an in-flight batch
    gens += [llm_fp32.generate(c, params) for c in chats[2:]]
    together = await asyncio.gather(*(g.text() for g in gens))
    assert together == separate
    batched = llm_fp32.counters.batch_size.as_dict()["buckets"]
    assert llm_fp32.counters.steps > steps_before
    assert batched["1"] < llm_fp32.counters.batch_size.count, "no step was shared"


async def test_session_cache_is_reused(llm_fp32: LlmBatcher) -> None:
    """A session's second turn prefills only the new tokens and answers as without it."""
    first = await llm_fp32.generate(FRANCE, SamplingParams(max_tokens=16), session="s1").text()
    chat = [
        *FRANCE,
        {"role": "assistant", "content": first},
        {"role": "user", "content": "And of Italy?"},
    ]
    gen = llm_fp32.generate(chat, SamplingParams(max_tokens=16), session="s1")
    cached = await gen.text()
    assert gen.cached_tokens > len(FRANCE[0]["content"]) // 2
    assert cached == await llm_fp32.generate(chat, SamplingParams(max_tokens=16)).text()
    llm_fp32.close_session("s1")


async def test_not_started_refuses(data_dir: Path) -> None:
    """A batcher that is not running refuses at once."""
    batcher = LlmBatcher(models.model_dir(data_dir, "smollm2-135m"))
    with pytest.raises(EngineClosedError):
        batcher.generate(FRANCE)


def test_detokenizer_never_splits_a_character(llm: LlmBatcher) -> None:
    """Multi-token characters (emoji, accents) come out whole, in order."""
    tok = llm.tokenizer
    assert tok is not None
    text = "Café 🐉 naïve 東京"
    ids = tok.encode(text)
    detok = Detokenizer(tok)
    pieces = [detok.push(i) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_stop_matcher_holds_back_prefixes() -> None:
    """Text that may start a stop sequence is held until it is known not to."""
    m = StopMatcher(["STOP"])
    assert m.push("abc ST") == ("abc ", False)
    assert m.push("ART") == ("START", False)
    assert m.push(" ST") == (" ", False)
    assert m.push("OP more") == ("", True)


def test_kv_cache_padding_and_selection() -> None:
    """Stacking left-pads shorter rows; selecting rows trims slots no row uses."""
    cfg = LlamaConfig(2, 8, 16, 2, 1, 10, 1e4, 1e-5, 64, 1, 2, "")

    def one(n: int, value: float) -> KvCache:
        arr = np.full((1, 1, n, 4), value, np.float32)
        return KvCache([arr, arr], [arr, arr], np.ones((1, n), bool))

    both = KvCache.stack([one(2, 1.0), one(5, 2.0)])
    assert both.slots == 5 and both.valid.sum(axis=1).tolist() == [2, 5]
    assert both.keys[0][0, 0, :3].sum() == 0  # padding
    short = both.select([0])
    assert short.slots == 2 and short.valid.all()
    assert both.row(1).slots == 5
    assert KvCache.empty(cfg, 1).slots == 0
