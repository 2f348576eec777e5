"""Opus codec, the audio inbox, the outbound track and ICE policy, each on its own."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import socket

import numpy as np
import pytest
from aiortc import RTCPeerConnection

from tidegate.media import AudioInbox, AudioOutTrack, IceConfigError, IcePolicy, apply_ice_policy
from tidegate.media.audio_out import FRAME_TS
from tidegate.media.ice import HostAddress, parse_hosts, parse_port_range, turn_credentials
from tidegate.media.opus import OpusDecoder, OpusEncoder

from .conftest import tone


def test_opus_round_trip_at_16k() -> None:
    """Encoded and decoded at 16 kHz mono, a tone keeps its pitch; PLC and FEC fill 20 ms."""
    enc, dec = OpusEncoder(16_000), OpusDecoder(16_000)
    pcm = tone(1.0, hz=500.0)
    packets = [enc.encode(np.ascontiguousarray(pcm[i : i + 320])) for i in range(0, 16_000, 320)]
    out = np.concatenate([dec.decode(p) for p in packets])
    assert out.dtype == np.float32 and len(out) == 16_000
    spectrum = np.abs(np.fft.rfft(out[4000:]))
    assert np.argmax(spectrum) * 16_000 / len(out[4000:]) == pytest.approx(500, abs=10)
    assert len(dec.conceal()) == 320
    assert len(dec.recover(packets[3])) == 320
    assert dec.samples_in(packets[0]) == 320
    with pytest.raises(Exception, match="opus_decode_float"):
        dec.decode(b"\xff\xff\xff")
    enc.close()
    dec.close()


def test_inbox_drops_silence_first_then_speech_with_a_lag_report() -> None:
    """Full inbox: silent chunks go first; speech goes only after, and on_lag says so."""
    reports: list[tuple[float, float]] = []
    box = AudioInbox(max_s=0.1, lag_report_ms=1000, on_lag=lambda lag, d: reports.append((lag, d)))
    loud = tone(0.02)
    quiet = np.zeros(320, np.float32)
    box.push(quiet, 0)
    for i in range(1, 5):
        box.push(loud, i * 20.0)
    box.push(loud, 100.0)  # full (100 ms): the silent chunk goes
    assert box.stats.dropped_silence_ms == 20 and box.stats.dropped_speech_ms == 0
    assert reports == []
    box.push(loud, 120.0)  # no silence left: the oldest speech goes, and is reported
    assert box.stats.dropped_speech_ms == 20
    assert reports == [(100.0, 20.0)]
    chunk = box.read_nowait(max_ms=1000)
    assert chunk is not None and len(chunk.pcm) == 5 * 320 and chunk.media_ms == 40.0
    assert box.lag_ms == 0


def test_inbox_drops_a_silent_chunk_behind_speech() -> None:
    """The silent chunk to drop may sit behind speech: it goes, the speech before it stays
    (chunks are found by position: they hold arrays, which cannot be compared as a bool)."""
    box = AudioInbox(max_s=0.06, lag_report_ms=1000)
    loud = tone(0.02)
    box.push(loud, 0.0)
    box.push(np.zeros(320, np.float32), 20.0)
    box.push(loud, 40.0)
    box.push(loud, 60.0)  # full: the silent chunk in the middle goes
    assert box.stats.dropped_silence_ms == 20 and box.stats.dropped_speech_ms == 0
    chunk = box.read_nowait(max_ms=1000)
    assert chunk is not None and len(chunk.pcm) == 3 * 320 and chunk.media_ms == 0.0


async def test_inbox_read_waits_and_ends_on_close() -> None:
    """read() waits for audio, returns everything queued, then None once closed."""
    box = AudioInbox()
    reader = asyncio.get_running_loop().create_task(box.read())
    await asyncio.sleep(0)
    box.push(tone(0.02), 0.0)
    box.push(tone(0.02), 20.0)
    chunk = await reader
    assert chunk is not None and chunk.duration_ms in (20.0, 40.0)
    box.read_nowait()
    box.close()
    assert await box.read() is None


async def test_out_track_frames_paces_and_flushes() -> None:
    """Writes of any size become 20 ms packets with steadily increasing timestamps; a flush
    empties the queue at once."""
    track = AudioOutTrack()
    track.write(tone(0.05))  # 2 frames + 10 ms carried over
    assert len(track.queue) == 2 and track.queued_ms == pytest.approx(50)
    track.write(tone(0.01))
    assert len(track.queue) == 3
    pts = [(await track.recv()).pts for _ in range(3)]
    assert pts == [0, FRAME_TS, 2 * FRAME_TS]
    track.write(tone(1.0))
    assert track.flush() == pytest.approx(1000)
    assert track.queued_ms == 0 and track.stats()["flushed_ms"] == pytest.approx(1000)
    track.write(tone(0.1))
    assert track.trim(40) == 3 and len(track.queue) == 2
    track.stop()


def test_ice_settings_parse_and_refuse() -> None:
    """Hosts, NAT mappings, port ranges and server URLs are checked with clear errors."""
    assert parse_hosts(["127.0.0.1"]) == (HostAddress("127.0.0.1", "127.0.0.1"),)
    assert parse_hosts(["203.0.113.7=10.0.0.7"]) == (HostAddress("203.0.113.7", "10.0.0.7"),)
    assert parse_hosts(["*"]) == ()
    with pytest.raises(IceConfigError, match="not an IP address"):
        parse_hosts(["example.com"])
    assert parse_port_range("40000-40100") == (40000, 40100)
    assert parse_port_range("") is None
    for bad in ("40100-40000", "x-y", "0-10"):
        with pytest.raises(IceConfigError, match="ice_ports"):
            parse_port_range(bad)
    with pytest.raises(IceConfigError, match="not a stun"):
        IcePolicy.from_settings(("127.0.0.1",), "", ("http://x",))
    assert IcePolicy().configuration().iceServers == []


def test_turn_credentials_follow_coturn_rest_scheme() -> None:
    """username = expiry:user, password = base64(HMAC-SHA1(secret, username))."""
    user, password = turn_credentials("k", user="s_1", ttl_s=60, now_s=1000.0)
    assert user == "1060:s_1"
    expected = base64.b64encode(hmac.new(b"k", b"1060:s_1", hashlib.sha1).digest()).decode()
    assert password == expected


async def test_gathering_uses_only_the_given_address_and_port_range() -> None:
    """Host candidates are on the configured address, in the configured range; a full range
    is a clear error."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        base = s.getsockname()[1] % 20000 + 30000
    policy = IcePolicy(ports=(base, base + 1))
    pcs = []
    try:
        for _ in range(2):
            pc = RTCPeerConnection(policy.configuration())
            pc.addTransceiver("audio")
            apply_ice_policy(pc, policy)
            await pc.setLocalDescription(await pc.createOffer())
            pcs.append(pc)
            cands = [ln for ln in pc.localDescription.sdp.splitlines() if "a=candidate" in ln]
            assert len(cands) == 1
            _, _, _, _, ip, port, *_ = cands[0].split()
            assert ip == "127.0.0.1" and base <= int(port) <= base + 1
        pc = RTCPeerConnection(policy.configuration())
        pc.addTransceiver("audio")
        apply_ice_policy(pc, policy)
        pcs.append(pc)
        with pytest.raises(IceConfigError, match="free port"):
            await pc.setLocalDescription(await pc.createOffer())
    finally:
        for pc in pcs:
            await pc.close()
