"""A Realtime session's effective configuration, its GA wire form, and its tidegate config.

:class:`SessionConfig` is what ``session.created`` / ``session.updated`` show. A
``session.update`` is a patch (:class:`~.events.SessionUpdate`) applied with :meth:`apply`.
:meth:`SessionConfig.tidegate_config` is the config of tidegate's own ``session.create`` /
``session.update``: the mode, plus only those keys whose Realtime value differs from the
default (so a client that changes nothing asks tidegate for nothing it might not offer). The
mapping is the table in docs/realtime.md; the session runtime decides what it serves and
refuses the rest (its ``error`` comes back to the client with the ``event_id`` that asked).
Kept by the translator and never sent: ``model`` (echoed), the audio formats (converted at the
edge), ``transcription`` (tidegate always recognises speech; this gates the transcription
events; its ``language`` is tidegate's config ``language``, its model and prompt are shown but
not applied).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .audio import AudioFormat
from .events import Transcription, TurnDetection

DEFAULT_MODEL = "tidegate"
DEFAULT_VOICE = "default"
#: OpenAI's own voice names: a client written for the hosted API sends one of them (the SDK's
#: examples do), so each is taken as tidegate's ``default`` voice (the server's TTS model)
#: rather than refused; session.updated shows the name the client gave.
OPENAI_VOICES = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)


def tidegate_voice(name: str) -> str:
    """The tidegate voice for a Realtime voice name: OpenAI's names are the default voice."""
    return DEFAULT_VOICE if name in OPENAI_VOICES else name


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
        base = _tidegate_values(SessionConfig(type=self.type))
        out: dict[str, Any] = {"mode": self.mode}
        for name, value in _tidegate_values(self).items():
            if value != base[name]:
                out[name] = value
        return out

    def tidegate_update(self, previous: SessionConfig) -> dict[str, Any]:
        """tidegate's ``session.update`` config from ``previous`` to this one: the keys whose
        value changed, a key set back to its default included (tidegate merges updates)."""
        before = _tidegate_values(previous)
        out: dict[str, Any] = {"mode": self.mode}
        for name, value in _tidegate_values(self).items():
            if value != before[name]:
                out[name] = value
        return out


def tool_choice_for_tidegate(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    """Realtime's ``{"type": "function", "name"}`` is chat's ``{"type", "function": {"name"}}``."""
    if isinstance(choice, dict):
        return {"type": "function", "function": {"name": choice["name"]}}
    return choice


#: ``semantic_vad`` eagerness -> tidegate's ``turn.max_wait_s`` (how long a pause the turn
#: model judged incomplete waits for more speech): the API's documented maxima for low,
#: medium and high; ``auto`` keeps the server's ``turn_max_wait_s``
EAGERNESS_MAX_WAIT_S = {"low": 8.0, "medium": 4.0, "high": 2.0}


def turn_for_tidegate(td: TurnDetection | None) -> dict[str, Any]:
    """``audio.input.turn_detection`` -> tidegate's ``turn`` config (docs/realtime.md):
    ``null`` is the manual policy; ``server_vad`` keeps the server's policy unless it sets
    ``silence_duration_ms`` (then the silence policy, waiting that long after tidegate's VAD
    reports the end of speech); ``semantic_vad`` is the semantic policy (Smart Turn), its
    eagerness a maximum wait; ``idle_timeout_ms`` (server_vad) is ``idle_timeout_s``;
    ``create_response`` / ``interrupt_response`` false are ``respond`` / ``interrupt``
    false."""
    if td is None:
        return {"policy": "manual"}
    turn: dict[str, Any] = {}
    if td.type == "semantic_vad":
        turn["policy"] = "semantic"
        if td.eagerness in EAGERNESS_MAX_WAIT_S:
            turn["max_wait_s"] = EAGERNESS_MAX_WAIT_S[td.eagerness]
    elif td.silence_duration_ms is not None:
        turn["policy"] = "silence"
        turn["end_of_turn_s"] = td.silence_duration_ms / 1000.0
    if td.idle_timeout_ms is not None:
        turn["idle_timeout_s"] = td.idle_timeout_ms / 1000.0
    if not td.create_response:
        turn["respond"] = False
    if not td.interrupt_response:
        turn["interrupt"] = False
    return turn


def _tidegate_values(c: SessionConfig) -> dict[str, Any]:
    """The tidegate config keys, by name, with their values (docs/realtime.md, "Mapping")."""
    audio: dict[str, Any] = {}
    if c.noise_reduction is not None:  # near_field / far_field: the canceller's suppressor
        audio["noise_suppression"] = True
    language = c.transcription.language if c.transcription is not None else None
    if c.type == "transcription":
        return {"audio": audio, "language": language}
    return {
        "language": language,
        "instructions": c.instructions,
        "voice": tidegate_voice(c.voice),
        "output_modalities": list(c.output_modalities),
        "max_output_tokens": c.max_output_tokens,
        "tools": [dict(t) for t in c.tools],
        "tool_choice": tool_choice_for_tidegate(c.tool_choice),
        "turn": turn_for_tidegate(c.turn_detection),
        "audio": audio,
    }
