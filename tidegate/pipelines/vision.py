"""The vision lane: the freshest frame, looked at by the vision engine at a set rate.

The ``vision`` mode is this lane alone (a camera or edge device); the ``assistant`` adds it when
the server runs a vision engine, and its turn-taking asks it for a look at each turn's end.

Frames come from WS-only ``input.frame`` (jpeg, png, rgb24, i420) or from the WebRTC video
track (:class:`~tidegate.media.VideoInbox`). Both wait in a latest-only slot (DESIGN.md,
"inbound video": one frame; a newer one replaces an older one nobody took, counted as dropped;
the replaced upload's credit goes back at once). The lane looks at a frame when it arrives: it
takes the freshest frame, decodes it to RGB on the engines' bounded media worker pool, runs it
through the shared vision scheduler (batched across sessions) and emits ``vision.result``
naming the frame's media time. So when the engine is idle a result leaves one decode and one
model run after its frame arrived; while a look runs, newer frames replace each other and the
freshest is looked at next (latest wins: the delay cannot grow).

``interval_s`` caps the rate: one look per ``interval_s`` of the time between looks, on
average, counted by a token bucket of ``LOOK_BURST`` looks that earns nothing while a look runs
(so the lane backs off when the engine or the machine is busy: a look that takes long spaces
the next one out, leaving the CPU to decoding and the other sessions); a look may come up to
``LOOK_EARLY`` of an interval before it is earned, the debt carried (so a camera whose frames
come one interval apart, give or take its jitter, gets every frame looked at). A frame that
arrives when no look is left waits: the first frame to arrive once a look is earned is looked
at at once (a fresh frame, not the one that waited); if none comes within one more
``interval_s`` (the camera stopped), the one that waited is. ``interval_s`` 0: no looks but
at a turn's end. The latest result is kept for whoever wants it as context (the assistant's
LLM).

At the end of each user turn the assistant asks for a look at once (:meth:`VisionLane.at_turn_end`),
besides the set rate: the freshest frame is run if a new one is waiting, otherwise the result of
the freshest frame (already looked at) is sent again, so that every turn has a ``vision.result``
naming the frame it came from, and the LLM's context is the freshest sight.

A WS-only frame's header is read when it arrives (:mod:`tidegate.media.images`): one that is not
the format it names, or larger than ``frame_max_pixels``, is refused with ``invalid_field``
before any decoder sees it. A frame whose body then fails to decode gets an ``error``
(``invalid_field``, ``ref`` the message's id) when the lane comes to it; one that finds the
worker pool full is dropped (counted as ``decode_refused``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tidegate.engines.errors import EngineError
from tidegate.engines.scheduler import Scheduler
from tidegate.engines.vision import FaceDetections
from tidegate.engines.workers import WorkerPool
from tidegate.media import MediaPeer, VideoInbox
from tidegate.media.images import ImageError, ImageHeader, decode_image, read_header
from tidegate.protocol import ErrorCode, LatestSlot
from tidegate.protocol.messages import Detection, Error, InputFrame, Timing, VisionResult

from .config import VisionConfig
from .errors import InvalidConfigError
from .port import Handler, SessionPort

log = logging.getLogger(__name__)

RgbArray = np.ndarray[Any, np.dtype[np.uint8]]
LOOK_BURST = 2.0  # looks the rate's token bucket holds (see the module docstring)
#: how early (a fraction of an interval) a look may come, its debt carried: frames that come
#: exactly one interval apart, give or take the camera's jitter, are all looked at
LOOK_EARLY = 0.1


def check_frame(msg: InputFrame, max_pixels: int) -> ImageHeader:
    """An ``input.frame``'s header, read without decoding it (cheap: on the event loop).
    Raises InvalidConfigError (``invalid_field``) naming what is wrong: not the format the
    message names, a format we do not decode, or more than ``max_pixels`` pixels."""
    try:
        return read_header(
            msg.image, msg.encoding, max_pixels=max_pixels, width=msg.width, height=msg.height
        )
    except ImageError as e:
        raise InvalidConfigError(e.message) from None


@dataclass(frozen=True, slots=True)
class Sight:
    """The latest vision result: the frame's media time, its faces, when it was seen."""

    frame_ts: float
    faces: int
    seen_at: float  # time.monotonic()


