"""Data channels on a real pair of peers (loopback): a MediaPeer takes the labels it was built
for as bounded EventChannels and closes the others; an offer without a data channel is refused
when one is expected."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from tests.support import scaled
from tidegate.media import AudioOutTrack, MediaConfig, MediaPeer, apply_ice_policy
from tidegate.media.errors import BadSdpError

from .conftest import LOOPBACK


async def _connect(
    server: MediaPeer, labels: tuple[str, ...]
) -> tuple[RTCPeerConnection, dict[str, Any]]:
    client = RTCPeerConnection(LOOPBACK.configuration())
    client.addTrack(AudioOutTrack())
    channels = {label: client.createDataChannel(label) for label in labels}
    apply_ice_policy(client, LOOPBACK)
    await client.setLocalDescription(await client.createOffer())
    answer = await server.accept_offer(client.localDescription.sdp)
    await client.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return client, channels


async def _until(done: Any) -> None:
    async with asyncio.timeout(scaled(10)):
        while not done():
            await asyncio.sleep(0.02)


async def test_the_expected_channel_is_taken_bounded_both_ways() -> None:
    """The peer takes 'oai-events' and closes 'other'; events flow both ways; inbound events
    beyond the bound are dropped and counted; a send past the buffered bound waits, and
    everything sent arrives in order."""
    config = MediaConfig(data_channel_max_inbound_messages=3, data_channel_max_buffered_bytes=1000)
    server = MediaPeer(config, data_channels=("oai-events",))
    client, channels = await _connect(server, ("oai-events", "other"))
    try:
        events = await asyncio.wait_for(server.event_channel("oai-events"), scaled(10))
        await _until(lambda: server.data_channels_refused == 1)
        await _until(lambda: channels["other"].readyState == "closed")
        got: list[str] = []
        channels["oai-events"].on("message", got.append)
        for i in range(6):  # the server reads none of them yet
            channels["oai-events"].send(f"in {i}")
        await _until(lambda: events.counters["received"] + events.counters["dropped"] == 6)
        assert [await events.receive() for _ in range(3)] == ["in 0", "in 1", "in 2"]
        assert events.counters["dropped"] == 3
        out = [f"{i:03d}" + "x" * 896 for i in range(20)]
        for text in out:
            await events.send(text)
        assert events.counters["waits"] > 0  # 900-byte events over a 1000-byte bound
        await _until(lambda: len(got) == 20)
        assert got == out
        stats = server.stats()["data_channels"]["oai-events"]
        assert stats["dropped"] == 3 and stats["sent"] == 20
    finally:
        await client.close()
        await server.close()
    assert events.closed and await events.receive() is None


async def test_an_offer_without_the_expected_channel_is_refused() -> None:
    """A peer built for a data channel refuses an offer with no m=application section."""
    server = MediaPeer(MediaConfig(), data_channels=("oai-events",))
    client = RTCPeerConnection(LOOPBACK.configuration())
    try:
        client.addTrack(AudioOutTrack())
        apply_ice_policy(client, LOOPBACK)
        await client.setLocalDescription(await client.createOffer())
        with pytest.raises(BadSdpError, match="m=application"):
            await server.accept_offer(client.localDescription.sdp)
    finally:
        await client.close()
        await server.close()
