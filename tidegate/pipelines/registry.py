"""The modes: one row each, naming the engines a mode needs, those it uses when the server runs
them, its lanes, and the function that builds it.

A new mode is one module under ``pipelines/modes/`` and one row here. The modes never import
this module; its users (the session runtime, admission, the config check) read the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tidegate.engines.service import EngineService

from .config import LaneConfig
from .mode import Mode
from .modes import assistant, lanes, loopback, transcribe, vision
from .port import SessionPort

Build = Callable[[SessionPort, LaneConfig, EngineService | None], Mode]


@dataclass(frozen=True, slots=True)
class ModeSpec:
    """One row: a mode's public name, its engines and lanes, and how it is built."""

    name: str
    build: Build
    lanes: tuple[str, ...]
    needs: tuple[str, ...] = ()  # engines it cannot run without
    optional: tuple[str, ...] = ()  # engines it uses when the server runs them
    summary: str = ""  # what it does, for docs and errors


def _rows(*specs: ModeSpec) -> dict[str, ModeSpec]:
    return {spec.name: spec for spec in specs}


MODES: dict[str, ModeSpec] = _rows(
    ModeSpec(
        "assistant",
        assistant.build,
        lanes=("audio", "vision", "reply", "turns"),
        needs=("vad", "asr", "llm", "tts"),
        optional=("vision", "turn"),
        summary="spoken replies: VAD, ASR, LLM and TTS; vision and semantic end of turn when "
        "the server runs them",
    ),
    ModeSpec(
        "transcribe",
        transcribe.build,
        lanes=("audio",),
        needs=("vad", "asr"),
        summary="VAD and streaming ASR",
    ),
    ModeSpec(
        "loopback",
        loopback.build,
        lanes=("loopback",),
        summary="echo, for connectivity checks, tests and the bench",
    ),
    ModeSpec(
        "vision", vision.build, lanes=("vision",), needs=("vision",), summary="frames in, faces out"
    ),
    ModeSpec("lanes", lanes.build, lanes=(), summary="the lanes the config names (LANES)"),
)
#: the lanes a config may name directly (``{"lanes": [...]}``: the ``lanes`` mode)
LANES = lanes.LANES
