"""Continuous batching of LLM generations: every running generation shares each decode step.

Why not :class:`~tidegate.engines.scheduler.Scheduler`: it answers each request with one
outcome per batch call, but a generation is hundreds of steps whose batch changes between
steps (new requests join, finished and cancelled ones leave). The :class:`LlmBatcher` keeps
the scheduler's principles with a step loop of its own:

- bounded admission: ``generate`` puts a request on a
  :class:`~tidegate.protocol.flow.BoundedBuffer` (``max_queue_items``, policy ``reject``: a
  full queue refuses at once with :class:`OverloadedError` and a retry hint); a request not
  admitted within ``queue_deadline_s`` fails with :class:`DeadlineError` and never runs;
- one worker thread owns the model and the batch's KV cache (inference never runs on an event
  loop). Between two steps it admits waiting requests (up to ``max_batch_items`` running),
  prefills them together in one call (left-padded, masked), merges them into the batch, drops
  finished and cancelled rows, then runs one decode step for every row;
- text deltas go back to each caller's loop with one ``call_soon_threadsafe`` per loop per
  step; a consumer that lags gets its deltas coalesced (bounded by ``max_tokens``);
- ``Generation.cancel()`` sets a flag the worker reads before every step: compute for that
  generation stops within one step;
- one request's failure is that request's outcome: setting a row up, its prefill and its
  sampling, detokenising and stop matching fail only that row (a batched prefill that fails
  is retried row by row to find which); only a failed shared decode call fails the batch;
- ``submit`` renders the chat template and tokenises in a worker thread (the tokenizer
  releases the GIL), so a long prompt never stalls the event loop; a prompt longer in
  characters than ``max_prompt_tokens`` tokens can hold is refused before tokenising;
- a session's conversation cache (the KV of every token it fed) is kept after each reply
  (LRU, ``session_cache_items``); the next turn's prompt reuses its longest common prefix and
  prefills only the rest.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tidegate.protocol.flow import BoundedBuffer, Overflow, Push

from ..errors import (
    DeadlineError,
    EngineClosedError,
    EngineError,
    InferenceError,
    OverloadedError,
    RequestError,
)
from ..metrics import TIME_BUCKETS_MS, Histogram, QueueLoad, batch_buckets
from ..runtime import RuntimeOptions
from ..workers import name_os_thread
from .model import KvCache, LlamaModel
from .sampling import SamplingParams, sample
from .text import ChatTokenizer, Detokenizer, StopMatcher
from .tools import ToolCall, ToolCallDelta

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LlmSettings:
    """Limits of one LLM batcher (every one a keyword with a unit)."""

    max_batch_items: int = 16  # generations decoding together in one step
    max_queue_items: int = 64  # requests waiting to join; more are refused
    queue_deadline_s: float = 30.0  # a request not admitted by then fails
    max_prompt_tokens: int = 2048
    max_context_tokens: int = 4096  # prompt + reply, per generation
    session_cache_items: int = 256  # conversation caches kept (least recently used dropped)

    def __post_init__(self) -> None:
        for name in ("max_batch_items", "max_queue_items", "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_context_tokens <= self.max_prompt_tokens:
            raise ValueError("max_context_tokens must exceed max_prompt_tokens")
        if self.queue_deadline_s <= 0 or self.session_cache_items < 0:
            raise ValueError("queue_deadline_s must be positive, session_cache_items >= 0")


FINISH_STOP = "stop"
FINISH_LENGTH = "length"
FINISH_CANCELLED = "cancelled"


class Generation:
    """One reply being generated. ``async for delta in generation`` yields text as it is
    decoded; ``cancel()`` stops it within one step. Counters and times (``time.monotonic``)
    are filled in as it runs."""

    def __init__(
        self,
        gen_id: str,
        prompt: list[int],
        params: SamplingParams,
        session: str | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.id = gen_id
        self.prompt = prompt
        self.params = params
        self.session = session
        self.prompt_tokens = len(prompt)
        self.cached_tokens = 0  # prompt tokens whose KV came from the session's cache
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self._loop = loop
        self._chunks: list[str] = []
        self._wake = asyncio.Event()
        self._done = False
        self._error: EngineError | None = None
        self.cancelled = False  # read by the worker thread before every step
        self._text: list[str] = []  # everything delivered, for done callbacks
        self._done_callbacks: list[Callable[[Generation], None]] = []
        # The tool calls of the reply, once done (the local model takes no tools: always
        # empty here; OpenAI-compatible providers fill it, see providers.py).
        self.tool_calls: tuple[ToolCall, ...] = ()

    @classmethod
    def finished(
        cls,
        gen_id: str,
        text: str,
        params: SamplingParams,
        *,
        finish_reason: str,
        prompt_tokens: int,
        completion_tokens: int,
        session: str | None = None,
    ) -> Generation:
        """A generation whose whole text is already known (a cached completion): iterating
        it yields ``text`` at once. Call from an event loop."""
        gen = cls(gen_id, [], params, session, asyncio.get_running_loop())
        gen.prompt_tokens = prompt_tokens
        gen.cached_tokens = prompt_tokens
        gen.completion_tokens = completion_tokens
        gen._deliver(text, finish_reason, None)
        return gen

    @property
    def output(self) -> str:
        """The text delivered so far (all of it once ``done``)."""
        return "".join(self._text)

    def add_done_callback(self, callback: Callable[[Generation], None]) -> None:
        """Call ``callback(self)`` on the event loop once the generation ends (finished,
        failed or cancelled); at once if it has ended already."""
        if self._done:
            callback(self)
        else:
            self._done_callbacks.append(callback)

    def cancel(self) -> None:
        """Stop generating: the worker drops this generation before its next step."""
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self._done

    def _deliver(self, text: str, finish: str | None, error: EngineError | None) -> None:
        if text:
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
            self._chunks.append(text)
            self._text.append(text)
        if error is not None:
            self._error = error
            self._done = True
        if finish is not None:
            self.finish_reason = finish
            self.finished_at = time.monotonic()
            self._done = True
        self._wake.set()
        if self._done and self._done_callbacks:
            callbacks, self._done_callbacks = self._done_callbacks, []
            for callback in callbacks:
                try:
                    callback(self)
                except Exception:
                    log.exception("llm: a done callback of %s failed", self.id)

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            while True:
                if self._chunks:
                    text = "".join(self._chunks)  # coalesce what arrived meanwhile
                    self._chunks.clear()
                    yield text
                    continue
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return
                self._wake.clear()
                await self._wake.wait()
        finally:
            if not self._done:
                self.cancel()  # the consumer went away

    async def text(self) -> str:
        """The whole reply (waits for the end)."""
        return "".join([delta async for delta in self])

    def events(self) -> AsyncIterator[str | ToolCallDelta]:
        """Text and tool-call pieces in the order they were generated (text only here)."""
        return aiter(self)


class _Seq:
    """A generation's row in the batch (worker thread only)."""

    __slots__ = ("detok", "fed", "gen", "next_token", "rng", "stops")

    def __init__(self, gen: Generation, tokenizer: ChatTokenizer) -> None:
        self.gen = gen
        self.fed: list[int] = []  # tokens whose KV is in the cache
        self.next_token = -1  # sampled, not fed yet
        self.detok = Detokenizer(tokenizer)
        self.stops = StopMatcher(gen.params.stop)
        seed = gen.params.seed
        # OpenAI's seeds are int64; numpy's are unsigned: a negative seed wraps to 2**64 + seed.
        self.rng = np.random.default_rng(None if seed is None else seed % SEED_MODULUS)


