"""Microbenchmark of speech recognition per language and model size.

``python -m tidegate.bench.micro.languages --json`` prints one JSON object: for each model
(``whisper-tiny-en``, ``whisper-base``) and each language it serves (tiny.en: English; base:
English, German, Spanish, French), sentences spoken by espeak-ng in English and SVOX Pico
outside it (``audio_sets.LANGUAGE_VOICES``; ``--voices de=mb-de2,...`` another voice per
language; 2-4 s each) decoded with the streaming
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
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tidegate.bench.micro import default_data_dir
from tidegate.engines import models
from tidegate.engines.asr.request import AsrRequest, AsrResult
from tidegate.engines.asr.streaming import Segment, StreamingSettings
from tidegate.engines.asr.turn_language import TurnLanguage
from tidegate.engines.asr.whisper_onnx import WhisperOnnx
from tidegate.engines.engine import Ok
from tidegate.tools.prepare import prepare_offline

from .. import audio_sets
from ..wer import wer

SR = audio_sets.SAMPLE_RATE_HZ
#: language -> voice (audio_sets.LANGUAGE_VOICES: Pico outside English) and the sentences
#: spoken (3-5 s each at 150 wpm): the first
#: three are the tests' (tests/engines/test_asr_languages.py), the rest a held-out set
SENTENCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "en": (
        audio_sets.LANGUAGE_VOICES["en"],
        (
            "The weather today is sunny and warm, we are going to the park.",
            "Please open the window in the kitchen, it is very hot in here.",
            "Tomorrow I would like to take the train to Berlin with my family.",
            "Could you tell me how long the museum stays open on Sundays?",
            "I left my keys on the table next to the front door this morning.",
            "We need three more chairs for the meeting in the afternoon.",
            "The children played football in the garden until it got dark.",
            "My sister is coming to visit us next weekend with her dog.",
            "Please remind me to call the doctor at ten o'clock tomorrow.",
            "The restaurant around the corner serves very good fish and chips.",
            "How much does a ticket to the concert cost this year?",
        ),
    ),
    "de": (
        audio_sets.LANGUAGE_VOICES["de"],
        (
            "Das Wetter ist heute sonnig und warm, wir gehen in den Park.",
            "Bitte öffne das Fenster in der Küche, es ist sehr heiß hier.",
            "Ich möchte morgen mit dem Zug nach Berlin fahren.",
            "Kannst du mir sagen, wann der nächste Bus zum Bahnhof fährt?",
            "Meine Schwester wohnt seit drei Jahren in einer kleinen Stadt am Meer.",
            "Wir haben gestern Abend einen sehr schönen Film im Kino gesehen.",
            "Der Arzt hat gesagt, dass ich mehr Wasser trinken soll.",
            "Bitte mach die Tür zu, es ist kalt draußen.",
            "Am Wochenende fahren wir mit den Kindern in die Berge.",
            "Das Restaurant an der Ecke hat heute leider geschlossen.",
            "Wie viel kostet eine Fahrkarte nach München und zurück?",
        ),
    ),
    "es": (
        audio_sets.LANGUAGE_VOICES["es"],
        (
            "El tiempo hoy es soleado y cálido, vamos a la playa.",
            "Por favor abre la ventana de la cocina, hace mucho calor.",
            "Mañana quiero viajar en tren a Madrid con mi familia.",
            "¿Puedes decirme a qué hora sale el próximo autobús a la estación?",
            "Mi hermana vive desde hace tres años en un pueblo pequeño junto al mar.",
            "Ayer por la noche vimos una película muy bonita en el cine.",
            "El médico me dijo que tengo que beber más agua todos los días.",
            "Por favor cierra la puerta, hace mucho frío fuera.",
            "El fin de semana vamos a la montaña con los niños.",
            "El restaurante de la esquina está cerrado hoy por vacaciones.",
            "¿Cuánto cuesta un billete de ida y vuelta a Barcelona?",
        ),
    ),
    "fr": (
        audio_sets.LANGUAGE_VOICES["fr"],
        (
            "Il fait beau et chaud aujourd'hui, nous allons au parc.",
            "Ouvre la fenêtre de la cuisine, s'il te plaît, il fait très chaud.",
            "Demain je voudrais prendre le train pour Paris avec ma famille.",
            "Peux-tu me dire à quelle heure part le prochain bus pour la gare?",
            "Ma sœur habite depuis trois ans dans une petite ville au bord de la mer.",
            "Hier soir nous avons vu un très beau film au cinéma.",
            "Le médecin m'a dit que je dois boire plus d'eau chaque jour.",
            "Ferme la porte s'il te plaît, il fait très froid dehors.",
            "Ce week-end nous partons à la montagne avec les enfants.",
            "Le restaurant du coin est fermé aujourd'hui pour les vacances.",
            "Combien coûte un billet aller-retour pour Marseille?",
        ),
    ),
}
MODELS = {"whisper-tiny-en": ("en",), "whisper-base": ("en", "de", "es", "fr")}
MAX_CLIPS = min(len(v[1]) for v in SENTENCES.values())


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


#: the VAD's cut, approximated: a pause of at least this long, below PAUSE_RMS, ends a segment
PAUSE_S = 0.1
PAUSE_RMS = 0.003  # -50 dBFS
PAUSE_FRAME = 160  # 10 ms


def cut_at_pauses(audio: np.ndarray[Any, Any]) -> list[np.ndarray[Any, Any]]:
    """``audio`` cut where it pauses (as the VAD cuts a turn into segments)."""
    n = len(audio) // PAUSE_FRAME
    rms = np.sqrt((audio[: n * PAUSE_FRAME].reshape(n, PAUSE_FRAME) ** 2).mean(axis=1))
    quiet = np.append(rms < PAUSE_RMS, False)
    pieces, start, run_start = [], 0, None
    for i, q in enumerate(quiet):
        if q and run_start is None:
            run_start = i
        elif not q and run_start is not None:
            if run_start > 0 and i - run_start >= PAUSE_S * 1000 / 10:
                pieces.append(audio[start : run_start * PAUSE_FRAME])
                start = i * PAUSE_FRAME
            run_start = None
    pieces.append(audio[start:])
    return [p for p in pieces if len(p) >= SR // 10]


def stream_turn(
    engine: WhisperOnnx, audio: np.ndarray[Any, Any], s: StreamingSettings
) -> tuple[str | None, list[str | None], int]:
    """One turn under ``auto``, cut at its pauses, segment after segment through the audio
    lane's language steps (:class:`~tidegate.engines.asr.turn_language.TurnLanguage`): the
    turn's language (what the reply answers in), each final's, and the segments."""
    assert engine.tokenizer is not None
    turn = TurnLanguage(lambda: "auto")
    finals: list[str | None] = []
    pieces = cut_at_pauses(audio)
    for k, piece in enumerate(pieces):
        heard = turn.for_segment()
        seg = Segment(
            f"t{k}",
            0,
            engine.tokenizer.decode,
            language=heard.code if heard is not None else "auto",
            language_probability=heard.probability if heard is not None else None,
        )
        seg.append(piece, [0.9] * (len(piece) // 512))
        step = int(s.partial_interval_s * SR)
        for end in range(step, len(piece), step):
            seg.on_partial(_decode(engine, turn.request(seg, end)), end, s)
            turn.partial_done(seg)
        locked = seg.language_locked
        final = _decode(engine, turn.request(seg))
        seg.final_text(final, s)
        code, _ = turn.final_done(
            seg, final, lock_probability=s.language_lock_probability, locked=locked
        )
        finals.append(code)
    heard = turn.end_turn()
    return (heard.code if heard is not None else None), finals, len(pieces)


def voices_for(languages: tuple[str, ...], chosen: dict[str, str] | None) -> dict[str, str]:
    """The voice speaking each of ``languages``: the ``chosen`` one (``--voices``), else its
    test voice (:data:`SENTENCES`)."""
    return {x: (chosen or {}).get(x, SENTENCES[x][0]) for x in languages}


def run_turns(
    data_dir: Path,
    clips: int,
    *,
    languages: tuple[str, ...],
    served: tuple[str, ...] = (),
    settings: StreamingSettings | None = None,
    voices: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Detection on whole turns cut at their pauses (Whisper base, ``auto``): per language,
    the turns whose language (the reply's) is right, and the finals reporting the right
    language."""
    s = settings or StreamingSettings()
    voice_of = voices_for(languages, voices)
    prepare_offline(data_dir, "whisper-base")
    engine = WhisperOnnx(models.model_dir(data_dir, "whisper-base"), languages=served)
    engine.load()
    rows: dict[str, Any] = {}
    right = total = 0
    try:
        for lang in languages:
            voice, sentences = voice_of[lang], SENTENCES[lang][1]
            ok = finals_ok = finals = cut = turns = 0
            for text in sentences[:clips]:
                audio = audio_sets.trim_silence(audio_sets.speak(text, voice=voice))
                if len(audio) <= 2 * SR:
                    continue
                got, codes, pieces = stream_turn(engine, audio, s)
                turns += 1
                ok += got == lang
                cut += pieces > 1
                finals += len(codes)
                finals_ok += sum(c == lang for c in codes)
            rows[lang] = {
                "turns": turns,
                "turn_language_right": ok,
                "turns_cut": cut,
                "finals": finals,
                "finals_right": finals_ok,
            }
            right += ok
            total += turns
    finally:
        engine.close()
    return {
        "turns": rows,
        "turn_accuracy": right / total if total else None,
        "asr_languages": list(served),
        "language_lock_probability": s.language_lock_probability,
    }


