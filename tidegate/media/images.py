"""Still images a client uploads (``input.frame``): checked before any decoder sees them.

An image is decoded only after its header has been read here, in pure Python, and found to be
the format the message names, of an allowed kind, no larger than ``max_pixels`` (width x
height) and with no side over ``MAX_IMAGE_SIDE_PX`` (8192, what the vision engine takes): a
249 KB PNG can describe a 16000 x 16000 picture (768 MB as RGB), so the size must be known
before decoding, not measured after. Only two formats are decoded, each by its own decoder
(never a demuxer that guesses the format from the bytes):

- ``png``: the signature, then an ``IHDR`` first (exactly one), every chunk whole;
- ``jpeg``: ``SOI``, then one frame size for every ``SOF`` marker, a baseline, extended or
  progressive Huffman frame of 8-bit samples with 1 or 3 components, and at most
  :data:`MAX_JPEG_SCANS` scans (each progressive scan is one more decoding pass).

Anything else (GIF, BMP, TIFF, WebP, a video container, ...) sent as ``png`` or ``jpeg`` is an
:class:`ImageError` that names what the bytes look like. The raw encodings (``rgb24``,
``i420``) carry their size in the message and are checked against it and the same limit.

:func:`decode_image` is blocking (call it on a worker thread): one decoder thread, and the
decoded frame must have the size the header promised. Its memory is bounded by ``max_pixels``
(at most 8 bytes a pixel for 16-bit RGBA, plus 3 for the RGB result) and its time by the
pixels, the input's bytes and the scans.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tidegate.protocol.messages import MAX_IMAGE_SIDE_PX

from .errors import RemoteMediaError

ENCODINGS = ("jpeg", "png", "rgb24", "i420")
MAX_JPEG_SCANS = 128
# The header walk runs on the event loop: its Python steps are bounded (a legit image has tens
# of chunks or segments; 1 MiB of 12-byte chunks would be ~87,000 steps, ~80 ms).
MAX_PNG_CHUNKS = 4_096
MAX_JPEG_SEGMENTS = 4_096
_NOT_FILL = re.compile(rb"[^\xff]")
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # ends entropy-coded data
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
# Allowed JPEG frames: baseline (C0), extended (C1) and progressive (C2), Huffman coded.
JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2})
# Every SOF marker (the others: lossless, hierarchical, arithmetic coding) is refused.
JPEG_ALL_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}  # RSTn, TEM, SOI: no length
_CODECS = {"png": "png", "jpeg": "mjpeg"}

# What the first bytes of something that is not the named image look like (for the error).
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (PNG_SIGNATURE, 0, "a PNG image"),
    (b"\xff\xd8\xff", 0, "a JPEG image"),
    (b"GIF87a", 0, "a GIF image"),
    (b"GIF89a", 0, "a GIF image"),
    (b"BM", 0, "a BMP image"),
    (b"II*\x00", 0, "a TIFF image"),
    (b"MM\x00*", 0, "a TIFF image"),
    (b"WEBP", 8, "a WebP image"),
    (b"AVI ", 8, "an AVI video"),
    (b"WAVE", 8, "a WAV audio file"),
    (b"ftyp", 4, "an MP4/QuickTime (ISO BMFF) file"),
    (b"\x1a\x45\xdf\xa3", 0, "a Matroska/WebM file"),
    (b"DKIF", 0, "an IVF video"),
    (b"OggS", 0, "an Ogg file"),
    (b"\x00\x00\x01\xba", 0, "an MPEG program stream"),
    (b"\x00\x00\x01\xb3", 0, "an MPEG video stream"),
    (b"\x00\x00\x00\x01", 0, "an H.264/H.265 stream"),
    (b"G", 0, "an MPEG transport stream"),
    (b"FLV", 0, "an FLV video"),
    (b"\x00\x00\x00\x0cjP  ", 0, "a JPEG 2000 image"),
    (b"8BPS", 0, "a Photoshop image"),
    (b"%PDF", 0, "a PDF document"),
)

RgbArray = npt.NDArray[np.uint8]


class ImageError(RemoteMediaError):
    """An uploaded image we will not decode: the message names what was wrong."""


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What the header of an image says: its encoding and its size in pixels."""

    encoding: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def looks_like(data: bytes) -> str:
    """A short description of what ``data`` looks like, for an error message."""
    for magic, offset, what in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return what
    return "not a known image format"


