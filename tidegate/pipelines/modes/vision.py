"""``vision``: a camera or edge device streams frames (WebRTC video or ``input.frame``) and gets
``vision.result`` as frames arrive, at most one per ``assistant_vision_interval_s`` on average
(pipelines/vision.py). The vision lane
alone: no ASR, LLM or TTS is needed or loaded."""

from __future__ import annotations

from tidegate.engines.registry import VISION
from tidegate.engines.service import EngineService

from ..config import LaneConfig
from ..mode import Mode, running
from ..port import SessionPort
from ..vision import VisionLane


def build(session: SessionPort, config: LaneConfig, engines: EngineService | None) -> Mode:
    engines = running(engines)
    return Mode(
        "vision",
        session,
        config.media,
        lambda media: [VisionLane(session, config.vision, engines.get(VISION), engines.media)],
    )
