"""Engine benchmark: batch-1 calls versus the scheduler with N concurrent streams.

``python -m tidegate.bench.micro.engines --json`` prints one JSON object (``tidegate bench engines``
runs it as a subprocess). For each engine, the same work — N streams of F requests — is run
twice: as batch-1 calls straight on the engine (each stream with its own state, round
robin), and through the :class:`Scheduler` by N concurrent tasks on the event loop the server
runs (uvloop when installed). Reported per N: wall and
CPU time per request, throughput, per-request latency percentiles, the mean batch size,
the ratios scheduler/batch-1, and for stateful engines whether every output was identical.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np

from tidegate.bench.micro import default_data_dir
from tidegate.engines.engine import Engine, Failed
from tidegate.engines.runtime import RuntimeOptions
from tidegate.engines.scheduler import BatchPolicy, Scheduler
from tidegate.engines.service import EngineSpec, build_engine
from tidegate.engines.vad import FRAME_SAMPLES, SAMPLE_RATE_HZ, VadResult
from tidegate.engines.vision import FaceDetections
from tidegate.tools.prepare import prepare_offline

STREAMS = (1, 8, 64)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {f"p{q}": float(np.percentile(arr, q)) for q in (50, 90, 99)} | {"max": float(arr.max())}


def _audio(seconds: float, seed: int) -> np.ndarray[Any, Any]:
    """Deterministic test audio: voiced-like bursts (harmonics with an envelope) and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE_HZ)) / SAMPLE_RATE_HZ
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE_HZ
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = (np.sin(2 * np.pi * 0.3 * t + seed) > 0).astype(np.float64)
    out = 0.3 * voiced * envelope + 0.01 * rng.standard_normal(t.size)
    return out.astype(np.float32)


def _frames(rng: np.random.Generator, n: int) -> list[np.ndarray[Any, Any]]:
    base = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    return [np.roll(base, 7 * i, axis=1) for i in range(n)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, VadResult) and isinstance(b, VadResult):
        return a.probability == b.probability and a.events == b.events
    if isinstance(a, FaceDetections) and isinstance(b, FaceDetections):
        return a == b
    return bool(a == b)


def batch1(engine: Engine[Any, Any, Any], streams: list[list[Any]]) -> dict[str, Any]:
    """Each request alone (batch 1), streams interleaved round robin."""
    states = [engine.new_state() if engine.stateful else None for _ in streams]
    outputs: list[list[Any]] = [[] for _ in streams]
    latencies: list[float] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for step in range(len(streams[0])):
        for s, stream in enumerate(streams):
            t0 = time.perf_counter()
            outcome = engine.run_batch([stream[step]], [states[s]])[0]
            latencies.append((time.perf_counter() - t0) * 1000)
            if isinstance(outcome, Failed):
                raise outcome.error
            states[s] = outcome.state
            outputs[s].append(outcome.value)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return _figures(cpu, wall, latencies, outputs)


async def scheduled(
    engine: Engine[Any, Any, Any], policy: BatchPolicy, streams: list[list[Any]]
) -> dict[str, Any]:
    """N concurrent tasks, one per stream, each awaiting its result before the next."""
    sched: Scheduler[Any, Any] = Scheduler(engine, policy)
    await sched.start()
    try:
        ids = [f"s{i}" for i in range(len(streams))]
        if engine.stateful:
            for sid in ids:
                sched.open_session(sid)
        outputs: list[list[Any]] = [[] for _ in streams]
        latencies: list[float] = []

        async def run(s: int) -> None:
            session = ids[s] if engine.stateful else None
            for request in streams[s]:
                t0 = time.perf_counter()
                outputs[s].append(await sched.submit(request, session=session, deadline_s=60.0))
                latencies.append((time.perf_counter() - t0) * 1000)

        cpu0, wall0 = time.process_time(), time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for s in range(len(streams)):
                tg.create_task(run(s))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        out = _figures(cpu, wall, latencies, outputs)
        out["mean_batch"] = sched.counters.batch_size.as_dict()["mean"]
        return out
    finally:
        await sched.close()


