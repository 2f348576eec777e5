"""Message catalogue: round trips through every codec, and errors that name the problem."""

from __future__ import annotations

from typing import Any

import pytest

from tidegate.protocol import (
    Direction,
    InvalidFieldError,
    Limits,
    UnknownTypeError,
    get_codec,
    parse_message,
)
from tidegate.protocol.messages import (
    CLIENT_MESSAGES,
    SERVER_MESSAGES,
    AsrPartial,
    ClientMessage,
    ServerMessage,
)

from .samples import CLIENT_SAMPLES, SAMPLES, SERVER_SAMPLES, test_samples_cover_the_catalogue  # noqa: F401

CODECS = ["cbor", "msgpack", "json"]


def _wire(msg: ClientMessage | ServerMessage) -> dict[str, Any]:
    return msg.to_wire()


@pytest.mark.parametrize("codec_name", CODECS)
@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.TYPE)
def test_round_trip(msg: ClientMessage | ServerMessage, codec_name: str) -> None:
    """Every sample survives encode -> decode -> parse unchanged in every encoding."""
    codec = get_codec(codec_name)
    direction = msg.DIRECTION
    data = codec.encode(_wire(msg))
    assert isinstance(data, bytes) == codec.binary
    back = parse_message(codec.decode(data), direction, binary_decoder=codec.binary_decoder)
    assert back == msg


def test_binary_fields_are_raw_bytes_in_cbor_and_base64_in_json() -> None:
    """Byte fields travel as CBOR byte strings, never base64; JSON carries base64 text."""
    import cbor2

    audio = next(m for m in CLIENT_SAMPLES if m.TYPE == "input.audio")
    data = get_codec("cbor").encode(audio.to_wire())
    assert isinstance(data, bytes)
    raw = cbor2.loads(data)
    assert isinstance(raw["pcm"], bytes)
    text = get_codec("json").encode(audio.to_wire())
    assert '"pcm":"AAEAAQ' in text


def test_types_are_unique_per_direction() -> None:
    """rtc.candidate exists in both directions; no other name is shared."""
    assert set(CLIENT_MESSAGES) & set(SERVER_MESSAGES) == {"rtc.candidate"}


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        ([1, 2], "invalid_field", "expected a map"),
        ({"text": "hi"}, "invalid_field", "message.type"),
        ({"type": "input.txt", "text": "hi"}, "unknown_type", "'input.txt'"),
        (
            {"type": "input.text"},
            "invalid_field",
            "input.text.text: expected a string of 1 to 8192",
        ),
        ({"type": "input.text", "text": ""}, "invalid_field", "got '' (str, 0 chars)"),
        ({"type": "input.text", "text": 5}, "invalid_field", "got 5 (int)"),
        (
            {"type": "input.text", "text": "a", "extra": 1},
            "invalid_field",
            "unexpected field 'extra'",
        ),
        ({"type": "ping", "t_client": float("nan")}, "invalid_field", "ping.t_client"),
        ({"type": "ping", "t_client": True}, "invalid_field", "got True (bool)"),
        (
            {
                "type": "input.audio",
                "pcm": b"ab",
                "format": "s24le",
                "sample_rate": 16000,
                "channels": 1,
            },
            "invalid_field",
            "input.audio.format: expected one of 's16le', 'f32le'",
        ),
        (
            {
                "type": "input.audio",
                "pcm": b"ab",
                "format": "s16le",
                "sample_rate": 16000.0,
                "channels": 1,
            },
            "invalid_field",
            "sample_rate: expected an integer",
        ),
        (
            {
                "type": "input.audio",
                "pcm": "ab",
                "format": "s16le",
                "sample_rate": 16000,
                "channels": 1,
            },
            "invalid_field",
            "pcm: expected a byte string",
        ),
        (
            {"type": "input.sensor", "channel": "t", "ts": 1.0, "values": []},
            "invalid_field",
            "values",
        ),
        (
            {"type": "input.sensor", "channel": "t", "ts": 1.0, "values": [1, "x"]},
            "invalid_field",
            "values.1",
        ),
        (
            {
                "type": "session.create",
                "config": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}},
            },
            "invalid_field",
            "nesting",
        ),
        ({"type": "session.create", "config": {"k": b"bytes"}}, "invalid_field", "config.k"),
        ({"type": "input.text", "text": "a", "id": ""}, "invalid_field", "message.id"),
        ({"type": "input.text", "text": "a", "id": "x" * 65}, "invalid_field", "message.id"),
    ],
)
def test_client_message_errors(data: Any, code: str, words: str) -> None:
    """Invalid client messages raise the documented error, whose text says what was wrong."""
    with pytest.raises((InvalidFieldError, UnknownTypeError)) as caught:
        parse_message(data, Direction.CLIENT)
    assert caught.value.code.value == code
    assert words in caught.value.message


def test_error_carries_the_message_id() -> None:
    """The id of an invalid message comes back as ref, so the client can match the error."""
    with pytest.raises(InvalidFieldError) as caught:
        parse_message({"type": "input.text", "text": 1, "id": "m7"}, Direction.CLIENT)
    assert caught.value.ref == "m7"


def test_limits_bound_strings() -> None:
    """A connection's max_string_chars applies to every string field."""
    limits = Limits(max_string_chars=10)
    with pytest.raises(InvalidFieldError, match="1 to 10 characters"):
        parse_message({"type": "input.text", "text": "x" * 11}, Direction.CLIENT, limits=limits)


def test_client_is_lenient_with_new_server_fields() -> None:
    """A client ignores fields a newer server adds (strict=False), the server never does."""
    wire = SERVER_SAMPLES[3].to_wire()
    wire["future_field"] = 1
    msg = parse_message(wire, Direction.SERVER, strict=False)
    assert msg == SERVER_SAMPLES[3]
    with pytest.raises(InvalidFieldError):
        parse_message(wire, Direction.SERVER, strict=True)


def test_server_envelope_is_required() -> None:
    """Server messages without seq or t are invalid."""
    wire = SERVER_SAMPLES[3].to_wire()
    del wire["seq"]
    with pytest.raises(InvalidFieldError, match=r"pong\.seq"):
        parse_message(wire, Direction.SERVER, strict=False)


def test_timing_sent_and_wire_order() -> None:
    """The wire map starts with the envelope, then the fields in declaration order."""
    msg = next(m for m in SERVER_SAMPLES if isinstance(m, AsrPartial))
    assert list(msg.to_wire()) == [
        "type",
        "seq",
        "t",
        "segment_id",
        "text",
        "audio_start_ms",
        "audio_end_ms",
        "timing",
        "tentative",
    ]
