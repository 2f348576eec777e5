"""The language of the user's turn, as the streaming policy keeps it across the turn's
segments (the audio lane asks it for each segment's request and reports it on ``asr.final``;
the reply lane answers in it: ``tidegate.pipelines.language``).

A session's config ``language`` is a code (ISO 639-1: ``de``) or ``auto`` (absent: the ASR
engine's ``language`` setting, ``auto`` by default). Under ``auto`` the streaming policy
detects the language once per turn (:mod:`.streaming`); this object keeps it for the rest of
the turn, so that every segment of a turn (a pause in the middle, a long segment cut in two)
is recognised in, and reported with, the same language. A turn locks its language at the
first sure detection (``asr_language_lock_probability``); until then the turn's audio so far
(at most 30 s) is kept, and each decode detects on it rather than on its own segment only
(the VAD cuts speech at pauses of 0.1 s: a turn is often several short segments, and a second
of speech is too little to tell a language by). A segment heard before the turn is sure
reports its own guess. The turn ends when its reply starts (:meth:`TurnLanguage.end_turn`,
the reply lane) or, in a mode with no turns (``transcribe``), with each final
(``per_segment``). Pure logic: no model, no clock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .features import SAMPLE_RATE_HZ
from .request import AsrRequest, AsrResult
from .streaming import Segment

AUTO = "auto"
#: the turn's audio kept for detection while its language is not sure: Whisper's window
MAX_TURN_AUDIO_S = 30.0


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

    def current(self) -> Heard | None:
        """The turn's language as far as known now: locked, else its latest guess."""
        return self._turn or self._guess

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

    # -- the streaming policy's steps (the audio lane and the languages bench call them) ---
    def request(
        self, seg: Segment, end: int | None = None, cancel: threading.Event | None = None
    ) -> AsrRequest:
        """``seg``'s request (its first ``end`` samples): in the turn's language once the
        turn is sure of it; until then detected on the turn's audio so far."""
        heard = self._turn
        if not seg.language_locked and heard is not None:  # another segment of the turn locked
            seg.language, seg.language_probability = heard.code, heard.probability
        request = seg.request(end, cancel)
        context = None if seg.language_locked else self.context(request.audio)
        return request if context is None else replace(request, language_audio=context)

    def partial_done(self, seg: Segment) -> None:
        """A partial of ``seg`` was taken: a language it locked is the turn's."""
        if seg.language_locked:
            self.heard(seg.language, seg.language_probability)

    def final_done(
        self, seg: Segment, result: AsrResult | None, *, lock_probability: float, locked: bool
    ) -> tuple[str | None, float | None]:
        """``seg``'s final was taken (``locked``: its language was locked before it): the
        language to report and its probability; a sure one becomes the turn's, an unsure
        one keeps the segment's audio for the turn's next detections."""
        code = seg.language if seg.language_locked else None
        if code is None and result is not None:
            code = result.language
        probability = seg.language_probability
        if probability is None and result is not None and result.language == code:
            probability = result.language_probability
        if probability is not None:
            probability = min(1.0, max(0.0, float(probability)))
        sure = locked or (probability or 0.0) >= lock_probability
        self.heard(code, probability, sure=sure)
        if not sure:
            self.add_audio(seg.audio())
        self.segment_done()
        return code, probability
