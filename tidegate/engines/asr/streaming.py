"""The streaming policy, as pure logic (no model, no clock, no asyncio): one speech segment
growing while the user speaks, re-decoded every ``partial_interval_s``, and what to send.

- **Committed prefix** (local agreement): after each decode, the tokens on which the last
  two hypotheses agree, cut back to a whole word (a word is complete once the next token
  starts a new one), become committed. Committed tokens are forced as the prefix of every
  later decode of the segment, and of its final, so they never change: an ``asr.partial``
  carries the committed text, which only grows and is a prefix of the final.
- **Tentative text**: the rest of the newest hypothesis, beyond what is committed, is what
  the recognizer hears now (``tentative``): a caption can show it at once (a word is
  committed only once a second decode agrees, one ``partial_interval_s`` or more later), but
  the next partial or the final may change or drop it.
- **Finals first**: a partial is not started while the newest audio is quiet (VAD
  probability below ``pause_probability``) for less than ``partial_hold_s``: the segment may
  be about to end, and its final should not queue behind a partial that nobody will read.
- **Adaptive partial rate**: partials are what a loaded engine gives up first. With ``q``
  requests queued for the ASR engine, a partial is due after ``partial_interval_s * (1 +
  q / partial_backoff_items)`` of new audio, and none starts while ``q >=
  partial_max_queue_items`` (finals only): the cost of partials falls as the load rises,
  finals are never skipped.
- **Context**: a segment carries ``prompt``, the tokens of the session's previous finals
  (the newest ``prompt_tokens``), as Whisper's previous-text context, so that a short phrase
  the VAD cut out is decoded knowing what came before. Only while the talk goes on: after a
  pause longer than ``prompt_max_gap_s`` the context starts empty again (tiny.en, prompted
  with an unrelated sentence, can continue the prompt instead of hearing the audio). A
  hypothesis that only repeats the prompt's last words (:meth:`Segment.echoes_prompt`: the
  previous phrase again, for a breath or a noise) is not taken: the segment drops its prompt
  and is decoded again without it.
- **Gate**: a hypothesis counts only when :class:`~.request.QualityGate` calls it speech (no
  text from silence or noise, even when the VAD let it through).
- **Cuts**: a segment longer than ``max_segment_s`` is cut at the quietest VAD frame (below
  ``pause_probability``) in the audio that arrived after the last commitment's audio, or at
  the quietest frame anyway past ``hard_max_segment_s``. The audio is partitioned (the first
  part ends exactly where the next begins), so no word is decoded twice; cutting at a pause
  and never before committed audio keeps words whole.
- **Language** (a multilingual model): a segment asks for its ``language`` (a code, or
  ``auto``). Under ``auto``, each decode detects the language (Whisper's language token, free:
  it is read at the first decoder step) until one that saw at least ``language_detect_s`` of
  audio, was judged speech and gave its language a probability of at least
  ``language_lock_probability`` (or, whatever the probability, saw ``language_detect_max_s``);
  that language is then *locked* for the rest of the turn: every
  later partial and the final are decoded in it (so a partial never flips language and the
  final agrees with the partials). A turn shorter than that is detected on its final.
  Hypotheses in different languages never agree (no commitment across a language change).
  :meth:`Segment.split` hands the lock to the rest of the turn, and a lane that opens the next
  segment of the same turn passes ``language=previous.turn_language``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..runtime import Array
from .features import SAMPLE_RATE_HZ
from .request import AsrRequest, AsrResult, QualityGate

VAD_FRAME_SAMPLES = 512
#: a joined decode's audio at most (s): Whisper's window, less the encoder's margin
MAX_JOIN_S = 25.0


@dataclass(frozen=True, slots=True)
class StreamingSettings:
    """Partial cadence and segment length limits."""

    partial_interval_s: float = 1.0
    min_partial_audio_s: float = 0.5
    max_segment_s: float = 15.0
    hard_max_segment_s: float = 25.0
    pause_probability: float = 0.35
    partial_hold_s: float = 0.2
    language_detect_s: float = 2.0
    pre_roll_s: float = 0.2
    prompt_tokens: int = 0
    prompt_max_gap_s: float = 1.0
    partial_backoff_items: int = 4
    partial_max_queue_items: int = 16
    language_lock_probability: float = 0.7
    language_detect_max_s: float = 6.0
    #: a segment's final starts when the VAD's quiet begins, not when it ends it
    #: (pipelines/audio.py "early final")
    early_final: bool = False
    #: a segment within this of the previous one's end is decoded again together with the
    #: segments before it (s; 0: never): pipelines/audio.py, "Joined decodes"
    join_max_gap_s: float = 2.0
    #: ... over at most this much of their audio (s)
    join_max_s: float = 15.0
    gate: QualityGate = field(default_factory=QualityGate)

    def __post_init__(self) -> None:
        if self.partial_interval_s <= 0:
            raise ValueError("partial_interval_s must be positive")
        if not 0 <= self.pre_roll_s <= 2.0:
            raise ValueError("pre_roll_s must be within 0..2 s")
        if self.prompt_tokens < 0 or self.prompt_max_gap_s < 0:
            raise ValueError("prompt_tokens and prompt_max_gap_s cannot be negative")
        if self.partial_backoff_items < 1 or self.partial_max_queue_items < 1:
            raise ValueError("partial_backoff_items and partial_max_queue_items must be >= 1")
        if self.partial_hold_s < 0:
            raise ValueError("partial_hold_s cannot be negative")
        if self.join_max_gap_s < 0 or not 0 < self.join_max_s <= MAX_JOIN_S:
            raise ValueError(f"need join_max_gap_s >= 0 and 0 < join_max_s <= {MAX_JOIN_S:.0f}")
        if not 0 <= self.language_detect_s <= self.language_detect_max_s <= 30.0:
            raise ValueError("need 0 <= language_detect_s <= language_detect_max_s <= 30 s")
        if not 0 <= self.language_lock_probability <= 1:
            raise ValueError("language_lock_probability must be within 0..1")
        if not 0 < self.max_segment_s <= self.hard_max_segment_s <= 30.0:
            raise ValueError("need 0 < max_segment_s <= hard_max_segment_s <= 30")

    def partial_interval_at(self, queued: int) -> float | None:
        """The partial interval (s of new audio) while ``queued`` ASR requests wait (the
        adaptive partial rate): ``partial_interval_s`` on an idle engine, stretched by one
        interval per ``partial_backoff_items`` queued; None (no partial, finals only) from
        ``partial_max_queue_items`` queued."""
        if queued >= self.partial_max_queue_items:
            return None
        return self.partial_interval_s * (1 + queued / self.partial_backoff_items)


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w']+", " ", text.lower()).split()


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Segment:
    """One segment of speech: its audio (16 kHz float32), the VAD probability of each
    512-sample frame, and the committed tokens."""

    def __init__(
        self,
        seg_id: str,
        start_sample: int,
        decode: Callable[[Sequence[int]], str],
        *,
        language: str | None = None,
        language_probability: float | None = None,
        prompt: Sequence[int] = (),
    ) -> None:
        """``language``: the code to transcribe in, ``auto`` (or None: the engine's default,
        locked like ``auto``) to detect it once per turn. ``language_probability`` (with a
        code) marks it as detected earlier in the turn: reported again with this segment.
        ``prompt``: the tokens of the text heard before this segment (every decode of it
        carries them as Whisper's previous-text context)."""
        self.prompt = tuple(int(t) for t in prompt)
        self.id = seg_id
        self.language = language  # what this segment asks for (a code once locked)
        self.language_probability = language_probability  # set once a detection locked it
        self.start_sample = start_sample
        self._parts: list[Array] = []
        self._samples = 0
        self.probs: list[float] = []
        self.committed: tuple[int, ...] = ()
        self.committed_text = ""
        #: the newest hypothesis beyond the committed text (words; may change or vanish)
        self.tentative = ""
        self.commit_audio_end = 0  # segment samples the committing decode had seen
        self.previous: tuple[int, ...] | None = None
        self.decoded_until = 0
        self.closed = False
        self.failed: str | None = None  # why its final's decode failed (an ErrorCode value)
        self._decode = decode
        self._previous_language = ""

    @property
    def samples(self) -> int:
        return self._samples

    @property
    def end_sample(self) -> int:
        return self.start_sample + self._samples

    def append(self, audio: Array, probs: Sequence[float] = ()) -> None:
        if len(audio):
            self._parts.append(np.asarray(audio, dtype=np.float32))
            self._samples += len(audio)
        self.probs.extend(probs)

    def audio(self, end: int | None = None) -> Array:
        if len(self._parts) > 1:
            self._parts = [np.concatenate(self._parts)]
        whole = self._parts[0] if self._parts else np.zeros(0, dtype=np.float32)
        return whole if end is None else whole[:end]

    def truncate(self, samples: int) -> None:
        """Keep only the first ``samples`` (the VAD's end of speech)."""
        whole = self.audio()
        self._parts = [whole[:samples]]
        self._samples = min(self._samples, samples)

    def due(self, s: StreamingSettings, queued: int = 0) -> bool:
        """Whether a partial is due, with ``queued`` requests waiting for the ASR engine
        (:meth:`StreamingSettings.partial_interval_at`)."""
        interval = s.partial_interval_at(queued)
        return (
            interval is not None
            and not self.closed
            and self._samples >= s.min_partial_audio_s * SAMPLE_RATE_HZ
            and self._samples - self.decoded_until >= interval * SAMPLE_RATE_HZ
            and not self._pausing(s)
        )

    def _pausing(self, s: StreamingSettings) -> bool:
        """The newest frames are quiet, for less than ``partial_hold_s``."""
        quiet = 0
        for p in reversed(self.probs):
            if p >= s.pause_probability:
                break
            quiet += 1
        return 0 < quiet * VAD_FRAME_SAMPLES < s.partial_hold_s * SAMPLE_RATE_HZ

    @property
    def turn_language(self) -> str | None:
        """The language to open the next segment of this turn with (the locked one, or what
        was asked)."""
        return self.language

    @property
    def language_locked(self) -> bool:
        return self.language not in (None, "auto")

    def request(self, end: int | None = None, cancel: threading.Event | None = None) -> AsrRequest:
        return AsrRequest(self.audio(end), self.committed, cancel, self.language, self.prompt)

    def on_language(self, result: AsrResult, decoded: int, s: StreamingSettings) -> None:
        """Lock the detected language once a speech decode saw ``language_detect_s`` and is
        sure of it (``language_lock_probability``), or saw ``language_detect_max_s``."""
        if self.language_locked or not result.language:
            return
        sure = result.language_probability >= s.language_lock_probability
        if (
            decoded >= s.language_detect_s * SAMPLE_RATE_HZ
            and (sure or decoded >= s.language_detect_max_s * SAMPLE_RATE_HZ)
            and s.gate.is_speech(result)
        ):
            self.language = result.language
            self.language_probability = result.language_probability

    def echoes_prompt(self, result: AsrResult) -> bool:
        """Whether the hypothesis, beyond what is committed, only repeats the end of the
        prompt (tiny.en, given a context, may answer a breath or a noise with the previous
        phrase again): such a hypothesis is decoded again without the prompt."""
        if not self.prompt:
            return False
        said = _words(self._decode(result.tokens[len(self.committed) :]))
        before = _words(self._decode(self.prompt))
        return bool(said) and len(said) <= len(before) and before[-len(said) :] == said

    def _starts_word(self, token: int) -> bool:
        return self._decode([token]).startswith(" ")

    def on_partial(self, result: AsrResult, decoded: int, s: StreamingSettings) -> bool:
        """Take a partial hypothesis of the first ``decoded`` samples; True when the
        committed prefix grew. ``tentative`` becomes the hypothesis beyond the committed
        text (nothing when the gate does not call it speech)."""
        self.decoded_until = max(self.decoded_until, decoded)
        self.on_language(result, decoded, s)
        if not s.gate.is_speech(result):
            self.previous = None
            self.tentative = ""
            return False
        hyp = result.tokens
        prev, self.previous = self.previous, hyp
        prev_language, self._previous_language = self._previous_language, result.language
        grew = self._commit(prev, hyp, decoded) if prev_language == result.language else False
        self.tentative = self._decode(hyp[len(self.committed) :]).strip()
        return grew

    def _commit(self, prev: Sequence[int] | None, hyp: Sequence[int], decoded: int) -> bool:
        """Commit what ``prev`` and ``hyp`` (of the first ``decoded`` samples) agree on, cut
        back to a whole word; True when the committed prefix grew."""
        if prev is None:
            return False
        n = common_prefix(prev, hyp)
        # Cut back to a word boundary: the word ending at n is complete only if hyp goes on
        # with a token that starts a new word.
        while n > len(self.committed) and not (n < len(hyp) and self._starts_word(hyp[n])):
            n -= 1
            while n > len(self.committed) and not self._starts_word(hyp[n]):
                n -= 1
        if n <= len(self.committed):
            return False
        self.committed = tuple(hyp[:n])
        self.committed_text = self._decode(self.committed).strip()
        self.commit_audio_end = decoded
        return True

    def cut_point(self, s: StreamingSettings) -> int | None:
        """Where to cut this segment (samples), or None to let it grow."""
        if self._samples < s.max_segment_s * SAMPLE_RATE_HZ:
            return None
        first = -(-self.commit_audio_end // VAD_FRAME_SAMPLES)
        window = self.probs[first:]
        if not window:
            return None
        k = int(np.argmin(window))
        hard = self._samples >= s.hard_max_segment_s * SAMPLE_RATE_HZ
        if window[k] < s.pause_probability or hard:
            return min(self._samples, (first + k) * VAD_FRAME_SAMPLES + VAD_FRAME_SAMPLES // 2)
        return None

    def split(self, cut: int, new_id: str) -> Segment:
        """Close this segment at ``cut`` and return the rest as a new open segment."""
        whole = self.audio()
        frame = cut // VAD_FRAME_SAMPLES
        rest = Segment(
            new_id,
            self.start_sample + cut,
            self._decode,
            language=self.language,
            language_probability=self.language_probability,
            prompt=(*self.prompt, *self.committed),
        )
        rest.append(
            whole[cut:], self.probs[frame + 1 :] if cut % VAD_FRAME_SAMPLES else self.probs[frame:]
        )
        self._parts = [whole[:cut]]
        self._samples = cut
        self.closed = True
        return rest

    def final_text(self, result: AsrResult | None, s: StreamingSettings) -> str:
        """The final: the hypothesis when it is speech (it begins with the committed
        tokens), else what was committed (possibly nothing)."""
        if result is not None and s.gate.is_speech(result):
            if not self.language_locked and result.language:  # a turn too short to lock
                self.language = result.language
                self.language_probability = result.language_probability
            return result.text
        return self.committed_text
