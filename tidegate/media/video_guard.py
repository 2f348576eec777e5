"""Encoded WebRTC video checked before aiortc's decoder sees it: size first, then decoding.

The client's encoder chooses a frame's size: a VP8 keyframe of a few KB can announce 16383 x
16383 pixels, and libvpx or FFmpeg's H.264 decoder then allocates that, several times over
(reference frames), before any frame reaches us. So the size is read from the bitstream here,
on the event loop, before the frame is handed to the decoder thread:

- VP8 (RFC 6386, 9.1): a keyframe's 10-byte header carries width and height (14 bits each);
- H.264 (ITU-T H.264, 7.3.2.1.1): a sequence parameter set (SPS) carries the size in
  macroblocks and its cropping; it comes before the IDR picture that uses it.

A keyframe or SPS over ``max_pixels`` (or with a side over ``MAX_IMAGE_SIDE_PX``), or one that
does not parse, blocks the stream: it and every frame after it are dropped (counted as
``oversized``) until a keyframe or SPS of an allowed size comes. aiortc's decoder queue is
unbounded; this one is latest-wins at keyframes, so that a decoder that falls behind (many
cameras on few cores) never builds a growing delay:

- a keyframe that arrives while frames still wait for the decoder replaces them (counted as
  ``skipped``): it references none of them, and their pictures would only have replaced each
  other in the inbox's latest-only slot;
- when ``max_frames`` wait, the arriving frame is dropped (counted as ``dropped``) and the
  sender is asked for a keyframe at once (RTCP PLI, through ``on_need_keyframe``; once until
  one comes): the frames after a dropped one decode wrong until then.

Frames reach the guard as soon as they are complete: :func:`install_video_guard` also gives the
receiver a frame assembler that ends a frame at its RTP marker bit (aiortc's own waits for the
next frame's first packet, one frame interval later).

:class:`GuardedDecoderQueue` replaces aiortc's queue in its receiver (before the receiver
starts), through the seam to aiortc's internals
(:func:`tidegate.media._aiortc.replace_decoder_queue`).
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from aiortc.rtcrtpreceiver import RTCRtpReceiver

from tidegate.protocol.messages import MAX_IMAGE_SIDE_PX

from ._aiortc import (
    MarkerJitterBuffer,
    complete_frames_at_marker,
    receiver_started,
    replace_decoder_queue,
    request_keyframe,
)

VP8_START_CODE = b"\x9d\x01\x2a"
H264_SPS = 7
MAX_UE_BITS = 31  # an exp-Golomb code longer than this is not a valid SPS field
# Profiles whose SPS carries chroma format, bit depths and scaling matrices (7.3.2.1.1).
H264_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


class BitstreamError(ValueError):
    """A VP8 or H.264 header that does not parse."""


def vp8_keyframe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a VP8 keyframe; None for an interframe."""
    if len(data) < 3:
        raise BitstreamError("vp8: frame shorter than its tag")
    if data[0] & 1:  # inverse key frame flag: 1 is an interframe
        return None
    if len(data) < 10 or data[3:6] != VP8_START_CODE:
        raise BitstreamError("vp8: keyframe without its start code")
    width = int.from_bytes(data[6:8], "little") & 0x3FFF
    height = int.from_bytes(data[8:10], "little") & 0x3FFF
    return width, height


class _Bits:
    """An RBSP bit reader (emulation-prevention bytes removed)."""

    def __init__(self, nal: bytes) -> None:
        self.data = nal.replace(b"\x00\x00\x03", b"\x00\x00")
        self.pos = 0

    def u(self, n: int) -> int:
        if self.pos + n > len(self.data) * 8:
            raise BitstreamError("h264: SPS cut short")
        value = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > MAX_UE_BITS:
                raise BitstreamError("h264: exp-Golomb code too long")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _nal_units(data: bytes) -> list[bytes]:
    parts = data.split(b"\x00\x00\x01")
    return [p.rstrip(b"\x00") for p in parts[1:] if p]


