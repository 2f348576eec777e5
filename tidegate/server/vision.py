"""A session's vision lane: the freshest frame, looked at by the vision engine at a set rate.

Frames come from WS-only ``input.frame`` (jpeg, png, rgb24, i420) or from the WebRTC video
track (:class:`~tidegate.media.VideoInbox`). Both wait in a latest-only slot (DESIGN.md,
"inbound video": one frame; a newer one replaces an older one nobody took, counted as dropped;
the replaced upload's credit goes back at once). Every ``interval_s`` the lane takes the freshest
frame, if there is a new one, decodes it to RGB on a worker thread, runs it through the shared
vision scheduler (batched across sessions) and emits ``vision.result`` naming the frame's
media time. The latest result is kept for whoever wants it as context (the assistant's LLM).

At the end of each user turn the assistant asks for a look at once (:meth:`VisionLane.at_turn_end`),
besides the set rate: the freshest frame is run if a new one is waiting, otherwise the result of
the freshest frame (already looked at) is sent again, so that every turn has a ``vision.result``
naming the frame it came from, and the LLM's context is the freshest sight.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from tidegate.engines.errors import EngineError
from tidegate.engines.scheduler import Scheduler
from tidegate.engines.vision import FaceDetections
from tidegate.media import VideoInbox
from tidegate.protocol import LatestSlot
from tidegate.protocol.messages import Detection, InputFrame, Timing, VisionResult

from .errors import InvalidConfigError
from .session import Session

log = logging.getLogger(__name__)

RgbArray = np.ndarray[Any, np.dtype[np.uint8]]


def decode_frame(msg: InputFrame) -> RgbArray:
    """An ``input.frame`` as an RGB uint8 array (blocking: call it in a thread)."""
    if msg.encoding in ("rgb24", "i420"):
        if msg.width is None or msg.height is None:
            raise InvalidConfigError(f"input.frame: {msg.encoding} needs width and height")
        w, h = msg.width, msg.height
        if msg.encoding == "rgb24":
            if len(msg.image) != w * h * 3:
                raise InvalidConfigError(f"input.frame.image: rgb24 {w}x{h} is {w * h * 3} bytes")
            return np.frombuffer(msg.image, np.uint8).reshape(h, w, 3)
        if w % 2 or h % 2 or len(msg.image) != w * h * 3 // 2:
            raise InvalidConfigError(
                f"input.frame.image: i420 needs even sides and {w * h * 3 // 2} bytes for {w}x{h}"
            )
        import av

        yuv = np.frombuffer(msg.image, np.uint8).reshape(h * 3 // 2, w)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        return np.asarray(frame.to_ndarray(format="rgb24"), np.uint8)
    import av

    try:
        with av.open(io.BytesIO(msg.image), mode="r") as container:
            frame = next(container.decode(video=0))
            return np.asarray(frame.to_ndarray(format="rgb24"), np.uint8)
    except (av.FFmpegError, StopIteration, ValueError):
        raise InvalidConfigError(
            f"input.frame.image: not a decodable {msg.encoding} image"
        ) from None


@dataclass(frozen=True, slots=True)
class Sight:
    """The latest vision result: the frame's media time, its faces, when it was seen."""

    frame_ts: float
    faces: int
    seen_at: float  # time.monotonic()


class VisionLane:
    """See the module docstring."""

    def __init__(self, session: Session, scheduler: Scheduler[Any, Any], interval_s: float):
        self.session = session
        self.scheduler = scheduler
        self.interval_s = interval_s
        self.slot: LatestSlot[tuple[InputFrame, float]] = LatestSlot("vision_in")
        self.video: VideoInbox | None = None
        self.latest: Sight | None = None
        self.last_result: VisionResult | None = None
        self.counters = {"results": 0, "errors": 0, "bad_frames": 0, "turn_looks": 0}

    def push(self, msg: InputFrame, received_ms: float) -> None:
        """A WS-only frame: the newest one waits; one it replaces gives its credit back."""
        if self.slot:
            old, _ = self.slot.take()
            self.slot.stats.dropped += 1
            self.session.return_credit(len(old.image))
        self.slot.put((msg, received_ms))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self._look_safely()

    async def at_turn_end(self) -> None:
        """The user's turn ended: a result from the freshest frame now (see the module
        docstring); nothing when no frame has come yet."""
        self.counters["turn_looks"] += 1
        if not await self._look_safely() and self.last_result is not None:
            self.session.emit(self.last_result)

    async def _look_safely(self) -> bool:
        try:
            return await self.look()
        except InvalidConfigError as e:
            self.counters["bad_frames"] += 1
            log.info("session %s: %s", self.session.id, e.message)
            return False

    async def look(self) -> bool:
        """Run the freshest new frame, if any, through the engine and emit the result; False
        when there was no new frame (or the engine failed)."""
        received = time.time() * 1000.0
        if self.video is not None and self.video.slot:
            frame = await self.video.take("rgb24")
            if frame is None or frame.image is None:
                return False
            image, ts = frame.image, frame.pts_ms
        elif self.slot:
            msg, received = self.slot.take()
            self.session.return_credit(len(msg.image))
            image = await asyncio.to_thread(decode_frame, msg)
            ts = msg.ts if msg.ts is not None else 0.0
        else:
            return False
        start = time.time() * 1000.0
        try:
            result: FaceDetections = await self.scheduler.submit(image)
        except EngineError as e:
            self.counters["errors"] += 1
            log.warning("session %s: vision failed: %s", self.session.id, e)
            return False
        timing = Timing(received=received, engine_start=start, engine_end=time.time() * 1000.0)
        detections = tuple(
            Detection(label="face", score=min(1.0, d.score), box=(d.x, d.y, d.width, d.height))
            for d in result.detections
        )
        self.latest = Sight(ts, len(detections), time.monotonic())
        self.counters["results"] += 1
        self.last_result = VisionResult(frame_ts=ts, detections=detections, timing=timing)
        self.session.emit(self.last_result)
        return True

    def context(self, max_age_s: float) -> str | None:
        """What the camera sees, for the LLM, if seen within ``max_age_s``."""
        sight = self.latest
        if sight is None or time.monotonic() - sight.seen_at > max_age_s:
            return None
        n = sight.faces
        faces = "no face" if n == 0 else "one face" if n == 1 else f"{n} faces"
        return f"The camera sees {faces} in view."

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "slot": self.slot.stats.as_dict()}
