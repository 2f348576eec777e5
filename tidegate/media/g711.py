"""G.711 companding (ITU-T G.711): 16-bit linear PCM <-> 8-bit mu-law and A-law, vectorised.

Pure functions over numpy arrays (or bytes), no state: one byte is one sample at 8 kHz. The
encoders follow the ITU reference (and Sun's g711.c): mu-law keeps the top 14 bits of the
sample with a bias of 33, A-law the top 13 bits; both invert their bits on the wire. The
decoders are 256-entry tables, so that decode(encode(x)) is exact for every table value.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]
Uint8Array = npt.NDArray[np.uint8]

_MULAW_BIAS = 0x84  # 33 << 2: the bias on the 16-bit scale
_MULAW_CLIP = 32_635
_SEG_END = np.array([0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF], dtype=np.int32)
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _pcm(samples: Int16Array | bytes) -> npt.NDArray[np.int32]:
    if isinstance(samples, bytes | bytearray | memoryview):
        samples = np.frombuffer(samples, dtype="<i2")
    return np.asarray(samples, dtype=np.int32)


def _codes(data: Uint8Array | bytes) -> Uint8Array:
    if isinstance(data, bytes | bytearray | memoryview):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8)


def _ulaw_compress(samples: Int16Array | bytes) -> Uint8Array:
    """16-bit linear PCM to mu-law codes, computed (builds the encoding table)."""
    x = _pcm(samples)
    sign = np.where(x < 0, 0x80, 0x00)  # inverted below with the rest: negative -> 0
    mag = np.minimum(np.where(x < 0, -x - 1, x), _MULAW_CLIP) + _MULAW_BIAS  # G.191: ~x
    # The segment is the position of the highest set bit above bit 7 (0..7).
    seg = np.searchsorted(_SEG_END, mag, side="left")
    mantissa = (mag >> (seg + 3)) & 0x0F
    code = (sign | (seg << 4) | mantissa) ^ 0xFF
    out: Uint8Array = code.astype(np.uint8)
    return out


def _ulaw_table() -> Int16Array:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + _MULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _MULAW_BIAS - t, t - _MULAW_BIAS).astype(np.int16)


def _alaw_table() -> Int16Array:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    mant = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, mant + 8, (mant + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


ULAW_TABLE: Int16Array = _ulaw_table()
"""The mu-law decoding table: code -> 16-bit sample."""
ALAW_TABLE: Int16Array = _alaw_table()
"""The A-law decoding table: code -> 16-bit sample."""


def ulaw_decode(data: Uint8Array | bytes) -> Int16Array:
    """mu-law bytes to 16-bit linear PCM."""
    return ULAW_TABLE[_codes(data)]


def _alaw_compress(samples: Int16Array | bytes) -> Uint8Array:
    """16-bit linear PCM to A-law codes, computed (builds the encoding table)."""
    x = _pcm(samples) >> 3  # 13 bits
    negative = x < 0
    mag = np.where(negative, -x - 1, x)  # one's complement, as in the reference
    sign = np.where(negative, 0x00, 0x80)  # positive: mask 0xD5 = 0x80 ^ 0x55
    seg = np.searchsorted(_SEG_AEND, mag, side="left")
    shift = np.where(seg < 2, 1, seg)
    mantissa = (mag >> shift) & 0x0F
    code = np.where(seg >= 8, 0x7F, (seg << 4) | mantissa)
    return ((sign | code) ^ 0x55).astype(np.uint8)


def alaw_decode(data: Uint8Array | bytes) -> Int16Array:
    """A-law bytes to 16-bit linear PCM."""
    return ALAW_TABLE[_codes(data)]


_ALL_SAMPLES: Int16Array = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
_ULAW_CODES: Uint8Array = _ulaw_compress(_ALL_SAMPLES)  # 64 KiB: sample + 32768 -> code
_ALAW_CODES: Uint8Array = _alaw_compress(_ALL_SAMPLES)


def ulaw_encode(samples: Int16Array | bytes) -> Uint8Array:
    """16-bit linear PCM to mu-law bytes (one per sample), by table."""
    out: Uint8Array = _ULAW_CODES[_pcm(samples) + 32768]
    return out


def alaw_encode(samples: Int16Array | bytes) -> Uint8Array:
    """16-bit linear PCM to A-law bytes (one per sample), by table."""
    out: Uint8Array = _ALAW_CODES[_pcm(samples) + 32768]
    return out