def h264_sps_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the first SPS in an Annex B access unit (after its cropping); None
    when it has no SPS."""
    for nal in _nal_units(data):
        if nal[0] & 0x1F == H264_SPS:
            return _sps_size(_Bits(nal[1:]))
    return None


def _sps_size(b: _Bits) -> tuple[int, int]:
    profile = b.u(8)
    b.u(16)  # constraint flags, level
    b.ue()  # seq_parameter_set_id
    chroma = 1  # 4:2:0 unless the profile says otherwise
    if profile in H264_HIGH_PROFILES:
        chroma = b.ue()
        if chroma == 3:
            b.u(1)  # separate_colour_plane_flag
        b.ue()  # bit_depth_luma_minus8
        b.ue()  # bit_depth_chroma_minus8
        b.u(1)  # qpprime_y_zero_transform_bypass_flag
        if b.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma != 3 else 12):
                if b.u(1):
                    _skip_scaling_list(b, 16 if i < 6 else 64)
    b.ue()  # log2_max_frame_num_minus4
    poc_type = b.ue()
    if poc_type == 0:
        b.ue()
    elif poc_type == 1:
        b.u(1)
        b.se()
        b.se()
        cycle = b.ue()
        if cycle > 255:
            raise BitstreamError("h264: num_ref_frames_in_pic_order_cnt_cycle over 255")
        for _ in range(cycle):
            b.se()
    b.ue()  # max_num_ref_frames
    b.u(1)  # gaps_in_frame_num_value_allowed_flag
    width = (b.ue() + 1) * 16
    height_units = b.ue() + 1
    frame_mbs_only = b.u(1)
    height = (2 - frame_mbs_only) * height_units * 16
    if not frame_mbs_only:
        b.u(1)  # mb_adaptive_frame_field_flag
    b.u(1)  # direct_8x8_inference_flag
    if b.u(1):  # frame_cropping_flag: the picture shown is smaller than the macroblocks
        unit_x = 2 if chroma in (1, 2) else 1
        unit_y = (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
        left, right, top, bottom = b.ue(), b.ue(), b.ue(), b.ue()
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
        if width < 1 or height < 1:
            raise BitstreamError("h264: the SPS crops the whole picture away")
    return width, height


def _skip_scaling_list(b: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt != 0:
            nxt = (last + b.se() + 256) % 256
        last = last if nxt == 0 else nxt


def frame_size(codec: str, data: bytes) -> tuple[int, int] | None:
    """The size an encoded frame sets for the stream, or None when it sets none."""
    if codec == "VP8":
        return vp8_keyframe_size(data)
    if codec == "H264":
        return h264_sps_size(data)
    return None


class GuardedDecoderQueue(queue.Queue[Any]):
    """aiortc's decoder input queue, bounded, and refusing frames of a size over the limit."""

    def __init__(
        self,
        *,
        max_pixels: int,
        max_frames: int = 32,
        assembler: MarkerJitterBuffer | None = None,
        on_need_keyframe: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.assembler = assembler
        self.on_need_keyframe = on_need_keyframe
        self.skipped = 0  # waiting frames a keyframe replaced
        self.keyframes_requested = 0
        self.awaiting_keyframe = False  # a frame was dropped and a keyframe asked for
        self.max_pixels = max_pixels
        self.max_frames = max_frames
        self.oversized = 0
        self.dropped = 0
        self.blocked = False
        self.last_size: tuple[int, int] | None = None

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # the receiver stops: always delivered
            super().put(None)
            return
        codec, frame = item
        try:
            size = frame_size(codec.name, bytes(frame.data))
        except BitstreamError:
            size = (0, 0)
            self.blocked = True
        else:
            if size is not None:
                self.last_size = size
                w, h = size
                self.blocked = w * h > self.max_pixels or max(w, h) > MAX_IMAGE_SIDE_PX
        if self.blocked:
            self.oversized += 1
            return
        if size is not None:  # a keyframe: what still waits is superseded
            self.awaiting_keyframe = False
            self._skip_waiting()
        elif self.qsize() >= self.max_frames:
            self.dropped += 1
            if not self.awaiting_keyframe:  # the frames after this one decode wrong: ask once
                self.awaiting_keyframe = True
                self.keyframes_requested += 1
                if self.on_need_keyframe is not None:
                    self.on_need_keyframe()
            return
        super().put(item)

    def _skip_waiting(self) -> None:
        """Drop the frames still waiting for the decoder (a keyframe supersedes them); the
        receiver's stop marker (None), if queued, stays."""
        with self.mutex:
            waiting = self.queue
            kept = [item for item in waiting if item is None]
            skipped = len(waiting) - len(kept)
            if skipped:
                waiting.clear()
                waiting.extend(kept)
                self.skipped += skipped
                self.unfinished_tasks -= skipped  # as if the decoder had taken them
                self.not_full.notify_all()

    def stats(self) -> dict[str, Any]:
        return {
            "oversized": self.oversized,
            "dropped": self.dropped,
            "skipped": self.skipped,
            "keyframes_requested": self.keyframes_requested,
            "queued": self.qsize(),
            "max_frames": self.max_frames,
            "last_size": list(self.last_size) if self.last_size else None,
            "frames_at_marker": self.assembler.tg_marker_frames if self.assembler else 0,
            "frames_at_next": self.assembler.tg_next_frames if self.assembler else 0,
        }


def install_video_guard(
    receiver: RTCRtpReceiver, *, max_pixels: int, max_frames: int = 32
) -> GuardedDecoderQueue:
    """Give aiortc's video receiver a :class:`GuardedDecoderQueue` (before it starts), fed by
    a :class:`~tidegate.media._aiortc.MarkerJitterBuffer`: a frame goes to the guard as soon
    as its marked last packet arrives, not one frame interval later when the next frame's
    first packet does (aiortc's own rule, kept for a sender that marks nothing)."""
    if receiver_started(receiver):
        raise RuntimeError("install_video_guard: the receiver has already started")
    assembler = complete_frames_at_marker(receiver)
    guard = GuardedDecoderQueue(
        max_pixels=max_pixels,
        max_frames=max_frames,
        assembler=assembler,
        on_need_keyframe=lambda: request_keyframe(receiver),
    )
    replace_decoder_queue(receiver, guard)
    return guard
