"""Interruptions: what the user's speech over a reply does to it, as pure logic (no asyncio,
no clock: time is an argument). The reply lane (:mod:`tidegate.pipelines.reply`) applies the
verdicts; docs/assistant.md, "Interruptions", explains the policy.

When a sound starts while a reply is in progress (the VAD above its threshold for
``interrupt_pause_after_s``, or its start of speech), the reply's audio is *paused* at once
(the user is not talked over) and an :class:`Interruption` is opened; a sound that ends short
of speech, like a final without words, leaves nothing to judge, and the reply resumes after
``hold_s`` of quiet (the rest of "Stop, I changed my mind" may follow). The ASR then
decides what the speech was:

- **words**: a partial hypothesis or a final with at least ``min_words`` words that are not
  backchannels (under ``backchannels: interrupt`` the backchannels count too): the reply is
  **cut**, as a barge-in always was, with what the user heard up to the pause;
- **no words, or only backchannels** ("mm-hmm", "yeah"; the list is a setting): the reply
  **resumes** from where its playback stopped: when the last final due comes with no such
  words and the user is silent; or, when the ASR is slow, ``confirm_s`` after the pause (or
  after the end of the sound, if later) with no verdict; or, for a sound still going on
  ``confirm_s`` after the pause, at a partial hypothesis with no such words.

- **its own words**: a text near a stretch of what the reply itself played just before the
  pause (:func:`echoed`: edits per letter) is its own voice coming back from a speaker into
  a microphone that a canceller left some of, not the user: it does not cut it either
  (``response.resumed`` reason ``echo``); a partial hypothesis about that near waits for the
  final. The server knows what it played; no other party to the conversation does. A user
  who repeats the reply's last words does not cut it with them.

- **its own voice, held**: in a session whose reply's own voice has come back loud enough
  to be told by its sound, a later sound over a reply is judged by its sound *before* it
  pauses it: the reply plays on (the interruption is *held*, :meth:`Interruption.hold`) while
  the sound keeps sounding like what it played, and pauses as any other the moment it does
  not (:meth:`Interruption.hold_lost`: a user speaking over the echo). Without it a speaker
  with no canceller paused the reply at each of its own sentences (a stutter).

The interruption stays open until the final of every segment it spans is in: words that
come later (after a resume) still cut, and the text it absorbed (the backchannel, a word
below ``min_words``) is not the user's turn (:meth:`Interruption.on_final` says so).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

BACKCHANNEL_POLICIES = ("ignore", "interrupt")
#: what counts as a backchannel by default (setting ``interrupt_backchannel_phrases``), besides
#: hums and fillers ("mm", "hmm", "mhm", "uh", "um", "ah", "oh", "er"), which always do
DEFAULT_BACKCHANNELS = (
    "mm-hmm",
    "uh-huh",
    "yeah",
    "yep",
    "yes",
    "okay",
    "ok",
    "right",
    "sure",
    "alright",
    "i see",
    "got it",
)
MAX_MIN_WORDS = 20  # the largest interrupt.min_words a session may ask for
MAX_CONFIRM_S = 5.0  # the longest interrupt.confirm_s a session may ask for
TIMER_SLACK_S = 0.005  # a loop timer may fire this much early

# What Whisper writes for sounds that are not words: "(coughs)", "[NOISE]", "*laughs*", "♪".
_NON_SPEECH_RE = re.compile(r"\([^)]*\)|\[[^\]]*\]|\*[^*]*\*|♪")
_WORD_RE = re.compile(r"[a-z0-9']+")
# Hums and fillers however they are spelt ("m", "mmm", "hmmm", "mhm", "uhh", "umm", "ahh",
# "erm", "ohh"): each counts as a backchannel, like the phrases of the list.
_HUM_RE = re.compile(r"[mh]*m[mh]*|u+h+|u+m+|a+h+|e+r+m*|o+h+")


def words_of(text: str) -> list[str]:
    """The spoken words of an ASR text: lower case, sound annotations and punctuation gone,
    hyphenated words split ("Mm-hmm." -> ["mm", "hmm"])."""
    text = _NON_SPEECH_RE.sub(" ", text.lower()).replace("-", " ")
    return [w.strip("'") for w in _WORD_RE.findall(text) if w.strip("'")]


#: how far the text heard over a reply may be from the nearest stretch of what the reply played
#: just before its pause, in edits per letter, to be its own voice coming back (a final); a
#: partial hypothesis this near holds the cut until the final says. Letters, not words: Whisper
#: re-cuts an echo's words ("along in story" for "a long and storied": 0.25), while what users
#: say over a reply is >= 0.5 from it unless they repeat it (measured on the tests' replies)
ECHO_DISTANCE = 0.35
ECHO_DISTANCE_PARTIAL = 0.5
#: ... or in edits per sound (:func:`sound_key`) from the stretch of it that ends where the reply
#: paused (within ``ECHO_SOUND_TAIL`` sounds): Whisper also hears an echo's sounds as other
#: words ("on the end story" for "a long and storied": 0.38 per letter, 0.09 per sound). Vowels
#: are one sound there, so short keys match by chance: ``ECHO_MIN_SOUNDS`` at least
ECHO_SOUND_DISTANCE = 0.2
ECHO_MIN_SOUNDS = 10
ECHO_SOUND_TAIL = 20
#: how far back before a pause the reply's words are looked for (``interrupt_echo_window_s``)
ECHO_WINDOW_S = 3.0
#: fewer letters than this are never judged an echo ("no", "stop": too short to tell)
ECHO_MIN_LETTERS = 6
#: the words before an echo's last one (the cut word, which Whisper finishes as it likes) are
#: judged on their own when they have this many letters, or ``ECHO_MIN_LETTERS`` + 1 in three
#: words or more, and end within ``ECHO_HEAD_TAIL`` letters of where the reply paused: a
#: shorter head ("Cancel", "How about") is near some word of three seconds of speech by chance
ECHO_HEAD_LETTERS = 10
ECHO_HEAD_TAIL = 12
ECHO_MAX_LETTERS = 240  # the longest heard text compared (the cost is its length x the window's)
_LETTERS_RE = re.compile(r"[^a-z]+")
_NUMBER_RE = re.compile(r"\d+")
_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
# spellings that sound alike, to one letter each (in order: "ph" before "p" and "h")
_SOUNDS = (
    ("ph", "f"), ("th", "t"), ("ck", "k"), ("sh", "s"), ("ch", "k"), ("wh", "w"), ("gh", "g"),
    ("qu", "kw"), ("c", "k"), ("q", "k"), ("z", "s"), ("x", "ks"), ("y", "i"), ("d", "t"),
    ("b", "p"), ("g", "k"), ("v", "f"),
)  # fmt: skip
_VOWELS_RE = re.compile(r"[aeiou]+")
_DOUBLE_RE = re.compile(r"(.)\1+")


def number_words(digits: str) -> str:
    """A run of digits as it is said ("2000" -> "two thousand"); digit by digit from seven
    digits on (and never through ``int``, whose string conversion refuses thousands of digits:
    an LLM's reply may hold any)."""
    if len(digits) > 6:
        return " ".join(_ONES[int(d)] for d in digits)
    return _say(int(digits))


def _say(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + (" " + _say(rest) if rest else "")
    rest = n % 1000
    return _say(n // 1000) + " thousand" + (" " + _say(rest) if rest else "")


def spoken_letters(text: str) -> str:
    """The letters of ``text`` as said: lower case, numbers in words (Whisper writes "6 hours"
    where the reply said "six hours"), spaces and punctuation gone."""
    said = _NUMBER_RE.sub(lambda m: f" {number_words(m.group())} ", text.lower())
    return _LETTERS_RE.sub("", said)


def sound_key(text: str) -> str:
    """What ``text`` sounds like, roughly: its letters with spellings that sound alike made one
    (voiced and voiceless consonants too), every run of vowels one vowel, doubled letters once.
    "a long and storied" -> "alankantstarat", "on the end story" -> "antantstara"."""
    key = spoken_letters(text)
    for spelt, sound in _SOUNDS:
        key = key.replace(spelt, sound)
    return _DOUBLE_RE.sub(r"\1", _VOWELS_RE.sub("a", key))


def _nearest(a: str, b: str, *, tail: int | None = None) -> float:
    """Edits per symbol between ``a`` and the stretch of ``b`` nearest to it, the
    approximate-substring edit distance (Sellers); ``tail``: the stretch must end within the
    last ``tail`` symbols of ``b``."""
    a = a[:ECHO_MAX_LETTERS]
    if not a:
        return math.inf
    prev = [0] * (len(b) + 1)  # a match may start anywhere in b
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j - 1] + (x != y), prev[j] + 1, cur[j - 1] + 1)
        prev = cur
    ends = prev if tail is None else prev[max(0, len(b) - tail) :]
    return min(ends) / len(a)  # ... and end anywhere (or in the tail)


def echo_distance(heard: str, played: str) -> float:
    """Edits per letter between ``heard`` and the stretch of ``played`` nearest to it (case,
    spaces and punctuation ignored, numbers in words)."""
    return _nearest(spoken_letters(heard), spoken_letters(played))


def echoed(heard: str, played: str, *, partial: bool = False) -> bool:
    """Whether ``heard`` over a reply is its own voice: at least ``ECHO_MIN_LETTERS`` letters,
    within ``ECHO_DISTANCE`` edits per letter of a stretch of what the reply ``played`` (that
    text ends where it paused), or within ``ECHO_SOUND_DISTANCE`` edits per sound of its end.
    ``partial``: a partial hypothesis, judged by ``ECHO_DISTANCE_PARTIAL`` per letter."""
    if len(spoken_letters(heard)) < ECHO_MIN_LETTERS or not played:
        return False
    at_most = ECHO_DISTANCE_PARTIAL if partial else ECHO_DISTANCE
    if echo_distance(heard, played) <= at_most:
        return True
    key = sound_key(heard)
    if len(key) >= ECHO_MIN_SOUNDS and (
        _nearest(key, sound_key(played), tail=ECHO_SOUND_TAIL) <= ECHO_SOUND_DISTANCE
    ):
        return True
    # An echo ends mid-word (where the reply paused) and the ASR finishes the cut word as it
    # likes ("has a long and sto-" heard "as a long influence"): the words before the last one
    # are judged on their own too, against the end of what played
    words = heard.split()[:-1]
    head = spoken_letters(" ".join(words))
    if len(head) < ECHO_HEAD_LETTERS and (len(head) <= ECHO_MIN_LETTERS or len(words) < 3):
        return False
    return _nearest(head, spoken_letters(played), tail=ECHO_HEAD_TAIL) <= at_most


@dataclass(frozen=True, slots=True)
class Heard:
    """What an ASR text holds: ``words`` that are not backchannels, and ``backchannels``
    (each phrase counts once: "mm-hmm" is one)."""

    words: int
    backchannels: int


class WordRule:
    """Counts words and backchannels in ASR text, and says whether they interrupt."""

    def __init__(self, backchannels: Sequence[str]) -> None:
        phrases = {tuple(words_of(p)) for p in backchannels}
        phrases.discard(())
        self.phrases = sorted(phrases, key=len, reverse=True)  # longest match first

    def heard(self, text: str) -> Heard:
        words = words_of(text)
        i = n_words = n_back = 0
        while i < len(words):
            for phrase in self.phrases:
                if tuple(words[i : i + len(phrase)]) == phrase:
                    n_back += 1
                    i += len(phrase)
                    break
            else:
                if _HUM_RE.fullmatch(words[i]):
                    n_back += 1
                else:
                    n_words += 1
                i += 1
        return Heard(n_words, n_back)

    def interrupts(self, text: str, *, min_words: int, backchannels: str) -> bool:
        """Whether ``text`` is words enough to cut a reply: at least ``min_words`` words,
        backchannels counted only under ``backchannels == "interrupt"``."""
        h = self.heard(text)
        n = h.words + (h.backchannels if backchannels == "interrupt" else 0)
        return n >= max(1, min_words)


class Verdict(enum.Enum):
    """What the reply lane does after an event of the interruption."""

    WAIT = "wait"  # nothing now
    PAUSE = "pause"  # pause the reply's audio (speech started again after a resume)
    RESUME = "resume"  # a false interruption: play on from where it paused
    CUT = "cut"  # words: cut the reply (barge-in)


@dataclass(slots=True)
class Interruption:
    """One stretch of the user's speech over a reply, from the VAD's start of speech until
    the final of every segment it spans is in (see the module docstring). ``paused_at`` is
    when the reply's audio was (last) paused, ``stopped_at`` when the sound last stopped
    (None while it goes on)."""

    response_id: str
    paused_at: float
    confirm_s: float
    max_pause_s: float = 10.0
    #: a pause with nothing left to judge (a sound short of speech, or finals without words)
    #: ends only after the user has been quiet this long: the quiet after "Stop," (which the
    #: ASR may not read under the echo) before the rest of the sentence
    hold_s: float = 0.0
    paused: bool = True
    speaking: bool = True
    stopped_at: float | None = None
    finals_due: int = 1
    pauses: int = 1
    absorbed: list[str] = field(default_factory=list)  # finals that were not words enough
    echo: bool = False  # some of what it heard was the reply's own words (echoed)
    echo_heard: str = ""  # the last partial judged the reply's own (told when no final is)
    #: the reply plays on while the sound is judged by its sound (module doc); ``paused_at``
    #: is then when the hold began (what the sound is judged from)
    held: bool = False
    #: the last hold judged the sound the reply's own voice (and it has not paused since):
    #: its final is the reply's own whatever its words
    sounded_own: bool = False

    @property
    def closed(self) -> bool:
        """Every segment's final is in, the user is not speaking and the reply is not held
        paused (a sound short of speech holds it for ``hold_s``)."""
        return not self.speaking and self.finals_due <= 0 and not self.paused

    @property
    def deadline(self) -> float:
        """When a paused reply resumes without the ASR's verdict: ``confirm_s`` after the
        pause, or after the end of the sound when that came later (a user still speaking
        is never talked over because the ASR is slow); while the sound goes on, at
        ``max_pause_s`` after the pause (a stream that stopped mid-sound, a stuck ASR)."""
        cap = self.paused_at + self.max_pause_s
        if self.speaking:
            return cap
        if self.finals_due <= 0 and self.stopped_at is not None:  # nothing left to judge
            return min(self.stopped_at + self.hold_s, cap)
        since = self.paused_at if self.stopped_at is None else max(self.paused_at, self.stopped_at)
        return min(since + self.confirm_s, cap)

    def on_speech_started(self, now: float, *, live: bool = True, hold: bool = False) -> Verdict:
        """More speech before the interruption is over; ``live``: its reply still runs;
        ``hold``: the lane judges the sound before it pauses the reply (:meth:`hold`)."""
        self.speaking = True
        self.stopped_at = None
        self.finals_due += 1
        return self._sound(now, live=live, hold=hold)

    def on_onset(self, now: float, *, live: bool = True, hold: bool = False) -> Verdict:
        """A sound began over the reply (the VAD is above its threshold, not yet for
        ``min_speech_s``): pause as for speech, but no final is due for it until its start
        of speech comes (:meth:`on_speech_started`), or it ends short (:meth:`on_onset_lost`)."""
        self.speaking = True
        self.stopped_at = None
        return self._sound(now, live=live, hold=hold)

    def _sound(self, now: float, *, live: bool, hold: bool) -> Verdict:
        if self.paused or not live or self.held:
            return Verdict.WAIT
        if hold:
            self.hold(now)
            return Verdict.WAIT
        return self._pause(now)

    def _pause(self, now: float) -> Verdict:
        self.held = self.sounded_own = False
        self.paused, self.paused_at = True, now
        self.pauses += 1
        return Verdict.PAUSE

    def hold(self, now: float) -> None:
        """The reply plays on over the sound while the lane judges it by its sound (module
        doc): it is paused only if :meth:`hold_lost` says so."""
        self.held, self.paused_at = True, now

    def hold_lost(self, now: float, *, live: bool = True) -> Verdict:
        """The held sound no longer sounds like the reply (or could not be judged in time):
        pause the reply now, as for any sound over it."""
        if not self.held:
            return Verdict.WAIT
        if not live:
            self.held = False
            return Verdict.WAIT
        return self._pause(now)

    def on_onset_lost(self, now: float) -> Verdict:
        """The sound ended before it was long enough to be speech (a click, a cough, a
        blip of echo, a short "Stop,"): no final will come for it, so a reply paused for it
        alone resumes ``hold_s`` from now (at the lane's timer, :attr:`deadline`) unless more
        sound comes first."""
        self.speaking = False
        self.stopped_at = now
        self.held = False  # what was held stays unpaused: nothing more to judge by sound
        if self.paused and self.finals_due <= 0 and self.hold_s <= 0:
            return Verdict.RESUME
        return Verdict.WAIT

    def on_speech_stopped(self, now: float) -> Verdict:
        """The sound stopped: its final will say (the lane re-arms its timer for
        :attr:`deadline`; a held reply played on, and its words may still cut it)."""
        self.speaking = False
        self.stopped_at = now
        self.held = False
        return Verdict.WAIT

    def on_partial(self, words: bool, now: float) -> Verdict:
        """A partial hypothesis: ``words`` when it has words enough to interrupt. A sound
        still going on ``confirm_s`` after the pause with no words in it resumes the reply."""
        if words:
            return Verdict.CUT
        if self.paused and now >= self.paused_at + self.confirm_s:
            return Verdict.RESUME
        return Verdict.WAIT

    def on_final(self, text: str, words: bool, now: float = math.inf) -> Verdict:
        """A segment's final (``text`` may be empty: no words were heard). The last one due,
        without words, resumes the reply once the user has been quiet for ``hold_s`` (now,
        or at the lane's timer: :attr:`deadline`)."""
        self.finals_due -= 1
        if words:
            return Verdict.CUT
        if text:
            self.absorbed.append(text)
        if self.paused and not self.speaking and self.finals_due <= 0:
            if self.stopped_at is None or now >= self.stopped_at + self.hold_s - TIMER_SLACK_S:
                return Verdict.RESUME  # the last verdict due is in: no words
        return Verdict.WAIT

    def on_confirm_timeout(self, now: float) -> Verdict:
        """The lane's timer, armed for :attr:`deadline` (which may have moved since)."""
        if self.paused and now >= self.deadline - TIMER_SLACK_S:
            return Verdict.RESUME
        return Verdict.WAIT

    def resumed(self) -> None:
        self.paused = False
