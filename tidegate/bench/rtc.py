"""The WebRTC side of a bench client (aiortc): ICE on loopback only, signalling over the
control channel, Opus encoded once and replayed, and received audio decoded straight off the
wire (no playout buffer of our own, so an onset is timed when its packet arrives)."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import aioice.ice
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

from tidegate.media._aiortc import tap_rtp
from tidegate.protocol.client import Client
from tidegate.protocol.messages import RtcAnswer, RtcOffer, ServerRtcCandidate

OPUS_RATE_HZ = 48_000
FRAME_SAMPLES = 960  # 20 ms
FRAME_S = 0.020
TIME_BASE = fractions.Fraction(1, OPUS_RATE_HZ)
CONNECT_TIMEOUT_S = 20.0
FloatArray = np.ndarray[Any, np.dtype[np.float32]]


def _loopback_only(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    return ["127.0.0.1"]


def loopback_ice() -> None:
    """This process's ICE agents gather on 127.0.0.1 only (NETWORK.md)."""
    aioice.ice.get_host_addresses = _loopback_only


async def connect(
    client: Client,
    pc: RTCPeerConnection,
    *,
    echo_cancellation: bool | None = None,
    playout_delay_ms: float | None = None,
) -> float:
    """Offer over the control channel, apply the answer, read the server's trickled candidates
    to their end, wait for ICE and DTLS; returns the connect time (offer sent -> connected, ms).
    ``echo_cancellation``: what the offer says of the client's own (``False``: a kiosk that
    has none); ``playout_delay_ms``: its jitter buffer (a client that gives it silences what
    it holds at ``response.paused``). Call it before anything else reads the client's events."""
    await pc.setLocalDescription(await pc.createOffer())
    t0 = time.perf_counter()
    offer = RtcOffer(
        id=client.next_id(),
        sdp=pc.localDescription.sdp,
        echo_cancellation=echo_cancellation,
        playout_delay_ms=playout_delay_ms,
    )
    answer = await client.request(offer)
    if not isinstance(answer, RtcAnswer):
        raise RuntimeError(f"expected rtc.answer, got {answer.TYPE}")
    await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        while True:  # the trickled candidates (also in the answer): read up to the end marker
            c = await client.wait_for(ServerRtcCandidate)
            if not c.candidate:
                break
        while pc.connectionState != "connected":
            if pc.connectionState == "failed":
                raise RuntimeError("ICE/DTLS failed")
            await asyncio.sleep(0.002)
    return (time.perf_counter() - t0) * 1000.0


def upsample_to_48k(x: FloatArray, rate: int) -> FloatArray:
    """Linear interpolation to 48 kHz (for speech sent to a recogniser at 16 kHz it is ample)."""
    n = round(len(x) * OPUS_RATE_HZ / rate)
    t = np.arange(n) * rate / OPUS_RATE_HZ
    return np.asarray(np.interp(t, np.arange(len(x)), x), np.float32)


