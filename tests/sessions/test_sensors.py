"""Sensor readings and subscriptions over the control channel, against a real server: readings
are validated, time-ordered and rate-limited per session; a session of the same tenant
subscribes to another's channels; another tenant cannot; a slow subscriber gets the latest per
channel with ``dropped``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.server.conftest import LiveServer, make_settings, run_server
from tests.support import scaled
from tidegate.protocol.client import Client, RefusedError
from tidegate.protocol.messages import (
    InputSensor,
    InputText,
    ResponseDone,
    SensorReading,
    SensorSubscribe,
    SensorUnsubscribe,
)


async def _refused(client: Client, msg: InputSensor | SensorSubscribe | SensorUnsubscribe) -> str:
    """Send ``msg`` (with an id) and return the code of the error it gets."""
    with pytest.raises(RefusedError) as caught:
        await client.request(msg, timeout_s=scaled(10))
    return caught.value.server_code


async def _sync(client: Client) -> None:
    """Wait until everything sent before has been handled (loopback answers text at once)."""
    await client.send(InputText(id="sync", text="sync"))
    await client.wait_for(ResponseDone, timeout_s=scaled(10))


async def test_readings_are_validated_ordered_and_counted(server: LiveServer) -> None:
    """A bad channel name, a reading not after its channel's last one, and one channel too
    many are refused with errors naming what was wrong; good readings are counted per channel."""
    async with await server.client() as client:
        created = await client.create_session({"mode": "loopback"})
        await client.send(InputSensor(channel="temp", ts=10.0, values=(20.5,)))
        await client.send(InputSensor(channel="hum", ts=5.0, values=(40.0, 41.0)))
        bad_name = InputSensor(id="b1", channel="temp space", ts=11.0, values=(1.0,))
        assert await _refused(client, bad_name) == "invalid_field"
        late = InputSensor(id="b2", channel="temp", ts=10.0, values=(1.0,))
        with pytest.raises(RefusedError) as caught:
            await client.request(late, timeout_s=scaled(10))
        assert caught.value.server_code == "invalid_field"
        assert "not after" in caught.value.error.message and "'temp'" in caught.value.error.message
        await client.send(InputSensor(channel="temp", ts=11.0, values=(21.0,)))
        await _sync(client)
        session = server.runtime.registry.get(created.session_id)
        assert session is not None
        stats = session.stats()["sensors"]
    assert stats["readings"] == {"temp": 2, "hum": 1}
    assert stats["refused"]["invalid"] == 1 and stats["refused"]["out_of_order"] == 1


async def test_channels_and_rate_are_limited(tmp_path: Path) -> None:
    """Readings beyond the per-session rate are refused (rate_limited, with a retry hint); a
    channel beyond sensor_max_channels is refused naming the setting."""
    settings = make_settings(
        tmp_path,
        sensor_rate_readings_per_s=1.0,
        sensor_rate_burst_readings=3,
        sensor_max_channels=2,
    )
    async with run_server(settings) as live, await live.client() as client:
        await client.create_session({"mode": "loopback"})
        await client.send(InputSensor(channel="a", ts=1.0, values=(1.0,)))
        await client.send(InputSensor(channel="b", ts=1.0, values=(1.0,)))
        with pytest.raises(RefusedError) as caught:
            await client.request(InputSensor(id="c", channel="c", ts=1.0, values=(1.0,)))
        assert caught.value.server_code == "rate_limited"
        assert "sensor_max_channels" in caught.value.error.message
        with pytest.raises(RefusedError) as caught:
            await client.request(InputSensor(id="d", channel="a", ts=2.0, values=(1.0,)))
        assert caught.value.server_code == "rate_limited"
        assert caught.value.retry_after_ms is not None and caught.value.retry_after_ms > 0


async def test_a_session_of_the_tenant_receives_another_sessions_readings(
    server: LiveServer,
) -> None:
    """A subscriber gets the publisher's readings of the channels it asked for, naming the
    publisher; after unsubscribing it gets no more; another tenant's subscribe is not_found,
    like an unknown session's."""
    async with (
        await server.client() as kiosk,
        await server.client() as dash,
        await server.client(token=server.token(tenant="evil", subject="eve")) as eve,
    ):
        published = await kiosk.create_session({"mode": "loopback"})
        await dash.create_session({"mode": "loopback"})
        await eve.create_session({"mode": "loopback"})
        pub_id = published.session_id
        assert await _refused(eve, SensorSubscribe(id="e1", session_id=pub_id)) == "not_found"
        assert await _refused(dash, SensorSubscribe(id="e2", session_id="s_nope")) == "not_found"
        await dash.send(SensorSubscribe(session_id=pub_id, channels=("temp",)))
        await _sync(dash)
        await kiosk.send(InputSensor(channel="hum", ts=1.0, values=(40.0,)))
        await kiosk.send(InputSensor(channel="temp", ts=2.0, values=(20.5, 3.0)))
        reading = await dash.wait_for(SensorReading, timeout_s=scaled(10))
        assert (reading.session_id, reading.channel, reading.ts, reading.values) == (
            pub_id,
            "temp",
            2.0,
            (20.5, 3.0),
        )
        assert reading.dropped == 0
        await dash.send(SensorUnsubscribe(session_id=pub_id))
        await _sync(dash)
        await kiosk.send(InputSensor(channel="temp", ts=3.0, values=(21.0,)))
        await _sync(kiosk)
        await dash.send(InputText(id="after", text="after"))
        while True:  # nothing but the sync reply comes
            event = await dash.recv()
            assert not isinstance(event, SensorReading), event
            if isinstance(event, ResponseDone):
                break
        unsub = SensorUnsubscribe(id="u2", session_id=pub_id)
        assert await _refused(dash, unsub) == "not_found"


