"""Scenario ``engines``: per engine, batch-1 calls versus the cross-session scheduler with N
concurrent streams (N = 1, 8, 64): CPU per request, throughput, latency, and the ratios.

The measuring code lives in the engine layer (``python -m tidegate.bench.micro.engines``): bench/
imports only the protocol, so this scenario runs it as a subprocess and keeps its JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from ..harness import scenario
from ..target import Target


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data folder with prepared models (TIDEGATE_DATA_DIR)")
    p.add_argument("--engines", default="vad,blazeface", help="vad, blazeface, mtcnn")
    p.add_argument("--streams", default="1,8,64", help="concurrent stream counts")
    p.add_argument("--repeats", type=int, default=3, help="runs per case (best kept)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per engine")
    p.add_argument("--providers", default="cpu", help="execution providers, in order")
    p.add_argument("--timeout-s", type=float, default=900.0, help="give up after this long")
    p.add_argument(
        "--triton-url",
        help="also run the same requests locally and through this Triton server, side by "
        "side (python -m tidegate.bench.micro.triton; docs/triton.md)",
    )


@scenario(
    "engines",
    "engine batching: batch-1 calls vs the scheduler with N concurrent streams",
    add_args=_args,
    needs_server=False,
)
async def run(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    command = [sys.executable, "-m", "tidegate.bench.micro.engines", "--json"]
    for flag in ("engines", "streams", "repeats", "threads", "providers"):
        command += [f"--{flag}", str(getattr(args, flag))]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    results = await _child(command, args.timeout_s)
    if args.triton_url:
        command = [sys.executable, "-m", "tidegate.bench.micro.triton", "--json"]
        command += ["--triton-url", args.triton_url, "--threads", str(args.threads)]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        results["triton"] = await _child(command, args.timeout_s)
    return results


async def _child(command: list[str], timeout_s: float) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SystemExit(f"{command[2]} did not finish within {timeout_s} s") from None
    if proc.returncode != 0:
        raise SystemExit(f"{command[2]} failed (exit {proc.returncode})")
    results: dict[str, Any] = json.loads(out)
    return results
