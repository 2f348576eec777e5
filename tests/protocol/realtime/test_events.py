"""Parsing the GA client events: every one taken or refused by name; bad input named exactly."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.realtime import RealtimeClientEvent
from pydantic import TypeAdapter

from tidegate.protocol.realtime import (
    CLIENT_EVENT_TYPES,
    PARSERS,
    UNSUPPORTED_EVENTS,
    AudioFormat,
    RealtimeCode,
    RealtimeError,
    parse_client_event,
)
from tidegate.protocol.realtime import events as ev

from .samples import EXAMPLES, GA_CLIENT_EVENTS, frame

CLIENT_EVENTS: TypeAdapter[Any] = TypeAdapter(RealtimeClientEvent)


def refused(data: str | bytes, **kwargs: Any) -> RealtimeError:
    with pytest.raises(RealtimeError) as info:
        parse_client_event(data, **kwargs)
    return info.value


def test_the_catalogue_is_the_sdk_union() -> None:
    """The events served plus those refused by name are exactly the SDK's GA client events."""
    assert CLIENT_EVENT_TYPES == GA_CLIENT_EVENTS
    assert not set(PARSERS) & set(UNSUPPORTED_EVENTS)


@pytest.mark.parametrize("etype", sorted(GA_CLIENT_EVENTS))
def test_every_ga_event_parses_or_is_refused_by_name(etype: str) -> None:
    """The example (valid for the SDK) parses, or is refused with unsupported_event naming it."""
    example = EXAMPLES[etype]
    CLIENT_EVENTS.validate_python(example)  # the example itself is GA
    if etype in UNSUPPORTED_EVENTS:
        e = refused(frame(example))
        assert e.realtime_code == RealtimeCode.UNSUPPORTED_EVENT
        assert etype in e.message and e.event_id == example["event_id"]
    else:
        event = parse_client_event(frame(example))
        assert event.event_id == example["event_id"]


def test_session_update_patch() -> None:
    """session.update yields a patch of the fields given, formats and VAD included."""
    event = parse_client_event(frame(EXAMPLES["session.update"]))
    assert isinstance(event, ev.SessionUpdate)
    p = event.patch
    assert p["instructions"] == "Be brief."
    assert p["input_format"] is AudioFormat.PCM16 and p["output_format"] is AudioFormat.PCMU
    assert p["turn_detection"] == ev.TurnDetection(type="server_vad", silence_duration_ms=300)
    assert p["voice"] == "alloy" and "tools" not in p


