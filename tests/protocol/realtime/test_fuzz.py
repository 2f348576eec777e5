"""Fuzzing the translator: whatever the client sends and whatever order tidegate's events come
in, it never raises, and everything it sends is a valid GA server event (the SDK's types)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidegate.protocol.errors import ErrorCode
from tidegate.protocol.messages import (
    AsrFinal,
    AsrPartial,
    ClientMessage,
    Direction,
    Error,
    OutputAudio,
    ResponseCreated,
    ResponseDone,
    ResponseFunctionCallDelta,
    ResponseFunctionCallDone,
    ResponseTextDelta,
    ServerMessage,
    SessionUpdated,
    TurnEnd,
    Usage,
    VadSpeechStarted,
    VadSpeechStopped,
    parse_message,
)
from tidegate.protocol.realtime import Command, RealtimeCode, RealtimeTranslator

from .samples import EXAMPLES, b64, drain, new_translator

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CODES = {c.value for c in RealtimeCode} | {c.value for c in ErrorCode}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def check(t: RealtimeTranslator) -> None:
    """Everything out so far is valid: server events for the SDK, tidegate messages for
    tidegate's own parser; every error names a documented code."""
    for event in drain(t):
        if event["type"] == "error":
            assert event["error"]["code"] in CODES, event
            assert event["error"]["message"]
    for item in t.to_session():
        if isinstance(item, ClientMessage):
            parse_message(item.to_wire(), Direction.CLIENT)
        else:
            assert isinstance(item, Command)


@FUZZ
@given(
    st.lists(st.text(max_size=64) | json_values.map(lambda v: orjson.dumps(v).decode()), max_size=8)
)
def test_arbitrary_frames(frames: list[str]) -> None:
    """Any text or JSON value: an error event (or an event), never an exception."""
    t = new_translator(max_bad_events=10**6)
    for i, f in enumerate(frames):
        t.receive_text(f, float(i))
    check(t)


def mutated(etype: str) -> st.SearchStrategy[dict[str, Any]]:
    """The GA example of ``etype`` with some fields replaced by arbitrary JSON, removed, or
    added, at any depth."""
    base = EXAMPLES[etype]

    def mutate(value: Any, draw: Any, depth: int) -> Any:
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                choice = draw(st.integers(0, 9))
                if choice == 0 and k != "type":
                    continue  # dropped
                out[k] = draw(json_values) if choice == 1 else mutate(v, draw, depth + 1)
            if draw(st.integers(0, 9)) == 0:
                out[draw(st.text(max_size=8))] = draw(json_values)
            return out
        if isinstance(value, list):
            return [mutate(v, draw, depth + 1) for v in value]
        return value

    return st.composite(lambda draw: mutate(base, draw, 0))()


client_events = st.sampled_from(sorted(EXAMPLES)).flatmap(mutated) | st.sampled_from(
    [
        {"type": "input_audio_buffer.append", "audio": b64(b"\x00\x01" * 240)},
        {"type": "input_audio_buffer.commit"},
        {"type": "response.create"},
        {"type": "response.cancel"},
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "c1", "output": "{}"},
        },
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        },
        {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}},
    ]
)

