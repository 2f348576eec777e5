"""Outbound events and the connection's encoding (issue 17, item 5): a value a subscriber's
encoding could not carry never silently ends its event stream."""

from __future__ import annotations

import cbor2

from tidegate.protocol.client import Client
from tidegate.protocol.messages import (
    Error,
    InputSensor,
    Ping,
    Pong,
    ResponseCreated,
    SensorReading,
    SensorSubscribe,
)

from .conftest import LiveServer


async def _sync(client: Client) -> None:
    """Every message sent before this one has been handled."""
    assert isinstance(await client.request(Ping(id=client.next_id(), t_client=0.0)), Pong)


async def test_json_and_msgpack_subscribers_keep_their_stream_after_a_huge_integer(
    server: LiveServer,
) -> None:
    """-2^64 in a CBOR reading reaches JSON and MessagePack subscribers as a float, and the
    readings after it keep coming (it used to kill their event writers while pings worked)."""
    async with (
        await server.client() as kiosk,
        await server.client(encoding="json") as json_dash,
        await server.client(encoding="msgpack") as msgpack_dash,
    ):
        pub_id = (await kiosk.create_session({"mode": "loopback"})).session_id
        for dash in (json_dash, msgpack_dash):
            await dash.create_session({"mode": "loopback"})
            await dash.send(SensorSubscribe(session_id=pub_id))
            await _sync(dash)
        wire = {"type": "input.sensor", "channel": "t", "ts": 1.0, "values": [-(2**64)]}
        await kiosk.send_raw(cbor2.dumps(wire))
        await _sync(kiosk)
        for dash in (json_dash, msgpack_dash):
            first = await dash.wait_for(SensorReading, timeout_s=10)
            assert first.values == (-1.8446744073709552e19,)
        await kiosk.send(InputSensor(channel="t", ts=2.0, values=(5.0,)))
        for dash in (json_dash, msgpack_dash):
            second = await dash.wait_for(SensorReading, timeout_s=10)
            assert (second.ts, second.values) == (2.0, (5.0,))
        assert server.runtime.counters["encode_errors"] == 0


async def test_an_event_the_encoding_cannot_carry_becomes_an_error_event(
    server: LiveServer,
) -> None:
    """An outbound event holding 2^64 (which JSON cannot carry here): the JSON client gets an
    `internal` error naming the event's type, the event after it arrives, and it is counted."""
    async with await server.client(encoding="json") as client:
        sid = (await client.create_session({"mode": "loopback"})).session_id
        session = server.runtime.registry.get(sid)
        assert session is not None
        session.emit(SensorReading(session_id="s_x", channel="t", ts=1.0, values=(2**64,)))
        session.emit(ResponseCreated(response_id="r_after"))
        error = await client.wait_for(Error, timeout_s=10)
        assert error.code == "internal" and "sensor.reading" in error.message
        after = await client.wait_for(ResponseCreated, timeout_s=10)
        assert after.response_id == "r_after"
        await _sync(client)
        assert server.runtime.counters["encode_errors"] == 1
