"""Scenario ``turn-words``: the words a turn with pauses is answered with, with the audio
lane's joined decodes and without (``python -m tidegate.bench.micro.turn_words``, run as a
subprocess so that this scenario module imports no engine): the WER of the turn's words and
of the captions, the time from the end of speech to the turn's words, CPU per audio second."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..harness import scenario
from ..target import Target
from .engines import _child


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data folder with prepared models (TIDEGATE_DATA_DIR)")
    p.add_argument("--pauses", default="0.3,0.6", help="pauses inside the sentences (s)")
    p.add_argument(
        "--sets",
        default="ssml/en-us,ssml/en-gb-x-rp,apart/en-us,apart/pico-en-US",
        help="voices: ssml/VOICE (one utterance with a break) or apart/VOICE (two)",
    )
    p.add_argument("--sentences", type=int, default=0, help="the first N sentences (0: all)")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="give up after this long")


@scenario(
    "turn-words",
    "paused sentences: the turn's words with joined decodes and without",
    add_args=_args,
    needs_server=False,
)
async def run(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    command = [sys.executable, "-m", "tidegate.bench.micro.turn_words", "--json"]
    for flag in ("pauses", "sets", "sentences"):
        command += [f"--{flag}", str(getattr(args, flag))]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    return await _child(command, args.timeout_s)
