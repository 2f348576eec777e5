"""Test audio for turn-taking and echo cancellation, made on the spot and deterministic.

Speech is espeak-ng (``en-us``) resampled to 16 kHz by sox without dither (so the same text
gives the same samples every time); everything else is numpy with a seeded generator:

- :func:`paused_sentence`: an unfinished phrase, a 500-900 ms pause, then its continuation
  ("I would like to book a table for ... four people tonight");
- :func:`complete_sentence`: a finished sentence followed by silence;
- :func:`echo_path` / :func:`mic_with_echo`: the far end (what the server played) through a
  simulated speaker -> microphone path (delay, level, a short decaying room response, a
  noise floor), optionally with the user's own speech on top;
- :func:`noise_burst` (a cough-like burst of band-limited noise) and :func:`backchannel`
  ("mm-hmm").

Only numpy and the standard library are imported: the bench scenarios, the engine
microbenchmarks and the tests all use it. Needs the ``espeak-ng`` and ``sox`` programs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

SAMPLE_RATE_HZ = 16_000
#: Samples below this (float, |x|) count as silence when espeak's own padding is trimmed.
TRIM_LEVEL = 0.01

Audio = np.ndarray[Any, Any]  # float32, 16 kHz mono
#: A voice: text -> 16 kHz float32 speech. The default is espeak-ng; a caller may pass a
#: neural TTS instead (the turn model judges prosody, which espeak's is too flat to carry).
Voice = Callable[[str], Audio]

#: (unfinished phrase, continuation): the phrase alone is clearly not a complete turn.
PAUSED_SENTENCES: tuple[tuple[str, str], ...] = (
    ("I would like to book a table for", "four people tonight"),
    ("Can you tell me the weather in", "London tomorrow morning"),
    ("Please set an alarm for", "seven in the morning"),
    ("My favourite kind of music is", "jazz from the fifties"),
    ("I need to buy some milk and", "a loaf of bread"),
    ("The meeting has been moved to", "Thursday afternoon"),
)
#: more sentences with a pause where they are clearly unfinished (the turn-words bench
#: speaks these and PAUSED_SENTENCES)
MORE_PAUSED_SENTENCES: tuple[tuple[str, str], ...] = (
    ("Could you send the report to", "my manager before noon"),
    ("We need three more chairs for", "the meeting in the afternoon"),
    ("I left my keys on the table next to", "the front door"),
    ("Please remind me to call", "the doctor at ten tomorrow"),
    ("The restaurant around the corner serves", "very good fish and chips"),
    ("How much does a ticket to", "the concert cost this year"),
)
#: Finished sentences (questions and statements) that end a turn.
COMPLETE_SENTENCES: tuple[str, ...] = (
    "I would like to book a table for four people tonight.",
    "What is the weather like in London tomorrow?",
    "Please set an alarm for seven in the morning.",
    "My favourite kind of music is jazz.",
    "Thank you, that is all I needed.",
    "Can you play some music?",
)
#: What the assistant says (the far end of the echo set).
REPLY_SENTENCES: tuple[str, ...] = (
    "Sure, I can help you with that. Let me check what tables are free tonight.",
    "Tomorrow in London it will be cloudy with a chance of rain in the afternoon.",
    "Your alarm is set for seven o'clock tomorrow morning.",
)
#: What the user says over the reply (the near end of the echo set).
USER_SENTENCES: tuple[str, ...] = (
    "Stop, I changed my mind.",
    "Wait, what about Friday?",
)


#: The voice that speaks test and bench sentences per language: espeak-ng in English, SVOX
#: Pico outside it (``pico-LANG``: HMM synthesis of a recorded speaker, the nearest to real
#: speech that ships in a Debian package; scripts/setup-test-voices.sh installs it). Whisper
#: base hears espeak-ng's own German as English or Welsh and its French as Thai, and no MBROLA
#: Spanish voice (``mb-es1`` .. ``mb-es4``, still installed, e.g. for ``bench asr --voices``)
#: well (WER 0.6-0.8); Pico's it understands (docs/languages.md has the figures).
LANGUAGE_VOICES: dict[str, str] = {
    "en": "en-us",
    "de": "pico-de-DE",
    "fr": "pico-fr-FR",
    "es": "pico-es-ES",
}
MBROLA_DIR = "/usr/share/mbrola"
PICO = "pico2wave"  # SVOX Pico's command (Debian's libttspico-utils)


def have_tools() -> str:
    """The missing programs among espeak-ng and sox ('' when both are there)."""
    return " ".join(p for p in ("espeak-ng", "sox") if shutil.which(p) is None)


def speak(text: str, *, voice: str) -> Audio:
    """``text`` spoken by ``voice``, 16 kHz float32 in [-1, 1] (cached): an SVOX Pico voice
    (``pico-de-DE``: its own speed and pitch) or an espeak-ng one (``mb-`` names an MBROLA
    voice behind espeak-ng's front end) at espeak-ng's default speed and pitch."""
    return espeak(text, voice=voice)


@lru_cache(maxsize=64)
def _speak(text: str, voice: str, speed_wpm: int, pitch: int) -> bytes:
    raw = ["-t", "raw", "-e", "signed", "-b", "16", "-c", "1", "-r", str(SAMPLE_RATE_HZ), "-"]
    if voice.startswith("pico-"):
        if shutil.which(PICO) is None:
            raise RuntimeError(
                f"SVOX Pico ({PICO}) is not installed: scripts/setup-test-voices.sh (make setup) "
                "installs the test voices"
            )
        with tempfile.TemporaryDirectory(prefix="tidegate-pico-") as tmp:
            wav = os.path.join(tmp, "speech.wav")  # pico2wave writes only to a .wav file
            subprocess.run(
                [PICO, "-l", voice.removeprefix("pico-"), "-w", wav, text],
                check=True,
                capture_output=True,
            )
            return subprocess.run(
                ["sox", "-V1", "-D", wav, *raw], check=True, capture_output=True
            ).stdout
    if voice.startswith("mb-"):
        name = voice.removeprefix("mb-").split("-")[0]
        if not os.path.exists(f"{MBROLA_DIR}/{name}/{name}"):
            raise RuntimeError(
                f"the MBROLA voice {name} is not installed ({MBROLA_DIR}/{name}): "
                "scripts/setup-test-voices.sh (make setup) installs the test voices"
            )
    markup = ["-m"] if text.startswith("<speak>") else []  # SSML: breaks inside a sentence
    espeak = subprocess.run(
        [
            "espeak-ng",
            *markup,
            "-v",
            voice,
            "-s",
            str(speed_wpm),
            "-p",
            str(pitch),
            "--stdout",
            text,
        ],
        check=True,
        capture_output=True,
    )
    sox = subprocess.run(
        ["sox", "-V1", "-D", "-t", "wav", "-", *raw],
        input=espeak.stdout,
        check=True,
        capture_output=True,
    )
    return sox.stdout


def espeak(text: str, *, voice: str = "en-us", speed_wpm: int = 150, pitch: int = 50) -> Audio:
    """``text`` spoken by espeak-ng, 16 kHz float32 in [-1, 1] (cached); a Pico voice (see
    :func:`speak`) ignores ``speed_wpm`` and ``pitch``."""
    return np.frombuffer(_speak(text, voice, speed_wpm, pitch), np.int16).astype(np.float32) / 32768


def resample(audio: np.ndarray[Any, Any], rate_hz: int) -> Audio:
    """Mono int16 or float audio at ``rate_hz`` to 16 kHz float32, by sox (no dither)."""
    x = np.asarray(audio)
    if x.dtype != np.int16:
        x = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    if rate_hz == SAMPLE_RATE_HZ:
        return x.astype(np.float32) / 32768
    raw = ["-t", "raw", "-e", "signed", "-b", "16", "-c", "1"]
    out = subprocess.run(
        ["sox", "-V1", "-D", *raw, "-r", str(rate_hz), "-", *raw, "-r", str(SAMPLE_RATE_HZ), "-"],
        input=x.tobytes(),
        check=True,
        capture_output=True,
    )
    return np.frombuffer(out.stdout, np.int16).astype(np.float32) / 32768


class Downsample:
    """A stream at a multiple of 16 kHz (float32 or int16 chunks) to 16 kHz float32, chunk by
    chunk: a windowed-sinc low-pass below 7.2 kHz whose history carries over, then every
    ``rate // 16000``-th sample (cheap enough for a bench client's every 20 ms frame)."""

    TAPS = 24  # half-length, at the input rate

    def __init__(self, rate_hz: int) -> None:
        self.step = rate_hz // SAMPLE_RATE_HZ
        if self.step * SAMPLE_RATE_HZ != rate_hz:
            raise ValueError(f"{rate_hz} Hz: a multiple of 16 kHz is expected")
        taps = np.arange(-self.TAPS, self.TAPS + 1)
        cut = 0.45 / self.step
        h = 2 * cut * np.sinc(2 * cut * taps) * np.hamming(len(taps))
        self.h = (h / h.sum()).astype(np.float32)
        self.hist = np.zeros(2 * self.TAPS, np.float32)
        self.phase = 0  # input samples to skip before the next output sample

    def __call__(self, chunk: np.ndarray[Any, Any]) -> Audio:
        x = np.asarray(chunk)
        f = x.astype(np.float32) / 32768 if x.dtype == np.int16 else x.astype(np.float32)
        full = np.concatenate([self.hist, f])
        self.hist = full[-2 * self.TAPS :]
        y = np.convolve(full, self.h, mode="valid")[: len(f)]
        out: Audio = y[self.phase :: self.step].astype(np.float32)
        self.phase = (self.phase - len(f)) % self.step
        return out


def speech(text: str, voice: Voice | None = None, *, trim: bool = True) -> Audio:
    """``text`` spoken by ``voice`` (espeak-ng by default), 16 kHz float32 in [-1, 1]; the
    voice's leading and trailing silence trimmed when ``trim``."""
    x = espeak(text) if voice is None else voice(text)
    return trim_silence(x) if trim else x


def trim_silence(x: Audio, level: float = TRIM_LEVEL) -> Audio:
    loud = np.flatnonzero(np.abs(x) > level)
    if not len(loud):
        return x[:0]
    return x[loud[0] : loud[-1] + 1].copy()


def silence(seconds: float) -> Audio:
    return np.zeros(round(seconds * SAMPLE_RATE_HZ), np.float32)


def db_gain(db: float) -> float:
    return float(10 ** (db / 20))


@dataclass(frozen=True, slots=True)
class TurnClip:
    """A user turn: its audio, its text, where speech ends for good (``end_s``) and, for a
    paused sentence, where the mid-sentence pause starts and ends (``pause_s``)."""

    audio: Audio
    text: str
    end_s: float
    pause_s: tuple[float, float] | None = None

    @property
    def paused(self) -> bool:
        return self.pause_s is not None


def paused_sentence(
    head: str,
    tail: str,
    *,
    pause_s: float,
    voice: Voice | None = None,
    lead_s: float = 0.3,
    trail_s: float = 1.5,
) -> TurnClip:
    """``head``, ``pause_s`` of silence, ``tail``, then ``trail_s`` of silence."""
    a, b = speech(head, voice), speech(tail, voice)
    audio = np.concatenate([silence(lead_s), a, silence(pause_s), b, silence(trail_s)])
    start = lead_s + len(a) / SAMPLE_RATE_HZ
    end = start + pause_s + len(b) / SAMPLE_RATE_HZ
    return TurnClip(audio, f"{head} {tail}", end, (start, start + pause_s))


def spoken_with_pause(head: str, tail: str, *, pause_s: float, voice: str = "en-us") -> Audio:
    """``head`` and ``tail`` said as one sentence by espeak-ng with a ``pause_s`` break
    between them (SSML): the tail keeps the sentence's prosody, unlike :func:`paused_sentence`'s
    two utterances. Leading and trailing silence trimmed."""
    ms = round(pause_s * 1000)
    return trim_silence(espeak(f'<speak>{head} <break time="{ms}ms"/> {tail}</speak>', voice=voice))


def complete_sentence(
    text: str, *, voice: Voice | None = None, lead_s: float = 0.3, trail_s: float = 1.5
) -> TurnClip:
    """``text`` followed by ``trail_s`` of silence."""
    a = speech(text, voice)
    audio = np.concatenate([silence(lead_s), a, silence(trail_s)])
    return TurnClip(audio, text, lead_s + len(a) / SAMPLE_RATE_HZ)


def paused_set(
    seed: int = 0,
    *,
    voice: Voice | None = None,
    pause_range_s: tuple[float, float] = (0.5, 0.9),
) -> list[TurnClip]:
    """Every paused sentence, each with a pause drawn (seeded) from ``pause_range_s``."""
    rng = np.random.default_rng(seed)
    return [
        paused_sentence(
            head, tail, pause_s=round(float(rng.uniform(*pause_range_s)), 3), voice=voice
        )
        for head, tail in PAUSED_SENTENCES
    ]


def complete_set(*, voice: Voice | None = None) -> list[TurnClip]:
    return [complete_sentence(t, voice=voice) for t in COMPLETE_SENTENCES]


def room_response(seed: int, *, length_s: float = 0.03, decay_s: float = 0.006) -> Audio:
    """A short speaker -> microphone impulse response: the direct path then a seeded,
    exponentially decaying tail of reflections (unit energy)."""
    rng = np.random.default_rng(seed)
    n = round(length_s * SAMPLE_RATE_HZ)
    t = np.arange(n) / SAMPLE_RATE_HZ
    h = 0.3 * rng.standard_normal(n) * np.exp(-t / decay_s)
    h[0] = 1.0
    out: Audio = (h / np.sqrt(np.sum(h**2))).astype(np.float32)
    return out


def echo_path(
    far: Audio, *, delay_s: float, level_db: float, drift_ppm: float = 0.0, seed: int = 0
) -> Audio:
    """What the microphone picks up of ``far``: through a room response, at ``level_db``
    relative to ``far``, delayed by ``delay_s`` at the start and by ``drift_ppm`` more per
    sample after (a speaker clock slower than the microphone's); as long as ``far``."""
    h = room_response(seed)
    echoed = np.convolve(far, h)[: len(far)] * db_gain(level_db)
    t = np.arange(len(far), dtype=np.float64)
    source = t * (1 - drift_ppm * 1e-6) - delay_s * SAMPLE_RATE_HZ
    out = np.interp(source, t, echoed, left=0.0, right=0.0)
    return out.astype(np.float32)


def mic_with_echo(
    far: Audio,
    *,
    delay_s: float,
    level_db: float,
    near: Audio | None = None,
    near_at_s: float = 0.0,
    noise_db: float = -60.0,
    drift_ppm: float = 0.0,
    seed: int = 0,
) -> tuple[Audio, Audio, Audio]:
    """The microphone signal for a reply ``far`` played from sample 0: its echo, plus the
    user's ``near`` speech starting at ``near_at_s``, plus a noise floor at ``noise_db``
    (dBFS). Returns ``(mic, echo, near_aligned)``: the parts, each as long as ``mic``."""
    rng = np.random.default_rng(seed)
    echo = echo_path(far, delay_s=delay_s, level_db=level_db, drift_ppm=drift_ppm, seed=seed)
    user = np.zeros(len(far), np.float32)
    if near is not None:
        start = round(near_at_s * SAMPLE_RATE_HZ)
        stop = min(len(far), start + len(near))
        user[start:stop] = near[: stop - start]
    noise = (db_gain(noise_db) * rng.standard_normal(len(far))).astype(np.float32)
    mic = np.clip(echo + user + noise, -1.0, 1.0).astype(np.float32)
    return mic, echo, user


def noise_burst(seed: int = 0, *, seconds: float = 0.25, level_db: float = -12.0) -> Audio:
    """A cough-like burst: noise low-passed around 1-2 kHz with a fast attack and an
    exponential decay, peaking near ``level_db`` dBFS."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SAMPLE_RATE_HZ)
    x = rng.standard_normal(n + 8)
    x = np.convolve(x, np.ones(8) / 8, mode="valid")[:n]  # a crude low-pass
    t = np.arange(n) / SAMPLE_RATE_HZ
    envelope = (1 - np.exp(-t / 0.01)) * np.exp(-t / (seconds / 4))
    y = x * envelope
    out: Audio = (db_gain(level_db) * y / np.max(np.abs(y))).astype(np.float32)
    return out


def backchannel(text: str = "mm-hmm", voice: Voice | None = None) -> Audio:
    """A short acknowledgement ("mm-hmm", "yeah", "okay"), spoken."""
    return speech(text.replace("-", " "), voice)
