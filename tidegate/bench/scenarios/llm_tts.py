"""Scenarios ``llm`` and ``tts``: the LLM's time to first token, token interval and aggregate
tokens/s at N concurrent generations; TTS real-time factor and time to first audio.

The measuring code lives in the engine layer (``python -m tidegate.bench.micro.llm`` and
``python -m tidegate.bench.micro.tts``): bench/ imports only the protocol, so these
scenarios run them as subprocesses and keep their JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from ..harness import scenario
from ..target import Target


async def _run_module(module: str, flags: list[str], timeout_s: float) -> dict[str, Any]:
    command = [sys.executable, "-m", module, "--json", *flags]
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SystemExit(f"{module} did not finish within {timeout_s} s") from None
    if proc.returncode != 0:
        raise SystemExit(f"{module} failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(out)
    return result


def _llm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data folder with prepared models")
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m or smollm2-135m-fp32")
    p.add_argument("--streams", default="1,4,8,16", help="concurrent generation counts")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per generation")
    p.add_argument("--repeats", type=int, default=1, help="runs per case (best kept)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads")
    p.add_argument("--timeout-s", type=float, default=1200.0, help="give up after this long")
    p.add_argument(
        "--providers",
        action="store_true",
        help="instead: tidegate in front of two llama.cpp servers (llm_runtime=providers): "
        "time to first token through tidegate vs direct, and failover with the primary killed "
        "at random moments (tidegate/bench/providers.py)",
    )
    p.add_argument("--requests", type=int, default=40, help="--providers: requests per path")
    p.add_argument("--kills", type=int, default=20, help="--providers: primaries killed")
    p.add_argument("--kill-window-s", type=float, default=1.0, help="--providers: kill within this")
    p.add_argument("--seed", type=int, default=1, help="--providers: kill moments' seed")
    p.add_argument(
        "--standby-every-tokens",
        type=int,
        default=16,
        help="--providers: provider b's standby_every_tokens (b kept warm while a answers; "
        "0: not warmed)",
    )
    p.add_argument(
        "--llama-server", help="--providers: the llama-server binary (default: .cache's)"
    )


@scenario(
    "llm",
    "LLM: time to first token, token interval, tokens/s at N concurrent generations",
    add_args=_llm_args,
    needs_server=False,
)
async def run_llm(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    if args.providers:
        from ..providers import run as run_providers

        return await asyncio.wait_for(run_providers(args), args.timeout_s)
    flags = ["--model", args.model, "--streams", args.streams]
    flags += ["--max-tokens", str(args.max_tokens), "--repeats", str(args.repeats)]
    flags += ["--threads", str(args.threads)]
    if args.data_dir:
        flags += ["--data-dir", args.data_dir]
    return await _run_module("tidegate.bench.micro.llm", flags, args.timeout_s)


def _tts_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data folder with prepared models")
    p.add_argument("--token-interval-ms", type=float, default=30.0, help="LLM text pace")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads")
    p.add_argument("--timeout-s", type=float, default=600.0, help="give up after this long")


@scenario(
    "tts",
    "TTS: real-time factor and time to first audio as LLM text streams in",
    add_args=_tts_args,
    needs_server=False,
)
async def run_tts(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    flags = ["--token-interval-ms", str(args.token_interval_ms), "--threads", str(args.threads)]
    if args.data_dir:
        flags += ["--data-dir", args.data_dir]
    return await _run_module("tidegate.bench.micro.tts", flags, args.timeout_s)
