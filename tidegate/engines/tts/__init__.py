"""Speech synthesis: Piper voices (``piper``), espeak-ng voices for the languages without one
(``espeak_voice``; which voice speaks which language: ``voices``), phonemes from a long-lived
espeak-ng process (``phonemizer``, ``espeak_worker``), and replies spoken as their text
streams in (``stream``)."""

from .espeak_voice import EspeakVoice
from .piper import OUTPUT_RATE_HZ, PiperVoice
from .stream import FRAME_SAMPLES, ChunkPolicy, TextChunker, TtsStream

__all__ = [
    "FRAME_SAMPLES",
    "OUTPUT_RATE_HZ",
    "ChunkPolicy",
    "EspeakVoice",
    "PiperVoice",
    "TextChunker",
    "TtsStream",
]
