"""The lean send path (media/sender.py), the push pacing of AudioOutTrack, and the receive fast
path (media/receiver.py): what a real peer (aiortc's own receiver on the client side) gets must
be a well-formed stream: one SSRC, consecutive sequence numbers, timestamps 20 ms apart, the
negotiated payload type and mid, and sender reports consistent with the packets."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import numpy as np
import pytest
from aiortc import RTCRtpReceiver
from aiortc.rtp import AnyRtcpPacket, RtcpSrPacket, RtpPacket

from tests.support import scaled
from tidegate.media import AudioOutTrack, MediaConfig
from tidegate.media._aiortc import SendShell
from tidegate.media.audio_out import FRAME_TS
from tidegate.media.sender import NTP_EPOCH_OFFSET_S, ntp_now

from .conftest import PairFactory, recv_audio, tone


class Tap:
    """Records what the client's aiortc receiver is handed (then hands it on)."""

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self.rtp: list[RtpPacket] = []
        self.rtcp: list[object] = []
        rtp, rtcp = receiver._handle_rtp_packet, receiver._handle_rtcp_packet

        async def on_rtp(packet: RtpPacket, arrival_time_ms: int) -> None:
            self.rtp.append(packet)
            await rtp(packet, arrival_time_ms)

        async def on_rtcp(packet: AnyRtcpPacket) -> None:
            self.rtcp.append(packet)
            await rtcp(packet)

        receiver._handle_rtp_packet = on_rtp  # type: ignore[method-assign]  # the tap
        receiver._handle_rtcp_packet = on_rtcp  # type: ignore[method-assign]  # the tap


async def wait_for(cond: Callable[[], object], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(scaled(timeout_s)):
        while not cond():
            await asyncio.sleep(0.01)


async def test_lean_sender_stream_is_well_formed(pair_factory: PairFactory) -> None:
    """The server's audio leaves through the lean sender: aiortc's receiver on the client gets
    every packet, in order, with the header aiortc's own sender would write."""
    pair = await pair_factory()
    server_t = next(t for t in pair.server.pc.getTransceivers() if t.kind == "audio")
    sender = server_t.sender
    assert isinstance(sender, SendShell)
    client_t = pair.client.getTransceivers()[0]
    tap = Tap(client_t.receiver)
    await wait_for(lambda: sender.tg_lean)  # sending started: through the lean path
    out = pair.server.audio_out
    assert out is not None
    out.write(tone(0.5, hz=700.0))  # 25 frames written at once: paced out over ~0.5 s
    await wait_for(lambda: len(tap.rtp) >= 25)
    pkts = tap.rtp[:25]
    assert {p.ssrc for p in pkts} == {sender.tg_ssrc}
    assert {p.payload_type for p in pkts} == {client_t._codecs[0].payloadType}
    seqs = [p.sequence_number for p in pkts]
    assert [(b - a) & 0xFFFF for a, b in itertools.pairwise(seqs)] == [1] * 24
    ts = [p.timestamp for p in pkts]
    assert [(b - a) & 0xFFFFFFFF for a, b in itertools.pairwise(ts)] == [FRAME_TS] * 24
    assert all(p.marker == 1 for p in pkts)  # as aiortc's sender marks audio
    assert {p.extensions.mid for p in pkts} == {server_t.mid}
    assert all(len(p.payload) > 0 for p in pkts)
    # The client's decoder (aiortc's own) made audio of it: the tone comes through.
    track = pair.remote_tracks[0]
    frames = [await asyncio.wait_for(recv_audio(track), scaled(5)) for _ in range(10)]
    pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32)
    assert np.abs(pcm).max() > 1000  # s16 samples: not silence


async def test_sender_reports_match_the_stream(pair_factory: PairFactory) -> None:
    """aiortc's RTCP task still sends sender reports for our SSRC, from our counters: packet
    and octet counts of what went out, the RTP timestamp of a sent packet, NTP time of now."""
    pair = await pair_factory()
    sender = next(t for t in pair.server.pc.getTransceivers() if t.kind == "audio").sender
    assert isinstance(sender, SendShell)
    tap = Tap(pair.client.getTransceivers()[0].receiver)
    await wait_for(lambda: sender.tg_lean)
    out = pair.server.audio_out
    assert out is not None
    out.write(tone(3.0))

    def srs() -> list[RtcpSrPacket]:
        return [p for p in tap.rtcp if isinstance(p, RtcpSrPacket) and p.ssrc == sender.tg_ssrc]

    await wait_for(lambda: any(sr.sender_info.packet_count >= 10 for sr in srs()))
    sr = next(sr for sr in srs() if sr.sender_info.packet_count >= 10)
    info = sr.sender_info
    got = {p.timestamp: p for p in tap.rtp}
    assert info.rtp_timestamp in got  # the last packet sent before the report
    sent_before = [
        p for p in tap.rtp if p.sequence_number <= got[info.rtp_timestamp].sequence_number
    ]
    assert info.packet_count == len(sent_before)
    assert info.octet_count == sum(len(p.payload) for p in sent_before)
    ntp_s = (info.ntp_timestamp >> 32) + (info.ntp_timestamp & 0xFFFFFFFF) / 2**32
    assert abs(ntp_s - NTP_EPOCH_OFFSET_S - time.time()) < 5.0
    stats = await sender.getStats()
    outbound = next(s for s in stats.values() if s.type == "outbound-rtp")
    assert outbound.packetsSent >= info.packet_count


