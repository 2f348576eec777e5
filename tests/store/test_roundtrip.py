"""The property of issue 17, item 1, on a live server: every value each encoding can carry, in
every numeric and string field of every client message, is either refused with a documented
error, or survives journal -> database -> records API -> every encoding's re-encode (SQLite and
PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocol.strategies import ENCODINGS, FieldSpot, numbers, raw, spots, strings, with_value
from tests.server.conftest import LiveServer, make_settings, run_server
from tidegate.protocol import BadInput, CloseCode, Connection, ErrorCode, Role
from tidegate.protocol.client import Client
from tidegate.protocol.messages import (
    ClientMessage,
    Direction,
    Error,
    FlowCredit,
    InputSensor,
    InputText,
    Ping,
    ResponseDone,
    SensorReading,
    SessionClose,
    SessionCreate,
    SessionCreated,
    parse_message,
)

pytestmark = pytest.mark.slow

DOCUMENTED = {c.value for c in ErrorCode} - {ErrorCode.INTERNAL.value}
SPOTS = spots()
#: the spots whose accepted values become records (the rest must leave the connection usable)
RECORDED = {"input.sensor", "input.text"}
REPLY_TIMEOUT_S = 10.0


@pytest.fixture
async def persisting(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[LiveServer, Any]]:
    settings_ = make_settings(
        tmp_path,
        database_url=database_url,
        sensor_batch_max_readings=1,
        rate_requests_per_s=0.0,
        rate_sessions_per_s=0.0,
        rate_messages_per_s=0.0,
        max_bad_messages=10_000,
    )
    async with (
        run_server(settings_) as server,
        httpx.AsyncClient(base_url=server.http, timeout=10) as http,
    ):
        yield server, http


def accepted(encoding: str, mtype: str, payload: bytes | str) -> ClientMessage | None:
    """What the protocol makes of ``payload`` (None: refused), by a connection of its own."""
    conn = Connection(Role.SERVER, encoding=encoding)
    if mtype != SessionCreate.TYPE:
        conn.send(SessionCreated(session_id="s", config={}, limits={}, ice_servers=()), 0.0)
        conn.send(FlowCredit(messages=10**6, bytes=2**40), 0.0)
    conn.receive_data(payload, 1.0)
    events = conn.events_received()
    if not events:  # a ping, answered by the connection itself
        return parse_message(conn.codec.decode(payload), Direction.CLIENT)  # type: ignore[return-value]
    if isinstance(events[0], BadInput):
        return None
    msg = events[0]
    assert isinstance(msg, ClientMessage)
    return msg


async def sync(client: Client) -> list[Any]:
    """The events that arrived before the answer to a ping sent now."""
    await client.request(Ping(id=client.next_id(), t_client=0.0), REPLY_TIMEOUT_S)
    seen = []
    while True:  # everything before the pong is queued by now
        try:
            seen.append(await client.recv(0.0))
        except TimeoutError:
            return seen


def reencodes(event: Any) -> None:
    """Every encoding carries ``event`` and gives it back unchanged."""
    for encoding in ENCODINGS:
        server = Connection(Role.SERVER, encoding=encoding)
        server.send(SessionCreated(session_id="s", config={}, limits={}, ice_servers=()), 0.0)
        server.send(event, 1.0)
        client = Connection(Role.CLIENT, encoding=encoding)
        client.send(SessionCreate(), 0.0)
        for payload in server.data_to_send():
            client.receive_data(payload, 2.0)
        *_, back = client.events_received()
        assert not isinstance(back, BadInput), (encoding, back)
        field = "values" if isinstance(event, SensorReading) else "text"
        assert getattr(back, field) == getattr(event, field), encoding


def as_floats(numbers: list[Any]) -> list[float]:
    assert all(type(x) in (int, float) for x in numbers), numbers
    return [float(x) for x in numbers]


async def stored(server: LiveServer, http: Any, sid: str, kind: str) -> list[dict[str, Any]]:
    assert await server.runtime.recorder.flush(20), server.runtime.recorder.stats()
    headers = {"Authorization": f"Bearer {server.token()}"}
    got = await http.get(f"/v1/sessions/{sid}/{kind}", headers=headers)
    assert got.status_code == 200, got.text
    return list(got.json()["items"])


async def check(server: LiveServer, http: Any, encoding: str, spot: FieldSpot, value: Any) -> None:
    payload = raw(encoding, with_value(spot, value))
    expected = accepted(encoding, spot.mtype, payload)
    async with await server.client(encoding=encoding) as client:
        sid = None
        if spot.mtype != SessionCreate.TYPE:
            sid = (await client.create_session({"mode": "loopback"})).session_id
        await client.send_raw(payload)
        if expected is not None and spot.mtype == SessionClose.TYPE:
            assert (await client.wait_closed(REPLY_TIMEOUT_S)).close_code == CloseCode.NORMAL
            return
        events = await sync(client)
        errors = [e for e in events if isinstance(e, Error)]
        assert all(e.code in DOCUMENTED for e in errors), errors
        assert errors or expected is not None, events  # refused by the protocol: it says so
        if expected is not None and not errors and isinstance(expected, InputText):
            if not any(isinstance(e, ResponseDone) for e in events):
                await client.wait_for(ResponseDone, timeout_s=REPLY_TIMEOUT_S)
        if sid is not None or any(isinstance(e, SessionCreated) for e in events):
            await client.close_session()  # no session outlives its example
    if expected is None or errors or spot.mtype not in RECORDED:
        return  # refused with a documented error, or handled: the connection worked on
    assert sid is not None
    if isinstance(expected, InputSensor):
        [batch] = await stored(server, http, sid, "sensors")
        assert batch["channel"] == expected.channel
        [[ts, values]] = batch["readings"]
        # number fields are float64: PostgreSQL's jsonb may write a whole float as an integer
        assert as_floats([ts, *values]) == as_floats([expected.ts, *expected.values])
        reading = SensorReading(
            session_id=sid,
            channel=batch["channel"],
            ts=batch["readings"][0][0],
            values=tuple(batch["readings"][0][1]),
        )
        reencodes(reading)
    else:
        assert isinstance(expected, InputText)
        [response] = await stored(server, http, sid, "responses")
        assert (response["text"], response["ref"]) == (expected.text, expected.id)
        reencodes(ResponseDone(response_id="r", status="completed", text=response["text"]))


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_every_value_is_refused_or_survives_the_whole_path(
    persisting: tuple[LiveServer, Any], data: st.DataObject
) -> None:
    """A value in a field: a documented error, or stored, served and re-encoded unchanged."""
    server, http = persisting
    encoding = data.draw(st.sampled_from(ENCODINGS), label="encoding")
    recorded = [s for s in SPOTS if s.mtype in RECORDED]
    spot = data.draw(st.sampled_from(recorded) | st.sampled_from(SPOTS), label="spot")
    value = data.draw(numbers(encoding) if spot.numeric else strings(), label="value")
    await check(server, http, encoding, spot, value)
    assert server.runtime.recorder.running
    assert server.runtime.counters["internal_errors"] == 0
    assert sum(server.runtime.recorder.quarantined.values()) == 0