rids = st.sampled_from(["r1", "r2"])
texts = st.text(max_size=12)
ms = st.floats(0, 1e6)
response_messages: st.SearchStrategy[ServerMessage] = st.one_of(
    st.builds(
        ResponseCreated,
        response_id=rids,
        ref=st.none() | st.sampled_from(["rt1", "rt2", "rt3", "rt4"]),
    ),
    st.builds(ResponseTextDelta, response_id=rids, delta=texts),
    st.builds(
        OutputAudio,
        pcm=st.integers(1, 400).map(lambda n: b"\x10\x00" * n),
        format=st.just("s16le"),
        sample_rate=st.just(48_000),
        channels=st.just(1),
        response_id=rids,
    ),
    st.builds(
        ResponseFunctionCallDone,
        response_id=rids,
        call_id=st.sampled_from(["c1", "c2"]),
        name=st.just("f"),
        arguments=texts,
    ),
    st.builds(
        ResponseDone,
        response_id=rids,
        status=st.sampled_from(["completed", "cancelled", "failed"]),
        text=texts,
        reason=st.none() | texts,
        usage=st.none()
        | st.builds(
            Usage,
            input_tokens=st.integers(0, 5000),
            cached_tokens=st.integers(0, 5000),
            output_tokens=st.integers(0, 500),
        ),
    ),
)
server_messages: st.SearchStrategy[ServerMessage] = response_messages | st.one_of(
    st.builds(VadSpeechStarted, audio_ms=ms),
    st.builds(
        TurnEnd,
        reason=st.sampled_from(["commit", "silence"]),
        audio_ms=st.none() | ms,
        ref=st.none() | st.sampled_from(["rt1", "rt2", "rt3", "rt4"]),
    ),
    st.builds(VadSpeechStopped, audio_ms=ms),
    st.builds(
        AsrPartial,
        segment_id=st.sampled_from(["g1", "g2"]),
        text=texts,
        audio_start_ms=ms,
        audio_end_ms=ms,
    ),
    st.builds(
        AsrFinal,
        segment_id=st.sampled_from(["g1", "g2"]),
        text=texts,
        audio_start_ms=ms,
        audio_end_ms=ms,
    ),
    st.builds(
        ResponseCreated,
        response_id=rids,
        ref=st.none() | st.sampled_from(["rt1", "rt2", "rt3", "rt4"]),
    ),
    st.builds(ResponseTextDelta, response_id=rids, delta=texts),
    st.builds(
        OutputAudio,
        pcm=st.integers(1, 400).map(lambda n: b"\x10\x00" * n),
        format=st.just("s16le"),
        sample_rate=st.sampled_from([48_000, 16_000]),
        channels=st.sampled_from([1, 2]),
        response_id=st.none() | rids,
    ),
    st.builds(
        ResponseFunctionCallDelta,
        response_id=rids,
        call_id=st.sampled_from(["c1", "c2"]),
        name=st.just("f"),
        arguments=texts,
    ),
    st.builds(
        ResponseFunctionCallDone,
        response_id=rids,
        call_id=st.sampled_from(["c1", "c2"]),
        name=st.just("f"),
        arguments=texts,
    ),
    st.builds(
        ResponseDone,
        response_id=rids,
        status=st.sampled_from(["completed", "cancelled", "failed"]),
        text=texts,
        reason=st.none() | texts,
    ),
    st.builds(
        Error,
        code=st.sampled_from([c.value for c in ErrorCode]),
        message=texts,
        ref=st.none() | st.sampled_from(["rt1", "rt2", "rt3"]),
        retry_after_ms=st.none() | st.floats(0, 1e4),
    ),
    st.builds(SessionUpdated, config=st.just({})),
)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, 2), client_events, server_messages), max_size=60),
    st.sampled_from(["realtime", "transcription"]),
)
def test_valid_shaped_events_in_any_order(
    steps: list[tuple[bool, dict[str, Any], ServerMessage]], kind: str
) -> None:
    """Mutated GA events and tidegate events, interleaved in any order: valid output only."""
    t = new_translator(session_type=kind, max_bad_events=10**6)
    now = 0.0
    for side, event, msg in steps:
        now += 20.0
        if side == 0:  # one step in three from the client
            t.receive_text(orjson.dumps(event).decode(), now)
        else:
            t.receive_message(msg, now)
        check(t)


@FUZZ
@given(
    st.lists(response_messages | client_events, min_size=10, max_size=60),
    st.sampled_from(["audio", "text"]),
)
def test_replies_in_any_shape(steps: list[ServerMessage | dict[str, Any]], modality: str) -> None:
    """Replies (text, audio, tool rounds, cuts) in any order, with client events between."""
    t = new_translator(max_bad_events=10**6)
    t.receive_text(
        orjson.dumps(
            {
                "type": "session.update",
                "session": {"type": "realtime", "output_modalities": [modality]},
            }
        ).decode(),
        0.0,
    )
    t.receive_message(SessionUpdated(config={}), 0.0)
    for i, step in enumerate(steps):
        if isinstance(step, dict):
            t.receive_text(orjson.dumps(step).decode(), 20.0 * i)
        else:
            t.receive_message(step, 20.0 * i)
        check(t)
