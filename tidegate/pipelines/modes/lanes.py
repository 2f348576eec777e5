"""``lanes``: a mode the config composes by naming its lanes (``{"lanes": ["transcribe",
"vision"]}``), for a device that wants, say, transcripts and vision results but no replies.

The lanes a config may name are the rows of :data:`LANES`, each with the engines it needs; the
config check (``tidegate.sessions.config``) refuses an unknown name, a repeated one or an empty
list with ``invalid_field``, and lanes whose engines the server does not run with
``unsupported``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tidegate.engines.registry import ASR, VAD, VISION
from tidegate.engines.service import EngineService

from ..audio import AudioLane
from ..config import LaneConfig
from ..mode import Mode, running
from ..port import Lane, SessionPort
from ..vision import VisionLane


@dataclass(frozen=True, slots=True)
class LaneSpec:
    """A lane a config may name: the engines it needs and how it is built."""

    name: str
    needs: tuple[str, ...]
    build: Callable[[SessionPort, LaneConfig, EngineService], Lane]


def _audio(session: SessionPort, config: LaneConfig, engines: EngineService) -> Lane:
    return AudioLane(session, config.audio, engines.get(VAD), engines.get(ASR), engines.media)


def _vision(session: SessionPort, config: LaneConfig, engines: EngineService) -> Lane:
    return VisionLane(session, config.vision, engines.get(VISION), engines.media)


LANES: dict[str, LaneSpec] = {
    "transcribe": LaneSpec("transcribe", ("vad", "asr"), _audio),
    "vision": LaneSpec("vision", ("vision",), _vision),
}


def build(session: SessionPort, config: LaneConfig, engines: EngineService | None) -> Mode:
    names: Sequence[str] = session.config["lanes"]
    service = running(engines)
    return Mode(
        "lanes",
        session,
        config.media,
        lambda media: [LANES[name].build(session, config, service) for name in names],
    )
