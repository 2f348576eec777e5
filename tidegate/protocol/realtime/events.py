"""The client events of the Realtime dialect (GA names and shapes), parsed from JSON text.

:func:`parse_client_event` turns one WebSocket text frame into one frozen event below, or raises
:class:`~.errors.RealtimeError` naming what was wrong (the code, the JSON path as ``param``,
and the frame's ``event_id`` when it had a readable one). It raises nothing else. Dispatch on
``type`` goes through one table (:data:`PARSERS`); GA client events that tidegate does not serve
are in :data:`UNSUPPORTED_EVENTS` and are refused by name.

Every GA parameter is either taken, refused as unknown (a typo), or refused as unsupported
(a GA parameter that tidegate does not serve: MCP tools, prompt templates, tracing, ...):
docs/realtime.md has the table.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import orjson

from .audio import LEGACY_FORMAT_NAMES, AudioFormat
from .errors import RealtimeCode, RealtimeError

MAX_EVENT_BYTES = 4 * 1024 * 1024  # a 15 MiB append is OpenAI's bound; 4 MiB is ~58 s of pcm
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 8_192  # tidegate's input.text / response.create text
MAX_INSTRUCTIONS_CHARS = 32_768
MAX_TOOL_JSON_CHARS = 32_768
MAX_TOOLS_ITEMS = 32
MAX_METADATA_ITEMS = 16
MAX_INPUT_ITEMS = 64  # an out-of-band response's ``input`` items
MAX_DEPTH = 16  # JSON nesting of one event (tool schemas are the deep part)

SESSION_TYPES = ("realtime", "transcription")
MODALITIES = (("audio",), ("text",))
VAD_TYPES = ("server_vad", "semantic_vad")
EAGERNESS = ("low", "medium", "high", "auto")
TOOL_CHOICES = ("none", "auto", "required")
NOISE_REDUCTION = ("near_field", "far_field")

# -- events ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TurnDetection:
    """``audio.input.turn_detection`` (None in a config means manual commits)."""

    type: str  # server_vad | semantic_vad
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    idle_timeout_ms: int | None = None
    eagerness: str | None = None
    create_response: bool = True
    interrupt_response: bool = True

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "server_vad":
            for name in (
                "threshold",
                "prefix_padding_ms",
                "silence_duration_ms",
                "idle_timeout_ms",
            ):
                value = getattr(self, name)
                if value is not None:
                    out[name] = value
        elif self.eagerness is not None:
            out["eagerness"] = self.eagerness
        out["create_response"] = self.create_response
        out["interrupt_response"] = self.interrupt_response
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class Transcription:
    """``audio.input.transcription``: tidegate runs its own ASR whatever ``model`` says."""

    model: str | None = None
    language: str | None = None
    prompt: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in (
                ("model", self.model),
                ("language", self.language),
                ("prompt", self.prompt),
            )
            if v is not None
        }


@dataclasses.dataclass(frozen=True, slots=True)
class ClientEvent:
    event_id: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class SessionUpdate(ClientEvent):
    """``session.update``: ``patch`` maps SessionConfig field names to their new values."""

    patch: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class AudioAppend(ClientEvent):
    audio: bytes  # decoded from base64, in the session's input format


@dataclasses.dataclass(frozen=True, slots=True)
class AudioCommit(ClientEvent):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class AudioClear(ClientEvent):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class OutputAudioClear(ClientEvent):
    """``output_audio_buffer.clear``: WebRTC calls only (the translator refuses it over a
    WebSocket, where the client owns its playback)."""


@dataclasses.dataclass(frozen=True, slots=True)
class UserText:
    """A user message of ``input_text`` parts (joined by newlines)."""

    id: str | None
    text: str


@dataclasses.dataclass(frozen=True, slots=True)
class CallOutput:
    """A ``function_call_output`` item."""

    id: str | None
    call_id: str
    output: str


Item = UserText | CallOutput


@dataclasses.dataclass(frozen=True, slots=True)
class ItemReference:
    """An ``item_reference`` in a response's ``input``: an item of the conversation, by id."""

    id: str


@dataclasses.dataclass(frozen=True, slots=True)
class ItemCreate(ClientEvent):
    item: Item
    previous_item_id: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class ItemTruncate(ClientEvent):
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class ItemDelete(ClientEvent):
    item_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class ItemRetrieve(ClientEvent):
    item_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class ResponseCreate(ClientEvent):
    """``response.create``; ``options`` holds the per-response overrides that were given
    (instructions, output_modalities, max_output_tokens, tools, tool_choice, voice,
    output_format, metadata; ``conversation`` ``"none"``: out of band, with its ``input``, a
    tuple of items and item references, when given)."""

    options: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class ResponseCancel(ClientEvent):
    response_id: str | None