class VisionLane:
    """See the module docstring."""

    name = "vision"

    def __init__(
        self,
        session: SessionPort,
        config: VisionConfig,
        scheduler: Scheduler[Any, Any],
        workers: WorkerPool,
    ) -> None:
        self.session = session
        self.scheduler = scheduler
        self.interval_s = config.interval_s
        self.workers = workers
        self.max_pixels = config.max_pixels
        self.slot: LatestSlot[tuple[InputFrame, ImageHeader, float]] = LatestSlot("vision_in")
        self.video: VideoInbox | None = None
        self._bell = asyncio.Event()  # a new frame arrived (input.frame or the video track)
        self.latest: Sight | None = None
        self.last_result: VisionResult | None = None
        self.counters = {
            "results": 0,
            "errors": 0,
            "bad_frames": 0,
            "decode_refused": 0,
            "turn_looks": 0,
        }
        if self.interval_s > 0:
            session.spawn(self.run(), "vision")

    def handlers(self) -> Mapping[type[Any], Handler]:
        return {InputFrame: self._frame}

    async def _frame(self, msg: InputFrame) -> None:
        self.push(msg, time.time() * 1000.0)

    def start_media(self, peer: MediaPeer) -> None:
        video = peer.video_in
        if video is not None and video is not self.video:
            self.video = video
            if self.interval_s > 0:
                self.session.spawn(self._follow(video), "vision-video")

    async def _follow(self, video: VideoInbox) -> None:
        """Ring the lane's bell at each frame of the video track, until the track ends."""
        seen = 0
        while (seen := await video.next_frame(seen)) >= 0:
            self._bell.set()

    def push(self, msg: InputFrame, received_ms: float) -> None:
        """A WS-only frame: its header is checked at once (a bad one is refused with
        ``invalid_field``, before anything decodes it); the newest one waits; one it replaces
        gives its credit back."""
        try:
            header = check_frame(msg, self.max_pixels)
        except InvalidConfigError:
            self.counters["bad_frames"] += 1
            raise
        if self.slot:
            old, _, _ = self.slot.take()
            self.slot.stats.dropped += 1
            self.session.return_credit(len(old.image))
        self.slot.put((msg, header, received_ms))
        self._bell.set()

    async def run(self) -> None:
        """Look at frames as they arrive, at most one look per ``interval_s`` on average (see
        the module docstring)."""
        interval = self.interval_s
        tokens, earned_at = LOOK_BURST, time.monotonic()
        bell = self._bell
        ready = 1.0 - LOOK_EARLY  # tokens a look needs
        while True:
            await bell.wait()
            now = time.monotonic()
            tokens = min(LOOK_BURST, tokens + (now - earned_at) / interval)
            earned_at = now
            if tokens < ready:
                # Rate-capped: this frame waits. Once a look is earned, the next frame to
                # arrive is looked at at once; if none comes within one more interval, this
                # one (the camera stopped).
                await asyncio.sleep((ready - tokens) * interval)
                bell.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await bell.wait()
                now = time.monotonic()
                tokens = min(LOOK_BURST, tokens + (now - earned_at) / interval)
                earned_at = now
            bell.clear()
            if await self._look_safely():
                tokens = max(-LOOK_EARLY, tokens - 1.0)
                earned_at = time.monotonic()  # nothing is earned while a look runs

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
            msg, header, received = self.slot.take()
            self.session.return_credit(len(msg.image))
            try:
                image = await self.workers.run(decode_image, msg.image, header)
            except ImageError as e:  # the header was fine, the rest is not: the client's
                self.session.emit(
                    Error(code=ErrorCode.INVALID_FIELD.value, message=e.message, ref=msg.id)
                )
                raise InvalidConfigError(e.message) from None
            except EngineError as e:  # no worker free: this frame is dropped (counted)
                self.counters["decode_refused"] += 1
                log.info("session %s: frame not decoded: %s", self.session.id, e)
                return False
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
        return {"vision": {**self.counters, "slot": self.slot.stats.as_dict()}}

    async def close(self) -> None:
        """Nothing of its own to close: its task is the session's, the video the media's."""
