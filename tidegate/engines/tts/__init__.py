"""Speech synthesis: Piper voices (``piper``), phonemes from a long-lived espeak-ng process
(``phonemizer``, ``espeak_worker``), and replies spoken as their text streams in (``stream``)."""

from .piper import OUTPUT_RATE_HZ, PiperVoice
from .stream import FRAME_SAMPLES, ChunkPolicy, TextChunker, TtsStream

__all__ = [
    "FRAME_SAMPLES",
    "OUTPUT_RATE_HZ",
    "ChunkPolicy",
    "PiperVoice",
    "TextChunker",
    "TtsStream",
]
