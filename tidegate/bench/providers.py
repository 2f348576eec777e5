"""``tidegate bench llm --providers``: tidegate in front of OpenAI-compatible providers, measured
against the providers themselves in the same run.

Two llama.cpp servers (:mod:`.llama_server`, SmolLM2-135M, one thread each) are the providers
``a`` and ``b`` of a ``tidegate serve`` started with ``llm_runtime=providers``. Then:

- **overhead**: the same streamed chat completion (greedy, a few tokens), alternately straight
  to provider ``a`` and through tidegate's ``/v1/chat/completions`` (which sends it to ``a``):
  time to first token of each, and the difference of their p50 and p99;
- **failover**: ``--kills`` times, a longer streamed reply through tidegate while provider
  ``a`` is killed (SIGKILL) at a random moment from 0 to ``--kill-window-s`` after the request
  was sent (before its first token or during the reply); the time from the kill to the next
  token the client receives (which comes from ``b``) — the user-visible failover. ``a`` is
  restarted after each kill. The server's own view comes from /metrics:
  ``tidegate_llm_failover_switch_seconds`` (failure seen -> request sent to ``b``) and
  ``tidegate_llm_failover_seconds`` (failure seen -> first token from ``b``).

Provider ``b`` runs with ``standby_every_tokens`` = ``--standby-every-tokens`` (default 16): while
``a`` answers, ``b`` is sent the prompt and the text streamed so far every that many tokens, so
a mid-stream failover finds them in its prompt cache (docs/llm-tts.md); 0 measures ``b`` left
cold (it then has only what earlier trials left in its cache: the bench repeats one prompt).

Only loopback traffic; every loop is bounded by its count.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from .llama_server import LlamaServer, find_binary
from .report import percentiles
from .target import started_server

SHORT = [{"role": "user", "content": "What is the capital of France?"}]
LONG = [{"role": "user", "content": "Write a long story about a cat who travels the world."}]


def _summary(values: list[float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in percentiles(values).items()}


async def _first_token_ms(
    http: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
) -> float:
    """Send a streamed completion; ms to its first content; read it to the end."""
    for _ in range(2):  # once more after a stale keep-alive connection (no response at all)
        try:
            return await _first_token_once(http, url, body, headers)
        except httpx.RemoteProtocolError:
            continue
    return await _first_token_once(http, url, body, headers)


async def _first_token_once(
    http: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
) -> float:
    t0 = time.perf_counter()
    first: float | None = None
    async with http.stream("POST", url, content=orjson.dumps(body), headers=headers) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data: {"):
                chunk = orjson.loads(line[6:])
                choices = chunk.get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    first = time.perf_counter()
    if first is None:
        raise RuntimeError(f"{url}: no token")
    return (first - t0) * 1000


async def _overhead(
    http: httpx.AsyncClient, direct: str, through: str, token: str, requests: int
) -> dict[str, Any]:
    body = {
        "model": "smollm2",
        "messages": SHORT,
        "stream": True,
        "temperature": 0,
        "max_tokens": 3,
    }
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(3):  # warm both paths (connections, the provider's prompt cache)
        await _first_token_ms(http, direct, body, {})
        await _first_token_ms(http, through, body, auth)
    d: list[float] = []
    t: list[float] = []
    for i in range(requests):  # alternate, so that both see the same load
        if i % 2:
            t.append(await _first_token_ms(http, through, body, auth))
            d.append(await _first_token_ms(http, direct, body, {}))
        else:
            d.append(await _first_token_ms(http, direct, body, {}))
            t.append(await _first_token_ms(http, through, body, auth))
    direct_s, through_s = _summary(d), _summary(t)
    return {
        "requests_each": requests,
        "direct_ttft_ms": direct_s,
        "tidegate_ttft_ms": through_s,
        "overhead_ms_p50": round(through_s["p50"] - direct_s["p50"], 2),
        "overhead_ms_p99": round(through_s["p99"] - direct_s["p99"], 2),
        "paired_overhead_ms": _summary([b - a for a, b in zip(d, t, strict=True)]),
    }


async def _one_kill(
    http: httpx.AsyncClient, through: str, token: str, a: LlamaServer, delay_s: float
) -> tuple[float | None, str]:
    """One reply through tidegate with ``a`` killed ``delay_s`` after sending: ms from the kill
    to the next token received (None if the reply ended before the kill), and where it fell."""
    body = {
        "model": "smollm2",
        "messages": LONG,
        "stream": True,
        "temperature": 0,
        "max_tokens": 64,
    }
    headers = {"Authorization": f"Bearer {token}"}
    killed_at: float | None = None
    tokens_before = 0
    after: float | None = None
    loop = asyncio.get_running_loop()

    async def killer() -> None:
        nonlocal killed_at
        await asyncio.sleep(delay_s)
        killed_at = time.perf_counter()
        a.kill()

    kill_task = loop.create_task(killer())
    try:
        async with http.stream("POST", through, content=orjson.dumps(body), headers=headers) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                choices = orjson.loads(line[6:]).get("choices") or [{}]
                if not (choices[0].get("delta") or {}).get("content"):
                    continue
                now = time.perf_counter()
                if killed_at is None:
                    tokens_before += 1
                elif after is None:
                    after = now
    finally:
        if not kill_task.done():
            kill_task.cancel()
        await asyncio.gather(kill_task, return_exceptions=True)
    where = "before_first_token" if tokens_before == 0 else "midstream"
    if killed_at is None or after is None:
        return None, "after_reply"
    return (after - killed_at) * 1000, where


def _histogram(metrics: str, name: str) -> dict[str, Any]:
    """Sum, count and bucket counts of one unlabelled histogram in a Prometheus exposition."""
    out: dict[str, Any] = {"buckets": {}}
    for line in metrics.splitlines():
        if line.startswith(name + "_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out["buckets"][le] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(name + "_sum"):
            out["sum_s"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(name + "_count"):
            out["count"] = float(line.rsplit(" ", 1)[1])
    if out.get("count"):
        out["mean_ms"] = round(out["sum_s"] / out["count"] * 1000, 2)
        total = out["count"]
        p99 = next((le for le, c in out["buckets"].items() if c >= 0.99 * total), None)
        out["p99_bucket_le_s"] = p99
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    binary = Path(args.llama_server) if args.llama_server else find_binary()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="tidegate-bench-llm-") as tmp:
        a = LlamaServer(binary, Path(tmp), name="a")
        b = LlamaServer(binary, Path(tmp), name="b")
        for server in (a, b):
            await asyncio.to_thread(server.start)
        env = {
            "TIDEGATE_ENGINES": "llm",
            "TIDEGATE_LLM_RUNTIME": "providers",
            "TIDEGATE_LLM_PROVIDERS": f"a={a.url},b={b.url}",
            "TIDEGATE_LLM_PROVIDER_OPTIONS": "a.model=smollm2,b.model=smollm2,"
            f"b.standby_every_tokens={args.standby_every_tokens}",
            "TIDEGATE_RATE_REQUESTS_PER_S": "0",
            # a killed primary must not stay skipped: the next trial goes to it again
            "TIDEGATE_LLM_PROVIDER_BREAKER_FAILURES": str(args.kills + 10),
        }
        try:
            async with (
                started_server(env) as target,
                httpx.AsyncClient(timeout=60, trust_env=False) as http,
            ):
                through = target.http_url + "/v1/chat/completions"
                direct = a.url + "/v1/chat/completions"
                overhead = await _overhead(http, direct, through, target.token, args.requests)
                kills: list[float] = []
                where: dict[str, list[float]] = {"before_first_token": [], "midstream": []}
                missed = 0
                for _ in range(args.kills):
                    if a.proc is None:
                        await asyncio.to_thread(a.start)
                    ms, when = await _one_kill(
                        http, through, target.token, a, rng.uniform(0, args.kill_window_s)
                    )
                    if ms is None:
                        missed += 1
                        continue
                    kills.append(ms)
                    where[when].append(ms)
                admin = target.admin()
                headers = {"Authorization": f"Bearer {admin}"} if admin else {}
                metrics = (await http.get(target.http_url + "/metrics", headers=headers)).text
        finally:
            a.stop()
            b.stop()
    return {
        "providers": "2 x llama-server (llama.cpp, SmolLM2-135M Q4_1, 1 thread each)",
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "standby_every_tokens": args.standby_every_tokens,
        "overhead": overhead,
        "failover": {
            "kills": args.kills,
            "kill_window_s": args.kill_window_s,
            "reply_ended_before_the_kill": missed,
            "kill_to_next_token_ms": _summary(kills),
            "by_moment": {k: _summary(v) for k, v in where.items()},
            "server_switch": _histogram(metrics, "tidegate_llm_failover_switch_seconds"),
            "server_failover": _histogram(metrics, "tidegate_llm_failover_seconds"),
        },
    }