async def test_too_many_subscriptions_are_refused(tmp_path: Path) -> None:
    """Beyond sensor_max_subscriptions a subscribe is refused, naming the setting; subscribing
    to the same session again only replaces its channels."""
    settings = make_settings(tmp_path, sensor_max_subscriptions=1)
    async with (
        run_server(settings) as live,
        await live.client() as a,
        await live.client() as b,
        await live.client() as c,
    ):
        sa = (await a.create_session({"mode": "loopback"})).session_id
        sb = (await b.create_session({"mode": "loopback"})).session_id
        await c.create_session({"mode": "loopback"})
        await c.send(SensorSubscribe(session_id=sa))
        await c.send(SensorSubscribe(session_id=sa, channels=("x",)))
        with pytest.raises(RefusedError) as caught:
            await c.request(SensorSubscribe(id="s3", session_id=sb))
        assert caught.value.server_code == "rate_limited"
        assert "sensor_max_subscriptions" in caught.value.error.message


async def test_a_subscriber_away_gets_the_latest_per_channel(server: LiveServer) -> None:
    """While the subscriber's connection is gone (its session waits to be resumed), readings
    coalesce latest-wins per channel; on resume it gets one per channel, with ``dropped``
    counting the readings it missed."""
    async with await server.client() as kiosk:
        pub_id = (await kiosk.create_session({"mode": "loopback"})).session_id
        dash = await server.client()
        dash_id = (await dash.create_session({"mode": "loopback"})).session_id
        await dash.send(SensorSubscribe(session_id=pub_id))
        await _sync(dash)
        await dash.close()
        session = server.runtime.registry.get(dash_id)
        assert session is not None
        async with asyncio.timeout(scaled(10)):
            while session.attachment is not None:
                await asyncio.sleep(0.02)
        for i in range(20):
            await kiosk.send(InputSensor(channel="temp", ts=float(i), values=(float(i),)))
        await kiosk.send(InputSensor(channel="hum", ts=1.0, values=(50.0,)))
        await _sync(kiosk)
        async with await server.client() as again:
            await again.create_session(session_id=dash_id)
            got = [await again.wait_for(SensorReading, timeout_s=scaled(10)) for _ in range(2)]
    by_channel = {r.channel: r for r in got}
    assert by_channel["temp"].ts == 19.0 and by_channel["temp"].dropped == 19
    assert by_channel["hum"].values == (50.0,) and by_channel["hum"].dropped == 0
