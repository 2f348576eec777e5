"""``transcribe``: the audio lane alone (VAD -> streaming ASR -> events)."""

from __future__ import annotations

from tidegate.engines.registry import ASR, VAD
from tidegate.engines.service import EngineService

from ..audio import AudioLane
from ..config import LaneConfig
from ..mode import Mode, running
from ..port import SessionPort


def build(session: SessionPort, config: LaneConfig, engines: EngineService | None) -> Mode:
    engines = running(engines)
    return Mode(
        "transcribe",
        session,
        config.media,
        lambda media: [
            AudioLane(session, config.audio, engines.get(VAD), engines.get(ASR), engines.media)
        ],
    )
