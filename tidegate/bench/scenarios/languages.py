"""Scenario ``languages``: speech recognition per language and model size
(``python -m tidegate.bench.micro.languages``, run as a subprocess so that this scenario module
imports no engine): WER, language detection accuracy and CPU per stream-second for tiny.en
(English) and Whisper base (English, German, Spanish, French) under the streaming policy."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..harness import scenario
from ..target import Target
from .engines import _child


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data folder with prepared models (TIDEGATE_DATA_DIR)")
    p.add_argument("--clips", type=int, default=3, help="sentences per language (1-11)")
    p.add_argument("--language", default="en,de,es,fr", help="languages (comma-separated)")
    p.add_argument("--asr-languages", default="", help="restrict detection (asr_languages)")
    p.add_argument("--voices", default="", help="another voice per language: de=mb-de2,...")
    p.add_argument("--timeout-s", type=float, default=900.0, help="give up after this long")


@scenario(
    "languages",
    "ASR WER, language detection and CPU per stream per language and model size",
    add_args=_args,
    needs_server=False,
)
async def run(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    command = [sys.executable, "-m", "tidegate.bench.micro.languages", "--json"]
    command += ["--clips", str(args.clips), "--language", args.language]
    if args.asr_languages:
        command += ["--asr-languages", args.asr_languages]
    if args.voices:
        command += ["--voices", args.voices]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    return await _child(command, args.timeout_s)
