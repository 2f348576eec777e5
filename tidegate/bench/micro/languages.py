"""Microbenchmark of speech recognition per language and model size.

``python -m tidegate.bench.micro.languages --json`` prints one JSON object: for each model
(``whisper-tiny-en``, ``whisper-base``) and each language it serves (tiny.en: English; base:
English, German, Spanish, French), espeak-ng sentences (3-4 s each) decoded with the streaming
policy a session uses (:class:`~tidegate.engines.asr.streaming.Segment`: a partial every
``partial_interval_s`` of audio, then the final; under ``auto`` the language is detected and
locked once 2 s were decoded): the mean WER of the finals against the text spoken, the
language detection accuracy (``auto``) and the CPU seconds per second of speech (one stream,
one thread: process CPU time over audio time). ``cpu_ratio_vs_tiny_en`` compares each base
figure on English with tiny.en's (target <= 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tidegate.engines import models
from tidegate.engines.asr.request import AsrRequest, AsrResult
from tidegate.engines.asr.streaming import Segment, StreamingSettings
from tidegate.engines.asr.whisper_onnx import WhisperOnnx
from tidegate.engines.engine import Ok
from tidegate.tools.prepare import prepare_offline

from .. import audio_sets
from ..wer import wer

SR = audio_sets.SAMPLE_RATE_HZ
#: language -> espeak-ng voice and the sentences spoken
SENTENCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "en": (
        "en-us",
        (
            "The weather today is sunny and warm, we are going to the park.",
            "Please open the window in the kitchen, it is very hot in here.",
            "Tomorrow I would like to take the train to Berlin with my family.",
        ),
    ),
    "de": (
        "de",
        (
            "Das Wetter ist heute sonnig und warm, wir gehen in den Park.",
            "Bitte öffne das Fenster in der Küche, es ist sehr heiß hier.",
            "Ich möchte morgen mit dem Zug nach Berlin fahren.",
        ),
    ),
    "es": (
        "es",
        (
            "El tiempo hoy es soleado y cálido, vamos a la playa.",
            "Por favor abre la ventana de la cocina, hace mucho calor.",
            "Mañana quiero viajar en tren a Madrid con mi familia.",
        ),
    ),
    "fr": (
        "fr-fr",
        (
            "Il fait beau et chaud aujourd'hui, nous allons au parc.",
            "Ouvre la fenêtre de la cuisine, s'il te plaît, il fait très chaud.",
            "Demain je voudrais prendre le train pour Paris avec ma famille.",
        ),
    ),
}
MODELS = {"whisper-tiny-en": ("en",), "whisper-base": ("en", "de", "es", "fr")}


def _default_data_dir() -> Path:
    env = os.environ.get("TIDEGATE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("tidegate", appauthor=False))


def _decode(engine: WhisperOnnx, request: AsrRequest) -> AsrResult:
    (out,) = engine.run_batch([request], [None])
    if not isinstance(out, Ok):
        raise RuntimeError(f"asr failed: {out}")
    return out.value


def stream(
    engine: WhisperOnnx, audio: np.ndarray[Any, Any], language: str, s: StreamingSettings
) -> tuple[AsrResult, Segment, float]:
    """One turn through the streaming policy: partials every ``partial_interval_s``, then the
    final; its result, the segment and the CPU seconds it took."""
    assert engine.tokenizer is not None
    seg = Segment("bench", 0, engine.tokenizer.decode, language=language)
    seg.append(audio, [0.9] * (len(audio) // 512))
    step = int(s.partial_interval_s * SR)
    t0 = time.process_time()
    for end in range(step, len(audio), step):
        seg.on_partial(_decode(engine, seg.request(end)), end, s)
    final = _decode(engine, seg.request())
    seg.final_text(final, s)
    return final, seg, time.process_time() - t0


def run(data_dir: Path, clips: int = 3) -> dict[str, Any]:
    s = StreamingSettings()
    report: dict[str, Any] = {"streaming": {"partial_interval_s": s.partial_interval_s}}
    for name, languages in MODELS.items():
        prepare_offline(data_dir, name)
        engine = WhisperOnnx(models.model_dir(data_dir, name))
        engine.load()
        rows: dict[str, Any] = {}
        for lang in languages:
            voice, sentences = SENTENCES[lang]
            sentences = sentences[:clips]
            errors, auto_errors, cpu, audio_s, detected = [], [], 0.0, 0.0, 0
            for text in sentences:
                audio = audio_sets.trim_silence(audio_sets.espeak(text, voice=voice))
                given, _, c = stream(engine, audio, lang, s)
                auto, seg, _ = stream(engine, audio, "auto", s)
                errors.append(wer(text, given.text))
                auto_errors.append(wer(text, auto.text))
                detected += seg.language == lang
                cpu += c
                audio_s += len(audio) / SR
            rows[lang] = {
                "wer": float(np.mean(errors)),
                "wer_auto": float(np.mean(auto_errors)),
                "detection_accuracy": detected / len(sentences),
                "cpu_s_per_audio_s": cpu / audio_s,
                "clips": len(sentences),
                "audio_s": audio_s,
            }
        report[name] = rows
        engine.close()
    tiny = report["whisper-tiny-en"]["en"]["cpu_s_per_audio_s"]
    report["cpu_ratio_vs_tiny_en"] = {
        lang: row["cpu_s_per_audio_s"] / tiny for lang, row in report["whisper-base"].items()
    }
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--clips", type=int, default=3, help="sentences per language (1-3)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    missing = audio_sets.have_tools()
    if missing:
        print(f"languages bench: missing {missing}", file=sys.stderr)
        return 2
    report = run(args.data_dir or _default_data_dir(), max(1, args.clips))
    print(json.dumps(report, indent=2 if not args.json else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
