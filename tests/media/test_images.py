"""input.frame images: headers read before decoding, the named format only, a pixel limit."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidegate.media.images import (
    MAX_JPEG_SCANS,
    MAX_JPEG_SEGMENTS,
    MAX_PNG_CHUNKS,
    ImageError,
    ImageHeader,
    decode_image,
    read_header,
)

from .imagefiles import BOMB_SIDE_PX, picture, png_bomb, still, video

LIMIT = 3840 * 2160


def _refused(data: bytes, encoding: str, *words: str, **kw: int) -> str:
    with pytest.raises(ImageError) as e:
        read_header(data, encoding, max_pixels=kw.pop("max_pixels", LIMIT), **kw)
    for word in words:
        assert word in e.value.message
    return e.value.message


@pytest.mark.parametrize(
    ("fmt", "encoding", "options"),
    [("PNG", "png", {}), ("JPEG", "jpeg", {}), ("JPEG", "jpeg", {"progressive": True})],
)
def test_png_and_jpeg_decode_to_their_header_size(
    fmt: str, encoding: str, options: dict[str, object]
) -> None:
    """PNG, baseline and progressive JPEG: the header's size, then RGB pixels close to the
    picture's."""
    data = still(fmt, 64, 48, **options)
    header = read_header(data, encoding, max_pixels=LIMIT)
    assert header == ImageHeader(encoding, 64, 48)
    rgb = decode_image(data, header)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    want = np.asarray(picture(64, 48), np.int16)
    assert np.abs(rgb.astype(np.int16) - want).mean() < 8


def test_png_bomb_is_refused_from_its_header() -> None:
    """A 249 KB PNG of 16000x16000 pixels is refused from its IHDR, naming the size and the
    setting, without decoding (it would be 768 MB of RGB)."""
    bomb = png_bomb()
    assert len(bomb) < 300_000
    message = _refused(bomb, "png", f"{BOMB_SIDE_PX}x{BOMB_SIDE_PX}", "frame_max_pixels")
    assert str(LIMIT) in message