def test_ntp_now_is_the_wall_clock() -> None:
    ntp = ntp_now()
    assert abs((ntp >> 32) - NTP_EPOCH_OFFSET_S - time.time()) <= 1


async def test_receive_fast_path_takes_our_audio(pair_factory: PairFactory) -> None:
    """The server's audio RTP is taken straight from the socket callback (all but what
    arrives before the receiver starts goes past aiortc's queue), and arrives whole."""
    pair = await pair_factory(recv_audio=False)
    assert pair.mic is not None
    pair.mic.write(tone(1.0))
    assert pair.server.audio_in is not None
    got = 0.0
    async with asyncio.timeout(scaled(10)):
        while got < 900:
            chunk = await pair.server.audio_in.read()
            assert chunk is not None
            got += chunk.duration_ms
    rtp = pair.server.stats()["audio_rtp"]
    assert rtp["packets"] > 40 and rtp["fast_path"] >= rtp["packets"] - 2
    assert rtp["unprotect_errors"] == 0
    assert rtp["jitter_buffer"]["lost"] == 0


async def test_push_pacing_with_lead() -> None:
    """attach(): packets go from write() itself while their window is open (lead_ms early at
    most), then one per 20 ms from a timer; flush stops what waits; detach stops sending."""
    sent: list[tuple[float, int]] = []
    track = AudioOutTrack(lead_ms=20.0)
    loop = asyncio.get_running_loop()
    track.attach(lambda payload, pts: sent.append((loop.time(), pts)))
    track.write(tone(0.2))  # 10 frames at once
    # Frame 0 opens its window; frame 1 may lead the clock by one frame: both go at once,
    # from write() itself (more only if this test was preempted for a window or longer).
    assert [pts for _, pts in sent[:2]] == [0, FRAME_TS]
    await wait_for(lambda: len(sent) == 10, 5)
    assert [pts for _, pts in sent] == [k * FRAME_TS for k in range(10)]
    t0 = sent[0][0]
    for k, (t, _) in enumerate(sent):  # never ahead of the clock by more than the lead
        assert t >= t0 + (k - 1) * 0.020 - 0.002
    track.write(tone(0.2))
    n = len(sent)
    assert track.flush() > 0
    await asyncio.sleep(0.06)
    assert len(sent) == n
    track.detach()
    track.write(tone(0.1))
    await asyncio.sleep(0.06)
    assert len(sent) == n and len(track.queue) == 5
    track.stop()


async def test_strict_windows_without_lead() -> None:
    sent: list[int] = []
    track = AudioOutTrack(lead_ms=0.0)
    track.attach(lambda payload, pts: sent.append(pts))
    track.write(tone(0.06))
    assert sent[:1] == [0]
    await wait_for(lambda: len(sent) == 3, 5)
    track.stop()
    track.write(tone(0.06))
    await asyncio.sleep(0.05)
    assert len(sent) == 3


async def test_echo_config_reaches_the_track(pair_factory: PairFactory) -> None:
    pair = await pair_factory(MediaConfig(audio_out_lead_ms=0.0))
    assert pair.server.audio_out is not None and pair.server.audio_out.lead_s == 0.0


@pytest.mark.parametrize("lead_ms", [0.0, 20.0])
async def test_pull_path_keeps_working(lead_ms: float) -> None:
    """recv() (aiortc's own sender pulls; the client side of these tests uses it) paces the
    same way."""
    track = AudioOutTrack(lead_ms=lead_ms)
    track.write(tone(0.08))
    pts = [(await track.recv()).pts for _ in range(4)]
    assert pts == [0, FRAME_TS, 2 * FRAME_TS, 3 * FRAME_TS]
    track.stop()


async def test_receive_fast_path_keeps_order_and_drops_bad_srtp(pair_factory: PairFactory) -> None:
    """While anything waits in aiortc's queue, our packet queues behind it (no overtaking);
    otherwise it takes the fast path, where a packet that fails SRTP is counted and dropped."""
    pair = await pair_factory(recv_audio=False)
    assert pair.mic is not None
    pair.mic.write(tone(0.2))
    receiver = pair.server._audio_receiver
    assert receiver is not None
    await wait_for(lambda: receiver.counters["fast_path"] > 0)
    await asyncio.sleep(0.3)  # the tone is over: nothing else arrives meanwhile
    conn = receiver.fast_connection
    assert conn is not None
    client_t = pair.client.getTransceivers()[0]
    payload_type = client_t._codecs[0].payloadType
    assert payload_type is not None
    forged = (
        bytes([0x80, payload_type])
        + (123).to_bytes(2, "big")
        + (456).to_bytes(4, "big")
        + client_t.sender._ssrc.to_bytes(4, "big")
        + bytes(40)  # not valid SRTP: no authentication tag that checks
    )
    fast, bad = receiver.counters["fast_path"], receiver.counters["unprotect_errors"]
    handled = receiver.counters["packets"]
    conn._queue.put_nowait((b"\x00", 1))  # a datagram aiortc's DTLS task ignores
    queued = conn._queue.qsize()
    conn.data_received(forged, 1)
    assert conn._queue.qsize() == queued + 1  # behind the waiting one
    assert receiver.counters["fast_path"] == fast
    await wait_for(lambda: conn._queue.qsize() == 0)
    conn.data_received(forged, 1)  # nothing waits: the fast path, which refuses it
    assert receiver.counters["fast_path"] == fast + 1
    assert receiver.counters["unprotect_errors"] == bad + 1
    assert receiver.counters["packets"] == handled  # neither forged packet was handed on
