"""A reply's first TTS chunk, urgent or not, while other sessions' replies are being spoken
(``python -m tidegate.bench.micro.tts_priority --json``).

``--sessions`` sessions share one Piper scheduler (one chunk at a time, as the server runs it).
Each speaks ``--replies`` replies: the reply's first chunk (its first four words, as
:class:`~tidegate.engines.tts.stream.TextChunker` cuts it), then its sentences one after the
other as fast as synthesis allows, then a pause (the user's next question) before the next
reply; sessions start a fraction of a reply apart, so a first chunk often arrives while other
sessions' sentences are queued. Two arms run alternately in the same process: ``fifo`` (every
chunk a normal request: the order before latency classes) and ``urgent`` (the first chunk
``urgent=True``, as the reply lane submits it).

Reported per arm: the first chunk's latency (submit to audio) p50/p90 in ms, and the same
divided by the arm's mean chunk run time (``first_chunk_in_runs``: how many chunk runs a first
chunk waited and ran for; a ratio that holds on a loaded machine, where the milliseconds do
not).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from tidegate.engines.runtime import RuntimeOptions
from tidegate.engines.scheduler import BatchPolicy, Scheduler
from tidegate.engines.tts.piper import PiperVoice

REPLIES = (
    "The capital of France is Paris. It is known for the Eiffel Tower and its museums.",
    "Water boils at one hundred degrees Celsius at sea level. At altitude it boils sooner.",
    "Trains run every ten minutes during the day. At night they run less often, every half hour.",
    "Photosynthesis turns light into chemical energy. Plants do it in their green leaves.",
)
FIRST_WORDS = 4
PAUSE_S = 0.5  # between a reply's last sentence and the next reply's first chunk


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _split(reply: str) -> tuple[str, list[str]]:
    words = reply.split()
    first = " ".join(words[:FIRST_WORDS])
    rest = " ".join(words[FIRST_WORDS:])
    sentences = [s.strip() + "." for s in rest.split(".") if s.strip()]
    return first, sentences


async def _session(
    scheduler: Scheduler[str, Any], replies: list[str], *, urgent: bool, delay_s: float
) -> list[float]:
    await asyncio.sleep(delay_s)
    firsts = []
    for reply in replies:
        first, rest = _split(reply)
        t0 = time.monotonic()
        await scheduler.submit(first, urgent=urgent)
        firsts.append(time.monotonic() - t0)
        for sentence in rest:
            await scheduler.submit(sentence)
        await asyncio.sleep(PAUSE_S)
    return firsts


async def _arm(
    voice: PiperVoice, sessions: int, replies: int, *, urgent: bool, seed: int
) -> dict[str, Any]:
    scheduler: Scheduler[str, Any] = Scheduler(
        voice, BatchPolicy(max_batch_items=1, batch_wait_s=0.0, deadline_s=120.0)
    )
    await scheduler.start()
    rng = random.Random(seed)
    try:
        runs = await asyncio.gather(
            *(
                _session(
                    scheduler,
                    [REPLIES[(i + k) % len(REPLIES)] for k in range(replies)],
                    urgent=urgent,
                    delay_s=i * 0.7 + rng.uniform(0, 0.3),
                )
                for i in range(sessions)
            )
        )
        run = scheduler.counters.run_ms
        mean_run_ms = run.sum / run.count if run.count else float("nan")
    finally:
        await scheduler.close()
    firsts_ms = [x * 1000 for r in runs for x in r]
    return {
        "first_chunk_ms": {"p50": _pct(firsts_ms, 0.5), "p90": _pct(firsts_ms, 0.9)},
        "mean_chunk_run_ms": mean_run_ms,
        "first_chunk_in_runs": {
            "p50": _pct(firsts_ms, 0.5) / mean_run_ms,
            "p90": _pct(firsts_ms, 0.9) / mean_run_ms,
        },
        "n": len(firsts_ms),
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    voice = PiperVoice(Path(args.model), runtime=RuntimeOptions(providers=("cpu",)))
    voice.load()
    voice.warmup()
    out: dict[str, Any] = {"sessions": args.sessions, "replies": args.replies, "rounds": []}
    try:
        for r in range(args.rounds):
            for name in ("fifo", "urgent"):  # alternately, the same seed per round
                arm = await _arm(
                    voice, args.sessions, args.replies, urgent=name == "urgent", seed=r
                )
                out["rounds"].append({"round": r, "arm": name, **arm})
                print(f"round {r} {name}: {arm}", file=sys.stderr)
    finally:
        voice.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the Piper voice (.onnx, with its .json)")
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--replies", type=int, default=2, help="replies per session and arm")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args()
    results = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