def test_pixel_limit_applies_to_every_encoding() -> None:
    """One pixel over the limit is refused in every encoding; at the limit it is accepted."""
    png, jpeg = still("PNG", 64, 48), still("JPEG", 64, 48)
    for data, encoding in ((png, "png"), (jpeg, "jpeg")):
        assert read_header(data, encoding, max_pixels=64 * 48).pixels == 64 * 48
        _refused(data, encoding, "3072 pixels", max_pixels=64 * 48 - 1)
    raw = bytes(64 * 48 * 3)
    assert read_header(raw, "rgb24", max_pixels=64 * 48, width=64, height=48).width == 64
    _refused(raw, "rgb24", "frame_max_pixels", max_pixels=100, width=64, height=48)
    _refused(
        bytes(64 * 48 * 3 // 2), "i420", "frame_max_pixels", max_pixels=100, width=64, height=48
    )


def test_a_side_over_8192_is_refused_under_the_pixel_limit() -> None:
    """8193 x 16 is few pixels, but a side the vision engine cannot take: refused up front."""
    png = bytearray(still("PNG", 64, 48))
    png[16:24] = struct.pack(">II", 8193, 16)  # IHDR width and height (CRC is not checked)
    _refused(bytes(png), "png", "8193x16", "8192")


@pytest.mark.parametrize(
    ("data", "encoding", "looks"),
    [
        (still("GIF"), "png", "GIF"),
        (still("BMP"), "png", "BMP"),
        (still("TIFF"), "jpeg", "TIFF"),
        (still("WEBP"), "png", "WebP"),
        (still("JPEG"), "png", "JPEG"),
        (still("PNG"), "jpeg", "PNG"),
        (video("mp4", "mpeg4"), "png", "MP4"),
        (video("matroska", "mpeg4"), "jpeg", "Matroska"),
        (video("avi", "mpeg4"), "jpeg", "AVI"),
    ],
    ids=["gif", "bmp", "tiff", "webp", "jpeg-as-png", "png-as-jpeg", "mp4", "mkv", "avi"],
)
def test_other_formats_are_refused_by_name(data: bytes, encoding: str, looks: str) -> None:
    """Anything that is not the format the message names (other images, video containers)
    is refused before a decoder sees it, saying what it looks like."""
    _refused(data, encoding, f"not a {encoding} image", looks)


def test_png_structure_is_checked() -> None:
    """A PNG with a chunk cut short, a second IHDR, or no IHDR first is refused."""
    png = still("PNG")
    _refused(png[:40], "png", "cut short")
    ihdr = png[8:33]
    _refused(png[:33] + ihdr + png[33:], "png", "more than one IHDR")
    _refused(png[:8] + png[33:], "png", "expected IHDR")


def _sof(data: bytes) -> int:
    return next(data.index(m) for m in (b"\xff\xc0", b"\xff\xc2"))


def test_jpeg_structure_is_checked() -> None:
    """A JPEG of another process (lossless), of 12-bit samples, with frames of two sizes,
    with a size that disagrees with the message, or with too many scans is refused."""
    jpeg = still("JPEG")
    at = _sof(jpeg)
    _refused(jpeg[:at] + b"\xff\xc3" + jpeg[at + 2 :], "jpeg", "SOF3")
    _refused(jpeg[: at + 4] + b"\x0c" + jpeg[at + 5 :], "jpeg", "12 bits")
    frame = jpeg[at : at + 2 + struct.unpack(">H", jpeg[at + 2 : at + 4])[0]]
    other = bytearray(frame)
    other[5:7] = struct.pack(">H", 4000)
    _refused(jpeg[:at] + frame + bytes(other) + jpeg[at + len(frame) :], "jpeg", "two sizes")
    _refused(jpeg, "jpeg", "input.frame.width: 65", width=65)
    progressive = still("JPEG", progressive=True)
    sos = progressive.index(b"\xff\xda")
    scan = progressive[sos : progressive.index(b"\xff\xda", sos + 2)]
    many = progressive[:sos] + scan * (MAX_JPEG_SCANS + 1) + progressive[sos:]
    _refused(many, "jpeg", f"more than {MAX_JPEG_SCANS} scans")


def test_header_walks_are_bounded_in_steps() -> None:
    """The header walk runs on the event loop: a PNG of thousands of empty chunks, or a JPEG
    of thousands of empty segments, is refused past a fixed count; fill bytes and stuffed
    entropy data are skipped by searches, not byte by byte."""
    png = still("PNG")
    empty = struct.pack(">I4sI", 0, b"tEXt", 0)
    _refused(png[:33] + empty * MAX_PNG_CHUNKS + png[33:], "png", f"{MAX_PNG_CHUNKS} chunks")
    assert read_header(png[:33] + empty * 100 + png[33:], "png", max_pixels=LIMIT).width == 64
    jpeg = still("JPEG")
    comment = b"\xff\xfe\x00\x02"
    _refused(jpeg[:2] + comment * MAX_JPEG_SEGMENTS + jpeg[2:], "jpeg", "marker segments")
    sof = jpeg[_sof(jpeg) : _sof(jpeg) + 19]
    filled = jpeg[:2] + b"\xff" * 500_000 + sof[1:] + b"\xff\xda" + b"\x00\x08" + bytes(6)
    stuffed = filled + b"\xff\x00" * 200_000 + b"\xff\xd9"
    assert read_header(stuffed, "jpeg", max_pixels=LIMIT) == ImageHeader("jpeg", 64, 48)


def test_decoder_must_agree_with_the_header() -> None:
    """A body that does not decode is an ImageError, not an FFmpeg exception."""
    png = still("PNG")
    header = read_header(png, "png", max_pixels=LIMIT)
    idat = png.index(b"IDAT")
    broken = png[: idat + 4] + bytes(len(png) - idat - 4)
    with pytest.raises(ImageError, match="not a decodable png"):
        decode_image(broken, read_header(broken, "png", max_pixels=LIMIT))
    assert decode_image(png, header).shape == (48, 64, 3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["png", "jpeg"]),
    st.lists(st.tuples(st.integers(0, 2_000), st.integers(0, 255)), max_size=8),
    st.integers(0, 2_000),
)
def test_mutated_images_raise_only_image_errors(
    encoding: str, flips: list[tuple[int, int]], cut: int
) -> None:
    """Any mutation of a real PNG or JPEG is either refused with an ImageError or decodes
    to an RGB array of its header's size, within the pixel limit."""
    data = bytearray(still("PNG" if encoding == "png" else "JPEG", 32, 24))
    for at, value in flips:
        data[at % len(data)] = value
    blob = bytes(data[: len(data) - cut % len(data)])
    try:
        header = read_header(blob, encoding, max_pixels=32 * 24 * 4)
        rgb = decode_image(blob, header)
    except ImageError:
        return
    assert rgb.shape == (header.height, header.width, 3)
    assert header.pixels <= 32 * 24 * 4