def event_loop_name() -> str:
    """The event loop the server runs (uvicorn takes uvloop when it is installed), which the
    scheduler's side of the comparison runs on too."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_on_server_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    if event_loop_name() == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


def _figures(cpu: float, wall: float, lat: list[float], outputs: list[list[Any]]) -> dict[str, Any]:
    n = sum(len(o) for o in outputs)
    return {
        "requests": n,
        "cpu_ms_per_request": cpu / n * 1000,
        "wall_ms_per_request": wall / n * 1000,
        "throughput_per_s": n / wall,
        "latency_ms": _percentiles(lat),
        "_outputs": outputs,
    }


def measure(
    engine: Engine[Any, Any, Any],
    policy: BatchPolicy,
    make_streams: Callable[[int], list[list[Any]]],
    counts: tuple[int, ...],
    repeats: int,
) -> dict[str, Any]:
    engine.load()
    engine.warmup()
    results: dict[str, Any] = {}
    for n in counts:
        streams = make_streams(n)
        best_b: dict[str, Any] | None = None
        best_s: dict[str, Any] | None = None
        # Alternate the two ways and keep the best of each, so that drifting machine load
        # hits both alike.
        for _ in range(repeats):
            b = batch1(engine, streams)
            s = run_on_server_loop(scheduled(engine, policy, streams))
            engine.load()  # the scheduler closed the engine: load it again
            if best_b is None or b["cpu_ms_per_request"] < best_b["cpu_ms_per_request"]:
                best_b = b
            if best_s is None or s["cpu_ms_per_request"] < best_s["cpu_ms_per_request"]:
                best_s = s
        assert best_b is not None and best_s is not None
        ob, os_ = best_b.pop("_outputs"), best_s.pop("_outputs")
        identical = all(
            _same(x, y) for sb, ss in zip(ob, os_, strict=True) for x, y in zip(sb, ss, strict=True)
        )
        results[str(n)] = {
            "batch1": best_b,
            "scheduler": best_s,
            "cpu_ratio": best_s["cpu_ms_per_request"] / best_b["cpu_ms_per_request"],
            "throughput_ratio": best_s["throughput_per_s"] / best_b["throughput_per_s"],
            "identical_outputs": identical,
        }
    engine.close()
    return results


def run(args: argparse.Namespace) -> dict[str, Any]:
    runtime = RuntimeOptions(
        providers=tuple(args.providers.split(",")), intra_op_threads=args.threads
    )
    counts = tuple(int(n) for n in args.streams.split(","))
    report: dict[str, Any] = {
        "streams": list(counts),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "event_loop": event_loop_name(),
        "engines": {},
    }
    if "vad" in args.engines:
        policy = BatchPolicy(max_batch_items=64, batch_wait_s=0.002, max_queue_items=1024)
        engine = build_engine(
            EngineSpec("vad", "silero-vad", policy, runtime), args.data_dir, prepare=prepare_offline
        )
        frames_per_stream = args.vad_frames

        def vad_streams(n: int) -> list[list[Any]]:
            out = []
            for s in range(n):
                audio = _audio(frames_per_stream * FRAME_SAMPLES / SAMPLE_RATE_HZ, seed=s)
                out.append(list(audio.reshape(frames_per_stream, FRAME_SAMPLES)))
            return out

        report["engines"]["vad"] = {
            "model": "silero-vad",
            "provider": getattr(engine, "provider", "?"),
            "frames_per_stream": frames_per_stream,
            "policy": {"max_batch_items": 64, "batch_wait_s": 0.002},
            "by_streams": measure(engine, policy, vad_streams, counts, args.repeats),
        }
    for model in ("blazeface", "mtcnn"):
        if model not in args.engines and not (model == "blazeface" and "vision" in args.engines):
            continue
        policy = BatchPolicy(max_batch_items=8, batch_wait_s=0.005, max_queue_items=256)
        engine = build_engine(
            EngineSpec("vision", model, policy, runtime), args.data_dir, prepare=prepare_offline
        )
        per_stream = args.vision_frames if model == "blazeface" else max(2, args.vision_frames // 8)

        def vision_streams(n: int, per_stream: int = per_stream) -> list[list[Any]]:
            rng = np.random.default_rng(n)
            return [_frames(rng, per_stream) for _ in range(n)]

        report["engines"][model] = {
            "model": model,
            "provider": getattr(engine, "provider", "?"),
            "frames_per_stream": per_stream,
            "frame": [480, 640, 3],
            "policy": {"max_batch_items": 8, "batch_wait_s": 0.005},
            "by_streams": measure(engine, policy, vision_streams, counts, args.repeats),
        }
    vad = report["engines"].get("vad", {}).get("by_streams", {}).get("64")
    vis = report["engines"].get("blazeface", {}).get("by_streams", {}).get("8")
    report["targets"] = {
        "vad_64_cpu_ratio_max": 0.2,  # issue #25 (an earlier issue asked 0.35)
        "vad_64_cpu_ratio": vad["cpu_ratio"] if vad else None,
        "vad_64_identical": vad["identical_outputs"] if vad else None,
        "vision_8_throughput_ratio_min": 1.5,
        "vision_8_throughput_ratio": vis["throughput_ratio"] if vis else None,
    }
    return report


def summary(report: dict[str, Any]) -> str:
    lines = ["engine      N   b1 cpu ms  sch cpu ms  cpu ratio  thr ratio  batch  p50/p99 ms  same"]
    for name, eng in report["engines"].items():
        for n, r in eng["by_streams"].items():
            s = r["scheduler"]
            lines.append(
                f"{name:10} {n:>3}  {r['batch1']['cpu_ms_per_request']:9.3f}  "
                f"{s['cpu_ms_per_request']:10.3f}  {r['cpu_ratio']:9.3f}  "
                f"{r['throughput_ratio']:9.2f}  {s['mean_batch']:5.1f}  "
                f"{s['latency_ms']['p50']:.2f}/{s['latency_ms']['p99']:.2f}  "
                f"{r['identical_outputs']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tidegate.bench.micro.engines", description=__doc__)
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="prepared models")
    p.add_argument("--engines", default="vad,blazeface", help="vad, blazeface, mtcnn")
    p.add_argument("--streams", default=",".join(map(str, STREAMS)), help="N values")
    p.add_argument("--vad-frames", type=int, default=200, help="frames per VAD stream")
    p.add_argument("--vision-frames", type=int, default=16, help="frames per vision stream")
    p.add_argument("--repeats", type=int, default=3, help="runs per case; the best is kept")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per engine")
    p.add_argument("--providers", default="cpu", help="execution providers, in order")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = p.parse_args(argv)
    args.engines = set(args.engines.split(","))
    report = run(args)
    print(summary(report), file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