def read_header(
    data: bytes,
    encoding: str,
    *,
    max_pixels: int,
    width: int | None = None,
    height: int | None = None,
) -> ImageHeader:
    """Check ``data`` as an ``input.frame`` image of ``encoding`` without decoding it.

    ``width``/``height`` are the message's fields: required for the raw encodings; for png
    and jpeg, when given, they must match the header. Raises :class:`ImageError`."""
    if encoding in ("rgb24", "i420"):
        header = _raw_header(data, encoding, width, height)
    elif encoding == "png":
        header = _png_header(data)
    elif encoding == "jpeg":
        header = _jpeg_header(data)
    else:
        raise ImageError(
            f"input.frame.encoding: expected one of {list(ENCODINGS)}, got {encoding!r}"
        )
    if encoding in _CODECS:
        for name, given, real in (
            ("width", width, header.width),
            ("height", height, header.height),
        ):
            if given is not None and given != real:
                raise ImageError(
                    f"input.frame.{name}: {given} does not match the {encoding} header ({real})"
                )
    if header.pixels > max_pixels:
        raise ImageError(
            f"input.frame.image: {header.width}x{header.height} is {header.pixels} pixels; "
            f"at most {max_pixels} are accepted (frame_max_pixels)"
        )
    if max(header.width, header.height) > MAX_IMAGE_SIDE_PX:
        raise ImageError(
            f"input.frame.image: {header.width}x{header.height} has a side over "
            f"{MAX_IMAGE_SIDE_PX} pixels"
        )
    return header


def _raw_header(data: bytes, encoding: str, width: int | None, height: int | None) -> ImageHeader:
    if width is None or height is None:
        raise ImageError(f"input.frame: {encoding} needs width and height")
    w, h = width, height
    if encoding == "rgb24":
        if len(data) != w * h * 3:
            raise ImageError(
                f"input.frame.image: rgb24 {w}x{h} is {w * h * 3} bytes, got {len(data)}"
            )
    elif w % 2 or h % 2 or len(data) != w * h * 3 // 2:
        raise ImageError(
            f"input.frame.image: i420 needs even sides and {w * h * 3 // 2} bytes for {w}x{h}"
        )
    return ImageHeader(encoding, w, h)


def _not(encoding: str, data: bytes, why: str) -> ImageError:
    return ImageError(
        f"input.frame.image: not a {encoding} image ({why}; it looks like {looks_like(data)})"
    )


def _png_header(data: bytes) -> ImageHeader:
    if not data.startswith(PNG_SIGNATURE):
        raise _not("png", data, "no PNG signature")
    pos = len(PNG_SIGNATURE)
    header: ImageHeader | None = None
    chunks = 0
    while pos < len(data):
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise ImageError(f"input.frame.image: png has more than {MAX_PNG_CHUNKS} chunks")
        if pos + 12 > len(data):
            raise ImageError(f"input.frame.image: png chunk at byte {pos} is cut short")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > len(data):
            raise ImageError(
                f"input.frame.image: png chunk {kind!r} at byte {pos} needs {length} bytes, "
                f"{len(data) - pos - 12} are there"
            )
        if kind == b"IHDR":
            if header is not None:
                raise ImageError("input.frame.image: png has more than one IHDR chunk")
            if length != 13:
                raise ImageError(f"input.frame.image: png IHDR is {length} bytes, expected 13")
            w, h = struct.unpack_from(">II", data, pos + 8)
            if not (w and h):
                raise ImageError(f"input.frame.image: png size {w}x{h} has a zero side")
            header = ImageHeader("png", w, h)
        elif header is None:
            raise ImageError(f"input.frame.image: png starts with {kind!r}, expected IHDR")
        pos = end
        if kind == b"IEND":
            break
    if header is None:
        raise ImageError("input.frame.image: png has no IHDR chunk")
    return header


