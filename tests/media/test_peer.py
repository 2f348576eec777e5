"""Two real peer connections on loopback: audio and video reach the consumer, the echo comes
back, loss is concealed, bad SDP is refused, teardown leaves nothing behind."""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
from typing import Any

import numpy as np
import pytest
from aiortc import RTCPeerConnection

from tests.support import scaled
from tidegate.media import (
    AudioChunk,
    BadSdpError,
    MediaConfig,
    MediaPeer,
    MediaStateError,
    apply_ice_policy,
    live_peers,
)

from .conftest import PairFactory, close_pair, connect_pair, recv_audio, tone


def dominant_hz(pcm: np.ndarray, rate: int = 16_000) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm))))
    return float(np.argmax(spectrum) * rate / len(pcm))


async def collect_audio(peer: MediaPeer, ms: float) -> list[AudioChunk]:
    assert peer.audio_in is not None
    chunks = []
    got = 0.0
    async with asyncio.timeout(scaled(10)):
        while got < ms:
            chunk = await peer.audio_in.read()
            assert chunk is not None
            chunks.append(chunk)
            got += chunk.duration_ms
    return chunks


async def test_audio_reaches_consumer_as_16k_mono_float32(pair_factory: PairFactory) -> None:
    """Client Opus audio arrives as 16 kHz mono float32 chunks, in order, at the real rate."""
    pair = await pair_factory()
    assert pair.mic is not None
    pair.mic.write(tone(2.0, hz=440.0))
    chunks = await collect_audio(pair.server, 1000)
    pcm = np.concatenate([c.pcm for c in chunks])
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    assert all(len(c.pcm) % 320 == 0 for c in chunks)  # whole 20 ms packets at 16 kHz
    media = [c.media_ms for c in chunks]
    assert media == sorted(media)
    # Media time advances 20 ms per 320 samples: 16 kHz.
    span_ms = chunks[-1].media_ms + chunks[-1].duration_ms - chunks[0].media_ms
    assert len(pcm) == pytest.approx(span_ms * 16, rel=0.01)
    assert dominant_hz(pcm[1600:]) == pytest.approx(440.0, abs=20)
    st = pair.server.stats()
    assert st["audio_rtp"]["jitter_buffer"]["lost"] == 0
    assert st["audio_rtp"]["not_opus"] == 0


async def test_video_frames_reach_latest_slot_and_convert_on_request(
    pair_factory: PairFactory,
) -> None:
    """Decoded video lands in the latest-only slot; RGB/BGR arrays only when asked. Each
    frame went to the decoder at its marked last packet, none waited for the next frame."""
    pair = await pair_factory(audio=False, video=True)
    video = pair.server.video_in
    assert video is not None and pair.server.audio_in is None
    plain = await video.take(timeout_s=scaled(10))
    assert plain is not None and plain.image is None
    assert (plain.width, plain.height) == (640, 480)
    rgb = await video.take("rgb24", timeout_s=scaled(10))
    bgr = await video.take("bgr24", timeout_s=scaled(10))
    assert rgb is not None and rgb.image is not None
    assert bgr is not None and bgr.image is not None
    assert rgb.image.shape == (480, 640, 3) and rgb.image.dtype == np.uint8
    assert bgr.image.shape == (480, 640, 3)
    assert rgb.index < bgr.index
    await asyncio.sleep(0.5)  # nobody takes: newer frames replace older ones
    st = video.stats()
    assert st["dropped"] > 0
    assert st["frames"] == st["taken"] + st["dropped"] + (1 if video.slot else 0)
    with pytest.raises(ValueError, match="format"):
        await video.take("yuv9")
    decoder = pair.server.stats()["video_decoder"]
    assert decoder["frames_at_marker"] >= st["frames"] and decoder["frames_at_next"] == 0


async def test_video_frames_over_the_pixel_limit_are_never_decoded(
    pair_factory: PairFactory,
) -> None:
    """A WebRTC stream whose keyframes are larger than video_max_pixels (the peer's encoder
    chose the size) never reaches aiortc's decoder: its frames are counted as oversized and
    none is decoded, converted or taken."""
    pair = await pair_factory(MediaConfig(video_max_pixels=640 * 480 - 1), audio=False, video=True)
    video = pair.server.video_in
    assert video is not None
    async with asyncio.timeout(scaled(20)):
        while pair.server.stats()["video_decoder"]["oversized"] < 10:
            await asyncio.sleep(0.05)
    guard = pair.server.stats()["video_decoder"]
    assert guard["last_size"] == [640, 480] and guard["queued"] == 0
    assert video.frames == 0
    with pytest.raises(TimeoutError):
        await video.take(timeout_s=0.3)


