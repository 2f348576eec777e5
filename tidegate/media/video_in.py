"""Inbound video: decoded frames into a latest-only slot; conversion only on request.

Policy (DESIGN.md, "inbound video"): one frame. aiortc decodes VP8/H.264 on its own thread per
video track (video decoding is heavy; one hop per frame is the right trade there); a reader
task moves each decoded frame into a :class:`~tidegate.protocol.flow.LatestSlot`, where a newer
frame replaces one nobody took (counted as dropped). Frames stay in their decoded YUV form;
:meth:`VideoInbox.take` converts to an RGB or BGR array only when a consumer asks, on a worker
thread.

The peer's codec decides what size a frame has (VP8 allows up to 16383 x 16383): a frame of
more than ``max_pixels`` (``frame_max_pixels``), or with a side over ``MAX_IMAGE_SIDE_PX``
(8192), is counted as ``oversized`` and never enters the slot, so no consumer converts or
looks at it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import av
import numpy as np
import numpy.typing as npt
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tidegate.protocol import LatestSlot
from tidegate.protocol.messages import MAX_IMAGE_SIDE_PX

FORMATS = ("rgb24", "bgr24")
DEFAULT_MAX_PIXELS = 3840 * 2160


@dataclass(frozen=True, slots=True)
class VideoFrame:
    """A frame a consumer took. ``image`` is HxWx3 uint8 when a format was asked for."""

    width: int
    height: int
    pts_ms: float  # media time (ms since the stream's first frame)
    arrival_s: float
    index: int  # how many frames the track had delivered, this one included
    image: npt.NDArray[np.uint8] | None = None
    format: str | None = None


@dataclass(slots=True)
class _Decoded:
    frame: av.VideoFrame
    pts_ms: float
    arrival_s: float
    index: int


class VideoInbox:
    """The newest decoded frame of one video track, and the counts."""

    def __init__(
        self, *, max_pixels: int = DEFAULT_MAX_PIXELS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.slot: LatestSlot[_Decoded] = LatestSlot("video_in")
        self.max_pixels = max_pixels
        self.clock = clock
        self.frames = 0
        self.oversized = 0
        self.width = 0
        self.height = 0
        self._first_pts: float | None = None
        self._first_arrival: float | None = None
        self._last_arrival: float | None = None
        self._ready = asyncio.Event()
        self._arrived = asyncio.Event()  # set at every frame: wakes next_frame()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, frame: av.VideoFrame) -> None:
        """A decoded frame arrived (replaces one that was never taken)."""
        now = self.clock()
        pts_s = 0.0
        if frame.pts is not None and frame.time_base:
            pts_s = float(frame.pts * frame.time_base)
        if self._first_pts is None:
            self._first_pts = pts_s
            self._first_arrival = now
        self.frames += 1
        self.width, self.height = frame.width, frame.height
        self._last_arrival = now
        self._arrived.set()
        too_big = frame.width * frame.height > self.max_pixels
        if too_big or max(frame.width, frame.height) > MAX_IMAGE_SIDE_PX:
            self.oversized += 1  # never converted nor looked at
            return
        self.slot.put(_Decoded(frame, (pts_s - self._first_pts) * 1000.0, now, self.frames))
        self._ready.set()

    async def take(
        self, format: str | None = None, *, timeout_s: float | None = None
    ) -> VideoFrame | None:
        """The newest frame not taken yet (waits for one); converted to ``format`` (rgb24 or
        bgr24) on a worker thread when asked. None once the track has ended."""
        if format is not None and format not in FORMATS:
            raise ValueError(f"format: expected one of {FORMATS} or None, got {format!r}")
        async with asyncio.timeout(timeout_s):
            while not self.slot:
                if self._closed:
                    return None
                self._ready.clear()
                await self._ready.wait()
        d = self.slot.take()
        image = None
        if format is not None:
            image = cast(
                "npt.NDArray[np.uint8]", await asyncio.to_thread(d.frame.to_ndarray, format=format)
            )
        return VideoFrame(
            d.frame.width, d.frame.height, d.pts_ms, d.arrival_s, d.index, image, format
        )

    async def next_frame(self, after: int) -> int:
        """Wait until the track has delivered more than ``after`` frames (oversized ones
        included); the count then, or -1 once the track has ended. For one waiter: a
        consumer that wants to act on a frame as it arrives (the vision lane)."""
        while self.frames <= after:
            if self._closed:
                return -1
            self._arrived.clear()
            await self._arrived.wait()
        return self.frames

    async def pump(self, track: MediaStreamTrack) -> None:
        """Move the track's decoded frames into the slot until it ends (the owner's task)."""
        try:
            while True:
                frame = await track.recv()
                self.put(frame)  # type: ignore[arg-type]
        except MediaStreamError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        self._closed = True
        self._ready.set()
        self._arrived.set()

    def stats(self) -> dict[str, Any]:
        fps = 0.0
        if self._first_arrival is not None and self._last_arrival is not None and self.frames > 1:
            span = self._last_arrival - self._first_arrival
            fps = (self.frames - 1) / span if span > 0 else 0.0
        st = self.slot.stats
        return {
            "frames": self.frames,
            "taken": st.popped,
            "dropped": st.dropped,
            "oversized": self.oversized,
            "width": self.width,
            "height": self.height,
            "fps": round(fps, 2),
            "policy": st.policy,
        }