def _jpeg_header(data: bytes) -> ImageHeader:
    if not data.startswith(JPEG_SOI):
        raise _not("jpeg", data, "no JPEG start-of-image marker")
    pos = 2
    size: tuple[int, int] | None = None
    scans = segments = 0
    n = len(data)
    while pos < n:
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise ImageError(
                f"input.frame.image: jpeg has more than {MAX_JPEG_SEGMENTS} marker segments"
            )
        if data[pos] != 0xFF:
            raise ImageError(f"input.frame.image: jpeg has no marker at byte {pos}")
        found = _NOT_FILL.search(data, pos)  # skip fill bytes (0xFF) in one search
        if found is None:
            break
        pos = found.start()
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            break
        if marker in _STANDALONE:
            continue
        if pos + 2 > n:
            raise ImageError("input.frame.image: jpeg segment length is cut short")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > n:
            raise ImageError(
                f"input.frame.image: jpeg segment 0x{marker:02X} at byte {pos} is cut short"
            )
        if marker in JPEG_ALL_FRAMES:
            size = _jpeg_frame(data, pos, length, marker, size)
        pos += length
        if marker == 0xDA:  # SOS: entropy-coded data follows, up to the next real marker
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageError(f"input.frame.image: jpeg has more than {MAX_JPEG_SCANS} scans")
            if size is None:
                raise ImageError("input.frame.image: jpeg scan before any frame header (SOF)")
            pos = _after_scan(data, pos)
    if size is None:
        raise ImageError("input.frame.image: jpeg has no frame header (SOF)")
    return ImageHeader("jpeg", size[0], size[1])


def _jpeg_frame(
    data: bytes, pos: int, length: int, marker: int, size: tuple[int, int] | None
) -> tuple[int, int]:
    if marker not in JPEG_FRAMES:
        raise ImageError(
            f"input.frame.image: jpeg frame type SOF{marker - 0xC0} is not accepted "
            "(baseline, extended or progressive Huffman only)"
        )
    if length < 8:
        raise ImageError("input.frame.image: jpeg frame header is cut short")
    precision, h, w, components = struct.unpack_from(">BHHB", data, pos + 2)
    if precision != 8:
        raise ImageError(f"input.frame.image: jpeg samples of {precision} bits; only 8 accepted")
    if not (w and h):
        raise ImageError(f"input.frame.image: jpeg size {w}x{h} has a zero side")
    if components not in (1, 3):
        raise ImageError(
            f"input.frame.image: jpeg with {components} components; 1 (grey) or 3 accepted"
        )
    if size is not None and size != (w, h):
        raise ImageError(
            f"input.frame.image: jpeg has frames of two sizes ({size[0]}x{size[1]}, {w}x{h})"
        )
    return (w, h)


def _after_scan(data: bytes, pos: int) -> int:
    """The position of the marker that ends the entropy-coded data starting at ``pos``
    (skipping stuffed 0xFF00 and restart markers; one C-speed search)."""
    found = _JPEG_MARKER.search(data, pos)
    return len(data) if found is None else found.start()


def decode_image(data: bytes, header: ImageHeader) -> RgbArray:
    """The image as an HxWx3 RGB uint8 array (blocking: call it on a worker thread).

    ``header`` comes from :func:`read_header` on the same bytes. Raises :class:`ImageError`."""
    w, h = header.width, header.height
    if header.encoding == "rgb24":
        return np.frombuffer(data, np.uint8).reshape(h, w, 3)
    import av

    if header.encoding == "i420":
        yuv = np.frombuffer(data, np.uint8).reshape(h * 3 // 2, w)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        return np.asarray(frame.to_ndarray(format="rgb24"), np.uint8)
    try:
        codec: Any = av.CodecContext.create(_CODECS[header.encoding], "r")
        codec.thread_count = 1
        frames = list(codec.decode(av.Packet(data)))
        frames += codec.decode(None)
    except (av.FFmpegError, ValueError):
        raise ImageError(f"input.frame.image: not a decodable {header.encoding} image") from None
    if not frames:
        raise ImageError(f"input.frame.image: the {header.encoding} image decodes to nothing")
    frame = frames[0]
    if (frame.width, frame.height) != (w, h):  # the decoder must agree with the header
        raise ImageError(
            f"input.frame.image: {header.encoding} decodes to {frame.width}x{frame.height}, "
            f"its header says {w}x{h}"
        )
    return np.asarray(frame.to_ndarray(format="rgb24"), np.uint8)
