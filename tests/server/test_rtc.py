"""WebRTC signalling against a real server: rtc.offer over the control channel, the HTTP
offer route, the loopback echo, media metrics, and refusals (bad SDP, wrong tenant)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from tests.support import scaled
from tidegate.media import AudioOutTrack, IcePolicy, apply_ice_policy
from tidegate.pipelines.mode import Mode
from tidegate.pipelines.modes.loopback import LoopbackLane
from tidegate.protocol.client import RefusedError
from tidegate.protocol.messages import (
    Metrics,
    RtcAnswer,
    RtcCandidate,
    RtcOffer,
    ServerRtcCandidate,
)

from .conftest import LiveServer, make_settings, run_server

LOOPBACK = IcePolicy()


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * 16_000)) / 16_000
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


async def client_pc(
    with_video: bool = False,
) -> tuple[RTCPeerConnection, AudioOutTrack, list[MediaStreamTrack]]:
    pc = RTCPeerConnection(LOOPBACK.configuration())
    mic = AudioOutTrack()
    pc.addTrack(mic)
    if with_video:
        from aiortc import VideoStreamTrack

        pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    tracks: list[MediaStreamTrack] = []
    pc.on("track", tracks.append)
    apply_ice_policy(pc, LOOPBACK)
    await pc.setLocalDescription(await pc.createOffer())
    return pc, mic, tracks


async def wait_rms(track: MediaStreamTrack, frames: int = 40) -> float:
    best = 0.0
    async with asyncio.timeout(scaled(10)):
        for _ in range(frames):
            f = await track.recv()
            assert isinstance(f, av.AudioFrame)
            pcm = f.to_ndarray().astype(np.float32) / 32768
            best = max(best, float(np.sqrt(np.mean(pcm**2))))
    return best


async def test_offer_over_control_channel_echoes_audio(tmp_path: Path) -> None:
    """rtc.offer gets rtc.answer and trickled candidates; the audio comes back; metrics show
    the media counters and the frames seen."""
    settings = make_settings(tmp_path, metrics_interval_s=0.3)
    async with run_server(settings) as server, await server.client() as client:
        created = await client.create_session({"mode": "loopback"})
        assert created.ice_servers == ()  # nothing configured: no public default
        pc, mic, tracks = await client_pc(with_video=True)
        answer = await client.request(RtcOffer(id="o1", sdp=pc.localDescription.sdp))
        assert isinstance(answer, RtcAnswer) and answer.ref == "o1"
        assert "a=candidate:" in answer.sdp and "127.0.0.1" in answer.sdp
        cands = []
        while True:
            c = await client.wait_for(ServerRtcCandidate)
            if not c.candidate:
                break
            cands.append(c)
        assert cands, "the server trickles its candidates"
        for c in cands:
            parsed = candidate_from_sdp(c.candidate.split(":", 1)[1])
            assert parsed.ip == "127.0.0.1"
        await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
        # Our own candidates, trickled too (they are in the offer as well).
        for line in pc.localDescription.sdp.splitlines():
            if line.startswith("a=candidate:"):
                await client.send(RtcCandidate(candidate=line[2:], sdp_mid="0", sdp_mline_index=0))
        await client.send(RtcCandidate(candidate=""))
        mic.write(tone(4.0))
        async with asyncio.timeout(scaled(10)):
            while not tracks:
                await asyncio.sleep(0.01)
        assert await wait_rms(tracks[0]) > 0.05
        metrics = None
        async with asyncio.timeout(scaled(10)):
            while True:
                metrics = await client.wait_for(Metrics)
                lanes = metrics.stats["lanes"]
                if lanes["rtc"]["audio_chunks"] > 20 and lanes["rtc"]["frames"] > 0:
                    break
        media = lanes["media"]
        assert media["state"] == "connected"
        assert media["audio_rtp"]["packets"] > 20
        assert media["audio_rtp"]["jitter_buffer"]["lost"] == 0
        assert media["audio_out"]["frames_sent"] > 20
        assert media["video_in"]["frames"] > 0
        assert lanes["rtc"]["last_frame"]["width"] == 640
        await pc.close()
        await client.close_session()


async def test_http_offer_route(server: LiveServer) -> None:
    """POST /v1/sessions/{id}/offer answers for the caller's own session, and for no other."""
    async with await server.client() as client:
        created = await client.create_session({"mode": "loopback"})
        pc, mic, _ = await client_pc()
        url = f"{server.http}/v1/sessions/{created.session_id}/offer"
        body = {"type": "offer", "sdp": pc.localDescription.sdp}
        async with httpx.AsyncClient() as http:
            r = await http.post(url, json=body)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized"
            other = {"Authorization": "Bearer " + server.token(tenant="globex")}
            r = await http.post(url, json=body, headers=other)
            assert r.status_code == 404 and r.json()["code"] == "not_found"
            auth = {"Authorization": "Bearer " + server.token()}
            r = await http.post(url, json={"type": "offer", "sdp": "v=0\r\n"}, headers=auth)
            assert r.status_code == 400 and r.json()["code"] == "bad_sdp"
            r = await http.post(url, content=b"{", headers=auth)
            assert r.status_code == 400 and r.json()["code"] == "invalid_field"
            r = await http.post(url, json=body, headers=auth)
            assert r.status_code == 200, r.text
            answer = r.json()
        assert answer["type"] == "answer"
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        mic.write(tone(1.0))
        session = server.runtime.registry.get(created.session_id)
        assert session is not None and isinstance(session.mode, Mode)
        async with asyncio.timeout(scaled(10)):
            while session.mode.lane(LoopbackLane).rtc_audio_chunks < 10:
                await asyncio.sleep(0.02)
        await pc.close()


