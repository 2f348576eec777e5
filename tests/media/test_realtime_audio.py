"""The Realtime dialect's audio conversions: exact lengths per format, G.711 both ways."""

from __future__ import annotations

import numpy as np

from tidegate.media.realtime_audio import RealtimeAudioCodec
from tidegate.protocol.realtime.audio import AudioFormat


def test_codec_output_lengths_follow_the_format() -> None:
    """tidegate's 20 ms at 48 kHz is 960 bytes of audio/pcm (24 kHz) or 160 bytes of G.711;
    inbound G.711 expands to s16le at 8 kHz and audio/pcm passes through."""
    codec = RealtimeAudioCodec()
    frame = (np.sin(np.arange(960) / 7) * 8000).astype("<i2").tobytes()
    for fmt, per_frame in (
        (AudioFormat.PCM16, 960),
        (AudioFormat.PCMU, 160),
        (AudioFormat.PCMA, 160),
    ):
        enc = codec.encoder(fmt, 48_000)
        sizes = [len(enc.encode(frame)) for _ in range(50)]
        total = sum(sizes) + len(enc.flush())
        assert total == 50 * per_frame
        assert abs(fmt.duration_ms(total) - 1000.0) < 1e-9
    assert codec.decode(AudioFormat.PCM16, b"\x01\x02") == b"\x01\x02"
    assert codec.decode(AudioFormat.PCMU, bytes([0xFF, 0x80])) == bytes([0, 0, 0x7C, 0x7D])
    assert len(codec.decode(AudioFormat.PCMA, bytes(80))) == 160