async def test_forged_vp8_keyframes_are_never_decoded(
    pair_factory: PairFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer whose VP8 keyframes claim 16000x16000 (65 bytes that make the decoder allocate
    ~800 MB, over and over as it asks for new keyframes) costs the server no memory: the
    frames are counted as oversized and never decoded."""
    from aiortc.codecs import vpx

    from ..memory import PeakRss

    encode = vpx.Vp8Encoder.encode

    def forged(self: Any, frame: Any, force_keyframe: bool = False) -> Any:
        payloads, timestamp = encode(self, frame, force_keyframe)
        descriptor, data = vpx.VpxPayloadDescriptor.parse(payloads[0])
        if descriptor.partition_start and not data[0] & 1:  # a keyframe's first packet
            side = (16_000).to_bytes(2, "little")
            payloads[0] = bytes(descriptor) + data[:6] + side + side + data[10:]
        return payloads, timestamp

    monkeypatch.setattr(vpx.Vp8Encoder, "encode", forged)  # the attacker's client only
    with PeakRss() as rss:
        pair = await pair_factory(audio=False, video=True)
        async with asyncio.timeout(scaled(20)):
            while pair.server.stats()["video_decoder"]["oversized"] < 30:
                await asyncio.sleep(0.05)
    assert pair.server.stats()["video_decoder"]["last_size"] == [16_000, 16_000]
    assert pair.server.video_in is not None and pair.server.video_in.frames == 0
    assert rss.growth < 200 * 2**20, f"RSS grew {rss.growth / 2**20:.0f} MiB"


def test_decoded_frames_over_the_limit_are_dropped_by_the_inbox() -> None:
    """The inbox drops a decoded frame over its pixel limit or with a side over 8192 (a
    second line behind the decoder guard), counting it as oversized."""
    import av

    from tidegate.media import VideoInbox

    inbox = VideoInbox(max_pixels=100)
    inbox.put(av.VideoFrame(16, 16, "yuv420p"))
    inbox.put(av.VideoFrame(8, 8, "yuv420p"))
    wide = VideoInbox()
    wide.put(av.VideoFrame(8194, 2, "yuv420p"))
    assert inbox.stats()["oversized"] == 1 and inbox.stats()["frames"] == 2
    assert inbox.slot and wide.stats()["oversized"] == 1 and not wide.slot


async def test_echo_comes_back_to_the_client(pair_factory: PairFactory) -> None:
    """What the server writes to its outbound track plays on the client's track."""
    pair = await pair_factory()
    assert pair.mic is not None
    pair.mic.write(tone(3.0, hz=440.0))
    out = pair.server.audio_out
    assert out is not None

    async def echo() -> None:
        assert pair.server.audio_in is not None
        while (chunk := await pair.server.audio_in.read()) is not None:
            out.write(chunk.pcm)

    task = asyncio.get_running_loop().create_task(echo())
    try:
        async with asyncio.timeout(scaled(10)):
            while not pair.remote_tracks:
                await asyncio.sleep(0.01)
            track = pair.remote_tracks[0]
            frames = [await recv_audio(track) for _ in range(60)]
    finally:
        task.cancel()
    pcm = np.concatenate([f.to_ndarray().reshape(-1, 2)[:, 0] for f in frames[20:]])
    pcm = pcm.astype(np.float32) / 32768
    assert float(np.sqrt(np.mean(pcm**2))) > 0.05  # the tone, not silence
    assert dominant_hz(pcm, 48_000) == pytest.approx(440.0, abs=20)
    assert out.stats()["frames_sent"] >= 60


@pytest.mark.parametrize("every", [10, 3])
async def test_lost_packets_are_concealed_not_stalled(
    pair_factory: PairFactory, every: int
) -> None:
    """Every n-th packet lost: audio keeps flowing, each loss filled by FEC or PLC."""
    pair = await pair_factory(drop=lambda n: n % every == 0 and n > 5)
    assert pair.mic is not None
    pair.mic.write(tone(3.0))
    chunks = await collect_audio(pair.server, 1500)
    st = pair.server.stats()["audio_rtp"]["jitter_buffer"]
    assert pair.dropped_rtp > 0
    assert st["lost"] > 0 and st["lost"] == st["fec"] + st["plc"]
    # No gap in media time: the concealed packets stand in for the lost ones.
    for a, b in itertools.pairwise(chunks):
        assert b.media_ms == pytest.approx(a.media_ms + a.duration_ms, abs=0.01)
    assert any(c.concealed for c in chunks)
    # Every lost packet was concealed, none waited for: the buffer holds nothing now that
    # the stream runs on (the bounded wait itself is proven with a clock in test_jitter.py).
    assert st["resyncs"] == 0 and st["late"] == 0


async def test_malformed_sdp_is_refused_with_bad_sdp() -> None:
    """Garbage, an offer without media and one without Opus are refused as bad_sdp."""
    cases = {
        "hello": "starting with 'v=0'",
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n": "no m= section",
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\n": "offer",
    }
    for sdp, words in cases.items():
        peer = MediaPeer(MediaConfig())
        try:
            with pytest.raises(BadSdpError, match=words) as info:
                await peer.accept_offer(sdp)
            assert info.value.code.value == "bad_sdp"
        finally:
            await peer.close()
    # A real offer with PCMU only: the error names the codec problem.
    pc = RTCPeerConnection(MediaConfig().ice.configuration())
    pc.addTransceiver("audio")
    apply_ice_policy(pc, MediaConfig().ice)  # gather on 127.0.0.1 only
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    lines = [ln for ln in sdp.splitlines() if "opus" not in ln.lower()]
    lines = [ln.replace(" 96 0 8", " 0 8") if ln.startswith("m=audio") else ln for ln in lines]
    peer = MediaPeer(MediaConfig())
    try:
        with pytest.raises(BadSdpError, match="Opus"):
            await peer.accept_offer("\r\n".join(lines) + "\r\n")
    finally:
        await peer.close()


async def test_candidate_before_offer_and_bad_candidate(pair_factory: PairFactory) -> None:
    """A candidate needs an offer first; a malformed one is bad_sdp; empty ends the trickle."""
    peer = MediaPeer(MediaConfig())
    try:
        with pytest.raises(MediaStateError, match="offer first"):
            await peer.add_candidate("candidate:1 1 udp 1 127.0.0.1 9 typ host", "0", 0)
    finally:
        await peer.close()
    pair = await pair_factory()
    with pytest.raises(BadSdpError, match="expected 'candidate:"):
        await pair.server.add_candidate("candidate:nonsense", "0", 0)
    await pair.server.add_candidate("candidate:1 1 udp 2130706431 127.0.0.1 9 typ host", "0", 0)
    await pair.server.add_candidate("", None, None)


def _owned_state() -> tuple[int, int]:
    """Tasks, and threads other than the loop's default executor (a bounded, reused pool:
    aiortc encodes video on it)."""
    threads = [t for t in threading.enumerate() if not t.name.startswith("asyncio_")]
    return len(asyncio.all_tasks()), len(threads)


async def _one_cycle(i: int, video: bool) -> None:
    pair = await connect_pair(video=video)
    assert pair.mic is not None
    pair.mic.write(tone(0.2))
    async with asyncio.timeout(scaled(10)):
        while pair.server.state != "connected":
            await asyncio.sleep(0.005)
        assert pair.server.audio_in is not None
        chunk = await pair.server.audio_in.read()
        assert chunk is not None, f"cycle {i}: no audio"
        if video:
            assert pair.server.video_in is not None
            assert await pair.server.video_in.take() is not None, f"cycle {i}: no frame"
    await close_pair(pair)


@pytest.mark.slow
async def test_teardown_frees_everything_after_100_cycles() -> None:
    """100 connect/exchange/disconnect cycles leave no task, thread or peer behind."""
    await _one_cycle(-1, True)  # warm up what is created once (the default executor)
    tasks0, threads0 = _owned_state()
    for i in range(100):
        await _one_cycle(i, i % 10 == 0)
    async with asyncio.timeout(scaled(10)):
        while _owned_state()[0] > tasks0 or _owned_state()[1] > threads0:
            await asyncio.sleep(0.05)
    gc.collect()
    assert live_peers() == 0
    assert [o for o in gc.get_objects() if isinstance(o, RTCPeerConnection)] == []
    names = {t.name for t in threading.enumerate()}
    assert not any(n.endswith("-decoder") for n in names), names
