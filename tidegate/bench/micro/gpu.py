"""GPU capacity, prepared for a machine with an NVIDIA GPU: ASR streams per GPU, LLM aggregate
tokens/s at 8-64 streams, BlazeFace frames/s; one JSON report into ``docs/measurements/``.

``python -m tidegate.bench.micro.gpu --provider cuda`` (``--provider cpu`` runs the same
measurements on the CPU, which is how the tests run it here with ``--quick``). Each part runs
the real engine of the default model on ONNX Runtime's execution provider named, through the
same scheduler or batcher the server uses, driven from this process (the load generator is
asyncio tasks; the engines' own CPU work, log-mel features and image resizing, runs on their
worker threads on the machine's cores):

- ``asr`` (Whisper, ``--asr-model``, default whisper-tiny-en): N streams of real speech
  (``beckett.wav`` and ``two_cities.wav``, each stream at its own offset) in real time. Each
  stream makes utterances of ``--asr-utterance-s``: while one is spoken it asks for a partial
  every ``--asr-partial-interval-s`` (the audio so far; skipped, and counted, while its
  previous request still runs, as the audio lane does), and at the utterance's end for the
  final. The encoder runs batched across the streams (the scheduler's batch,
  ``--asr-batch``). A level of N streams *holds real time* when nothing failed and the finals'
  latency (end of utterance -> final) has p90 <= ``--asr-max-final-ms``. N doubles from 1 (or
  ``--asr-streams``) until a level loses real time; ``streams_held`` is the last level
  held (streams per GPU, with a GPU provider).
- ``llm`` (``--llm-model``, default smollm2-135m): N concurrent generations (``--llm-streams``,
  default 8,16,32,64) of ``--llm-max-tokens`` tokens through the LLM batcher: aggregate
  tokens/s, time to first token, token interval (``tidegate.bench.micro.llm``).
- ``vision`` (BlazeFace): 640x480 frames at batch sizes ``--vision-batches`` straight on the
  engine (preprocessing included): frames/s, ms per batch.

The report says which provider each engine actually ran on (``provider``; an engine that
asked for ``cuda`` and got ``cpu`` is a failed measurement, and ``--provider cuda`` then stops
with an error rather than report CPU figures as GPU ones), the GPU's name (``nvidia-smi``),
the package versions, the machine's CPUs and load. The models must be prepared in
``--data-dir`` (``tidegate models prepare``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tidegate.engines.asr.request import AsrRequest
from tidegate.engines.engine import Engine
from tidegate.engines.errors import EngineError, RuntimeUnavailableError
from tidegate.engines.registry import EngineSpec, build_engine
from tidegate.engines.runtime import RuntimeOptions
from tidegate.engines.scheduler import BatchPolicy, Scheduler
from tidegate.tools.prepare import prepare_offline

from . import llm as llm_bench

SR = 16_000
CLIPS = ("beckett.wav", "two_cities.wav")
PARTS = ("asr", "llm", "vision")
FRAME_SHAPE = (480, 640, 3)


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {"n": len(values)} | {f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 90)}


def _versions() -> dict[str, str]:
    out = {}
    for name in ("onnxruntime", "onnxruntime-gpu", "numpy", "tidegate"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def _gpu_names() -> list[str]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


class ProviderMismatchError(RuntimeError):
    """An engine asked for a GPU provider ran on another one."""


def _check_provider(name: str, wanted: str, got: str) -> None:
    if wanted != "cpu" and got != wanted:
        raise ProviderMismatchError(
            f"{name}: asked for the {wanted} execution provider, ONNX Runtime gave {got!r} "
            "(is onnxruntime-gpu installed, with its CUDA libraries on the library path?)"
        )


def _runtime(args: argparse.Namespace) -> RuntimeOptions:
    return RuntimeOptions(
        providers=(args.provider,), require_first=True, intra_op_threads=args.threads
    )


# -- ASR ---------------------------------------------------------------------------------------
def read_speech(assets: Path) -> np.ndarray[Any, Any]:
    """The test clips, 16 kHz mono float32, end to end."""
    parts = []
    for name in CLIPS:
        path = assets / name
        if not path.exists():
            continue
        with wave.open(str(path)) as w:
            rate = w.getframerate()
            if rate % SR or w.getnchannels() != 1 or w.getsampwidth() != 2:
                raise ValueError(f"{path}: expected mono 16-bit PCM at a multiple of 16 kHz")
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        x = pcm.astype(np.float32) / 32768.0
        step = rate // SR
        if step > 1:  # a windowed-sinc low-pass below 7.2 kHz, then every step-th sample
            taps = np.arange(-32, 33)
            h = 0.9 / step * np.sinc(0.9 / step * taps) * np.hamming(len(taps))
            x = np.convolve(x, (h / h.sum()).astype(np.float32), mode="same")[::step]
        parts.append(x.astype(np.float32))
    if not parts:
        raise FileNotFoundError(f"none of {CLIPS} in {assets} (make setup puts them there)")
    return np.concatenate(parts)


@dataclass
class StreamLog:
    partial_ms: list[float] = field(default_factory=list)
    final_ms: list[float] = field(default_factory=list)
    partials_skipped: int = 0  # due while the previous request still ran
    partials_superseded: int = 0  # still running at the utterance's end: the final replaced it
    errors: list[str] = field(default_factory=list)


async def _asr_stream(
    sched: Scheduler[Any, Any],
    speech: np.ndarray[Any, Any],
    offset: int,
    args: argparse.Namespace,
    stop_at: float,
) -> StreamLog:
    log = StreamLog()
    utt = int(args.asr_utterance_s * SR)
    step_s = args.asr_partial_interval_s
    inflight: asyncio.Task[Any] | None = None

    async def ask(audio: np.ndarray[Any, Any], out: list[float], due: float) -> None:
        try:
            await sched.submit(AsrRequest(audio=audio), deadline_s=args.asr_deadline_s)
        except EngineError as e:
            log.errors.append(str(e))
            return
        out.append((time.monotonic() - due) * 1000.0)

    index = 0
    while time.monotonic() < stop_at:
        start = time.monotonic()
        pos = (offset + index * utt) % max(1, len(speech) - utt)
        index += 1
        audio = speech[pos : pos + utt]
        k = 1
        while k * step_s < args.asr_utterance_s:  # partials while the utterance is spoken
            due = start + k * step_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if inflight is not None and not inflight.done():
                log.partials_skipped += 1
            else:
                chunk = audio[: int(k * step_s * SR)]
                inflight = asyncio.create_task(ask(chunk, log.partial_ms, due))
            k += 1
        due = start + args.asr_utterance_s
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        if inflight is not None and not inflight.done():
            log.partials_superseded += 1
            inflight.cancel()  # the final supersedes it
            with contextlib.suppress(asyncio.CancelledError):
                await inflight
        inflight = None
        await ask(audio, log.final_ms, due)
    return log


async def _asr_level(
    sched: Scheduler[Any, Any], speech: np.ndarray[Any, Any], n: int, args: argparse.Namespace
) -> dict[str, Any]:
    cpu0, t0 = time.process_time(), time.monotonic()
    stop_at = t0 + args.asr_duration_s
    spacing = args.asr_partial_interval_s / max(1, n)  # streams start spread over one interval
    logs = []

    async def delayed(i: int) -> StreamLog:
        await asyncio.sleep(i * spacing)
        return await _asr_stream(sched, speech, i * 7919 * SR // 10, args, stop_at)

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(delayed(i)) for i in range(n)]
    logs = [t.result() for t in tasks]
    wall = time.monotonic() - t0
    finals = [v for log in logs for v in log.final_ms]
    partials = [v for log in logs for v in log.partial_ms]
    errors = [e for log in logs for e in log.errors]
    final = _pct(finals)
    held = not errors and bool(finals) and final["p90"] <= args.asr_max_final_ms
    return {
        "streams": n,
        "final_ms": final,
        "partial_ms": _pct(partials),
        "partials": len(partials),
        "partials_skipped": sum(log.partials_skipped for log in logs),
        "partials_superseded": sum(log.partials_superseded for log in logs),
        "finals": len(finals),
        "errors": errors[:5],
        "error_count": len(errors),
        "mean_batch": round(sched.counters.batch_size.as_dict()["mean"], 2),
        "process_cpu_s_per_s": round((time.process_time() - cpu0) / wall, 3),
        "real_time_held": held,
    }


async def measure_asr(args: argparse.Namespace) -> dict[str, Any]:
    speech = read_speech(Path(args.assets))
    policy = BatchPolicy(
        max_batch_items=args.asr_batch,
        batch_wait_s=0.005,
        max_queue_items=4096,
        deadline_s=args.asr_deadline_s,
        max_sessions=4096,
    )
    engine = build_engine(
        EngineSpec("asr", args.asr_model, policy, _runtime(args)),
        Path(args.data_dir),
        prepare=prepare_offline,
    )
    sched: Scheduler[Any, Any] = Scheduler(engine, policy)
    await sched.start()
    try:
        provider = getattr(engine, "provider", "?")
        _check_provider("asr", args.provider, provider)
        levels = []
        n = args.asr_streams
        while n <= args.asr_streams_max:
            level = await _asr_level(sched, speech, n, args)
            levels.append(level)
            print(
                f"asr {n} streams: final p50/p90 {level['final_ms'].get('p50')}/"
                f"{level['final_ms'].get('p90')} ms, batch {level['mean_batch']}, "
                f"held {level['real_time_held']}",
                file=sys.stderr,
            )
            if not level["real_time_held"]:
                break
            n *= 2
    finally:
        await sched.close()
    held = [lv["streams"] for lv in levels if lv["real_time_held"]]
    return {
        "model": args.asr_model,
        "provider": provider,
        "utterance_s": args.asr_utterance_s,
        "partial_interval_s": args.asr_partial_interval_s,
        "max_final_ms": args.asr_max_final_ms,
        "batch": args.asr_batch,
        "levels": levels,
        "streams_held": max(held) if held else 0,
    }


# -- LLM ---------------------------------------------------------------------------------------
async def measure_llm(args: argparse.Namespace) -> dict[str, Any]:
    streams = [int(s) for s in args.llm_streams.split(",")]
    folder = Path(args.data_dir) / "models" / args.llm_model
    if not folder.exists():
        prepare_offline(Path(args.data_dir), args.llm_model)
    out = await llm_bench.measure(
        folder, streams, args.llm_max_tokens, 1, args.threads, providers=(args.provider,)
    )
    _check_provider("llm", args.provider, out.get("provider", args.provider))
    return out


# -- vision ------------------------------------------------------------------------------------
def measure_vision(args: argparse.Namespace) -> dict[str, Any]:
    engine: Engine[Any, Any, Any] = build_engine(
        EngineSpec("vision", "blazeface", BatchPolicy(), _runtime(args)),
        Path(args.data_dir),
        prepare=prepare_offline,
    )
    engine.load()
    engine.warmup()
    try:
        provider = getattr(engine, "provider", "?")
        _check_provider("vision", args.provider, provider)
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8)
        cases = []
        for b in (int(x) for x in args.vision_batches.split(",")):
            frames = [np.roll(base, 7 * i, axis=1) for i in range(b)]
            states = [None] * b
            engine.run_batch(frames, states)  # this batch size's first run (shapes, arenas)
            batches, t0 = 0, time.perf_counter()
            per_batch: list[float] = []
            while batches < args.vision_min_batches or time.perf_counter() - t0 < args.vision_s:
                t = time.perf_counter()
                engine.run_batch(frames, states)
                per_batch.append((time.perf_counter() - t) * 1000.0)
                batches += 1
            wall = time.perf_counter() - t0
            cases.append(
                {
                    "batch": b,
                    "batches": batches,
                    "frames_per_s": round(batches * b / wall, 1),
                    "ms_per_batch": _pct(per_batch),
                }
            )
            print(f"vision batch {b}: {cases[-1]['frames_per_s']} frames/s", file=sys.stderr)
    finally:
        engine.close()
    return {"model": "blazeface", "provider": provider, "frame": list(FRAME_SHAPE), "cases": cases}


# -- the report --------------------------------------------------------------------------------
async def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = sorted(set(parts) - set(PARTS))
    if bad or not parts:
        raise SystemExit(f"--parts: expected some of {PARTS}, got {args.parts!r}")
    report: dict[str, Any] = {
        "report_version": 1,
        "scenario": "gpu",
        "created_utc": time.strftime("%Y%m%dT%H%M%S", time.gmtime()),
        "provider": args.provider,
        "environment": {
            "gpus": _gpu_names(),
            "cpus": os.cpu_count(),
            "load_avg_1m_before": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": _versions(),
        },
        "quick": args.quick,
    }
    if "vision" in parts:
        report["vision"] = await asyncio.to_thread(measure_vision, args)
    if "llm" in parts:
        report["llm"] = await measure_llm(args)
    if "asr" in parts:
        report["asr"] = await measure_asr(args)
    return report


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tidegate.bench.micro.gpu", description=__doc__)
    p.add_argument("--provider", default="cuda", choices=("cuda", "tensorrt", "cpu"))
    p.add_argument("--parts", default=",".join(PARTS), help="asr, llm, vision")
    p.add_argument("--data-dir", default=os.environ.get("TIDEGATE_DATA_DIR", ".cache/data"))
    p.add_argument("--assets", default=".cache/assets", help="beckett.wav, two_cities.wav")
    p.add_argument("--out", default="docs/measurements", help="folder for the JSON report")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per engine")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a check that it runs")
    p.add_argument("--asr-model", default="whisper-tiny-en")
    p.add_argument("--asr-streams", type=int, default=1, help="the first level")
    p.add_argument("--asr-streams-max", type=int, default=1024, help="the last level")
    p.add_argument("--asr-batch", type=int, default=32, help="scheduler max_batch_items")
    p.add_argument("--asr-utterance-s", type=float, default=4.0)
    p.add_argument("--asr-partial-interval-s", type=float, default=0.5)
    p.add_argument("--asr-duration-s", type=float, default=12.0, help="per level")
    p.add_argument("--asr-max-final-ms", type=float, default=500.0, help="p90, real time")
    p.add_argument("--asr-deadline-s", type=float, default=5.0)
    p.add_argument("--llm-model", default="smollm2-135m")
    p.add_argument("--llm-streams", default="8,16,32,64")
    p.add_argument("--llm-max-tokens", type=int, default=64)
    p.add_argument("--vision-batches", default="1,8,32,64")
    p.add_argument("--vision-s", type=float, default=3.0, help="seconds per batch size")
    p.add_argument("--vision-min-batches", type=int, default=3)
    args = p.parse_args(argv)
    if args.quick:  # a check that every part runs, in seconds on a CPU
        args.asr_streams_max = min(args.asr_streams_max, args.asr_streams)
        args.asr_utterance_s, args.asr_partial_interval_s = 1.0, 0.5
        args.asr_duration_s, args.asr_max_final_ms = 0.5, 60_000.0
        args.llm_streams, args.llm_max_tokens = "2", 4
        args.vision_batches, args.vision_s, args.vision_min_batches = "1,2", 0.0, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    try:
        report = asyncio.run(run(args))
    except (ProviderMismatchError, RuntimeUnavailableError) as e:
        print(f"gpu bench: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu-{args.provider}-{report['created_utc']}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(str(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
