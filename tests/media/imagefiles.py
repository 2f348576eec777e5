"""Real image and video files for the input.frame tests, built here (Pillow, PyAV, zlib)."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import av
import numpy as np
from PIL import Image

BOMB_SIDE_PX = 16_000


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.cache
def png_bomb(side: int = BOMB_SIDE_PX) -> bytes:
    """A valid greyscale PNG of side x side black pixels: 249 KB that decode to side² bytes
    (768 MB as RGB at 16000: the size FFmpeg still decodes)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    z = zlib.compressobj(9)
    rows = b"\x00" * (side + 1) * 64  # 64 rows: filter byte 0, then black pixels
    idat = b"".join(z.compress(rows) for _ in range(side // 64)) + z.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def picture(width: int = 64, height: int = 48) -> Image.Image:
    """An RGB test picture (a gradient), so that encoders have something to encode."""
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None, None]
    rgb = np.concatenate(np.broadcast_arrays(x, y, (x // 2 + y // 2)), axis=2)
    return Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")


def still(fmt: str, width: int = 64, height: int = 48, **kw: object) -> bytes:
    """The test picture as a Pillow format: PNG, JPEG, GIF, BMP, TIFF, WEBP."""
    out = io.BytesIO()
    picture(width, height).save(out, fmt, **kw)
    return out.getvalue()


def video(container: str = "mp4", codec: str = "mpeg4", frames: int = 3) -> bytes:
    """A short real video file (default: MPEG-4 Part 2 in MP4) made with PyAV."""
    out = io.BytesIO()
    with av.open(out, "w", format=container) as f:
        stream = f.add_stream(codec, rate=10)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        rgb = np.asarray(picture())
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            for packet in stream.encode(frame):
                f.mux(packet)
        for packet in stream.encode():
            f.mux(packet)
    return out.getvalue()