@pytest.mark.parametrize(
    ("session", "expected"),
    [
        (
            {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
            {"turn_detection": None},
        ),
        (
            {
                "type": "realtime",
                "audio": {
                    "input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}
                },
            },
            {"turn_detection": ev.TurnDetection(type="semantic_vad", eagerness="low")},
        ),
        (
            {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcma"}}}},
            {"output_format": AudioFormat.PCMA},
        ),
        (
            {"type": "realtime", "audio": {"input": {"format": "g711_ulaw"}}},
            {"input_format": AudioFormat.PCMU},
        ),
        ({"type": "realtime", "output_modalities": ["text"]}, {"output_modalities": ("text",)}),
        ({"type": "realtime", "max_output_tokens": "inf"}, {"max_output_tokens": "inf"}),
        (
            {
                "type": "realtime",
                "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
                "tool_choice": {"type": "function", "name": "f"},
            },
            {
                "tools": ({"type": "function", "name": "f", "parameters": {"type": "object"}},),
                "tool_choice": {"type": "function", "name": "f"},
            },
        ),
        (
            {
                "type": "transcription",
                "audio": {"input": {"transcription": {"model": "whisper-1", "language": "en"}}},
            },
            {"transcription": ev.Transcription(model="whisper-1", language="en")},
        ),
    ],
)
def test_session_fields(session: dict[str, Any], expected: dict[str, Any]) -> None:
    """Each session field lands in the patch under its SessionConfig name (the beta API's
    format names are accepted as aliases)."""
    if "g711_" not in frame(session):
        CLIENT_EVENTS.validate_python({"type": "session.update", "session": session})
    event = parse_client_event(frame({"type": "session.update", "session": session}))
    assert isinstance(event, ev.SessionUpdate)
    for key, value in expected.items():
        assert event.patch[key] == value


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        (
            {
                "type": "session.update",
                "event_id": "e",
                "session": {"type": "realtime", "instructions": 5},
            },
            RealtimeCode.INVALID_TYPE,
            "session.instructions",
        ),
        (
            {
                "type": "session.update",
                "event_id": "e",
                "session": {"type": "realtime", "colour": "red"},
            },
            RealtimeCode.UNKNOWN_PARAMETER,
            "session.colour",
        ),
        (
            {
                "type": "session.update",
                "event_id": "e",
                "session": {"type": "realtime", "tracing": "auto"},
            },
            RealtimeCode.UNSUPPORTED_PARAMETER,
            "session.tracing",
        ),
        (
            {
                "type": "session.update",
                "event_id": "e",
                "session": {"type": "realtime", "output_modalities": ["text", "audio"]},
            },
            RealtimeCode.INVALID_VALUE,
            "session.output_modalities",
        ),
        (
            {
                "type": "session.update",
                "event_id": "e",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
                },
            },
            RealtimeCode.INVALID_VALUE,
            "session.audio.input.format.rate",
        ),
        (
            {
                "type": "session.update",
                "event_id": "e",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}},
                },
            },
            RealtimeCode.INVALID_VALUE,
            "session.audio.input.turn_detection.threshold",
        ),
        (
            {
                "type": "session.update",
                "event_id": "e",
                "session": {"type": "realtime", "tools": [{"type": "mcp", "server_label": "x"}]},
            },
            RealtimeCode.UNSUPPORTED_PARAMETER,
            "session.tools[0]",
        ),
        (
            {"type": "session.update", "event_id": "e"},
            RealtimeCode.MISSING_PARAMETER,
            "event.session",
        ),
        (
            {"type": "input_audio_buffer.append", "event_id": "e", "audio": "not base64!"},
            RealtimeCode.INVALID_AUDIO,
            "audio",
        ),
        (
            {"type": "input_audio_buffer.append", "event_id": "e", "audio": 7},
            RealtimeCode.INVALID_TYPE,
            "audio",
        ),
        (
            {
                "type": "conversation.item.create",
                "event_id": "e",
                "item": {
                    "type": "message",
                    "role": "system",
                    "content": [{"type": "input_text", "text": "x"}],
                },
            },
            RealtimeCode.UNSUPPORTED_PARAMETER,
            "item.role",
        ),
        (
            {
                "type": "conversation.item.create",
                "event_id": "e",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_audio", "audio": "AAAA"}],
                },
            },
            RealtimeCode.UNSUPPORTED_PARAMETER,
            "item.content[0].type",
        ),
        (
            {
                "type": "conversation.item.truncate",
                "event_id": "e",
                "item_id": "i",
                "content_index": 0,
                "audio_end_ms": -1,
            },
            RealtimeCode.INVALID_VALUE,
            "audio_end_ms",
        ),
        (
            {"type": "response.create", "event_id": "e", "response": {"conversation": "conv_9"}},
            RealtimeCode.UNSUPPORTED_PARAMETER,
            "response.conversation",
        ),
        (
            {
                "type": "response.create",
                "event_id": "e",
                "response": {"conversation": "none", "input": [{"type": "item_reference"}]},
            },
            RealtimeCode.MISSING_PARAMETER,
            "response.input[0].id",
        ),
        (
            {"type": "response.create", "event_id": "e", "response": {"input": []}},
            RealtimeCode.UNSUPPORTED_PARAMETER,
            "response.input",
        ),
        (
            {"type": "response.cancel", "event_id": "e", "response_id": ""},
            RealtimeCode.INVALID_VALUE,
            "response_id",
        ),
        ({"type": "session.updte", "event_id": "e"}, RealtimeCode.UNKNOWN_EVENT, "type"),
        ({"event_id": "e"}, RealtimeCode.MISSING_PARAMETER, "type"),
    ],
)
def test_bad_events_are_named(event: dict[str, Any], code: RealtimeCode, param: str) -> None:
    """A wrong field is refused with its code, its JSON path and the event's id."""
    e = refused(frame(event))
    assert (e.realtime_code, e.param, e.event_id) == (code, param, "e")
    assert param.split(".")[-1].split("[")[0] in e.message or code in (
        RealtimeCode.INVALID_AUDIO,
        RealtimeCode.UNKNOWN_EVENT,
    )


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("{", RealtimeCode.INVALID_JSON),
        ("[1, 2]", RealtimeCode.INVALID_JSON),
        (b"\xff\xfe", RealtimeCode.INVALID_JSON),
        ('{"type": "input_audio_buffer.commit", "event_id": 3}', RealtimeCode.INVALID_VALUE),
    ],
)
def test_unreadable_frames(data: str | bytes, code: RealtimeCode) -> None:
    """Frames that are not an event object are refused with a code, never an exception."""
    assert refused(data).realtime_code == code


def test_size_and_depth_limits_are_settings() -> None:
    """max_event_bytes and max_depth refuse what exceeds them, naming the limit."""
    big = frame({"type": "input_audio_buffer.append", "audio": "A" * 2000})
    e = refused(big, max_event_bytes=1000)
    assert e.realtime_code == RealtimeCode.EVENT_TOO_LARGE and "max_event_bytes" in e.message
    deep: Any = {}
    for _ in range(30):
        deep = {"a": deep}
    e = refused(frame({"type": "session.update", "event_id": "d", "session": deep}))
    assert e.realtime_code == RealtimeCode.INVALID_VALUE and e.event_id == "d"