# -- checks ----------------------------------------------------------------------------------

_JSON_NAMES = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}


def _kind(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


class _Ctx:
    """The event being parsed: its id (for errors)."""

    __slots__ = ("event_id",)

    def __init__(self, event_id: str | None) -> None:
        self.event_id = event_id

    def fail(self, code: RealtimeCode, message: str, param: str | None) -> RealtimeError:
        return RealtimeError(code, message, param=param, event_id=self.event_id)

    def wrong_type(self, value: Any, path: str, expected: str) -> RealtimeError:
        return self.fail(
            RealtimeCode.INVALID_TYPE,
            f"Invalid type for '{path}': expected {expected}, but got {_kind(value)}.",
            path,
        )

    def obj(
        self,
        value: Any,
        path: str,
        allowed: frozenset[str],
        unsupported: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        if type(value) is not dict:
            raise self.wrong_type(value, path, "an object")
        for key in value:
            if key in unsupported:
                raise self.fail(
                    RealtimeCode.UNSUPPORTED_PARAMETER,
                    f"'{path}.{key}' is not supported by this server (see docs/realtime.md).",
                    f"{path}.{key}",
                )
            if key not in allowed:
                shown = key if len(key) <= 64 else key[:61] + "..."
                raise self.fail(
                    RealtimeCode.UNKNOWN_PARAMETER,
                    f"Unknown parameter: '{path}.{shown}'.",
                    f"{path}.{shown}",
                )
        return value

    def need(self, d: dict[str, Any], key: str, path: str) -> Any:
        if key not in d:
            raise self.fail(
                RealtimeCode.MISSING_PARAMETER,
                f"Missing required parameter: '{path}.{key}'.",
                f"{path}.{key}",
            )
        return d[key]

    def text(self, value: Any, path: str, max_chars: int, *, min_chars: int = 0) -> str:
        if type(value) is not str:
            raise self.wrong_type(value, path, "a string")
        if not min_chars <= len(value) <= max_chars:
            raise self.fail(
                RealtimeCode.INVALID_VALUE,
                f"Invalid '{path}': expected a string of {min_chars} to {max_chars} "
                f"characters, got {len(value)}.",
                path,
            )
        if "\x00" in value:
            raise self.fail(
                RealtimeCode.INVALID_VALUE,
                f"Invalid '{path}': the character U+0000 (NUL) is not allowed.",
                path,
            )
        return value

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> str:
        if type(value) is not str:
            raise self.wrong_type(value, path, "a string")
        if value not in choices:
            shown = value if len(value) <= 64 else value[:61] + "..."
            raise self.fail(
                RealtimeCode.INVALID_VALUE,
                f"Invalid value: '{shown}'. Supported values for '{path}' are: "
                + ", ".join(f"'{c}'" for c in choices)
                + ".",
                path,
            )
        return value

    def integer(self, value: Any, path: str, lo: int, hi: int) -> int:
        if type(value) is float and value.is_integer():
            value = int(value)
        if type(value) is not int:
            raise self.wrong_type(value, path, "an integer")
        if not lo <= value <= hi:
            raise self.fail(
                RealtimeCode.INVALID_VALUE,
                f"Invalid '{path}': expected an integer from {lo} to {hi}, got {value}.",
                path,
            )
        return value

    def number(self, value: Any, path: str, lo: float, hi: float) -> float:
        if type(value) not in (int, float):
            raise self.wrong_type(value, path, "a number")
        value = float(value)
        if not (math.isfinite(value) and lo <= value <= hi):
            raise self.fail(
                RealtimeCode.INVALID_VALUE,
                f"Invalid '{path}': expected a number from {lo:g} to {hi:g}.",
                path,
            )
        return value

    def flag(self, value: Any, path: str) -> bool:
        if type(value) is not bool:
            raise self.wrong_type(value, path, "a boolean")
        return value

    def ident(self, value: Any, path: str) -> str:
        return self.text(value, path, MAX_ID_CHARS, min_chars=1)

    def unsupported(self, path: str, why: str = "") -> RealtimeError:
        return self.fail(
            RealtimeCode.UNSUPPORTED_PARAMETER,
            f"'{path}' is not supported by this server{': ' + why if why else ''} "
            "(see docs/realtime.md).",
            path,
        )


# -- session ---------------------------------------------------------------------------------

_SESSION_KEYS = frozenset(
    {
        "type",
        "audio",
        "include",
        "instructions",
        "max_output_tokens",
        "model",
        "output_modalities",
        "tool_choice",
        "tools",
        "truncation",
        "parallel_tool_calls",
    }
)
_SESSION_UNSUPPORTED = frozenset({"prompt", "reasoning", "tracing"})
_TRANSCRIPTION_SESSION_KEYS = frozenset({"type", "audio", "include"})


def _format(c: _Ctx, value: Any, path: str) -> AudioFormat:
    if type(value) is str and value in LEGACY_FORMAT_NAMES:  # the beta API's names
        return LEGACY_FORMAT_NAMES[value]
    d = c.obj(value, path, frozenset({"type", "rate"}))
    mime = c.choice(d.get("type", "audio/pcm"), path + ".type", tuple(f.mime for f in AudioFormat))
    fmt = AudioFormat.from_mime(mime)
    assert fmt is not None
    if "rate" in d:
        if fmt is not AudioFormat.PCM16:
            raise c.fail(
                RealtimeCode.UNKNOWN_PARAMETER,
                f"Unknown parameter: '{path}.rate' (only audio/pcm has a rate).",
                path + ".rate",
            )
        c.integer(d["rate"], path + ".rate", 24_000, 24_000)
    return fmt


DEFAULT_VAD_THRESHOLD = 0.5  # server_vad's defaults (the API's): accepted, as they change nothing
DEFAULT_PREFIX_PADDING_MS = 300


def _turn_detection(c: _Ctx, value: Any, path: str) -> TurnDetection | None:
    if value is None:
        return None
    d = c.obj(
        value,
        path,
        frozenset(
            {
                "type",
                "threshold",
                "prefix_padding_ms",
                "silence_duration_ms",
                "idle_timeout_ms",
                "create_response",
                "interrupt_response",
                "eagerness",
            }
        ),
    )
    kind = c.choice(c.need(d, "type", path), path + ".type", VAD_TYPES)
    server_only = ("threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms")
    if kind == "semantic_vad":
        for name in server_only:
            if name in d:
                raise c.fail(
                    RealtimeCode.UNKNOWN_PARAMETER,
                    f"Unknown parameter: '{path}.{name}' (server_vad only).",
                    f"{path}.{name}",
                )
    elif "eagerness" in d:
        raise c.fail(
            RealtimeCode.UNKNOWN_PARAMETER,
            f"Unknown parameter: '{path}.eagerness' (semantic_vad only).",
            f"{path}.eagerness",
        )
    td = _read_turn_detection(c, d, kind, path)
    # What tidegate's turn-taking cannot honour is refused by name (docs/realtime.md):
    # its VAD's threshold and pre-roll are the server's.
    if td.threshold is not None and td.threshold != DEFAULT_VAD_THRESHOLD:
        raise c.unsupported(
            path + ".threshold",
            f"the VAD's threshold is the server's; only {DEFAULT_VAD_THRESHOLD} is accepted",
        )
    if td.prefix_padding_ms is not None and td.prefix_padding_ms != DEFAULT_PREFIX_PADDING_MS:
        raise c.unsupported(
            path + ".prefix_padding_ms",
            f"the VAD's pre-roll is the server's; only {DEFAULT_PREFIX_PADDING_MS} is accepted",
        )
    return td


def _read_turn_detection(c: _Ctx, d: dict[str, Any], kind: str, path: str) -> TurnDetection:
    return TurnDetection(
        type=kind,
        threshold=c.number(d["threshold"], path + ".threshold", 0.0, 1.0)
        if d.get("threshold") is not None
        else None,
        prefix_padding_ms=c.integer(d["prefix_padding_ms"], path + ".prefix_padding_ms", 0, 10_000)
        if d.get("prefix_padding_ms") is not None
        else None,
        silence_duration_ms=c.integer(
            d["silence_duration_ms"], path + ".silence_duration_ms", 0, 10_000
        )
        if d.get("silence_duration_ms") is not None
        else None,
        idle_timeout_ms=c.integer(d["idle_timeout_ms"], path + ".idle_timeout_ms", 5_000, 30_000)
        if d.get("idle_timeout_ms") is not None
        else None,
        eagerness=c.choice(d["eagerness"], path + ".eagerness", EAGERNESS)
        if d.get("eagerness") is not None
        else None,
        create_response=c.flag(d["create_response"], path + ".create_response")
        if d.get("create_response") is not None
        else True,
        interrupt_response=c.flag(d["interrupt_response"], path + ".interrupt_response")
        if d.get("interrupt_response") is not None
        else True,
    )


def _transcription(c: _Ctx, value: Any, path: str) -> Transcription | None:
    if value is None:
        return None
    d = c.obj(
        value,
        path,
        frozenset({"model", "language", "prompt"}),
        frozenset({"delay", "keywords", "languages"}),
    )
    return Transcription(
        model=c.text(d["model"], path + ".model", 128) if d.get("model") is not None else None,
        language=c.text(d["language"], path + ".language", 16)
        if d.get("language") is not None
        else None,
        prompt=c.text(d["prompt"], path + ".prompt", MAX_TEXT_CHARS)
        if d.get("prompt") is not None
        else None,
    )


def _noise_reduction(c: _Ctx, value: Any, path: str) -> str | None:
    if value is None:
        return None
    d = c.obj(value, path, frozenset({"type", "strength"}))
    if "strength" in d and d["strength"] is not None:
        c.number(d["strength"], path + ".strength", 0.0, 1.0)
    return c.choice(d.get("type", "near_field"), path + ".type", NOISE_REDUCTION)


def _voice(c: _Ctx, value: Any, path: str) -> str | None:
    if value is None:
        return None
    if type(value) is dict:
        d = c.obj(value, path, frozenset({"id"}))
        return c.text(c.need(d, "id", path), path + ".id", 128, min_chars=1)
    return c.text(value, path, 128, min_chars=1)


def _modalities(c: _Ctx, value: Any, path: str) -> tuple[str, ...]:
    if type(value) is not list:
        raise c.wrong_type(value, path, "an array")
    got = tuple(c.choice(v, f"{path}[{i}]", ("audio", "text")) for i, v in enumerate(value))
    if got not in MODALITIES:
        raise c.fail(
            RealtimeCode.INVALID_VALUE,
            f"Invalid '{path}': expected ['audio'] or ['text'] (not both, not none).",
            path,
        )
    return got


def _max_tokens(c: _Ctx, value: Any, path: str) -> int | str:
    if value == "inf" or value is None:
        return "inf"
    return c.integer(value, path, 1, 4096)


def _tools(c: _Ctx, value: Any, path: str) -> tuple[dict[str, Any], ...]:
    if type(value) is not list:
        raise c.wrong_type(value, path, "an array")
    if len(value) > MAX_TOOLS_ITEMS:
        raise c.fail(
            RealtimeCode.INVALID_VALUE, f"Invalid '{path}': at most {MAX_TOOLS_ITEMS} tools.", path
        )
    tools = []
    for i, tool in enumerate(value):
        p = f"{path}[{i}]"
        if type(tool) is dict and tool.get("type") == "mcp":
            raise c.unsupported(p, "MCP tools")
        d = c.obj(tool, p, frozenset({"type", "name", "description", "parameters"}))
        c.choice(d.get("type", "function"), p + ".type", ("function",))
        name = c.text(c.need(d, "name", p), p + ".name", 64, min_chars=1)
        out: dict[str, Any] = {"type": "function", "name": name}
        if d.get("description") is not None:
            out["description"] = c.text(d["description"], p + ".description", MAX_TOOL_JSON_CHARS)
        if d.get("parameters") is not None:
            if type(d["parameters"]) is not dict:
                raise c.wrong_type(d["parameters"], p + ".parameters", "an object (a JSON schema)")
            out["parameters"] = d["parameters"]
        tools.append(out)
    if len(orjson.dumps(tools)) > MAX_TOOL_JSON_CHARS:
        raise c.fail(
            RealtimeCode.INVALID_VALUE,
            f"Invalid '{path}': more than {MAX_TOOL_JSON_CHARS} bytes of JSON.",
            path,
        )
    return tuple(tools)


def _tool_choice(c: _Ctx, value: Any, path: str) -> str | dict[str, Any]:
    if type(value) is str:
        return c.choice(value, path, TOOL_CHOICES)
    if type(value) is dict and value.get("type") == "mcp":
        raise c.unsupported(path, "MCP tools")
    d = c.obj(value, path, frozenset({"type", "name"}))
    c.choice(c.need(d, "type", path), path + ".type", ("function",))
    return {
        "type": "function",
        "name": c.text(c.need(d, "name", path), path + ".name", 64, min_chars=1),
    }


def _session(c: _Ctx, value: Any, path: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise c.wrong_type(value, path, "an object")
    kind = c.choice(value.get("type", "realtime"), path + ".type", SESSION_TYPES)
    if kind == "transcription":
        d = c.obj(value, path, _TRANSCRIPTION_SESSION_KEYS)
    else:
        d = c.obj(value, path, _SESSION_KEYS, _SESSION_UNSUPPORTED)
    patch: dict[str, Any] = {"type": kind}
    if d.get("include"):
        raise c.unsupported(path + ".include", "transcription logprobs")
    if "instructions" in d:
        patch["instructions"] = c.text(
            d["instructions"], path + ".instructions", MAX_INSTRUCTIONS_CHARS
        )
    if "model" in d and d["model"] is not None:
        patch["model"] = c.text(d["model"], path + ".model", 128, min_chars=1)
    if d.get("output_modalities") is not None:
        patch["output_modalities"] = _modalities(
            c, d["output_modalities"], path + ".output_modalities"
        )
    if "max_output_tokens" in d:
        patch["max_output_tokens"] = _max_tokens(
            c, d["max_output_tokens"], path + ".max_output_tokens"
        )
    if d.get("tools") is not None:
        patch["tools"] = _tools(c, d["tools"], path + ".tools")
    if d.get("tool_choice") is not None:
        patch["tool_choice"] = _tool_choice(c, d["tool_choice"], path + ".tool_choice")
    if d.get("truncation") is not None and d["truncation"] != "auto":
        raise c.unsupported(path + ".truncation", "only 'auto' (the oldest messages are dropped)")
    if (
        d.get("parallel_tool_calls") is not None
        and c.flag(d["parallel_tool_calls"], path + ".parallel_tool_calls") is False
    ):
        raise c.unsupported(path + ".parallel_tool_calls", "a round may always hold several calls")
    if d.get("audio") is not None:
        audio = c.obj(
            d["audio"],
            path + ".audio",
            frozenset({"input", "output"}) if kind == "realtime" else frozenset({"input"}),
        )
        if audio.get("input") is not None:
            p = path + ".audio.input"
            inp = c.obj(
                audio["input"],
                p,
                frozenset({"format", "noise_reduction", "transcription", "turn_detection"}),
            )
            if inp.get("format") is not None:
                patch["input_format"] = _format(c, inp["format"], p + ".format")
            if "noise_reduction" in inp:
                patch["noise_reduction"] = _noise_reduction(
                    c, inp["noise_reduction"], p + ".noise_reduction"
                )
            if "transcription" in inp:
                patch["transcription"] = _transcription(
                    c, inp["transcription"], p + ".transcription"
                )
            if "turn_detection" in inp:
                patch["turn_detection"] = _turn_detection(
                    c, inp["turn_detection"], p + ".turn_detection"
                )
        if audio.get("output") is not None:
            p = path + ".audio.output"
            out = c.obj(audio["output"], p, frozenset({"format", "voice", "speed"}))
            if out.get("format") is not None:
                patch["output_format"] = _format(c, out["format"], p + ".format")
            if out.get("voice") is not None:
                patch["voice"] = _voice(c, out["voice"], p + ".voice")
            if out.get("speed") is not None:
                patch["speed"] = c.number(out["speed"], p + ".speed", 0.25, 1.5)
                if patch["speed"] != 1.0:
                    raise c.unsupported(p + ".speed", "the voice speaks at its own rate (1.0)")
    return patch


# -- per event -------------------------------------------------------------------------------


def _session_update(c: _Ctx, d: dict[str, Any]) -> SessionUpdate:
    c.obj(d, "event", frozenset({"type", "event_id", "session"}))
    return SessionUpdate(c.event_id, _session(c, c.need(d, "session", "event"), "session"))


def _append(c: _Ctx, d: dict[str, Any]) -> AudioAppend:
    c.obj(d, "event", frozenset({"type", "event_id", "audio"}))
    text = c.need(d, "audio", "event")
    if type(text) is not str:
        raise c.wrong_type(text, "audio", "a string (base64)")
    try:
        audio = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise c.fail(
            RealtimeCode.INVALID_AUDIO,
            "Invalid 'audio': not base64 text (RFC 4648, with padding).",
            "audio",
        ) from None
    if not audio:
        raise c.fail(RealtimeCode.INVALID_AUDIO, "Invalid 'audio': no audio.", "audio")
    return AudioAppend(c.event_id, audio)


def _commit(c: _Ctx, d: dict[str, Any]) -> AudioCommit:
    c.obj(d, "event", frozenset({"type", "event_id"}))
    return AudioCommit(c.event_id)


def _clear(c: _Ctx, d: dict[str, Any]) -> AudioClear:
    c.obj(d, "event", frozenset({"type", "event_id"}))
    return AudioClear(c.event_id)


def _output_clear(c: _Ctx, d: dict[str, Any]) -> OutputAudioClear:
    c.obj(d, "event", frozenset({"type", "event_id"}))
    return OutputAudioClear(c.event_id)


_ITEM_KEYS = frozenset(
    {"id", "type", "object", "status", "role", "content", "call_id", "output", "name", "arguments"}
)


def _item(c: _Ctx, value: Any, path: str) -> Item:
    d = c.obj(
        value,
        path,
        _ITEM_KEYS,
        frozenset({"approval_request_id", "approve", "reason", "server_label", "tools", "error"}),
    )
    item_id = c.ident(d["id"], path + ".id") if d.get("id") is not None else None
    if d.get("object") is not None:
        c.choice(d["object"], path + ".object", ("realtime.item",))
    if d.get("status") is not None:
        c.choice(d["status"], path + ".status", ("completed", "incomplete", "in_progress"))
    kind = c.choice(
        c.need(d, "type", path),
        path + ".type",
        (
            "message",
            "function_call",
            "function_call_output",
            "mcp_approval_response",
            "mcp_list_tools",
            "mcp_call",
            "mcp_approval_request",
        ),
    )
    if kind.startswith("mcp"):
        raise c.unsupported(path + ".type", "MCP items")
    if kind == "function_call":
        raise c.unsupported(
            path + ".type", "function_call items come from the model, not the client"
        )
    if kind == "function_call_output":
        call_id = c.text(c.need(d, "call_id", path), path + ".call_id", 64, min_chars=1)
        output = c.text(c.need(d, "output", path), path + ".output", MAX_TOOL_JSON_CHARS)
        return CallOutput(item_id, call_id, output)
    role = c.choice(c.need(d, "role", path), path + ".role", ("user", "assistant", "system"))
    if role != "user":
        raise c.unsupported(path + ".role", f"{role} messages cannot be added by the client")
    content = c.need(d, "content", path)
    if type(content) is not list:
        raise c.wrong_type(content, path + ".content", "an array")
    texts = []
    for i, part in enumerate(content):
        p = f"{path}.content[{i}]"
        pd = c.obj(
            part, p, frozenset({"type", "text", "audio", "transcript", "image_url", "detail"})
        )
        ptype = c.choice(
            pd.get("type", "input_text"), p + ".type", ("input_text", "input_audio", "input_image")
        )
        if ptype != "input_text":
            raise c.unsupported(p + ".type", f"{ptype} content in conversation.item.create")
        texts.append(c.text(c.need(pd, "text", p), p + ".text", MAX_TEXT_CHARS))
    text = "\n".join(texts)
    if not text or len(text) > MAX_TEXT_CHARS:
        raise c.fail(
            RealtimeCode.INVALID_VALUE,
            f"Invalid '{path}.content': expected 1 to {MAX_TEXT_CHARS} characters of input_text.",
            path + ".content",
        )
    return UserText(item_id, text)


def _input(c: _Ctx, value: Any, path: str) -> tuple[Item | ItemReference, ...]:
    """An out-of-band response's ``input``: user messages, function call outputs, and
    references to items of the conversation."""
    if type(value) is not list:
        raise c.wrong_type(value, path, "an array")
    if len(value) > MAX_INPUT_ITEMS:
        raise c.fail(
            RealtimeCode.INVALID_VALUE,
            f"Invalid '{path}': at most {MAX_INPUT_ITEMS} items.",
            path,
        )
    out: list[Item | ItemReference] = []
    for i, raw in enumerate(value):
        p = f"{path}[{i}]"
        if type(raw) is dict and raw.get("type") == "item_reference":
            d = c.obj(raw, p, frozenset({"type", "id"}))
            out.append(ItemReference(c.ident(c.need(d, "id", p), p + ".id")))
        else:
            out.append(_item(c, raw, p))
    return tuple(out)


def _item_create(c: _Ctx, d: dict[str, Any]) -> ItemCreate:
    c.obj(d, "event", frozenset({"type", "event_id", "item", "previous_item_id"}))
    prev = (
        c.ident(d["previous_item_id"], "previous_item_id")
        if d.get("previous_item_id") is not None
        else None
    )
    return ItemCreate(c.event_id, _item(c, c.need(d, "item", "event"), "item"), prev)


def _truncate(c: _Ctx, d: dict[str, Any]) -> ItemTruncate:
    c.obj(d, "event", frozenset({"type", "event_id", "item_id", "content_index", "audio_end_ms"}))
    return ItemTruncate(
        c.event_id,
        c.ident(c.need(d, "item_id", "event"), "item_id"),
        c.integer(c.need(d, "content_index", "event"), "content_index", 0, 2**31),
        c.integer(c.need(d, "audio_end_ms", "event"), "audio_end_ms", 0, 2**53),
    )


def _delete(c: _Ctx, d: dict[str, Any]) -> ItemDelete:
    c.obj(d, "event", frozenset({"type", "event_id", "item_id"}))
    return ItemDelete(c.event_id, c.ident(c.need(d, "item_id", "event"), "item_id"))


def _retrieve(c: _Ctx, d: dict[str, Any]) -> ItemRetrieve:
    c.obj(d, "event", frozenset({"type", "event_id", "item_id"}))
    return ItemRetrieve(c.event_id, c.ident(c.need(d, "item_id", "event"), "item_id"))


_RESPONSE_KEYS = frozenset(
    {
        "audio",
        "conversation",
        "input",
        "instructions",
        "max_output_tokens",
        "metadata",
        "output_modalities",
        "tool_choice",
        "tools",
        "parallel_tool_calls",
    }
)


def _response_create(c: _Ctx, d: dict[str, Any]) -> ResponseCreate:
    c.obj(d, "event", frozenset({"type", "event_id", "response"}))
    options: dict[str, Any] = {}
    if d.get("response") is None:
        return ResponseCreate(c.event_id, options)
    r = c.obj(d["response"], "response", _RESPONSE_KEYS, frozenset({"prompt", "reasoning"}))
    if r.get("conversation") is not None:
        conv = c.text(r["conversation"], "response.conversation", 128)
        if conv not in ("auto", "none"):
            raise c.unsupported(
                "response.conversation", "'auto' or 'none' (conversations are not named here)"
            )
        if conv == "none":
            options["conversation"] = "none"
    if r.get("input") is not None:
        if options.get("conversation") != "none":
            raise c.unsupported(
                "response.input",
                "an input of its own is for an out-of-band response (conversation: none)",
            )
        options["input"] = _input(c, r["input"], "response.input")
    if "instructions" in r:
        options["instructions"] = c.text(
            r["instructions"], "response.instructions", MAX_INSTRUCTIONS_CHARS
        )
    if r.get("output_modalities") is not None:
        options["output_modalities"] = _modalities(
            c, r["output_modalities"], "response.output_modalities"
        )
    if "max_output_tokens" in r:
        options["max_output_tokens"] = _max_tokens(
            c, r["max_output_tokens"], "response.max_output_tokens"
        )
    if r.get("tools") is not None:
        options["tools"] = _tools(c, r["tools"], "response.tools")
    if r.get("tool_choice") is not None:
        options["tool_choice"] = _tool_choice(c, r["tool_choice"], "response.tool_choice")
    if (
        r.get("parallel_tool_calls") is not None
        and c.flag(r["parallel_tool_calls"], "response.parallel_tool_calls") is False
    ):
        raise c.unsupported("response.parallel_tool_calls", "a round may always hold several calls")
    if r.get("metadata") is not None:
        meta = c.obj(
            r["metadata"],
            "response.metadata",
            frozenset(k for k in r["metadata"]) if type(r["metadata"]) is dict else frozenset(),
        )
        if len(meta) > MAX_METADATA_ITEMS:
            raise c.fail(
                RealtimeCode.INVALID_VALUE,
                f"Invalid 'response.metadata': at most {MAX_METADATA_ITEMS} keys.",
                "response.metadata",
            )
        options["metadata"] = {
            c.text(k, "response.metadata", 64): c.text(v, f"response.metadata.{k}", 512)
            for k, v in meta.items()
        }
    if r.get("audio") is not None:
        audio = c.obj(r["audio"], "response.audio", frozenset({"output"}))
        if audio.get("output") is not None:
            out = c.obj(audio["output"], "response.audio.output", frozenset({"format", "voice"}))
            if out.get("format") is not None:
                options["output_format"] = _format(c, out["format"], "response.audio.output.format")
            if out.get("voice") is not None:
                options["voice"] = _voice(c, out["voice"], "response.audio.output.voice")
    return ResponseCreate(c.event_id, options)


def _response_cancel(c: _Ctx, d: dict[str, Any]) -> ResponseCancel:
    c.obj(d, "event", frozenset({"type", "event_id", "response_id"}))
    rid = c.ident(d["response_id"], "response_id") if d.get("response_id") is not None else None
    return ResponseCancel(c.event_id, rid)


PARSERS: dict[str, Callable[[_Ctx, dict[str, Any]], ClientEvent]] = {
    "session.update": _session_update,
    "input_audio_buffer.append": _append,
    "input_audio_buffer.commit": _commit,
    "input_audio_buffer.clear": _clear,
    "conversation.item.create": _item_create,
    "conversation.item.truncate": _truncate,
    "conversation.item.delete": _delete,
    "conversation.item.retrieve": _retrieve,
    "response.create": _response_create,
    "response.cancel": _response_cancel,
    "output_audio_buffer.clear": _output_clear,
}
"""Every GA client event tidegate serves (fully or partly: docs/realtime.md)."""

UNSUPPORTED_EVENTS: dict[str, str] = {}
"""GA client events refused by name, with the reason (none at present)."""

OUTPUT_CLEAR_OVER_WS = (
    "it belongs to the WebRTC and SIP transports; over a WebSocket the client owns its "
    "playback buffer (stop playing, then conversation.item.truncate)"
)

CLIENT_EVENT_TYPES = frozenset(PARSERS) | frozenset(UNSUPPORTED_EVENTS)


def _event_id_of(obj: dict[str, Any]) -> str | None:
    v = obj.get("event_id")
    if type(v) is str and 0 < len(v) <= 512 and "\x00" not in v:
        return v
    return None


def _depth_ok(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return False
        if type(value) is dict:
            stack.extend((v, depth + 1) for v in value.values())
        elif type(value) is list:
            stack.extend((v, depth + 1) for v in value)
    return True


def parse_client_event(
    data: str | bytes, *, max_event_bytes: int = MAX_EVENT_BYTES, max_depth: int = MAX_DEPTH
) -> ClientEvent:
    """One text frame -> one client event; raises only :class:`RealtimeError`."""
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if size > max_event_bytes:
        raise RealtimeError(
            RealtimeCode.EVENT_TOO_LARGE,
            f"The event is {size} bytes; the limit is {max_event_bytes} bytes (max_event_bytes).",
        )
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise RealtimeError(
            RealtimeCode.INVALID_JSON, f"The event is not valid JSON: {str(e)[:120]}"
        ) from None
    if type(obj) is not dict:
        raise RealtimeError(
            RealtimeCode.INVALID_JSON, f"An event is a JSON object with a 'type'; got {_kind(obj)}."
        )
    c = _Ctx(_event_id_of(obj))
    if "event_id" in obj and c.event_id is None:
        raise RealtimeError(
            RealtimeCode.INVALID_VALUE,
            "Invalid 'event_id': expected a string of 1 to 512 characters.",
            param="event_id",
        )
    if not _depth_ok(obj, max_depth):
        raise c.fail(
            RealtimeCode.INVALID_VALUE, f"The event nests deeper than {max_depth} levels.", None
        )
    etype = obj.get("type")
    if type(etype) is not str:
        raise c.fail(
            RealtimeCode.MISSING_PARAMETER,
            "Missing required parameter: 'type' (a string naming the event).",
            "type",
        )
    parser = PARSERS.get(etype)
    if parser is None:
        if etype in UNSUPPORTED_EVENTS:
            raise c.fail(
                RealtimeCode.UNSUPPORTED_EVENT,
                f"'{etype}' is not supported by this server: {UNSUPPORTED_EVENTS[etype]}.",
                "type",
            )
        shown = etype if len(etype) <= 64 else etype[:61] + "..."
        raise c.fail(
            RealtimeCode.UNKNOWN_EVENT,
            f"Invalid value: '{shown}'. Supported values for 'type' are the GA client events: "
            + ", ".join(sorted(CLIENT_EVENT_TYPES))
            + ".",
            "type",
        )
    return parser(c, obj)
