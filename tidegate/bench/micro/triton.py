"""The triton runtime's cost: the same requests on the local runtime and through a Triton
server, side by side, per engine.

``python -m tidegate.bench.micro.triton --triton-url HOST:PORT --json`` (``tidegate bench
engines --triton-url`` runs it). The server must serve the prepared models under the triton
runtime's names (``tidegate models export-triton`` for a stock Triton, or
``scripts/pytriton_serve.py --models-dir DATA/models`` for pytriton's CPU server). Each request
runs once locally and once through Triton, alternately (machine load drifts alike on both), at
batch 1; reported per engine: latency percentiles of both, the added latency per request
(percentiles of the paired differences), and whether the answers agree. Then ``--streams``
concurrent VAD streams through the scheduler on each runtime (per-frame latency, mean batch),
and the gRPC round trip of one VAD call, unary versus a bidirectional stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tidegate.engines.engine import Engine, Failed, Ok
from tidegate.engines.runtime import RuntimeOptions
from tidegate.engines.scheduler import BatchPolicy, Scheduler
from tidegate.engines.service import EngineSpec, build_engine
from tidegate.engines.vad import FRAME_SAMPLES, SAMPLE_RATE_HZ
from tidegate.tools.prepare import prepare_offline

from . import default_data_dir
from .engines import _audio, _frames, _percentiles

MODELS = {"vad": "silero-vad", "vision": "blazeface", "asr": "whisper-tiny-en", "tts": "piper-joe"}


def _requests(engine: str, n: int) -> list[Any]:
    if engine == "vad":
        audio = _audio(n * FRAME_SAMPLES / SAMPLE_RATE_HZ, seed=1)
        return list(audio.reshape(n, FRAME_SAMPLES))
    if engine == "vision":
        return _frames(np.random.default_rng(0), n)
    if engine == "asr":
        from tidegate.engines.asr.request import AsrRequest

        return [AsrRequest(_audio(2.0 + (i % 3), seed=i)) for i in range(n)]
    sentences = ["Hello there.", "The weather today is sunny and warm.", "How can I help?"]
    return [sentences[i % 3] for i in range(n)]


def _agree(a: Any, b: Any) -> bool:
    if hasattr(a, "probability"):
        return abs(a.probability - b.probability) < 1e-5
    if hasattr(a, "tokens"):
        return bool(a.tokens == b.tokens)
    return bool(a == b)


def paired(
    local: Engine[Any, Any, Any], remote: Engine[Any, Any, Any], reqs: list[Any]
) -> dict[str, Any]:
    """Each request on both, alternately, batch 1 (stateful engines keep a stream each)."""
    states = [e.new_state() if e.stateful else None for e in (local, remote)]
    lat: list[list[float]] = [[], []]
    agree = 0
    for r in reqs:
        values = []
        for k, engine in enumerate((local, remote)):
            t0 = time.perf_counter()
            out = engine.run_batch([r], [states[k]])[0]
            lat[k].append((time.perf_counter() - t0) * 1000)
            if isinstance(out, Failed):
                raise out.error
            assert isinstance(out, Ok)
            states[k] = out.state
            values.append(out.value)
        if not isinstance(values[0], np.ndarray):  # TTS samples noise: no two runs agree
            agree += _agree(values[0], values[1])
    diff = [t - lo for lo, t in zip(lat[0], lat[1], strict=True)]
    return {
        "requests": len(reqs),
        "local_ms": _percentiles(lat[0]),
        "triton_ms": _percentiles(lat[1]),
        "added_ms": _percentiles(diff),
        "agreeing": None if isinstance(values[0], np.ndarray) else agree,
    }


async def _streams(engine: Engine[Any, Any, Any], n: int, frames: int) -> dict[str, Any]:
    sched: Scheduler[Any, Any] = Scheduler(
        engine, BatchPolicy(max_batch_items=64, batch_wait_s=0.002)
    )
    await sched.start()
    lat: list[float] = []
    try:
        for i in range(n):
            sched.open_session(f"s{i}")

        async def run(i: int) -> None:
            audio = _audio(frames * FRAME_SAMPLES / SAMPLE_RATE_HZ, seed=i)
            for f in audio.reshape(frames, FRAME_SAMPLES):
                t0 = time.perf_counter()
                await sched.submit(f, session=f"s{i}", deadline_s=30.0)
                lat.append((time.perf_counter() - t0) * 1000)

        wall0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for i in range(n):
                tg.create_task(run(i))
        wall = time.perf_counter() - wall0
        return {
            "latency_ms": _percentiles(lat),
            "frames_per_s": n * frames / wall,
            "real_time_factor": wall / (frames * FRAME_SAMPLES / SAMPLE_RATE_HZ),
            "mean_batch": sched.counters.batch_size.as_dict()["mean"],
        }
    finally:
        await sched.close()


def unary_vs_stream(url: str, calls: int) -> dict[str, Any]:
    """One VAD call's round trip: unary ``infer`` versus ``async_stream_infer`` on an open
    bidirectional stream (one request in flight at a time, as a stream of frames runs)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    arrays: dict[str, Any] = {
        "input": np.zeros((1, 576), np.float32),
        "state": np.zeros((2, 1, 128), np.float32),
        "sr": np.array([SAMPLE_RATE_HZ], np.int64),
    }
    inputs = []
    for name, arr in arrays.items():
        item = grpcclient.InferInput(
            name, list(arr.shape), "FP32" if arr.dtype == np.float32 else "INT64"
        )
        item.set_data_from_numpy(arr)
        inputs.append(item)
    model = "silero-vad.silero_vad"
    unary = []
    for _ in range(calls):
        t0 = time.perf_counter()
        client.infer(model, inputs)
        unary.append((time.perf_counter() - t0) * 1000)
    done: queue.Queue[Any] = queue.Queue()
    client.start_stream(callback=lambda result, error: done.put(error))
    stream = []
    try:
        for _ in range(calls):
            t0 = time.perf_counter()
            client.async_stream_infer(model, inputs)
            error = done.get(timeout=30)
            if error is not None:
                raise RuntimeError(str(error))
            stream.append((time.perf_counter() - t0) * 1000)
    finally:
        client.stop_stream()
        client.close()
    return {"calls": calls, "unary_ms": _percentiles(unary), "stream_ms": _percentiles(stream)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    local_rt = RuntimeOptions(providers=("cpu",), intra_op_threads=args.threads)
    remote_rt = replace(
        local_rt, runtime="triton", triton_url=args.triton_url, triton_timeout_s=60.0
    )
    report: dict[str, Any] = {"triton_url": args.triton_url, "engines": {}}
    counts = {"vad": args.vad_frames, "vision": args.vision_frames, "asr": args.asr_requests,
              "tts": args.tts_requests}  # fmt: skip
    for name in args.engines:
        engines = []
        for rt in (local_rt, remote_rt):
            e = build_engine(
                EngineSpec(name, MODELS[name], runtime=rt), args.data_dir, prepare=prepare_offline
            )
            e.load()
            e.warmup()
            engines.append(e)
        report["engines"][name] = {
            "model": MODELS[name],
            **paired(engines[0], engines[1], _requests(name, counts[name])),
        }
        print(f"{name}: done", file=sys.stderr, flush=True)
        if name == "vad" and args.streams:
            report["vad_streams"] = {}
            for rt_name, e in zip(("local", "triton"), engines, strict=True):
                report["vad_streams"][rt_name] = asyncio.run(
                    _streams(e, args.streams, args.vad_frames)
                )
                e.load()  # the scheduler closed it
        for e in engines:
            e.close()
    if "vad" in args.engines:
        report["grpc_unary_vs_stream"] = unary_vs_stream(args.triton_url, args.vad_frames)
    return report


def summary(report: dict[str, Any]) -> str:
    lines = ["engine   n    local p50/p99 ms   triton p50/p99 ms   added p50/p99 ms  agree"]
    for name, r in report["engines"].items():
        lo, tr, ad = r["local_ms"], r["triton_ms"], r["added_ms"]
        lines.append(
            f"{name:7} {r['requests']:4}  {lo['p50']:8.2f}/{lo['p99']:8.2f}  "
            f"{tr['p50']:8.2f}/{tr['p99']:8.2f}  {ad['p50']:8.2f}/{ad['p99']:8.2f}  "
            f"{r['agreeing'] if r['agreeing'] is not None else '-'}/{r['requests']}"
        )
    for rt, s in report.get("vad_streams", {}).items():
        ms = s["latency_ms"]
        lines.append(
            f"vad x{report.get('streams', '')} streams on {rt}: p50/p99 {ms['p50']:.2f}/"
            f"{ms['p99']:.2f} ms, RTF {s['real_time_factor']:.3f}, batch {s['mean_batch']:.1f}"
        )
    g = report.get("grpc_unary_vs_stream")
    if g:
        u, st = g["unary_ms"]["p50"], g["stream_ms"]["p50"]
        lines.append(f"grpc VAD call: unary p50 {u:.2f} ms, stream p50 {st:.2f} ms")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tidegate.bench.micro.triton", description=__doc__)
    p.add_argument("--triton-url", required=True, help="gRPC endpoint of the Triton server")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="prepared models")
    p.add_argument("--engines", default="vad,vision,asr,tts", help="vad, vision, asr, tts")
    p.add_argument("--vad-frames", type=int, default=300, help="VAD frames (per stream)")
    p.add_argument("--vision-frames", type=int, default=40, help="vision frames")
    p.add_argument("--asr-requests", type=int, default=6, help="ASR requests (2-4 s of audio)")
    p.add_argument("--tts-requests", type=int, default=6, help="TTS sentences")
    p.add_argument("--streams", type=int, default=8, help="concurrent VAD streams (0: none)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (local runtime)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = p.parse_args(argv)
    args.engines = [e for e in args.engines.split(",") if e]
    unknown = set(args.engines) - set(MODELS)
    if unknown:
        p.error(f"unknown engines {sorted(unknown)} (known: {', '.join(MODELS)})")
    report = run(args)
    report["streams"] = args.streams
    print(summary(report), file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
