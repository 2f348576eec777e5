"""Two real RTCPeerConnections on loopback: a client (aiortc) and the server's MediaPeer.

Both gather host candidates on 127.0.0.1 only and use no ICE server (NETWORK.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import is_rtcp

from tidegate.media import AudioOutTrack, IcePolicy, MediaConfig, MediaPeer, apply_ice_policy

LOOPBACK = IcePolicy()  # 127.0.0.1 only, no servers


def tone(seconds: float, hz: float = 440.0, level: float = 0.3, rate: int = 16_000) -> Any:
    t = np.arange(int(seconds * rate)) / rate
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@dataclass
class Pair:
    server: MediaPeer
    client: RTCPeerConnection
    mic: AudioOutTrack | None
    remote_tracks: list[MediaStreamTrack] = field(default_factory=list)
    sent_rtp: int = 0
    dropped_rtp: int = 0


# pair_factory: connect_pair's arguments -> a connected pair, closed after the test
PairFactory = Callable[..., Awaitable[Pair]]


async def connect_pair(
    config: MediaConfig | None = None,
    *,
    audio: bool = True,
    video: bool = False,
    recv_audio: bool = True,
    drop: Callable[[int], bool] | None = None,
) -> Pair:
    """Client offers; the server answers; returns once the offer/answer is applied.

    ``drop(n)`` decides whether the client's n-th outgoing audio RTP packet is lost."""
    server = MediaPeer(config or MediaConfig())
    client = RTCPeerConnection(LOOPBACK.configuration())
    mic = None
    if audio:
        mic = AudioOutTrack()
        if recv_audio:
            client.addTrack(mic)
        else:
            client.addTransceiver(mic, direction="sendonly")
    if video:
        client.addTransceiver(VideoStreamTrack(), direction="sendonly")
    pair = Pair(server, client, mic)
    client.on("track", pair.remote_tracks.append)
    apply_ice_policy(client, LOOPBACK)
    await client.setLocalDescription(await client.createOffer())
    answer = await server.accept_offer(client.localDescription.sdp)
    await client.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    if drop is not None:
        dtls = client.getTransceivers()[0].sender.transport
        send = dtls._send_rtp

        async def lossy(data: bytes) -> None:
            if not is_rtcp(data):
                pair.sent_rtp += 1
                if drop(pair.sent_rtp):
                    pair.dropped_rtp += 1
                    return
            await send(data)

        dtls._send_rtp = lossy  # type: ignore[method-assign]  # the lossy link under test
    return pair


async def recv_audio(track: MediaStreamTrack) -> av.AudioFrame:
    """The next frame of a remote audio track."""
    frame = await track.recv()
    assert isinstance(frame, av.AudioFrame)
    return frame


async def close_pair(pair: Pair) -> None:
    await pair.client.close()
    await pair.server.close()


@pytest.fixture
async def pair_factory() -> AsyncIterator[PairFactory]:
    pairs: list[Pair] = []

    async def make(*args: Any, **kw: Any) -> Pair:
        p = await connect_pair(*args, **kw)
        pairs.append(p)
        return p

    yield make
    for p in pairs:
        await close_pair(p)
