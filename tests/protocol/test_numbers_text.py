"""The protocol boundary: every value an encoding can carry, in every numeric and string field
of every client message, is either refused with a documented error or comes out as something
every later stage holds (int64 integers, finite floats, text without NUL) that re-encodes in
every encoding unchanged (docs/protocol.md, "Numbers and text")."""

from __future__ import annotations

from typing import Any

import cbor2
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidegate.protocol import BadInput, Connection, ErrorCode, Role, get_codec
from tidegate.protocol.messages import (
    Direction,
    FlowCredit,
    InputSensor,
    Ping,
    Pong,
    SensorReading,
    SessionCreate,
    SessionCreated,
    parse_message,
)
from tidegate.protocol.schema import INT64_MAX, INT64_MIN

from .strategies import ENCODINGS, FieldSpot, numbers, raw, spots, strings, with_value

DOCUMENTED = {c.value for c in ErrorCode}
SPOTS = spots()


def open_server(encoding: str) -> Connection:
    """A server-role connection with a session open and plenty of upload credit."""
    conn = Connection(Role.SERVER, encoding=encoding, max_bad_messages=10**6)
    conn.send(SessionCreated(session_id="s1", config={}, limits={}, ice_servers=()), 0.0)
    conn.send(FlowCredit(messages=10**6, bytes=2**40), 0.0)
    conn.data_to_send()
    return conn


def receive(encoding: str, mtype: str, payload: bytes | str) -> Any:
    """The one event a fresh server connection makes of ``payload``."""
    if mtype == SessionCreate.TYPE:
        conn = Connection(Role.SERVER, encoding=encoding)
    else:
        conn = open_server(encoding)
    conn.receive_data(payload, 1.0)
    events = conn.events_received()
    if not events:  # a ping: the connection answered it itself
        [reply] = conn.data_to_send()
        return parse_message(conn.codec.decode(reply), Direction.SERVER)
    [event] = events
    return event


def assert_holdable(value: Any, where: str = "") -> None:
    """Every later stage holds it: int64 integers, finite floats, text without NUL."""
    kind = type(value)
    if kind is dict:
        for k, v in value.items():
            assert_holdable(k, where)
            assert_holdable(v, f"{where}.{k}")
    elif kind in (list, tuple):
        for v in value:
            assert_holdable(v, where)
    elif kind is int:
        assert INT64_MIN <= value <= INT64_MAX, where
    elif kind is float:
        assert value == value and abs(value) != float("inf"), where
    elif kind is str:
        assert "\x00" not in value, where


def assert_reencodes(wire: dict[str, Any]) -> None:
    """The journal's JSON holds it, and every encoding carries it there and back unchanged."""
    orjson.dumps(wire, default=bytes.hex)  # bytes fields never reach the journal
    for encoding in ENCODINGS:
        codec = get_codec(encoding)
        back = codec.decode(codec.encode(wire))
        if codec.binary_decoder is not None:
            back = {
                k: (codec.binary_decoder(v) if isinstance(wire[k], bytes) else v)
                for k, v in back.items()
            }
        assert back == wire, encoding


def check(encoding: str, spot: FieldSpot, value: Any) -> None:
    payload = raw(encoding, with_value(spot, value))
    event = receive(encoding, spot.mtype, payload)
    if isinstance(event, BadInput):
        assert event.error.code.value in DOCUMENTED
        assert event.error.message
        return
    expected = Pong.TYPE if spot.mtype == Ping.TYPE else spot.mtype
    assert expected == event.TYPE
    wire = event.to_wire()
    assert_holdable(wire)
    assert_reencodes(wire)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_every_field_refuses_or_carries_what_every_stage_holds(data: st.DataObject) -> None:
    """Any value of any encoding in any field: a documented error, or holdable everywhere."""
    encoding = data.draw(st.sampled_from(ENCODINGS))
    spot = data.draw(st.sampled_from(SPOTS))
    value = data.draw(numbers(encoding) if spot.numeric else strings())
    check(encoding, spot, value)


def test_an_integer_beyond_int64_in_a_number_field_becomes_a_float() -> None:
    """input.sensor values of -2^64 and 2^64-1 (CBOR major types 1 and 0) arrive as floats."""
    payload = cbor2.dumps(
        {"type": "input.sensor", "channel": "t", "ts": 1, "values": [-(2**64), 2**64 - 1, 7]}
    )
    event = receive("cbor", InputSensor.TYPE, payload)
    assert isinstance(event, InputSensor)
    assert event.values == (-1.8446744073709552e19, 1.8446744073709552e19, 7)
    assert [type(v) for v in event.values] == [float, float, int]


def test_an_integer_beyond_int64_in_a_map_is_refused() -> None:
    """session.create config holding 2^63 is refused with invalid_field, naming the range."""
    event = receive(
        "msgpack",
        SessionCreate.TYPE,
        raw("msgpack", {"type": "session.create", "config": {"n": 2**63}}),
    )
    assert isinstance(event, BadInput)
    assert event.error.code is ErrorCode.INVALID_FIELD
    assert "session.create.config.n" in event.error.message
    assert str(INT64_MAX) in event.error.message


def test_nul_in_any_text_is_refused() -> None:
    """U+0000 in a text field, a map value or a map key is refused with invalid_field."""
    for wire in (
        {"type": "input.sensor", "channel": "a\x00", "ts": 1, "values": [1]},
        {"type": "input.text", "text": "hi\x00there"},
    ):
        event = receive("json", str(wire["type"]), raw("json", wire))
        assert isinstance(event, BadInput) and event.error.code is ErrorCode.INVALID_FIELD
        assert "U+0000" in event.error.message
    for config in ({"mode": "loop\x00back"}, {"k\x00": 1}):
        event = receive(
            "cbor", SessionCreate.TYPE, raw("cbor", {"type": "session.create", "config": config})
        )
        assert isinstance(event, BadInput) and event.error.code is ErrorCode.INVALID_FIELD


def test_an_event_the_encoding_cannot_carry_raises_encode_error_and_changes_nothing() -> None:
    """sensor.reading holding 2^64 in JSON: EncodeError, no seq used; the next send works."""
    from tidegate.protocol import EncodeError

    conn = open_server("json")
    seq = conn.last_seq
    bad = SensorReading(session_id="s2", channel="t", ts=1.0, values=(float(1), 2**64))
    with pytest.raises(EncodeError, match=r"sensor\.reading cannot be encoded as json"):
        conn.send(bad, 2.0)
    assert conn.last_seq == seq and conn.data_to_send() == []
    assert conn.stats.encode_errors == 1
    conn.send(SensorReading(session_id="s2", channel="t", ts=2.0, values=(1.0,)), 3.0)
    assert conn.last_seq == seq + 1 and len(conn.data_to_send()) == 1
