"""Encoded WebRTC video: sizes read from VP8 keyframes and H.264 SPS before decoding."""

from __future__ import annotations

import fractions
from dataclasses import dataclass

import av
import numpy as np
import pytest
from aiortc.rtp import RtpPacket
from hypothesis import given, settings
from hypothesis import strategies as st

from tidegate.media._aiortc import MarkerJitterBuffer
from tidegate.media.video_guard import (
    BitstreamError,
    GuardedDecoderQueue,
    frame_size,
    h264_sps_size,
    vp8_keyframe_size,
)


def encode(codec: str, width: int, height: int, frames: int = 3, **options: str) -> list[bytes]:
    """Real encoded frames (libvpx VP8, libx264 Annex B) of a flat picture."""
    ctx = av.CodecContext.create(codec, "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.options = options
    out = []
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(
            np.full((height * 3 // 2, width), i * 40, np.uint8), format="yuv420p"
        )
        frame.pts = i
        out += [bytes(p) for p in ctx.encode(frame)]
    return out + [bytes(p) for p in ctx.encode(None)]


@pytest.mark.parametrize(("width", "height"), [(640, 480), (642, 482), (1920, 1080), (16, 16)])
def test_vp8_and_h264_sizes_are_read_from_the_bitstream(width: int, height: int) -> None:
    """The first frame (VP8 keyframe, H.264 SPS + IDR) gives the encoder's size, cropping
    included; the frames after it set none."""
    for codec, read in (("libvpx", vp8_keyframe_size), ("libx264", h264_sps_size)):
        sizes = [read(f) for f in encode(codec, width, height)]
        assert sizes[0] == (width, height) and sizes[1:] == [None] * (len(sizes) - 1), codec


@pytest.mark.parametrize("profile", ["baseline", "main", "high", "high444"])
def test_h264_profiles_parse(profile: str) -> None:
    """Every libx264 profile's SPS parses to its size (high profiles carry more fields)."""
    assert h264_sps_size(encode("libx264", 1280, 720, 1, profile=profile)[0]) == (1280, 720)


@dataclass
class Codec:
    name: str


@dataclass
class Frame:
    data: bytes


def _vp8_key(width: int, height: int) -> bytes:
    key = bytearray(encode("libvpx", 64, 48, 1)[0])
    key[6:8] = width.to_bytes(2, "little")
    key[8:10] = height.to_bytes(2, "little")
    return bytes(key)


def test_guard_blocks_an_oversized_stream_until_a_smaller_keyframe() -> None:
    """A 16383x16383 VP8 keyframe (a few bytes that would make libvpx allocate hundreds of MB)
    and the interframes after it never reach the decoder queue; a keyframe within the limit
    lets the stream through again; the end-of-stream marker always passes."""
    vp8 = Codec("VP8")
    q = GuardedDecoderQueue(max_pixels=640 * 480)
    inter = encode("libvpx", 64, 48, 2)[1]
    q.put((vp8, Frame(_vp8_key(16383, 16383))))
    q.put((vp8, Frame(inter)))
    q.put((vp8, Frame(_vp8_key(8193, 2))))  # few pixels, a side over 8192
    assert q.qsize() == 0 and q.oversized == 3 and q.blocked
    q.put((vp8, Frame(_vp8_key(64, 48))))
    q.put((vp8, Frame(inter)))
    q.put(None)
    assert q.qsize() == 3 and not q.blocked
    assert q.stats()["last_size"] == [64, 48]


def test_guard_refuses_what_does_not_parse_and_bounds_its_queue() -> None:
    """A keyframe without its start code or an SPS cut short blocks the stream; beyond
    max_frames queued, the arriving frame is dropped (counted) and a keyframe is asked for,
    once until one comes; a keyframe replaces the frames still waiting (latest wins: no
    growing delay behind a slow decoder)."""
    asked: list[int] = []
    q = GuardedDecoderQueue(
        max_pixels=640 * 480, max_frames=2, on_need_keyframe=lambda: asked.append(1)
    )
    q.put((Codec("VP8"), Frame(b"\x00\x00\x00nothing")))
    assert q.blocked and q.oversized == 1
    sps_idr, *deltas = encode("libx264", 64, 48, 4, bframes="0")
    cut = sps_idr[: sps_idr.index(b"\x00\x00\x01\x67") + 6]
    q.put((Codec("H264"), Frame(cut)))
    assert q.blocked and q.oversized == 2
    h264 = Codec("H264")
    for data in (sps_idr, *deltas):  # one keyframe, three frames that reference it
        q.put((h264, Frame(data)))
    assert q.qsize() == 2 and q.dropped == 2 and asked == [1] and q.awaiting_keyframe
    q.put((h264, Frame(sps_idr)))  # the keyframe asked for: it replaces the two waiting
    q.put((h264, Frame(deltas[0])))
    assert q.qsize() == 2 and q.stats()["skipped"] == 2 and not q.awaiting_keyframe
    q.put(None)  # the end-of-stream marker passes even a full queue, and a keyframe keeps it
    q.put((h264, Frame(sps_idr)))
    assert q.queue[0] is None and q.qsize() == 2 and q.stats()["keyframes_requested"] == 1


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["VP8", "H264"]), st.binary(max_size=200))
def test_any_bytes_give_a_size_none_or_a_bitstream_error(codec: str, data: bytes) -> None:
    """Whatever the peer sends as a frame, the size reader returns a size, None, or raises
    BitstreamError (the guard turns that into a blocked stream), nothing else."""
    try:
        size = frame_size(codec, b"\x00\x00\x00\x01\x67" + data if codec == "H264" else data)
    except BitstreamError:
        return
    assert size is None or all(isinstance(n, int) and n >= 0 for n in size)


def _rtp(seq: int, ts: int, payload: bytes, marker: int) -> RtpPacket:
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, marker=marker)
    packet._data = payload  # type: ignore[attr-defined]  # what aiortc's depayloader sets
    return packet


