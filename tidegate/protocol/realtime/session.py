"""A Realtime session's effective configuration, its GA wire form, and its tidegate config.

:class:`SessionConfig` is what ``session.created`` / ``session.updated`` show. A
``session.update`` is a patch (:class:`~.events.SessionUpdate`) applied with :meth:`apply`.
:meth:`SessionConfig.tidegate_config` is the config of tidegate's own ``session.create`` /
``session.update``: the mode, plus only those keys whose Realtime value differs from the
default (so a client that changes nothing asks tidegate for nothing it might not offer). The
mapping is the table in docs/realtime.md; the session runtime decides what it serves and
refuses the rest (its ``error`` comes back to the client with the ``event_id`` that asked).
Kept by the translator and never sent: ``model`` (echoed), the audio formats (converted at the
edge), ``transcription`` (tidegate always recognises speech; this only gates the transcription
events, and its model and prompt are shown but not applied) except its ``language``, which
becomes tidegate's session ``language``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .audio import AudioFormat
from .events import Transcription, TurnDetection

DEFAULT_MODEL = "tidegate"
DEFAULT_VOICE = "default"
DEFAULT_TURN_DETECTION = TurnDetection(type="server_vad")
MODES = {"realtime": "assistant", "transcription": "transcribe"}


@dataclasses.dataclass(frozen=True, slots=True)
class SessionConfig:
    type: str = "realtime"  # realtime | transcription
    model: str = DEFAULT_MODEL
    instructions: str = ""
    output_modalities: tuple[str, ...] = ("audio",)
    input_format: AudioFormat = AudioFormat.PCM16
    output_format: AudioFormat = AudioFormat.PCM16
    turn_detection: TurnDetection | None = DEFAULT_TURN_DETECTION
    transcription: Transcription | None = None
    noise_reduction: str | None = None
    voice: str = DEFAULT_VOICE
    speed: float = 1.0
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] = "auto"
    max_output_tokens: int | str = "inf"

    def apply(self, patch: dict[str, Any]) -> SessionConfig:
        return dataclasses.replace(self, **patch)

    @property
    def mode(self) -> str:
        return MODES[self.type]

    @property
    def audio_out(self) -> bool:
        return self.output_modalities == ("audio",)

    def to_wire(self) -> dict[str, Any]:
        """The GA session object (RealtimeSessionCreateRequest or the transcription one)."""
        audio_in: dict[str, Any] = {
            "format": self.input_format.to_wire(),
            "noise_reduction": None
            if self.noise_reduction is None
            else {"type": self.noise_reduction},
            "transcription": None if self.transcription is None else self.transcription.to_wire(),
            "turn_detection": None
            if self.turn_detection is None
            else self.turn_detection.to_wire(),
        }
        if self.type == "transcription":
            return {"type": "transcription", "audio": {"input": audio_in}}
        return {
            "type": "realtime",
            "model": self.model,
            "instructions": self.instructions,
            "output_modalities": list(self.output_modalities),
            "max_output_tokens": self.max_output_tokens,
            "tools": [dict(t) for t in self.tools],
            "tool_choice": self.tool_choice,
            "truncation": "auto",
            "audio": {
                "input": audio_in,
                "output": {
                    "format": self.output_format.to_wire(),
                    "voice": self.voice,
                    "speed": self.speed,
                },
            },
        }

    def tidegate_config(self) -> dict[str, Any]:
        """tidegate's session config for this Realtime config (see the module docstring)."""
        base = SessionConfig(type=self.type)
        out: dict[str, Any] = {"mode": self.mode}
        for name, value in _tidegate_values(self).items():
            if value != _tidegate_values(base)[name]:
                out[name] = value
        return out


def tool_choice_for_tidegate(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    """Realtime's ``{"type": "function", "name"}`` is chat's ``{"type", "function": {"name"}}``."""
    if isinstance(choice, dict):
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


def _tidegate_values(c: SessionConfig) -> dict[str, Any]:
    """The tidegate config keys, by name, with their values (docs/realtime.md, "Mapping")."""
    return {
        "instructions": c.instructions,
        "voice": c.voice,
        "speed": c.speed,
        "output_modalities": list(c.output_modalities),
        "max_output_tokens": c.max_output_tokens,
        "tools": [dict(t) for t in c.tools],
        "tool_choice": tool_choice_for_tidegate(c.tool_choice),
        "turn_detection": None if c.turn_detection is None else c.turn_detection.to_wire(),
        "noise_reduction": c.noise_reduction,
        # the language the user speaks (tidegate's session ``language``; absent: detected)
        "language": None if c.transcription is None else c.transcription.language,
    }