def encode_opus(pcm: FloatArray, *, bit_rate: int = 32_000) -> list[bytes]:
    """48 kHz mono float32 as 20 ms Opus packets (voip), one per 20 ms of input."""
    frames = -(-len(pcm) // FRAME_SAMPLES)
    padded = np.zeros(frames * FRAME_SAMPLES, np.float32)
    padded[: len(pcm)] = pcm
    samples = (np.clip(padded, -1, 1) * 32767).astype(np.int16)
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = OPUS_RATE_HZ
    enc.layout = "mono"
    enc.format = "s16"
    enc.bit_rate = bit_rate
    enc.options = {"application": "voip"}
    enc.time_base = TIME_BASE
    packets: list[bytes] = []
    for i in range(frames):
        chunk = samples[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
        frame.sample_rate = OPUS_RATE_HZ
        frame.pts = i * FRAME_SAMPLES
        packets += [bytes(p) for p in enc.encode(frame)]
    packets += [bytes(p) for p in enc.encode(None)]
    return packets[:frames]


class OpusQueueTrack(MediaStreamTrack):
    """Sends pre-encoded Opus packets, one per 20 ms by the clock: queued ones first (each
    :meth:`play` call), an encoded silence packet otherwise, like a live microphone."""

    kind = "audio"

    def __init__(self, silence: bytes) -> None:
        super().__init__()
        self.silence = silence
        self.queue: deque[tuple[bytes, asyncio.Future[float] | None]] = deque()
        self.n = 0
        self.t0: float | None = None

    def play(self, packets: list[bytes]) -> list[asyncio.Future[float]]:
        """Queue ``packets``; each future gets the time (``time.monotonic``) its packet left."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in packets]
        self.queue.extend(zip(packets, futures, strict=True))
        return futures

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        due = self.t0 + self.n * FRAME_S
        if due > now:
            await asyncio.sleep(due - now)
        payload, sent = self.queue.popleft() if self.queue else (self.silence, None)
        packet = av.Packet(payload)
        packet.pts = self.n * FRAME_SAMPLES
        packet.time_base = TIME_BASE
        self.n += 1
        if sent is not None and not sent.done():
            sent.set_result(time.monotonic())
        return packet


class LiveOpusTrack(MediaStreamTrack):
    """A live microphone: every 20 ms by the clock it asks ``source(sample)`` for the next
    20 ms of 16 kHz float32 audio (``sample``: the first one's index on the track's clock,
    which starts at :attr:`t0`, ``time.monotonic``), upsamples and encodes it (Opus, voip)."""

    kind = "audio"

    def __init__(self, source: Callable[[int], FloatArray], *, bit_rate: int = 32_000) -> None:
        super().__init__()
        self.source = source
        self.enc = av.CodecContext.create("libopus", "w")
        self.enc.sample_rate = OPUS_RATE_HZ
        self.enc.layout = "mono"
        self.enc.format = "s16"
        self.enc.bit_rate = bit_rate
        self.enc.options = {"application": "voip"}
        self.enc.time_base = TIME_BASE
        self.n = 0
        self.t0: float | None = None
        self.pending: deque[bytes] = deque()  # the encoder's output, one packet per frame

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        due = self.t0 + (self.n + 1) * FRAME_S  # a frame leaves once it has been captured
        if due > now:
            await asyncio.sleep(due - now)
        x16 = self.source(self.n * FRAME_SAMPLES // 3)
        x48 = upsample_to_48k(x16, OPUS_RATE_HZ // 3)[:FRAME_SAMPLES]
        x48 = np.pad(x48, (0, FRAME_SAMPLES - len(x48)))
        pcm = (np.clip(x48, -1, 1) * 32767).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = OPUS_RATE_HZ
        frame.pts = self.n * FRAME_SAMPLES
        self.pending.extend(bytes(p) for p in self.enc.encode(frame))
        payload = self.pending.popleft() if self.pending else b"\xf8\xff\xfe"  # Opus silence
        packet = av.Packet(payload)
        packet.pts = self.n * FRAME_SAMPLES
        packet.time_base = TIME_BASE
        self.n += 1
        return packet


class AudioTap:
    """Decodes the packets of a receiver as they arrive and calls ``on_frame(pcm, arrival)``
    (float32 at 48 kHz, ``time.monotonic`` of the packet's arrival). Install with
    :meth:`install` on the transceiver's receiver (aiortc's own decoding is bypassed)."""

    def __init__(
        self,
        on_frame: Callable[[FloatArray, float], None],
        on_timed_frame: Callable[[FloatArray, float, int], None] | None = None,
    ) -> None:
        self.on_frame = on_frame
        #: also told each frame's RTP timestamp (48 kHz units), for a client that plays by it
        self.on_timed_frame = on_timed_frame
        self.dec = av.CodecContext.create("libopus", "r")
        self.dec.sample_rate = OPUS_RATE_HZ
        self.dec.layout = "mono"
        self.packets = 0

    def install(self, pc: RTCPeerConnection, index: int = 0) -> None:
        tap_rtp(pc.getTransceivers()[index].receiver, self)

    async def __call__(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        arrival = time.monotonic()
        self.packets += 1
        parts = [
            f.to_ndarray().reshape(-1).astype(np.float32) / 32768
            if f.format.name == "s16"
            else f.to_ndarray().reshape(-1).astype(np.float32)
            for f in self.dec.decode(av.Packet(packet.payload))
        ]
        if parts:
            pcm: FloatArray = np.concatenate(parts).astype(np.float32, copy=False)
            self.on_frame(pcm, arrival)
            if self.on_timed_frame is not None:
                self.on_timed_frame(pcm, arrival, packet.timestamp)