def test_a_marked_frame_completes_at_its_last_packet() -> None:
    """The frame assembler gives a frame as soon as its marked last packet arrives (aiortc's
    own waits for the next frame's first packet); an unmarked frame still completes at the
    next timestamp; a gap holds the frame until it is filled; a late duplicate is dropped."""
    buf = MarkerJitterBuffer()
    assert buf.add(_rtp(100, 3000, b"a", 0)) == (False, None)
    _, frame = buf.add(_rtp(101, 3000, b"b", 1))
    assert frame is not None and (frame.data, frame.timestamp) == (b"ab", 3000)
    # unmarked: completed by the next frame's first packet (marked itself: at once after)
    assert buf.add(_rtp(102, 6000, b"c", 0)) == (False, None)
    _, frame = buf.add(_rtp(103, 9000, b"d", 1))
    assert frame is not None and (frame.data, frame.timestamp) == (b"c", 6000)
    _, frame = buf.add(_rtp(104, 12000, b"e", 1))  # 9000 is complete too: one per packet
    assert frame is not None and frame.timestamp == 9000
    _, frame = buf.add(_rtp(105, 15000, b"f1", 0))  # 12000 was complete: it goes now
    assert frame is not None and (frame.data, frame.timestamp) == (b"e", 12000)
    # a gap: the marked last packet is not a frame until the missing one comes
    assert buf.add(_rtp(107, 15000, b"f3", 1)) == (False, None)
    _, frame = buf.add(_rtp(106, 15000, b"f2", 0))
    assert frame is not None and (frame.data, frame.timestamp) == (b"f1f2f3", 15000)
    assert buf.add(_rtp(101, 3000, b"b", 1)) == (False, None)  # an old duplicate
    assert (buf.tg_marker_frames, buf.tg_next_frames) == (4, 1)
