"""G.711 mu-law and A-law against the ITU-T G.191 reference, sample by sample, and known codes."""

from __future__ import annotations

import numpy as np

from tidegate.media.g711 import (
    ALAW_TABLE,
    ULAW_TABLE,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)

ALL = np.arange(-32768, 32768, dtype=np.int16)


def g191_ulaw_compress(x: int) -> int:
    """ITU-T G.191 ``ulaw_compress`` for one 16-bit sample, as printed in the reference."""
    absno = ((~x) >> 2) + 33 if x < 0 else (x >> 2) + 33
    absno = min(absno, 0x1FFF)
    i = absno >> 6
    segno = 1
    while i:
        segno += 1
        i >>= 1
    out = ((8 - segno) << 4) | (0x0F - ((absno >> segno) & 0x0F))
    return out | 0x80 if x >= 0 else out


def g191_alaw_compress(x: int) -> int:
    """ITU-T G.191 ``alaw_compress`` for one 16-bit sample."""
    ix = (~x) >> 4 if x < 0 else x >> 4
    if ix > 15:
        iexp = 1
        while ix > 16 + 15:
            ix >>= 1
            iexp += 1
        ix -= 16
        ix += iexp << 4
    if x >= 0:
        ix |= 0x80
    return ix ^ 0x55


def g191_ulaw_expand(code: int) -> int:
    sign = -1 if code < 0x80 else 1
    mantissa = ~code & 0xFF
    exponent = (mantissa >> 4) & 0x07
    segment = exponent + 1
    mantissa &= 0x0F
    step = 4 << segment
    return sign * ((0x80 << exponent) + step * mantissa + step // 2 - 4 * 33)


def g191_alaw_expand(code: int) -> int:
    ix = code ^ 0x55
    ix &= 0x7F
    iexp = ix >> 4
    mant = ix & 0x0F
    if iexp > 0:
        mant += 16
    mant = (mant << 4) + 0x08
    if iexp > 1:
        mant <<= iexp - 1
    return mant if code > 127 else -mant


def test_ulaw_encode_matches_g191_for_every_sample() -> None:
    """mu-law encoding equals the G.191 reference for all 65,536 samples."""
    ref = np.array([g191_ulaw_compress(int(v)) for v in ALL], dtype=np.uint8)
    assert np.array_equal(ulaw_encode(ALL), ref)
    assert ulaw_encode(ALL.astype("<i2").tobytes()).tobytes() == ref.tobytes()


def test_alaw_encode_matches_g191_for_every_sample() -> None:
    """A-law encoding equals the G.191 reference for all 65,536 samples."""
    ref = np.array([g191_alaw_compress(int(v)) for v in ALL], dtype=np.uint8)
    assert np.array_equal(alaw_encode(ALL), ref)


def test_decode_tables_match_g191() -> None:
    """Both 256-entry decoding tables equal the G.191 expanders (on the 16-bit scale)."""
    assert [int(v) for v in ULAW_TABLE] == [g191_ulaw_expand(c) for c in range(256)]
    assert [int(v) for v in ALAW_TABLE] == [g191_alaw_expand(c) for c in range(256)]


def test_known_codes() -> None:
    """Byte vectors: silence, the extremes and a few levels, both ways."""
    pcm = np.array([0, -1, 1000, -1000, 32767, -32768], dtype=np.int16)
    assert ulaw_encode(pcm).tobytes() == bytes([0xFF, 0x7F, 0xCE, 0x4E, 0x80, 0x00])
    assert alaw_encode(pcm).tobytes() == bytes([0xD5, 0x55, 0xFA, 0x7A, 0xAA, 0x2A])
    assert ulaw_decode(bytes([0xFF, 0x7F, 0x80, 0x00, 0xCE])).tolist() == [0, 0, 32124, -32124, 988]
    assert alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A, 0xFA])).tolist() == [
        8,
        -8,
        32256,
        -32256,
        1008,
    ]


def test_round_trip_is_exact_on_table_values_and_bounded_elsewhere() -> None:
    """decode(encode(x)) returns every table value unchanged; elsewhere the error stays within
    half a quantisation step of the top segment."""
    for encode, decode, table in (
        (ulaw_encode, ulaw_decode, ULAW_TABLE),
        (alaw_encode, alaw_decode, ALAW_TABLE),
    ):
        assert np.array_equal(decode(encode(table)), table)
        err = np.abs(decode(encode(ALL)).astype(np.int32) - ALL.astype(np.int32))
        assert err.max() <= 1024
        y = decode(encode(ALL)).astype(np.int32)
        assert np.all(np.diff(y) >= 0)  # monotonic