def run(
    data_dir: Path,
    clips: int = 3,
    *,
    languages: tuple[str, ...] = ("en", "de", "es", "fr"),
    served: tuple[str, ...] = (),
    settings: StreamingSettings | None = None,
    voices: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The report (see the module docstring): ``clips`` sentences per language of
    ``languages``; ``served`` restricts detection (``asr_languages``); ``settings`` the
    streaming policy (default: the server's)."""
    s = settings or StreamingSettings()
    voice_of = voices_for(languages, voices)
    report: dict[str, Any] = {
        "streaming": {
            "partial_interval_s": s.partial_interval_s,
            "language_detect_s": s.language_detect_s,
            "language_lock_probability": s.language_lock_probability,
            "language_detect_max_s": s.language_detect_max_s,
        },
        "asr_languages": list(served),
        "voices": voice_of,
    }
    detected_all = long_turns = 0
    for name, model_languages in MODELS.items():
        wanted = [x for x in languages if x in model_languages]
        if not wanted:
            continue
        prepare_offline(data_dir, name)
        multilingual = len(model_languages) > 1
        engine = WhisperOnnx(
            models.model_dir(data_dir, name), languages=served if multilingual else ()
        )
        engine.load()
        rows: dict[str, Any] = {}
        for lang in wanted:
            voice, sentences = voice_of[lang], SENTENCES[lang][1]
            sentences = sentences[:clips]
            errors, auto_errors, cpu, audio_s, detected, turns = [], [], 0.0, 0.0, 0, 0
            wrong: dict[str, int] = {}
            for text in sentences:
                audio = audio_sets.trim_silence(audio_sets.speak(text, voice=voice))
                given, _, c = stream(engine, audio, lang, s)
                auto, seg, _ = stream(engine, audio, "auto", s)
                errors.append(wer(text, given.text))
                auto_errors.append(wer(text, auto.text))
                if len(audio) > 2 * SR:  # the target's turns: longer than 2 s
                    turns += 1
                    detected += seg.language == lang
                    if seg.language != lang:
                        wrong[str(seg.language)] = wrong.get(str(seg.language), 0) + 1
                cpu += c
                audio_s += len(audio) / SR
            if multilingual:
                detected_all += detected
                long_turns += turns
            rows[lang] = {
                "wer": float(np.mean(errors)),
                "wer_auto": float(np.mean(auto_errors)),
                "detection_accuracy": detected / turns if turns else None,
                "detected_as_other": wrong,
                "cpu_s_per_audio_s": cpu / audio_s,
                "clips": len(sentences),
                "turns_over_2s": turns,
                "audio_s": audio_s,
            }
        report[name] = rows
        engine.close()
    if long_turns:
        report["detection_accuracy_base"] = detected_all / long_turns
        report["detection_turns_base"] = long_turns
    tiny = report.get("whisper-tiny-en", {}).get("en", {}).get("cpu_s_per_audio_s")
    if tiny:
        report["cpu_ratio_vs_tiny_en"] = {
            lang: row["cpu_s_per_audio_s"] / tiny
            for lang, row in report.get("whisper-base", {}).items()
        }
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--clips", type=int, default=3, help=f"sentences per language (1-{MAX_CLIPS})")
    p.add_argument(
        "--language", default="en,de,es,fr", help="languages to measure (comma-separated)"
    )
    p.add_argument(
        "--asr-languages",
        default="",
        help="restrict detection to these languages (the asr_languages setting)",
    )
    p.add_argument("--lock-probability", type=float, default=None)
    p.add_argument("--detect-s", type=float, default=None)
    p.add_argument(
        "--turns",
        action="store_true",
        help="whole turns cut at their pauses (as the VAD cuts them), Whisper base, auto: "
        "how often the turn's language is right",
    )
    p.add_argument(
        "--voices",
        default="",
        help="another voice per language, e.g. de=mb-de2,es=mb-es2 (an espeak-ng, MBROLA mb- "
        "or Pico pico- voice; default audio_sets.LANGUAGE_VOICES)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    missing = audio_sets.have_tools()
    if missing:
        print(f"languages bench: missing {missing}", file=sys.stderr)
        return 2
    wanted = tuple(x.strip() for x in args.language.split(",") if x.strip())
    unknown = [x for x in wanted if x not in SENTENCES]
    if unknown:
        print(
            f"languages bench: no sentences for {unknown} (have {list(SENTENCES)})", file=sys.stderr
        )
        return 2
    try:
        voices = dict(
            (k.strip(), v.strip())
            for k, v in (x.split("=", 1) for x in args.voices.split(",") if x.strip())
        )
    except ValueError:
        print(
            f"languages bench: --voices takes LANG=VOICE pairs, got {args.voices!r}",
            file=sys.stderr,
        )
        return 2
    stray = sorted(set(voices) - set(wanted))
    if stray:
        print(f"languages bench: --voices names {stray}, not in --language", file=sys.stderr)
        return 2
    default = StreamingSettings()
    settings = replace(
        default,
        language_lock_probability=default.language_lock_probability
        if args.lock_probability is None
        else args.lock_probability,
        language_detect_s=default.language_detect_s if args.detect_s is None else args.detect_s,
    )
    runner = run_turns if args.turns else run
    report = runner(
        args.data_dir or default_data_dir(),
        max(1, min(MAX_CLIPS, args.clips)),
        languages=wanted,
        served=tuple(x.strip() for x in args.asr_languages.split(",") if x.strip()),
        settings=settings,
        voices=voices,
    )
    print(json.dumps(report, indent=2 if not args.json else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