Delivery = tuple[Generation, str, str | None, EngineError | None]
SEED_MODULUS = 2**64


@dataclass(slots=True)
class LlmStats:
    submitted: int = 0
    refused: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    deadline_missed: int = 0
    steps: int = 0
    tokens: int = 0
    prefill_tokens: int = 0
    cached_prompt_tokens: int = 0
    batch_size: Histogram = field(default_factory=lambda: Histogram(batch_buckets(64)))
    step_ms: Histogram = field(default_factory=lambda: Histogram(TIME_BUCKETS_MS))
    prefill_ms: Histogram = field(default_factory=lambda: Histogram(TIME_BUCKETS_MS))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in self.__slots__:
            v = getattr(self, k)
            out[k] = v.as_dict() if isinstance(v, Histogram) else v
        return out


class LlmBatcher:
    """Generations from every session on one model, batched step by step."""

    name = "llm"
    supports_tools = False  # no grammar constrains the local model to valid tool calls

    def __init__(
        self,
        folder: Path,
        *,
        runtime: RuntimeOptions | None = None,
        settings: LlmSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folder = folder
        self.runtime = runtime or RuntimeOptions(providers=("cpu",))
        self.settings = settings or LlmSettings()
        self._clock = clock
        self._model: LlamaModel | None = None
        self.tokenizer: ChatTokenizer | None = None
        self._queue: BoundedBuffer[Generation] = BoundedBuffer(
            "engine.llm.queue", max_items=self.settings.max_queue_items, policy=Overflow.REJECT
        )
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._sessions: OrderedDict[str, tuple[list[int], KvCache]] = OrderedDict()
        self._sessions_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._tokenizing = 0  # prompts being tokenised by submit(): they count as queued
        self._max_token_chars = 1  # the longest text one token decodes to (set by load)
        # Worker-thread state: the running rows and their shared cache.
        self._rows: list[_Seq] = []
        self._cache: KvCache | None = None
        self.counters = LlmStats()
        self.ready = False

    # -- lifecycle ----------------------------------------------------------------------------
    def load(self) -> None:
        """Load the graph and tokenizer and run one short generation (blocking: call it in a
        thread)."""
        if self._model is None:
            self._model = LlamaModel(self.folder, self.runtime)
            cfg = self._model.config
            self.tokenizer = ChatTokenizer(
                self.folder / "tokenizer.json", cfg.chat_template, eos_id=cfg.eos_id
            )
            self._cache = KvCache.empty(cfg)
            self._max_token_chars = self.tokenizer.max_token_chars()
            ids = self.tokenizer.encode_chat([{"role": "user", "content": "Hi"}])
            self._model.run(KvCache.empty(cfg, 1), [ids], [list(range(len(ids)))], pad_id=0)

    @property
    def provider(self) -> str:
        return self._model.provider if self._model is not None else "?"

    async def start(self) -> None:
        if self._thread is not None:
            return
        await asyncio.to_thread(self.load)
        self._thread = threading.Thread(target=self._worker, name="engine-llm", daemon=True)
        self._thread.start()
        self.ready = True

    async def close(self) -> None:
        """Refuse new requests, end running and queued ones (EngineClosedError), stop."""
        self.ready = False
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        with self._cond:
            queued = [self._queue.pop() for _ in range(len(self._queue))]
        err = EngineClosedError("llm: the engine closed")
        self._send([(g, "", None, err) for g in [*queued, *(s.gen for s in self._rows)]])
        self._rows.clear()
        if self._model is not None:
            self._model.close()
            self._model = None

    # -- requests -----------------------------------------------------------------------------
    def generate(
        self,
        messages: Sequence[Mapping[str, Any]] | None = None,
        params: SamplingParams | None = None,
        *,
        prompt: Sequence[int] | None = None,
        session: str | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        tool_choice: Any = None,
        model: str | None = None,
    ) -> Generation:
        """Start a generation for a chat (``messages``) or raw ``prompt`` token ids; iterate
        the returned :class:`Generation` for its text. Raises :class:`RequestError` for a bad
        request and :class:`OverloadedError` when the queue is full. Call from an event loop.
        (``model`` is informative: this model answers; ``tools`` are refused.)"""
        if tools:
            raise RequestError("llm: the local model cannot call tools (llm_runtime=providers)")
        if self._thread is None or self.tokenizer is None:
            raise EngineClosedError("llm: the engine is not running")
        params = params or SamplingParams()
        if prompt is None:
            if messages is None:
                raise RequestError("llm: give messages or a prompt")
            ids = self.tokenizer.encode_chat(messages)
        else:
            ids = list(prompt)
        if len(ids) > self.settings.max_prompt_tokens:
            raise RequestError(
                f"llm: the prompt has {len(ids)} tokens; at most "
                f"{self.settings.max_prompt_tokens} (max_prompt_tokens)"
            )
        if prompt is not None:
            ids = [int(t) for t in ids]
            vocab = self.tokenizer.vocab_size
            if not ids or any(not 0 <= t < vocab for t in ids):
                raise RequestError(f"llm: prompt token ids must be in [0, {vocab})")
        gen = Generation(f"gen-{next(self._ids)}", ids, params, session, asyncio.get_running_loop())
        with self._cond:
            if self._closing:
                raise EngineClosedError("llm: the engine is closed")
            if self._queue.push(gen) is not Push.ACCEPTED:
                self.counters.refused += 1
                raise self._full()
            self.counters.submitted += 1
            self._cond.notify()
        return gen

    async def submit(
        self,
        messages: Sequence[Mapping[str, Any]],
        params: SamplingParams | None = None,
        *,
        session: str | None = None,
    ) -> Generation:
        """:meth:`generate` for a chat, with the template rendered and the prompt tokenised in
        a worker thread (the event loop goes on meanwhile). A prompt whose text is longer than
        ``max_prompt_tokens`` tokens can hold is refused (:class:`RequestError`) without
        tokenising it; prompts being tokenised count against ``max_queue_items``."""
        tokenizer = self.tokenizer
        if self._thread is None or tokenizer is None:
            raise EngineClosedError("llm: the engine is not running")
        chars = sum(len(m["content"]) for m in messages if isinstance(m.get("content"), str))
        most = self.settings.max_prompt_tokens * self._max_token_chars
        if chars > most:
            raise RequestError(
                f"llm: the prompt has {chars} characters, more than max_prompt_tokens "
                f"({self.settings.max_prompt_tokens}) tokens can hold"
            )
        with self._cond:
            if self._tokenizing + len(self._queue) >= self.settings.max_queue_items:
                self.counters.refused += 1
                raise self._full()
            self._tokenizing += 1
        try:
            ids = await asyncio.to_thread(tokenizer.encode_chat, messages)
        finally:
            with self._cond:
                self._tokenizing -= 1
        return self.generate(params=params, prompt=ids, session=session)

    def _full(self) -> OverloadedError:
        return OverloadedError(
            f"llm: {self.settings.max_queue_items} requests already waiting "
            "(max_queue_items); request refused",
            retry_after_s=self._retry_hint_s(),
        )

    def close_session(self, session: str) -> None:
        """Forget a session's conversation cache."""
        with self._sessions_lock:
            self._sessions.pop(session, None)

    def _retry_hint_s(self) -> float:
        step = self.counters.step_ms
        mean_s = step.sum / step.count / 1000 if step.count else 0.05
        return round(max(0.05, mean_s * 32), 3)

    # -- the worker thread --------------------------------------------------------------------
    def _worker(self) -> None:
        name_os_thread("engine-llm")
        while True:
            with self._cond:
                while not self._rows and not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                room = self.settings.max_batch_items - len(self._rows)
                joiners = [self._queue.pop() for _ in range(min(room, len(self._queue)))]
            try:
                self._step(joiners)
            except Exception as e:  # the worker outlives a failed step; its rows fail
                log.exception("llm: step failed")
                err = InferenceError(f"llm: generation failed: {type(e).__name__}")
                gens = [*joiners, *(s.gen for s in self._rows)]
                self._send([(g, "", None, err) for g in gens if not g.done])
                self.counters.failed += len(gens)
                self._rows.clear()
                assert self._model is not None
                self._cache = KvCache.empty(self._model.config)

    def _step(self, joiners: list[Generation]) -> None:
        out: list[Delivery] = []
        now = self._clock()
        live = []
        for g in joiners:
            if g.cancelled:
                self.counters.cancelled += 1
                out.append((g, "", FINISH_CANCELLED, None))
            elif now - g.submitted_at > self.settings.queue_deadline_s:
                self.counters.deadline_missed += 1
                out.append((g, "", None, DeadlineError("llm: not started within the deadline")))
            else:
                live.append(g)
        if live:
            self._prefill(live, out)
        self._drop_cancelled(out)
        if self._rows:
            try:
                self._decode(out)
            except Exception as e:  # the shared call failed, not one request: its rows fail
                log.exception("llm: decode step failed")
                err = InferenceError(f"llm: generation failed: {type(e).__name__}")
                out.extend((row.gen, "", None, err) for row in self._rows)
                self.counters.failed += len(self._rows)
                self._rows.clear()
                assert self._model is not None
                self._cache = KvCache.empty(self._model.config)
        self._send(out)

    def _prefill(self, gens: list[Generation], out: list[Delivery]) -> None:
        """Set the joiners up and prefill them together; one that fails fails alone."""
        rows: list[tuple[_Seq, KvCache]] = []
        for g in gens:
            try:
                rows.append(self._join(g))
            except Exception:
                self._fail(g, out, "setting up")
        if not rows:
            return
        try:
            ran = self._run_prefill(rows)
        except Exception:
            if len(rows) == 1:
                self._fail(rows[0][0].gen, out, "prefilling")
                return
            for row in rows:  # which one? each alone: only those that fail alone fail
                try:
                    alone = self._run_prefill([row])
                except Exception:
                    self._fail(row[0].gen, out, "prefilling")
                    continue
                self._admit([row[0]], *alone, out)
            return
        self._admit([seq for seq, _ in rows], *ran, out)

    def _join(self, g: Generation) -> tuple[_Seq, KvCache]:
        """A joiner's row and its cached past (its session's longest common prefix)."""
        assert self._model is not None and self.tokenizer is not None
        seq = _Seq(g, self.tokenizer)
        past = KvCache.empty(self._model.config, 1)
        if g.session is not None:
            with self._sessions_lock:
                hit = self._sessions.get(g.session)
            if hit is not None:
                cached_ids, cached = hit
                common = 0
                limit = min(len(cached_ids), len(g.prompt) - 1)
                while common < limit and cached_ids[common] == g.prompt[common]:
                    common += 1
                if common:
                    past = cached.truncated(common)
                    seq.fed = list(g.prompt[:common])
                    g.cached_tokens = common
        return seq, past

    def _run_prefill(self, rows: list[tuple[_Seq, KvCache]]) -> tuple[Any, KvCache]:
        """One prefill call for ``rows`` (each its past and its new prompt tokens)."""
        assert self._model is not None
        seqs = [seq for seq, _ in rows]
        news = [seq.gen.prompt[len(seq.fed) :] for seq in seqs]
        t0 = self._clock()
        logits, cache = self._model.run(
            KvCache.stack([past for _, past in rows]),
            news,
            [list(range(len(s.fed), len(s.fed) + len(n))) for s, n in zip(seqs, news, strict=True)],
            pad_id=self._model.config.eos_id,
        )
        self.counters.prefill_ms.observe((self._clock() - t0) * 1000)
        self.counters.prefill_tokens += sum(len(n) for n in news)
        self.counters.cached_prompt_tokens += sum(s.gen.cached_tokens for s in seqs)
        return logits, cache

    def _admit(self, seqs: list[_Seq], logits: Any, cache: KvCache, out: list[Delivery]) -> None:
        """Sample each prefilled row's first token; those not finished join the batch."""
        keep = []
        for i, seq in enumerate(seqs):
            seq.fed = list(seq.gen.prompt)
            if not self._advance_or_fail(seq, logits[i], out, cache, i):
                keep.append(i)
        if keep:
            joined = cache.select(keep)
            assert self._cache is not None
            self._cache = KvCache.stack([self._cache, joined]) if self._rows else joined
            self._rows.extend(seqs[i] for i in keep)

    def _fail(self, g: Generation, out: list[Delivery], stage: str) -> None:
        """End one generation with an InferenceError (our fault: the log has the details)."""
        log.exception("llm: generation %s failed while %s", g.id, stage)
        self.counters.failed += 1
        out.append((g, "", None, InferenceError(f"llm: generation failed while {stage}")))

    def _decode(self, out: list[Delivery]) -> None:
        assert self._model is not None and self._cache is not None
        rows = self._rows
        t0 = self._clock()
        logits, cache = self._model.run(
            self._cache,
            [[s.next_token] for s in rows],
            [[len(s.fed)] for s in rows],
            pad_id=self._model.config.eos_id,
        )
        st = self.counters
        st.step_ms.observe((self._clock() - t0) * 1000)
        st.steps += 1
        st.batch_size.observe(len(rows))
        keep = []
        for i, seq in enumerate(rows):
            seq.fed.append(seq.next_token)
            if not self._advance_or_fail(seq, logits[i], out, cache, i):
                keep.append(i)
        self._rows = [rows[i] for i in keep]
        self._cache = cache if len(keep) == len(rows) else cache.select(keep)

    def _advance_or_fail(
        self, seq: _Seq, logits: Any, out: list[Delivery], cache: KvCache, row: int
    ) -> bool:
        """:meth:`_advance`; a row whose own work raises fails alone (True: it left)."""
        try:
            return self._advance(seq, logits, out, cache, row)
        except Exception:
            self._fail(seq.gen, out, "sampling")
            return True

    def _advance(
        self, seq: _Seq, logits: Any, out: list[Delivery], cache: KvCache, row: int
    ) -> bool:
        """Sample the next token of ``seq``, release its text; True when it finished."""
        g = seq.gen
        token = sample(logits, g.params, seq.rng)
        self.counters.tokens += 1
        finish: str | None = None
        text = ""
        assert self.tokenizer is not None and self._model is not None
        if token in self.tokenizer.stop_ids:
            finish = FINISH_STOP
        else:
            g.completion_tokens += 1
            text, stopped = seq.stops.push(seq.detok.push(token))
            if stopped:
                finish = FINISH_STOP
            elif g.completion_tokens >= g.params.max_tokens or len(seq.fed) + 1 >= min(
                self.settings.max_context_tokens, self._model.config.context_tokens
            ):
                finish = FINISH_LENGTH
        if finish is not None:
            if not (finish == FINISH_STOP and token not in self.tokenizer.stop_ids):
                tail, stopped = seq.stops.push(seq.detok.flush())
                text += tail if stopped else tail + seq.stops.flush()
            self.counters.completed += 1
            self._remember(seq, cache, row)
            out.append((g, text, finish, None))
            return True
        seq.next_token = token
        if text:
            out.append((g, text, None, None))
        return False

    def _remember(self, seq: _Seq, cache: KvCache, row: int) -> None:
        session, limit = seq.gen.session, self.settings.session_cache_items
        if session is None or limit == 0:
            return
        entry = (list(seq.fed), cache.row(row))
        with self._sessions_lock:
            self._sessions[session] = entry
            self._sessions.move_to_end(session)
            while len(self._sessions) > limit:
                self._sessions.popitem(last=False)

    def _drop_cancelled(self, out: list[Delivery]) -> None:
        keep = [i for i, s in enumerate(self._rows) if not s.gen.cancelled]
        if len(keep) == len(self._rows):
            return
        for s in self._rows:
            if s.gen.cancelled:
                self.counters.cancelled += 1
                out.append((s.gen, "", FINISH_CANCELLED, None))
        assert self._cache is not None
        self._rows = [self._rows[i] for i in keep]
        if self._rows:
            self._cache = self._cache.select(keep)
        else:
            assert self._model is not None
            self._cache = KvCache.empty(self._model.config)

    def _send(self, items: list[Delivery]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Delivery]] = {}
        for item in items:
            by_loop.setdefault(item[0]._loop, []).append(item)
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, batch)
            except RuntimeError:  # that loop is closed: nobody is listening
                pass

    # -- metrics ------------------------------------------------------------------------------
    def queue_load(self) -> QueueLoad:
        """The queue's depth and its oldest generation's wait, now (takes the queue's lock
        for a moment)."""
        with self._cond:
            depth = len(self._queue)
            oldest = self._queue.peek().submitted_at if depth else None
            hint = self._retry_hint_s()
        wait = 0.0 if oldest is None else max(0.0, time.monotonic() - oldest)
        st = self.settings
        return QueueLoad(self.name, depth, st.max_queue_items, wait, st.queue_deadline_s, hint)

    def stats(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "ready": self.ready,
            "running": len(self._rows),
            "queue": self._queue.stats.as_dict(),
            "sessions_cached": len(self._sessions),
            **self.counters.as_dict(),
        }


def _deliver_all(items: list[Delivery]) -> None:
    for gen, text, finish, error in items:
        gen._deliver(text, finish, error)
