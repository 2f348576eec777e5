"""LLM measurements (``python -m tidegate.bench.micro.llm --json``; ``tidegate bench llm``
runs it as a subprocess): for N concurrent generations (N = 1, 4, 8, 16 by default), time to
first token, token interval and aggregate tokens per second, and the throughput ratio of
each N to N = 1. Every generation gets a prompt asking for a long answer and runs to
``max_tokens`` unless the model ends it first (the tokens actually generated are counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tidegate.engines.llm.batcher import LlmBatcher, LlmSettings
from tidegate.engines.llm.sampling import SamplingParams
from tidegate.engines.runtime import RuntimeOptions

TOPICS = ("dragons", "the ocean", "a robot", "the moon", "a city", "a forest", "trains", "music")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _one_case(batcher: LlmBatcher, n: int, max_tokens: int) -> dict[str, Any]:
    params = SamplingParams(max_tokens=max_tokens)
    t0 = time.monotonic()
    gens = [
        batcher.generate(
            [{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."}],
            params,
        )
        for i in range(n)
    ]
    intervals: list[float] = []

    async def consume(g: Any) -> None:
        last = None
        async for _ in g:
            now = time.monotonic()
            if last is not None:
                intervals.append((now - last) * 1000)
            last = now

    await asyncio.gather(*(consume(g) for g in gens))
    wall = max(g.finished_at or time.monotonic() for g in gens) - t0
    tokens = sum(g.completion_tokens for g in gens)
    ttft = [(g.first_token_at - g.submitted_at) * 1000 for g in gens if g.first_token_at]
    return {
        "concurrent": n,
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "ttft_ms_p50": round(_pct(ttft, 0.5), 1),
        "ttft_ms_p95": round(_pct(ttft, 0.95), 1),
        "token_interval_ms_p50": round(_pct(intervals, 0.5), 1),
        "token_interval_ms_p95": round(_pct(intervals, 0.95), 1),
    }


async def measure(
    folder: Path,
    streams: list[int],
    max_tokens: int,
    repeats: int,
    threads: int,
    providers: tuple[str, ...] = ("cpu",),
) -> dict[str, Any]:
    batcher = LlmBatcher(
        folder,
        runtime=RuntimeOptions(providers=providers, intra_op_threads=threads),
        settings=LlmSettings(max_batch_items=max(streams), max_queue_items=max(64, max(streams))),
    )
    await batcher.start()
    try:
        provider = batcher.provider
        cases = []
        for n in streams:
            runs = [await _one_case(batcher, n, max_tokens) for _ in range(repeats)]
            cases.append(max(runs, key=lambda r: r["tokens_per_s"]))
    finally:
        await batcher.close()
    base = next((c["tokens_per_s"] for c in cases if c["concurrent"] == 1), None)
    for c in cases:
        c["throughput_vs_1"] = round(c["tokens_per_s"] / base, 2) if base else None
    return {
        "model": folder.name,
        "provider": provider,
        "max_tokens": max_tokens,
        "threads": threads,
        "repeats_best_of": repeats,
        "load_avg_1m_before": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "cases": cases,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default=os.environ.get("TIDEGATE_DATA_DIR", ".cache/data"))
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--streams", default="1,4,8,16")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    folder = Path(args.data_dir) / "models" / args.model
    streams = [int(s) for s in args.streams.split(",")]
    result = asyncio.run(measure(folder, streams, args.max_tokens, args.repeats, args.threads))
    if args.json:
        print(json.dumps(result))
    else:
        for c in result["cases"]:
            print(c)
    return 0


if __name__ == "__main__":
    sys.exit(main())
