"""Wire vectors: the bytes of protocol v1, fixed in tests/protocol/vectors/wire.json."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tidegate.protocol import Direction, get_codec, parse_message
from tidegate.protocol.messages import ClientMessage, ServerMessage

from .gen_vectors import PATH, build, from_json_value

VECTORS: list[dict[str, Any]] = json.loads(PATH.read_text())["vectors"]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["type"])
@pytest.mark.parametrize("encoding", ["cbor", "msgpack"])
def test_binary_vectors_round_trip(vector: dict[str, Any], encoding: str) -> None:
    """encode(decode(b)) == b, and b decodes to the documented value and a valid message."""
    codec = get_codec(encoding)
    data = bytes.fromhex(vector[encoding])
    decoded = codec.decode(data)
    assert decoded == from_json_value(vector["value"])
    msg = parse_message(decoded, Direction(vector["direction"]))
    assert isinstance(msg, ClientMessage | ServerMessage)
    assert codec.encode(msg.to_wire()) == data


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["type"])
def test_json_vectors_round_trip(vector: dict[str, Any]) -> None:
    """The JSON encoding round-trips byte for byte too (bytes as base64 text)."""
    codec = get_codec("json")
    msg = parse_message(
        codec.decode(vector["json"]),
        Direction(vector["direction"]),
        binary_decoder=codec.binary_decoder,
    )
    assert isinstance(msg, ClientMessage | ServerMessage)
    assert codec.encode(msg.to_wire()) == vector["json"]


def test_vectors_are_current() -> None:
    """The committed vectors match what the code encodes (regenerate with gen_vectors)."""
    assert json.loads(PATH.read_text()) == json.loads(json.dumps(build()))


def test_known_cbor_bytes() -> None:
    """A ping, spelled out: {"type": "ping", "t_client": 1.5} with a 64-bit float."""
    from tidegate.protocol.messages import Ping

    data = get_codec("cbor").encode(Ping(t_client=1.5).to_wire())
    assert isinstance(data, bytes)
    assert data.hex() == (
        "a2"  # map of 2
        "64"
        "74797065"  # "type"
        "64"
        "70696e67"  # "ping"
        "68"
        "745f636c69656e74"  # "t_client"
        "fb"
        "3ff8000000000000"  # 1.5
    )
