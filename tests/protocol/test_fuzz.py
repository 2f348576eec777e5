"""Fuzzing the receive path: whatever bytes arrive, only documented errors come out.

Random bytes, mutated valid frames and random well-formed documents are fed to a server-role
connection in every encoding. It must never raise; every refusal must be a BadInput carrying a
documented error code, answered by an ``error`` message that the client can parse.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidegate.protocol import BadInput, Connection, ErrorCode, Role, get_codec
from tidegate.protocol.messages import CLIENT_MESSAGES, ClientMessage, Error

from .samples import CLIENT_SAMPLES

DOCUMENTED = {c.value for c in ErrorCode}
ENCODINGS = ["cbor", "msgpack", "json"]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(
    encoding: str, payloads: list[bytes | str], *, max_message_bytes: int = 4096
) -> list[BadInput]:
    """Feed ``payloads`` to a server-role connection; every event must be a client message or
    a documented refusal that the client can parse. Returns the refusals."""
    server = Connection(
        Role.SERVER,
        encoding=encoding,
        max_message_bytes=max_message_bytes,
        max_bad_messages=10**6,
    )
    client = Connection(Role.CLIENT, encoding=encoding)
    client.send(CLIENT_SAMPLES[0], 0)  # let the client parse replies to an open session
    refused: list[BadInput] = []
    for i, payload in enumerate(payloads):
        server.receive_data(payload, float(i))
        for event in server.events_received():
            if isinstance(event, BadInput):
                assert event.error.code.value in DOCUMENTED
                assert event.error.message
                refused.append(event)
            else:
                assert isinstance(event, ClientMessage)
                assert event.TYPE in CLIENT_MESSAGES
    for reply in server.data_to_send():
        client.receive_data(reply, 0.0)
    for event in client.events_received():
        assert not isinstance(event, BadInput), event
        if isinstance(event, Error):
            assert event.code in DOCUMENTED
    return refused


def _valid_payloads(encoding: str) -> list[bytes | str]:
    codec = get_codec(encoding)
    return [codec.encode(m.to_wire()) for m in CLIENT_SAMPLES]


@FUZZ
@given(st.sampled_from(ENCODINGS), st.lists(st.binary(max_size=300), max_size=8))
def test_random_bytes(encoding: str, blobs: list[bytes]) -> None:
    """Random bytes produce only documented errors."""
    _check(encoding, list(blobs))


@FUZZ
@given(st.sampled_from(ENCODINGS), st.data())
def test_mutated_valid_frames(encoding: str, data: st.DataObject) -> None:
    """Valid frames with bytes flipped, cut or spliced produce only documented errors."""
    frames = _valid_payloads(encoding)
    out: list[bytes | str] = []
    for _ in range(data.draw(st.integers(1, 6))):
        frame = data.draw(st.sampled_from(frames))
        raw = bytearray(frame.encode() if isinstance(frame, str) else frame)
        op = data.draw(st.sampled_from(["flip", "cut", "splice", "dup"]))
        if op == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            raw = raw[: data.draw(st.integers(0, len(raw)))]
        elif op == "splice":
            other = data.draw(st.sampled_from(frames))
            other_b = other.encode() if isinstance(other, str) else other
            raw = raw[: len(raw) // 2] + bytearray(other_b[len(other_b) // 2 :])
        else:
            raw = raw + raw
        out.append(raw.decode("utf-8", "replace") if isinstance(frame, str) else bytes(raw))
    _check(encoding, out)


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(
    st.sampled_from(["cbor", "msgpack"]),
    st.sampled_from(sorted(CLIENT_MESSAGES)),
    st.dictionaries(st.text(max_size=16), json_like, max_size=6),
)
def test_well_formed_documents_with_wrong_fields(
    encoding: str, mtype: str, fields: dict[str, Any]
) -> None:
    """Well-formed documents of every type with random fields give only documented errors."""
    codec = get_codec(encoding)
    doc: dict[str, Any] = {"type": mtype, **{k: v for k, v in fields.items() if k != "type"}}
    try:
        payload = codec.encode(doc)
    except (TypeError, ValueError, OverflowError):
        return  # the generator made something this encoding cannot hold
    _check(encoding, [payload])


@pytest.mark.parametrize(
    ("encoding", "deep"),
    [
        ("cbor", b"\x81" * 100_000 + b"\x00"),
        ("msgpack", b"\x91" * 100_000 + b"\x00"),
        ("json", "[" * 100_000 + "]" * 100_000),
    ],
)
def test_deeply_nested_documents_are_refused(encoding: str, deep: bytes | str) -> None:
    """Pathological nesting is refused by the decoder (bad_message), not by a recursion
    crash, and not merely by the size limit: the limit here admits the document's size."""
    [refusal] = _check(encoding, [deep], max_message_bytes=1_000_000)
    assert refusal.error.code is ErrorCode.BAD_MESSAGE
    assert "not valid" in refusal.error.message


def test_cbor_semantic_tags_are_refused() -> None:
    """CBOR tags (regex, decimals, dates) are not decoded: the protocol uses none."""
    server = Connection(Role.SERVER)
    server.receive_data(bytes.fromhex("a16474797065d82363612a62"), 0)  # {"type": 35("a*b")}
    [bad] = server.events_received()
    assert isinstance(bad, BadInput)
    assert "tags" in bad.error.message
