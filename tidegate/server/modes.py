"""A session's mode, as the edge sees it: the config check and the lanes' configs.

``session.create`` names the mode in its config (``{"mode": "loopback"}``); a config without
one gets ``default_mode``. The modes and their lanes are the rows of
:mod:`tidegate.pipelines.registry` (public names: ``assistant``, ``transcribe``, ``loopback``);
a mode whose engines this server does not have is refused with ``unsupported``. The lanes'
configs are built here from the settings (:func:`lane_config`).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from tidegate.engines.asr.streaming import StreamingSettings
from tidegate.engines.errors import RequestError
from tidegate.engines.llm.tools import validate_tool_choice, validate_tools
from tidegate.pipelines.config import (
    AudioConfig,
    LaneConfig,
    LoopbackConfig,
    ReplyConfig,
    TurnConfig,
    VisionConfig,
)
from tidegate.pipelines.registry import MODES

from .errors import InvalidConfigError, UnsupportedError
from .rtc import media_config
from .session import Mode, Session
from .settings import Settings

if TYPE_CHECKING:
    from tidegate.engines.service import EngineService

MODE_NAMES = tuple(MODES)
CONFIG_KEYS = frozenset({"mode", "tools", "tool_choice"})
# Modes that run on engines: the engines each needs, by name (see server/engines.py).
ENGINE_MODES: dict[str, tuple[str, ...]] = {m.name: m.needs for m in MODES.values() if m.needs}


def _engines_named(needs: tuple[str, ...]) -> str:
    """("vad", "asr") -> "the VAD and ASR engines" (for a refusal)."""
    names = [n.upper() if len(n) <= 4 else n for n in needs]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"the {listed} engine{'s' if len(names) > 1 else ''}"


@functools.lru_cache(maxsize=8)
def lane_config(settings: Settings) -> LaneConfig:
    """The lanes' configs from the settings (the composition root's part of every mode)."""
    s = settings
    return LaneConfig(
        media=media_config(s),
        audio=AudioConfig(
            streaming=StreamingSettings(
                partial_interval_s=s.asr_partial_interval_s,
                max_segment_s=s.asr_max_segment_s,
                hard_max_segment_s=s.asr_hard_max_segment_s,
                partial_hold_s=s.asr_partial_hold_s,
            ),
            audio_buffer_s=s.audio_buffer_s,
            audio_silence_dbfs=s.audio_silence_dbfs,
            audio_lag_report_ms=s.audio_lag_report_ms,
            audio_max_ahead_s=s.audio_max_ahead_s,
            asr_max_pending_finals=s.asr_max_pending_finals,
        ),
        turns=TurnConfig(end_of_turn_s=s.assistant_end_of_turn_s),
        reply=ReplyConfig(
            system_prompt=s.assistant_system_prompt,
            max_reply_tokens=s.assistant_max_reply_tokens,
            max_history_messages=s.assistant_max_history_messages,
            max_pending_chunks=s.assistant_max_pending_chunks,
            max_tool_calls_items=s.assistant_max_tool_calls_items,
            tool_timeout_s=s.assistant_tool_timeout_s,
            audio_lead_s=s.assistant_audio_lead_s,
            vision_max_age_s=s.assistant_vision_max_age_s,
        ),
        vision=VisionConfig(
            interval_s=s.assistant_vision_interval_s, max_pixels=s.frame_max_pixels
        ),
        loopback=LoopbackConfig(
            echo_max_latency_ms=s.echo_max_latency_ms, max_pixels=s.frame_max_pixels
        ),
    )


def resolve_config(
    config: dict[str, Any] | None,
    default_mode: str,
    engines: EngineService | None = None,
    *,
    max_tools_items: int = 32,
    max_tools_bytes: int = 32_768,
) -> dict[str, Any]:
    """Validate a session config and fill in defaults; raises a RefusalError naming the problem.
    ``engines`` are the running engines: an engine mode needs its engines among them. ``tools``
    (and ``tool_choice``) are for the assistant mode on an LLM that can call them."""
    config = dict(config or {})
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise InvalidConfigError(
            f"session config: unknown key {unknown[0]!r}; expected only {sorted(CONFIG_KEYS)}"
        )
    mode = config.setdefault("mode", default_mode)
    if mode not in MODE_NAMES:
        raise InvalidConfigError(
            f"session config.mode: expected one of {list(MODE_NAMES)}, got {mode!r}"
        )
    needs = MODES[mode].needs
    running = set(engines.schedulers) | set(engines.batchers) if engines is not None else set()
    if not set(needs) <= running:
        raise UnsupportedError(
            f"mode {mode!r} needs {_engines_named(needs)}, which this server does not "
            f"run (start it with engines {','.join(needs)}); use mode 'loopback'"
        )
    if "tools" in config or "tool_choice" in config:
        _resolve_tools(config, engines, max_tools_items, max_tools_bytes)
    return config


def _resolve_tools(
    config: dict[str, Any], engines: EngineService | None, max_items: int, max_bytes: int
) -> None:
    """Validate ``tools`` / ``tool_choice`` in place (normalised to the Chat Completions
    form)."""
    if config["mode"] != "assistant":
        raise InvalidConfigError("session config.tools: only the assistant mode calls tools")
    try:
        tools = validate_tools(config.get("tools", []), max_items=max_items, max_bytes=max_bytes)
        choice = validate_tool_choice(config.get("tool_choice"), tools)
    except RequestError as e:
        raise InvalidConfigError(f"session config.{e}") from None
    config["tools"] = list(tools)
    if choice is None:
        config.pop("tool_choice", None)
    else:
        config["tool_choice"] = choice
    llm = engines.batchers.get("llm") if engines is not None else None
    if tools and llm is not None and not llm.supports_tools:
        raise UnsupportedError(
            "session config.tools: the local LLM cannot call tools (it has no grammar for "
            "them); run the LLM on OpenAI-compatible providers (llm_runtime=providers)"
        )


def start_mode(session: Session, engines: EngineService | None = None) -> Mode:
    """Build the session's mode from its registry row (resolve_config checked its engines)."""
    spec = MODES[session.config["mode"]]
    return spec.build(session, lane_config(session.settings), engines)
