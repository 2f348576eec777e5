"""The ``vision`` mode: a camera streams frames (input.frame or WebRTC video) and gets
vision.result at the vision lane's rate, on a server that runs the vision engine alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import pytest_asyncio
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from PIL import Image

from tests.server.conftest import LiveServer, make_settings, run_server
from tests.support import ASSETS, prepare_models, scaled, wait_ready
from tidegate.media import IcePolicy, apply_ice_policy
from tidegate.protocol.client import Client, RefusedError
from tidegate.protocol.messages import InputFrame, RtcAnswer, RtcOffer, VisionResult

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOOPBACK = IcePolicy.from_settings(("127.0.0.1",), "", ())
INTERVAL_S = 0.2


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveServer]:
    """A server that runs the vision engine and no other."""
    prepared = prepare_models("blazeface", assets=("astronaut.png", "coffee.png"))
    tmp = tmp_path_factory.mktemp("vision")
    (tmp / "models").symlink_to(Path(prepared) / "models")
    settings = make_settings(tmp, engines=("vision",), assistant_vision_interval_s=INTERVAL_S)
    async with run_server(settings) as server:
        await wait_ready(server.http, timeout_s=120)
        yield server


async def _results(client: Client, n: int, timeout_s: float = 20.0) -> list[VisionResult]:
    out: list[VisionResult] = []
    async with asyncio.timeout(scaled(timeout_s)):
        while len(out) < n:
            out.append(await client.wait_for(VisionResult))
    return out


async def test_frames_over_ws_get_vision_results(live: LiveServer) -> None:
    """input.frame photos get vision.result naming each frame's time: a face in the astronaut,
    none in the coffee cup; the server loaded no ASR, LLM or TTS."""
    engines = live.runtime.engines
    assert engines is not None and set(engines.schedulers) == {"vision"}
    assert not engines.batchers
    async with await live.client() as client:
        await client.create_session({"mode": "vision"})
        astronaut = (ASSETS / "astronaut.png").read_bytes()
        await client.send(InputFrame(image=astronaut, encoding="png", ts=1000.0))
        (first,) = await _results(client, 1)
        coffee = (ASSETS / "coffee.png").read_bytes()
        await client.send(InputFrame(image=coffee, encoding="png", ts=2000.0))
        (second,) = await _results(client, 1)
    assert first.frame_ts == 1000.0 and [d.label for d in first.detections] == ["face"]
    assert second.frame_ts == 2000.0 and second.detections == ()


async def test_modes_that_need_other_engines_are_unsupported(live: LiveServer) -> None:
    """On the vision-only server, transcribe and assistant are refused as unsupported."""
    for mode in ("transcribe", "assistant"):
        async with await live.client() as client:
            with pytest.raises(RefusedError) as info:
                await client.create_session({"mode": mode})
            assert info.value.server_code == "unsupported" and mode in info.value.error.message


class FaceTrack(VideoStreamTrack):
    """A camera that films the astronaut photo: real frames with a face, at 30 fps."""

    def __init__(self) -> None:
        super().__init__()
        rgb = np.asarray(Image.open(ASSETS / "astronaut.png").convert("RGB").resize((320, 320)))
        self.rgb = np.ascontiguousarray(rgb)

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(self.rgb, format="rgb24")
        frame.pts = pts
        frame.time_base = time_base if isinstance(time_base, Fraction) else Fraction(time_base)
        return frame


async def test_webrtc_video_gets_vision_results(live: LiveServer) -> None:
    """A real aiortc peer sending only video (a face) gets vision.result at the lane's rate:
    a face in each, naming increasing frame times."""
    pc = RTCPeerConnection(LOOPBACK.configuration())
    pc.addTransceiver(FaceTrack(), direction="sendonly")
    apply_ice_policy(pc, LOOPBACK)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with await live.client() as client:
            await client.create_session({"mode": "vision"})
            answer = await client.request(RtcOffer(id="o1", sdp=pc.localDescription.sdp))
            assert isinstance(answer, RtcAnswer)
            await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
            results = await _results(client, 3)
    finally:
        await pc.close()
    assert all([d.label for d in r.detections] == ["face"] for r in results)
    times = [r.frame_ts for r in results]
    assert times == sorted(times) and len(set(times)) == 3


async def test_a_config_that_names_its_lanes(live: LiveServer) -> None:
    """{"lanes": ["vision"]} composes a session of the vision lane alone (mode 'lanes') that
    looks at frames; an unknown lane is invalid_field naming it; lanes whose engines the
    server lacks (transcribe: VAD and ASR) are unsupported."""
    async with await live.client() as client:
        created = await client.create_session({"lanes": ["vision"]})
        assert created.config == {"mode": "lanes", "lanes": ["vision"]}
        astronaut = (ASSETS / "astronaut.png").read_bytes()
        await client.send(InputFrame(image=astronaut, encoding="png", ts=7.0))
        (result,) = await _results(client, 1)
    assert result.frame_ts == 7.0 and [d.label for d in result.detections] == ["face"]
    refusals = {
        "invalid_field": {"lanes": ["vision", "sonar"]},
        "unsupported": {"lanes": ["transcribe", "vision"]},
    }
    for code, config in refusals.items():
        async with await live.client() as client:
            with pytest.raises(RefusedError) as info:
                await client.create_session(config)
        assert info.value.server_code == code
    assert "sonar" in str(info.value) or "VAD" in info.value.error.message
