"""The language of the user's turn, shared by the lanes that need it: the audio lane (which
asks the ASR for it and reports it on ``asr.final``) and the reply lane (which answers in it).

A session's config ``language`` is a code (ISO 639-1: ``de``) or ``auto`` (absent: the ASR
engine's ``language`` setting, ``auto`` by default). Under ``auto`` the streaming policy
detects the language once per turn (:mod:`tidegate.engines.asr.streaming`); this object keeps
it for the rest of the turn, so that every segment of a turn (a pause in the middle, a long
segment cut in two) is recognised in, and reported with, the same language. A turn locks
its language at the first sure detection (``asr_language_lock_probability``); until then the
turn's audio so far (at most 30 s) is kept, and each decode detects on it rather than on its
own segment only (the VAD cuts speech at pauses of 0.1 s: a turn is often several short
segments, and a second of speech is too little to tell a language by). A segment heard before
the turn is sure reports its own guess. The turn ends
when its reply starts (:meth:`TurnLanguage.end_turn`, the reply lane) or, in a mode with no
turns (``transcribe``), with each final (``per_segment``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

AUTO = "auto"
SAMPLE_RATE_HZ = 16_000
#: the turn's audio kept for detection while its language is not sure: Whisper's window
MAX_TURN_AUDIO_S = 30.0

#: English names of the languages the voices registry and Whisper's common languages cover,
#: for the LLM's hint (a code not listed is named by its code)
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "de": "German",
    "es": "Spanish",
    "fr": "French",
    "it": "Italian",
    "pt": "Portuguese",
    "nl": "Dutch",
    "pl": "Polish",
    "sv": "Swedish",
    "ru": "Russian",
    "tr": "Turkish",
    "cs": "Czech",
    "da": "Danish",
    "fi": "Finnish",
    "el": "Greek",
    "hu": "Hungarian",
    "ro": "Romanian",
    "uk": "Ukrainian",
    "ja": "Japanese",
    "zh": "Chinese",
    "hi": "Hindi",
    "ar": "Arabic",
    "ko": "Korean",
    "no": "Norwegian",
    "ca": "Catalan",
    "he": "Hebrew",
    "id": "Indonesian",
    "vi": "Vietnamese",
    "th": "Thai",
}


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, f"the language with ISO 639-1 code {code!r}")


def reply_hint(code: str) -> str:
    """The system message that asks the LLM to answer in ``code``'s language."""
    name = language_name(code)
    return f"The user speaks {name}. Reply in {name}."


@dataclass(frozen=True, slots=True)
class Heard:
    """A turn's language and the model's probability of it."""

    code: str
    probability: float | None = None


class TurnLanguage:
    """See the module docstring. ``asked`` reads the session's ``language`` now (a code,
    ``auto``, or None: the engine's default), so a ``session.update`` applies from the next
    turn on."""

    def __init__(self, asked: Callable[[], str | None], *, per_segment: bool = False) -> None:
        self._asked = asked
        self.per_segment = per_segment
        self._turn: Heard | None = None  # the turn in progress, once its language is known
        self._guess: Heard | None = None  # its latest unsure detection
        self._audio: list[np.ndarray[Any, Any]] = []  # its audio while not sure
        self._audio_samples = 0
        self.last: Heard | None = None  # the last ended turn's

    @property
    def asked(self) -> str | None:
        return self._asked()

    @property
    def turn(self) -> Heard | None:
        return self._turn

    def for_segment(self) -> Heard | None:
        """What a new segment of the turn asks for: the turn's language once known (with its
        probability), else None (the session's ``asked``)."""
        return self._turn

    def heard(self, code: str | None, probability: float | None, *, sure: bool = True) -> None:
        """A segment of the turn was recognised in ``code``: locked (given, or detected with
        enough confidence: ``sure``) the turn keeps it; else it is the turn's latest guess."""
        if code is None or code == AUTO:
            return
        if not sure:
            self._guess = Heard(code, probability)
            return
        if self._turn is None:
            self._turn = Heard(code, probability)
            self._audio.clear()
            self._audio_samples = 0

    def add_audio(self, audio: np.ndarray[Any, Any]) -> None:
        """A segment of a turn not yet sure of its language ended: its audio is kept for the
        next detections of the turn (the newest 30 s)."""
        if self._turn is not None or not len(audio):
            return
        self._audio.append(audio)
        self._audio_samples += len(audio)
        limit = int(MAX_TURN_AUDIO_S * SAMPLE_RATE_HZ)
        while self._audio_samples - len(self._audio[0]) >= limit:
            self._audio_samples -= len(self._audio.pop(0))

    def context(self, audio: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
        """The audio to detect the language of ``audio`` (a segment of the turn) on: the
        turn's earlier audio and it (the newest 30 s); None when there is none earlier."""
        if self._turn is not None or not self._audio:
            return None
        whole = np.concatenate([*self._audio, audio])
        return whole[-int(MAX_TURN_AUDIO_S * SAMPLE_RATE_HZ) :]

    def segment_done(self) -> None:
        """A segment's final is out: it ends the turn in a mode with no turns."""
        if self.per_segment:
            self.end_turn()

    def end_turn(self) -> Heard | None:
        """The turn is over (its reply starts): its language, remembered as ``last``."""
        heard = self._turn or self._guess
        self._turn = self._guess = None
        self._audio.clear()
        self._audio_samples = 0
        if heard is not None:
            self.last = heard
        return heard

    def for_reply(self, *, spoken: bool) -> str | None:
        """The language to reply in: a spoken turn's (ending it), else (typed text) the
        session's code, or the language the user last spoke; None when unknown."""
        heard = self.end_turn() if spoken else None
        if heard is not None:
            return heard.code
        asked = self.asked
        if asked is not None and asked != AUTO:
            return asked
        return self.last.code if self.last is not None else None
