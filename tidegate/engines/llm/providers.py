"""The LLM engine on OpenAI-compatible providers (``llm_runtime = providers``): an ordered list of
servers (:class:`~tidegate.engines.runtime.openai.OpenAiClient` each) behind the same interface
as the local :class:`~tidegate.engines.llm.LlmBatcher` — ``generate(messages, params,
session=...)`` gives a :class:`~tidegate.engines.llm.Generation` to iterate — so the assistant
and ``/v1/chat/completions`` use either without knowing which.

Routing and failover (docs/llm-tts.md "Providers"):

- a request goes to the first provider of its chain (every provider, in order; or, for a
  ``model`` a provider serves, those providers) whose circuit breaker lets it through and that
  has a free slot (``max_requests`` in flight each). A full provider is skipped; when every
  provider is full or open the request is refused at once (:class:`OverloadedError` with a
  retry hint), the local engines' policy;
- before the first token, a refused connection, a 5xx, a 429, a broken stream or the
  first-token timeout moves the request to the next provider of the chain at once;
- in the middle of a reply, the same failures move it to the next provider with the text
  already streamed given as the assistant's message to continue (``continue_final_message``,
  which vLLM, SGLang and llama.cpp's server honour; a provider that cannot continue answers
  anew after the prefix). A reply whose tool call was being streamed fails instead: half a
  call cannot be continued;
- any other 4xx (a bad key, an unknown model, a refused request) fails the request at once
  with the provider's message: no retry, no storm. 401/403/404 still count against the
  provider's breaker (it is misconfigured), 400/413/422 do not (the request was bad);
- a provider with ``standby_every_tokens`` N > 0 is kept warm while it is a reply's next
  provider (its standby): the reply's prompt and the text streamed so far are sent to it
  (``max_tokens`` 1, the answer dropped) with the attempt's first token and every N tokens,
  so that its prompt cache holds what a mid-stream failover will send it but the last < N
  tokens. At most one such request per reply is in flight, none while the standby is open
  or has ``max_requests`` in flight; a failed one changes nothing (not its breaker);
- each provider has a :class:`~.breaker.CircuitBreaker`: ``breaker_failures`` consecutive
  failures open it, ``breaker_open_s`` later one request probes it.

Every reply runs as a task the engine owns (cancelled and awaited by ``close``);
``Generation.cancel()`` cancels it at once, which closes its HTTP stream (the provider stops).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import EngineClosedError, EngineError, OverloadedError, RequestError
from ..metrics import TIME_BUCKETS_MS, Histogram, QueueLoad
from ..runtime.openai import OpenAiClient, ProviderConfig, ProviderError
from .batcher import FINISH_CANCELLED, FINISH_STOP, Generation
from .breaker import BreakerState, CircuitBreaker
from .sampling import SamplingParams
from .tools import ToolCall, ToolCallDelta, ToolCallError, finish_call

log = logging.getLogger(__name__)

FINISH_TOOL_CALLS = "tool_calls"
MAX_CALL_ID_CHARS = 64  # the wire's id limit (protocol/messages.py MAX_ID_CHARS)
TTFT_BUCKETS_MS = (*TIME_BUCKETS_MS, 2500.0, 5000.0, 10000.0)


@dataclass(frozen=True, slots=True)
class ProvidersSettings:
    """The providers in order of preference, and their circuit breakers."""

    providers: tuple[ProviderConfig, ...]
    breaker_failures: int = 3
    breaker_open_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.providers:
            raise ValueError("the providers runtime needs at least one provider")
        names = [p.name for p in self.providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique, got {names}")
        if self.breaker_failures < 1 or self.breaker_open_s <= 0:
            raise ValueError("breaker_failures must be at least 1, breaker_open_s positive")


class ProviderUnavailableError(OverloadedError):
    """No provider of the chain could serve the request (each down, open, full or failing)."""


@dataclass(slots=True)
class ProviderStats:
    requests: int = 0  # attempts sent to it
    completed: int = 0
    failures: int = 0  # attempts that failed (any reason)
    refusals: int = 0  # 4xx other than 429: failed fast
    skipped_open: int = 0  # its breaker was open
    skipped_full: int = 0  # max_requests in flight
    failovers_from: int = 0  # requests that moved on to the next provider after failing here
    failovers_midstream: int = 0  # of which after the first token
    standby_warms: int = 0  # warming requests it answered as a standby
    standby_warm_failures: int = 0  # warming requests that failed (nothing else changes)
    ttft_ms: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS_MS))


class Provider:
    """One provider: its client, breaker, in-flight count and counters."""

    def __init__(
        self, config: ProviderConfig, settings: ProvidersSettings, clock: Callable[[], float]
    ) -> None:
        self.config = config
        self.name = config.name
        self.client = OpenAiClient(config)
        self.breaker = CircuitBreaker(
            failures_to_open=settings.breaker_failures, open_s=settings.breaker_open_s, clock=clock
        )
        self.in_flight = 0
        self.warming = 0  # standby warming requests in flight
        self.stats = ProviderStats()
        self.last_error = ""

    def serves(self, model: str) -> bool:
        return model in (self.config.model, self.config.name)

    def as_dict(self) -> dict[str, Any]:
        st = self.stats
        return {
            "model": self.config.model,
            "state": self.breaker.state.value,
            "in_flight": self.in_flight,
            "max_requests": self.config.max_requests,
            "consecutive_failures": self.breaker.consecutive_failures,
            "breaker_opened": self.breaker.opened,
            "requests": st.requests,
            "completed": st.completed,
            "failures": st.failures,
            "refusals": st.refusals,
            "skipped_open": st.skipped_open,
            "skipped_full": st.skipped_full,
            "failovers_from": st.failovers_from,
            "failovers_midstream": st.failovers_midstream,
            "standby_warms": st.standby_warms,
            "standby_warm_failures": st.standby_warm_failures,
            "ttft_ms": st.ttft_ms.as_dict(),
            "stale_retries": self.client.stale_retries,
            "last_error": self.last_error,
        }


class ProviderGeneration(Generation):
    """A reply from the providers: text and tool-call pieces in order (``events()``), text
    alone when iterated; ``tool_calls`` once done; which ``provider`` answered and after how
    many ``failovers``."""

    def __init__(
        self,
        gen_id: str,
        params: SamplingParams,
        session: str | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(gen_id, [], params, session, loop)
        self._items: list[str | ToolCallDelta] = []
        self.task: asyncio.Task[None] | None = None
        self.provider: str | None = None
        self.failovers = 0
        self.failed_at: float | None = None  # when the last provider failure was seen
        self.failover_first_token_s: float | None = None  # failure -> first token of the next
        self.streamed_tool = False

    def cancel(self) -> None:
        super().cancel()
        if self.task is not None and not self.done:
            self.task.cancel()

    def _deliver(self, text: str, finish: str | None, error: EngineError | None) -> None:
        if text:
            self._items.append(text)
        super()._deliver(text, finish, error)
        self._chunks.clear()  # the items are the one queue here

    def _deliver_tool(self, delta: ToolCallDelta) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.streamed_tool = True
        self._items.append(delta)
        self._wake.set()

    async def events(self) -> AsyncIterator[str | ToolCallDelta]:
        try:
            while True:
                if self._items:
                    items, self._items = self._items, []
                    text: list[str] = []
                    for item in items:  # consecutive text coalesces
                        if isinstance(item, str):
                            text.append(item)
                            continue
                        if text:
                            yield "".join(text)
                            text = []
                        yield item
                    if text:
                        yield "".join(text)
                    continue
                if self._done:
                    if self._error is not None:
                        raise self._error
                    return
                self._wake.clear()
                await self._wake.wait()
        finally:
            if not self._done:
                self.cancel()

    async def __aiter__(self) -> AsyncIterator[str]:
        async for item in self.events():
            if isinstance(item, str):
                yield item


class ProviderPool:
    """The ``llm`` engine on providers (see the module docstring)."""

    name = "llm"
    supports_tools = True

    def __init__(
        self, settings: ProvidersSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._clock = clock
        self.providers = [Provider(c, settings, clock) for c in settings.providers]
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._closing = False
        self.ready = False
        self.submitted = 0
        self.refused = 0
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self.failovers = 0
        self.failover_ms = Histogram(TTFT_BUCKETS_MS)  # failure -> first token of the next
        self.switch_ms = Histogram(TIME_BUCKETS_MS)  # failure -> request sent to the next
        self._reply_s = 0.0  # mean reply duration (for the retry hint), exponentially weighted

    @property
    def provider(self) -> str:
        return "providers(" + ",".join(p.name for p in self.providers) + ")"

    @property
    def tokenizer(self) -> None:
        return None  # the providers tokenize

    async def start(self) -> None:
        for p in self.providers:
            await p.client.start()
        self.ready = True

    async def close(self) -> None:
        self.ready = False
        self._closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for p in self.providers:
            await p.client.close()

    def close_session(self, session: str) -> None:
        """Nothing kept per session here (the providers keep their own prompt caches)."""

    # -- requests ---------------------------------------------------------------------------
    def chain(self, model: str | None = None) -> list[Provider]:
        """The providers a request for ``model`` tries, in order: those serving it, or all."""
        if model:
            serving = [p for p in self.providers if p.serves(model)]
            if serving:
                return serving
        return list(self.providers)

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
    ) -> ProviderGeneration:
        """Start a reply to ``messages`` on the first provider that can take it; iterate the
        result. Raises :class:`RequestError` (no messages, or token ids: providers take chat
        messages) and :class:`OverloadedError` (every provider open or full). Call from an
        event loop."""
        if self._closing or not self.ready:
            raise EngineClosedError("llm: the providers engine is not running")
        if prompt is not None or not messages:
            raise RequestError("llm: the providers runtime takes chat messages, not token ids")
        params = params or SamplingParams()
        chain = self.chain(model)
        if not any(p.breaker.state is not BreakerState.OPEN for p in chain):
            self.refused += 1
            wait = min(p.breaker.retry_after_s() for p in chain)
            raise ProviderUnavailableError(
                "llm: every provider is failing (circuit open: "
                + ", ".join(f"{p.name}: {p.last_error or 'failing'}" for p in chain)
                + ")",
                retry_after_s=round(max(0.25, wait), 3),
            )
        if all(p.in_flight >= p.config.max_requests for p in chain):
            self.refused += 1
            raise OverloadedError(
                "llm: every provider has max_requests in flight; request refused",
                retry_after_s=self._retry_hint_s(),
            )
        loop = asyncio.get_running_loop()
        gen = ProviderGeneration(f"gen-p{next(self._ids)}", params, session, loop)
        self.submitted += 1
        request = _Request(
            [dict(m) for m in messages],
            params,
            [dict(t) for t in tools] if tools else None,
            tool_choice,
            {t["function"]["name"] for t in tools or () if isinstance(t.get("function"), dict)},
        )
        task = loop.create_task(self._run(gen, chain, request), name=f"llm-{gen.id}")
        gen.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return gen

    async def submit(
        self,
        messages: Sequence[Mapping[str, Any]],
        params: SamplingParams | None = None,
        *,
        session: str | None = None,
    ) -> ProviderGeneration:
        """:meth:`generate` (the local batcher's awaitable entry point; nothing to tokenise
        here)."""
        return self.generate(messages, params, session=session)

    def _retry_hint_s(self) -> float:
        return round(min(30.0, max(0.25, self._reply_s)), 3)

    # -- one reply, across providers --------------------------------------------------------
    async def _run(self, gen: ProviderGeneration, chain: list[Provider], req: _Request) -> None:
        errors: list[str] = []
        tried = 0
        try:
            for i, provider in enumerate(chain):
                if provider.in_flight >= provider.config.max_requests:
                    provider.stats.skipped_full += 1
                    continue
                if not provider.breaker.allow():
                    provider.stats.skipped_open += 1
                    continue
                if tried:
                    self.failovers += 1
                    gen.failovers += 1
                    if gen.failed_at is not None:
                        self.switch_ms.observe((self._clock() - gen.failed_at) * 1000)
                tried += 1
                try:
                    await self._attempt(provider, gen, req, self._standby(chain[i + 1 :]))
                except ProviderError as e:
                    provider.last_error = str(e)
                    errors.append(str(e))
                    log.warning("llm: %s", e)
                    if not e.retryable:
                        self.failed += 1
                        gen._deliver("", None, e)
                        return
                    if gen.streamed_tool:
                        self.failed += 1
                        gen._deliver(
                            "",
                            None,
                            ProviderError(provider.name, e.kind, f"{e} (during a tool call)"),
                        )
                        return
                    gen.failed_at = self._clock()
                    provider.stats.failovers_from += 1
                    if gen.output:
                        provider.stats.failovers_midstream += 1
                    continue
                except ToolCallError as e:
                    self.failed += 1
                    gen._deliver("", None, e)
                    return
                self.completed += 1
                return
            self.failed += 1
            waits = [p.breaker.retry_after_s() for p in chain]
            why = "; ".join(errors) if errors else "every provider is open or full"
            gen._deliver(
                "",
                None,
                ProviderUnavailableError(
                    f"llm: no provider could answer ({why})",
                    retry_after_s=round(max(0.25, min(waits)), 3),
                ),
            )
        except asyncio.CancelledError:
            self.cancelled += 1
            if not gen.done:
                gen._deliver("", FINISH_CANCELLED, None)
            raise
        except Exception as e:  # ours: the reply fails, the engine goes on
            log.exception("llm: reply %s failed", gen.id)
            self.failed += 1
            if not gen.done:
                gen._deliver("", None, EngineError(f"llm: reply failed: {type(e).__name__}"))

    @staticmethod
    def _standby(rest: Sequence[Provider]) -> Provider | None:
        """The provider a failover would move to next, if it is to be kept warm."""
        for p in rest:
            if p.in_flight >= p.config.max_requests or p.breaker.state is BreakerState.OPEN:
                continue
            return p if p.config.standby_every_tokens > 0 else None
        return None

    def _warm(
        self, standby: Provider, gen: ProviderGeneration, req: _Request
    ) -> asyncio.Task[None] | None:
        """Send ``standby`` the reply so far (prompt and text streamed), ``max_tokens`` 1, for
        its prompt cache; None when it is open or has no room (its ``max_requests`` counting
        the warming requests in flight)."""
        if (
            self._closing
            or standby.breaker.state is BreakerState.OPEN
            or standby.in_flight + standby.warming >= standby.config.max_requests
        ):
            return None
        body = req.body(standby.config.model, gen.output, gen)
        body["max_tokens"] = 1
        task = asyncio.get_running_loop().create_task(
            self._warm_one(standby, body), name=f"llm-warm-{gen.id}-{standby.name}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @staticmethod
    async def _warm_one(standby: Provider, body: dict[str, Any]) -> None:
        standby.warming += 1
        try:
            async for _ in standby.client.stream_chat(body):
                pass
            standby.stats.standby_warms += 1
        except ProviderError as e:
            standby.stats.standby_warm_failures += 1
            log.debug("llm: warming standby %s failed: %s", standby.name, e)
        except Exception:  # ours: logged; the reply and the standby go on
            standby.stats.standby_warm_failures += 1
            log.exception("llm: warming standby %s failed", standby.name)
        finally:
            standby.warming -= 1

    async def _attempt(
        self,
        provider: Provider,
        gen: ProviderGeneration,
        req: _Request,
        standby: Provider | None = None,
    ) -> None:
        """One provider's try at (the rest of) the reply, keeping ``standby`` warm (see the
        module docstring); raises ProviderError."""
        every = standby.config.standby_every_tokens if standby is not None else 0
        warming: asyncio.Task[None] | None = None
        since_warm = every - 1  # the first warm goes with the first token (not before)
        st = provider.stats
        st.requests += 1
        provider.in_flight += 1
        sent = self._clock()
        prefix = gen.output
        calls: dict[int, list[str]] = {}  # index -> [call_id, name, arguments]
        finish: str | None = None
        usage: dict[str, Any] | None = None
        tokens = 0
        first = True
        settled = False
        try:
            async for chunk in provider.client.stream_chat(
                req.body(provider.config.model, prefix, gen)
            ):
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or ():
                    if not isinstance(choice, dict):
                        continue
                    delta = choice.get("delta") or {}
                    content = delta.get("content") if isinstance(delta, dict) else None
                    pieces = delta.get("tool_calls") if isinstance(delta, dict) else None
                    if (content or pieces) and first:
                        first = False
                        now = self._clock()
                        st.ttft_ms.observe((now - sent) * 1000)
                        gen.provider = provider.name
                        if gen.failed_at is not None:
                            gen.failover_first_token_s = now - gen.failed_at
                            self.failover_ms.observe(gen.failover_first_token_s * 1000)
                    if isinstance(content, str) and content:
                        tokens += 1
                        gen._deliver(content, None, None)
                        since_warm += 1
                        if (
                            standby is not None
                            and every
                            and since_warm >= every
                            and (warming is None or warming.done())
                        ):
                            warming = self._warm(standby, gen, req)
                            since_warm = 0
                    if isinstance(pieces, list):
                        for piece in pieces:
                            self._tool_piece(gen, calls, piece)
                    if choice.get("finish_reason"):
                        finish = str(choice["finish_reason"])
            if finish is None:
                finish = FINISH_STOP
            provider.breaker.success()  # it answered; what the model said is not its fault
            settled = True
            st.completed += 1
            gen.tool_calls = tuple(
                finish_call(cid, name, args, req.declared)
                for _, (cid, name, args) in sorted(calls.items())
            )
            tool_calls = gen.tool_calls
            if tool_calls:
                finish = FINISH_TOOL_CALLS
            if usage is not None:
                gen.prompt_tokens = int(usage.get("prompt_tokens") or 0)
                gen.completion_tokens += int(usage.get("completion_tokens") or tokens)
            else:
                gen.completion_tokens += tokens
            elapsed = self._clock() - gen.submitted_at
            self._reply_s = 0.9 * self._reply_s + 0.1 * elapsed if self._reply_s else elapsed
            gen._deliver("", finish, None)
        except ProviderError as e:
            gen.completion_tokens += tokens
            st.failures += 1
            if e.provider_fault:
                provider.breaker.failure()
            else:
                provider.breaker.release()
            if not e.retryable:
                st.refusals += 1
            settled = True
            raise
        finally:
            provider.in_flight -= 1
            if not settled:
                provider.breaker.release()

    @staticmethod
    def _tool_piece(gen: ProviderGeneration, calls: dict[int, list[str]], piece: Any) -> None:
        if not isinstance(piece, dict):
            return
        index = piece.get("index", len(calls))
        if not isinstance(index, int):
            return
        raw = piece.get("function")
        fn: dict[str, Any] = raw if isinstance(raw, dict) else {}
        entry = calls.get(index)
        if entry is None:
            # the provider's id, unless it has none or one too long for the wire (ids only
            # pair a call with its output, and the next round sends both: any id does)
            call_id = str(piece.get("id") or "")
            if not 0 < len(call_id) <= MAX_CALL_ID_CHARS:
                call_id = f"call_{gen.id}_{index}"
            entry = calls[index] = [call_id, str(fn.get("name") or ""), ""]
        elif fn.get("name") and not entry[1]:
            entry[1] = str(fn["name"])
        fragment = fn.get("arguments") or ""
        if not isinstance(fragment, str):
            fragment = str(fragment)
        entry[2] += fragment
        gen._deliver_tool(ToolCallDelta(index, entry[0], entry[1], fragment))

    # -- metrics ----------------------------------------------------------------------------
    def queue_load(self) -> QueueLoad:
        """Requests in flight against the providers' total ``max_requests`` (nothing waits:
        a request that finds every provider full is refused)."""
        depth = sum(p.in_flight for p in self.providers)
        capacity = sum(p.config.max_requests for p in self.providers)
        return QueueLoad(self.name, depth, capacity, 0.0, 1.0, self._retry_hint_s())

    def readiness(self) -> dict[str, Any]:
        """Each provider's state and counts, for /readyz (no URL, no key)."""
        out = {}
        for p in self.providers:
            st = p.stats
            out[p.name] = {
                "state": p.breaker.state.value,
                "in_flight": p.in_flight,
                "requests": st.requests,
                "failures": st.failures,
                "failovers_from": st.failovers_from,
                "standby_warms": st.standby_warms,
                "ttft_ms_mean": round(st.ttft_ms.sum / st.ttft_ms.count, 1)
                if st.ttft_ms.count
                else None,
            }
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "runtime": "providers",
            "ready": self.ready,
            "running": len(self._tasks),
            "submitted": self.submitted,
            "refused": self.refused,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "failovers": self.failovers,
            "failover_ms": self.failover_ms.as_dict(),
            "switch_ms": self.switch_ms.as_dict(),
            "providers": {p.name: p.as_dict() for p in self.providers},
        }


@dataclass(frozen=True, slots=True)
class _Request:
    messages: list[dict[str, Any]]
    params: SamplingParams
    tools: list[dict[str, Any]] | None
    tool_choice: Any
    declared: set[str]

    def body(self, model: str, prefix: str, gen: Generation) -> dict[str, Any]:
        """The request body for one provider; ``prefix`` (text already streamed by another
        provider) is given as the assistant's message to continue."""
        p = self.params
        messages = self.messages
        body: dict[str, Any] = {
            "model": model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max(1, p.max_tokens - gen.completion_tokens),
            "temperature": p.temperature,
            "top_p": p.top_p,
        }
        if prefix:
            messages = [*messages, {"role": "assistant", "content": prefix}]
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        body["messages"] = messages
        if p.stop:
            body["stop"] = list(p.stop)
        if p.seed is not None:
            body["seed"] = p.seed
        if self.tools:
            body["tools"] = self.tools
            if self.tool_choice is not None:
                body["tool_choice"] = self.tool_choice
        return body


__all__ = [
    "FINISH_TOOL_CALLS",
    "ProviderGeneration",
    "ProviderPool",
    "ProviderUnavailableError",
    "ProvidersSettings",
    "ToolCall",
]
