"""TTS measurements (``python -m tidegate.bench.micro.tts --json``; ``tidegate bench tts``
runs it as a subprocess):

- real-time factor: synthesis time / audio duration, per sentence, at 48 kHz out;
- time to first audio: replies are pushed into a :class:`TtsStream` word by word at an LLM's
  pace (``--token-interval-ms``); measured from the push that completes the reply's first
  sentence to the first 20 ms frame out (negative: audio started before the sentence was
  complete, which the early first chunk allows), and from the reply's first word. Both with
  the default chunk policy and with whole-sentence chunks (``first_chunk_words=0``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from tidegate.engines.runtime import RuntimeOptions
from tidegate.engines.scheduler import BatchPolicy, Scheduler
from tidegate.engines.tts.piper import OUTPUT_RATE_HZ, PiperVoice
from tidegate.engines.tts.stream import ChunkPolicy, TtsStream

REPLIES = (
    "The capital of France is Paris. It is known for the Eiffel Tower.",
    "Sure, I can help with that. First, open the settings menu.",
    "Water boils at one hundred degrees Celsius at sea level. At altitude it boils sooner.",
    "Hello! How can I help you today?",
    "The meeting starts at nine tomorrow morning. Please bring your notes.",
    "Photosynthesis turns light into chemical energy. Plants do it in their leaves.",
    "I do not know the answer to that question. Could you tell me more?",
    "Trains run every ten minutes during the day. At night they run less often.",
)
SENTENCE_END = re.compile(r"[.!?]$")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _reply(
    scheduler: Scheduler[str, Any], text: str, policy: ChunkPolicy, interval_s: float
) -> tuple[float, float]:
    stream = TtsStream(scheduler.submit, policy=policy)
    first_frame = asyncio.get_running_loop().create_future()

    async def read() -> None:
        async for _ in stream.frames():
            if not first_frame.done():
                first_frame.set_result(time.monotonic())

    reader = asyncio.get_running_loop().create_task(read())
    start = time.monotonic()
    sentence_end = None
    for word in text.split(" "):
        stream.push(word + " ")
        if sentence_end is None and SENTENCE_END.search(word):
            sentence_end = time.monotonic()
        await asyncio.sleep(interval_s)
    stream.end()
    t_audio = await first_frame
    await stream.close()
    reader.cancel()
    assert sentence_end is not None
    return (t_audio - sentence_end) * 1000, (t_audio - start) * 1000


async def measure(model: Path, interval_ms: float, threads: int) -> dict[str, Any]:
    voice = PiperVoice(model, runtime=RuntimeOptions(providers=("cpu",), intra_op_threads=threads))
    # a measurement, not a service: a slow sentence on a busy machine is measured, not refused
    scheduler: Scheduler[str, Any] = Scheduler(
        voice, BatchPolicy(max_batch_items=1, deadline_s=60.0)
    )
    await scheduler.start()
    try:
        rtf = []
        for text in REPLIES:
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                t0 = time.monotonic()
                audio = await scheduler.submit(sentence)
                rtf.append((time.monotonic() - t0) / (audio.size / OUTPUT_RATE_HZ))
        policies = {"default": ChunkPolicy(), "whole_sentences": ChunkPolicy(first_chunk_words=0)}
        out: dict[str, Any] = {}
        for name, policy in policies.items():
            after_sentence, from_start = [], []
            for text in REPLIES:
                a, b = await _reply(scheduler, text, policy, interval_ms / 1000)
                after_sentence.append(a)
                from_start.append(b)
            out[name] = {
                "first_chunk_words": policy.first_chunk_words,
                "sentence_end_to_first_audio_ms_p50": round(_pct(after_sentence, 0.5), 1),
                "sentence_end_to_first_audio_ms_p95": round(_pct(after_sentence, 0.95), 1),
                "first_word_to_first_audio_ms_p50": round(_pct(from_start, 0.5), 1),
            }
    finally:
        await scheduler.close()
    return {
        "voice": model.name,
        "threads": threads,
        "token_interval_ms": interval_ms,
        "load_avg_1m_before": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "rtf_p50": round(_pct(rtf, 0.5), 3),
        "rtf_p95": round(_pct(rtf, 0.95), 3),
        "time_to_first_audio": out,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default=os.environ.get("TIDEGATE_DATA_DIR", ".cache/data"))
    p.add_argument("--token-interval-ms", type=float, default=30.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    model = Path(args.data_dir) / "models" / "piper-joe" / "en_US-joe-medium.onnx"
    result = asyncio.run(measure(model, args.token_interval_ms, args.threads))
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
