"""The Realtime dialect's audio conversions (tidegate.protocol.realtime.audio.AudioCodec).

Inbound: ``audio/pcm`` (24 kHz s16le) is passed through; G.711 is expanded to s16le at 8 kHz
(tidegate's ``input.audio`` resamples to 16 kHz itself). Outbound: tidegate's s16le (48 kHz)
is resampled to the format's rate with :class:`~tidegate.media.resample.StreamResampler`
(exact lengths) and companded for G.711. Table lookups and a short FIR: microseconds per
20 ms frame.
"""

from __future__ import annotations

import numpy as np

from tidegate.protocol.realtime.audio import AudioEncoder, AudioFormat

from .g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from .resample import Int16Array, StreamResampler


class RealtimeAudioCodec:
    """Stateless factory of the conversions; one :class:`RealtimeEncoder` per stream."""

    def decode(self, fmt: AudioFormat, data: bytes) -> bytes:
        if fmt is AudioFormat.PCM16:
            return bytes(data)
        if fmt is AudioFormat.PCMU:
            return ulaw_decode(data).astype("<i2").tobytes()
        return alaw_decode(data).astype("<i2").tobytes()

    def encoder(self, fmt: AudioFormat, in_rate_hz: int) -> AudioEncoder:
        return RealtimeEncoder(fmt, in_rate_hz)


class RealtimeEncoder:
    """s16le mono at ``in_rate_hz`` -> one Realtime format, streaming."""

    def __init__(self, fmt: AudioFormat, in_rate_hz: int) -> None:
        self.format = fmt
        self._resampler = (
            None if in_rate_hz == fmt.rate_hz else StreamResampler(in_rate_hz, fmt.rate_hz)
        )

    def _out(self, samples: Int16Array) -> bytes:
        if self.format is AudioFormat.PCM16:
            return samples.astype("<i2").tobytes()
        if self.format is AudioFormat.PCMU:
            return ulaw_encode(samples.astype(np.int16)).tobytes()
        return alaw_encode(samples.astype(np.int16)).tobytes()

    def encode(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm, dtype="<i2")
        if self._resampler is not None:
            samples = self._resampler.process(samples)
        return self._out(samples)

    def flush(self) -> bytes:
        if self._resampler is None:
            return b""
        return self._out(self._resampler.flush())
