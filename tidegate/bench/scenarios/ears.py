"""Scenario ``ears``: the turn-detection and echo-cancelling microbenchmark
(``python -m tidegate.bench.micro.ears``, run as a subprocess so that this scenario module
imports no engine): Smart Turn's CPU per request at 16 sessions batched vs batch-1, its
separation of complete from unfinished sentences, and the echo canceller's ERLE and CPU per
session-second on the echo set."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..harness import scenario
from ..target import Target
from .engines import _child


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data folder with prepared models (TIDEGATE_DATA_DIR)")
    p.add_argument(
        "--parts", default="turn,aec", help="turn, aec, aec-paced, echo-words, own-voice"
    )
    p.add_argument("--echo-step-s", type=float, default=0.2, help="echo-words: pause spacing")
    p.add_argument("--sessions", type=int, default=16, help="concurrent turn requests")
    p.add_argument("--paced-sessions", default="1,4,8", help="aec-paced: sessions per run")
    p.add_argument("--paced-s", type=float, default=8.0, help="aec-paced: seconds per run")
    p.add_argument("--repeats", type=int, default=3, help="rounds per way (best kept)")
    p.add_argument("--timeout-s", type=float, default=900.0, help="give up after this long")


@scenario(
    "ears",
    "turn detection batched vs batch-1, and echo cancellation ERLE and CPU",
    add_args=_args,
    needs_server=False,
)
async def run(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    command = [sys.executable, "-m", "tidegate.bench.micro.ears", "--json"]
    for flag in ("parts", "sessions", "repeats", "paced_sessions", "paced_s", "echo_step_s"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    return await _child(command, args.timeout_s)