async def test_http_offer_is_rate_limited_and_origin_checked(tmp_path: Path) -> None:
    """POST /v1/sessions/{id}/offer counts against the subject's request budget (429 with
    Retry-After past rate_burst_requests) and refuses a browser origin not allowed (403)."""
    settings = make_settings(tmp_path, rate_requests_per_s=0.5, rate_burst_requests=2)
    async with run_server(settings) as server, await server.client() as client:
        created = await client.create_session({"mode": "loopback"})
        url = f"{server.http}/v1/sessions/{created.session_id}/offer"
        auth = {"Authorization": "Bearer " + server.token()}
        bad_sdp = {"type": "offer", "sdp": "v=0\r\n"}
        async with httpx.AsyncClient() as http:
            codes = [(await http.post(url, json=bad_sdp, headers=auth)).status_code for _ in "ab"]
            assert codes == [400, 400]
            r = await http.post(url, json=bad_sdp, headers=auth)
            assert r.status_code == 429 and r.headers["Retry-After"] == "2"
            assert r.json()["code"] == "rate_limited" and r.json()["retry_after_ms"] > 0
            other = {"Authorization": "Bearer " + server.token(subject="bob")}
            r = await http.post(
                url, json=bad_sdp, headers={**other, "Origin": "http://evil.example"}
            )
            assert r.status_code == 403 and r.json()["code"] == "forbidden"


async def test_bad_sdp_and_early_candidate_are_refused(server: LiveServer) -> None:
    """A malformed offer gets bad_sdp; a candidate before any offer is refused; the session
    keeps working."""
    async with await server.client() as client:
        await client.create_session({"mode": "loopback"})
        with pytest.raises(RefusedError) as info:
            await client.request(RtcCandidate(id="c0", candidate="candidate:1 1 udp 1 1 typ"))
        assert info.value.server_code == "unexpected_message"
        with pytest.raises(RefusedError) as info:
            await client.request(RtcOffer(id="o1", sdp="this is not sdp"))
        assert info.value.server_code == "bad_sdp"
        assert "v=0" in info.value.error.message
        with pytest.raises(RefusedError) as info:
            await client.request(RtcOffer(id="o2", sdp="v=0\r\ns=-\r\nm=audio 9 RTP/AVP 0\r\n"))
        assert info.value.server_code == "bad_sdp"
        assert (await client.ping()).rtt_ms > 0


async def test_turn_credentials_in_session_created(tmp_path: Path) -> None:
    """With a TURN secret, session.created carries coturn shared-secret credentials that
    expire after turn_ttl_s; configured STUN servers are listed as they are."""
    secret = "s3cret-for-coturn"
    settings = make_settings(
        tmp_path,
        ice_servers=("stun:127.0.0.1:3478",),
        turn_urls=("turn:127.0.0.1:3478?transport=udp",),
        turn_secret=secret,
        turn_ttl_s=300.0,
    )
    async with run_server(settings) as server, await server.client() as client:
        created = await client.create_session({"mode": "loopback"})
    stun, turn = created.ice_servers
    assert stun.urls == ("stun:127.0.0.1:3478",) and stun.username is None
    assert turn.urls == ("turn:127.0.0.1:3478?transport=udp",)
    assert turn.username is not None
    expiry, _, user = turn.username.partition(":")
    assert user == created.session_id
    assert int(expiry) == pytest.approx(time.time() + 300, abs=5)
    digest = hmac.new(secret.encode(), turn.username.encode(), hashlib.sha1).digest()
    assert turn.credential == base64.b64encode(digest).decode()
