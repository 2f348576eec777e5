"""The audio formats of the Realtime dialect, and the port through which they are converted.

The Realtime API carries audio as base64 in JSON: ``audio/pcm`` (16-bit little-endian mono at
24 kHz), ``audio/pcmu`` (G.711 mu-law, 8 kHz) and ``audio/pcma`` (G.711 A-law, 8 kHz).
tidegate's own ``input.audio`` takes s16le at any rate from 8 to 192 kHz and resamples to its
internal 16 kHz itself; its ``output.audio`` is s16le mono at 48 kHz. So:

- inbound, ``audio/pcm`` passes through untouched (``input.audio`` at 24 kHz) and G.711 is
  expanded to s16le at 8 kHz;
- outbound, tidegate's 48 kHz is resampled to 24 or 8 kHz (and companded for G.711).

The conversions are numpy work, which the protocol layer does not import: they live in
:mod:`tidegate.media.realtime_audio`, which implements :class:`AudioCodec`, the port the
translator is built with. Everything here is arithmetic on byte counts.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol


class AudioFormat(enum.Enum):
    """A Realtime audio format: its wire type, sample rate and bytes per sample."""

    PCM16 = ("audio/pcm", 24_000, 2)
    PCMU = ("audio/pcmu", 8_000, 1)
    PCMA = ("audio/pcma", 8_000, 1)

    def __init__(self, mime: str, rate_hz: int, sample_bytes: int) -> None:
        self.mime = mime
        self.rate_hz = rate_hz
        self.sample_bytes = sample_bytes

    @property
    def bytes_per_ms(self) -> float:
        return self.rate_hz * self.sample_bytes / 1000.0

    def duration_ms(self, n_bytes: int) -> float:
        return n_bytes / self.bytes_per_ms

    def to_wire(self) -> dict[str, Any]:
        if self is AudioFormat.PCM16:
            return {"type": self.mime, "rate": self.rate_hz}
        return {"type": self.mime}

    @classmethod
    def from_mime(cls, mime: str) -> AudioFormat | None:
        return _BY_MIME.get(mime)


_BY_MIME = {f.mime: f for f in AudioFormat}
# The beta API's names, which many clients still send: accepted as aliases.
LEGACY_FORMAT_NAMES = {
    "pcm16": AudioFormat.PCM16,
    "g711_ulaw": AudioFormat.PCMU,
    "g711_alaw": AudioFormat.PCMA,
}

INPUT_PCM_FORMAT = "s16le"
"""What the translator hands tidegate's ``input.audio``: s16le mono at the format's rate."""


class AudioEncoder(Protocol):
    """One outbound stream (one response's audio) into a Realtime format; keeps the
    resampler's state between chunks, so lengths add up exactly."""

    def encode(self, pcm: bytes) -> bytes:
        """s16le mono at the stream's input rate -> bytes in the Realtime format."""
        ...

    def flush(self) -> bytes:
        """The rest of the stream (the resampler's tail)."""
        ...


class AudioCodec(Protocol):
    """The conversions the translator needs (implemented in tidegate.media.realtime_audio)."""

    def decode(self, fmt: AudioFormat, data: bytes) -> bytes:
        """Realtime input audio -> s16le mono at ``fmt.rate_hz`` (G.711 expanded; PCM as is)."""
        ...

    def encoder(self, fmt: AudioFormat, in_rate_hz: int) -> AudioEncoder:
        """A new outbound stream from s16le mono at ``in_rate_hz`` into ``fmt``."""
        ...
