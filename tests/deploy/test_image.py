"""The CPU image (docker/Dockerfile), built with podman from the local Debian base and run
with the host's network on 127.0.0.1: ready with every CPU engine, a control session, a
WebRTC loopback echo, an assistant turn over the WebSocket alone, and a SIGTERM that drains
(new sessions refused, the live one finishes) and exits 0 with the session's records in
PostgreSQL. The tests run in file order on one container; the last one stops it."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiortc import RTCSessionDescription

from tests.deploy.containers import (
    BUILD_TIMEOUT_S,
    Container,
    build_logged,
    podman_images,
    running,
    wait_ready,
)
from tests.server.test_assistant import QUESTION, converse
from tests.server.test_rtc import client_pc, tone, wait_rms
from tests.store.conftest import _run
from tests.store.helpers import check_draining, query
from tests.store.postgres import create_database, drop_database
from tests.support import scaled
from tidegate.bench.target import free_port
from tidegate.protocol.client import Client
from tidegate.protocol.messages import (
    InputText,
    OutputAudio,
    ResponseDone,
    RtcAnswer,
    RtcCandidate,
    RtcOffer,
    ServerRtcCandidate,
)
from tidegate.server.auth import mint_token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT_S)]
CPU_ENGINES = ("vad", "asr", "vision", "llm", "tts", "turn")


@dataclass
class Node:
    """A tidegate container as the tests reach it (the interface tests/server's helpers use)."""

    container: Container
    port: int
    secret: str
    database_url: str
    ready_s: float

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/control"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, subject: str = "alice", scopes: tuple[str, ...] = ("session",)) -> str:
        return mint_token(self.secret.encode(), subject=subject, tenant="acme", scopes=scopes)

    async def client(self, **kw: Any) -> Client:
        return await Client.connect(self.url, self.token(), **kw)


@pytest.fixture(scope="module")
def node(cpu_image: str, postgres_server: str) -> Iterator[Node]:
    """The image running on a free loopback port, recording into a fresh PostgreSQL database."""
    database_url = _run(create_database(postgres_server))
    port = free_port()
    secret = secrets.token_hex(32)
    env = {
        "TIDEGATE_HOST": "127.0.0.1",
        "TIDEGATE_PORT": str(port),
        "TIDEGATE_JWT_SECRET": secret,
        "TIDEGATE_ICE_HOSTS": "127.0.0.1",  # NETWORK.md: media candidates on loopback only
        "TIDEGATE_DATABASE_URL": database_url,
        "TIDEGATE_METRICS_INTERVAL_S": "0.5",
        "TIDEGATE_DRAIN_TIMEOUT_S": "60",
    }
    try:
        with running(cpu_image, env) as container:
            ready_s = wait_ready(container, f"http://127.0.0.1:{port}")
            print(f"cold start to ready: {ready_s:.1f} s")
            yield Node(container, port, secret, database_url, ready_s)
    finally:
        _run(drop_database(postgres_server, database_url))


def test_ready_with_every_cpu_engine_as_a_non_root_user(node: Node) -> None:
    """/readyz is ready with the six CPU engines loaded (their queues are in /metrics), the
    server runs as uid 10001 under tini, and the image's HEALTHCHECK passes."""
    assert httpx.get(f"{node.http}/readyz").json()["status"] == "ready"
    admin = {"Authorization": f"Bearer {node.token(scopes=('admin',))}"}
    metrics = httpx.get(f"{node.http}/metrics", headers=admin).text
    for engine in ("vad", "asr", "vision", "tts", "turn"):
        assert f'tidegate_engine_queue_capacity{{engine="{engine}"}}' in metrics, engine
    assert "tidegate_llm_tokens" in metrics
    ps = node.container.podman("top", node.container.name, "user", "pid", "args")
    lines = [line.split(None, 2) for line in ps.stdout.splitlines()[1:]]
    assert {u for u, _, _ in lines} == {"tidegate"}, ps.stdout
    uid = node.container.podman("exec", node.container.name, "id", "-u")
    assert uid.stdout.strip() == "10001", uid.stdout + uid.stderr
    assert any("tini" in args for _, pid, args in lines if pid == "1"), ps.stdout
    assert any("tidegate serve" in args for _, _, args in lines), ps.stdout
    health = node.container.podman("healthcheck", "run", node.container.name)
    assert health.returncode == 0, health.stdout + health.stderr


async def test_control_session_through_the_container(node: Node) -> None:
    """A loopback session over the control channel: input.text comes back as response.done."""
    async with await node.client() as client:
        created = await client.create_session({"mode": "loopback"})
        assert created.session_id.startswith("s_")
        await client.send(InputText(id="t1", text="hello container"))
        done = await client.wait_for(ResponseDone)
        assert done.text == "hello container" and done.ref == "t1"
        await client.close_session()


async def test_webrtc_loopback_echo_through_the_container(node: Node) -> None:
    """A WebRTC peer (ICE on 127.0.0.1 on both sides) hears its tone echoed by the container."""
    async with await node.client() as client:
        await client.create_session({"mode": "loopback"})
        pc, mic, tracks = await client_pc()
        try:
            answer = await client.request(RtcOffer(id="o1", sdp=pc.localDescription.sdp))
            assert isinstance(answer, RtcAnswer) and "127.0.0.1" in answer.sdp
            while (await client.wait_for(ServerRtcCandidate)).candidate:
                pass
            await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
            for line in pc.localDescription.sdp.splitlines():
                if line.startswith("a=candidate:"):
                    await client.send(
                        RtcCandidate(candidate=line[2:], sdp_mid="0", sdp_mline_index=0)
                    )
            await client.send(RtcCandidate(candidate=""))
            mic.write(tone(4.0))
            async with asyncio.timeout(scaled(20)):
                while not tracks:
                    await asyncio.sleep(0.02)
            assert await wait_rms(tracks[0]) > 0.05
        finally:
            await pc.close()
        await client.close_session()


@pytest.fixture(scope="module")
def question(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, int]:
    """QUESTION spoken by espeak-ng: int16 mono samples and their rate."""
    path = tmp_path_factory.mktemp("speech") / "question.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), QUESTION], check=True)
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16), w.getframerate()


async def test_assistant_turn_over_the_websocket_alone(
    node: Node, question: tuple[np.ndarray, int]
) -> None:
    """A spoken question sent as input.audio over the WebSocket (no WebRTC) is answered by
    the container's engines: a completed reply naming Paris, with output.audio."""
    async with converse(node) as c:  # type: ignore[arg-type]
        await c.speak(*question)
        await c.wait(lambda: c.done(), timeout_s=90)
    (done,) = c.done()
    assert done.status == "completed" and "Paris" in done.text, done.text
    assert c.of(OutputAudio)


async def test_sigterm_drains_then_exits_clean_with_the_records(node: Node) -> None:
    """SIGTERM with a session open: /readyz turns 503 draining and a new session is refused
    (overloaded) while the open one still works; when it closes the container exits 0 and
    the session's records are in PostgreSQL."""
    client = await node.client()
    sid = (await client.create_session({"mode": "loopback"})).session_id
    await client.send(InputText(id="before", text="before the signal"))
    await client.wait_for(ResponseDone)
    kill = node.container.podman("kill", "--signal", "TERM", node.container.name)
    assert kill.returncode == 0, kill.stderr

    await check_draining(node.http, node.client, client)
    await client.close_session()
    await client.close()
    assert await asyncio.to_thread(node.container.wait, 30) == 0
    assert "drained: shutting down" in node.container.logs()
    rows = await query(node.database_url, "SELECT text FROM responses WHERE session_id = :s", s=sid)
    assert sorted(r["text"] for r in rows) == ["before the signal", "during the drain"]
    sessions = await query(node.database_url, "SELECT status FROM sessions WHERE id = :s", s=sid)
    assert [s["status"] for s in sessions] == ["closed"]


@pytest.mark.gpu
def test_gpu_image_builds_on_a_cuda_base(tmp_path: Path) -> None:
    """docker/Dockerfile.gpu builds on the CUDA base (TIDEGATE_CUDA_IMAGE, default the
    upstream one) and its ONNX Runtime offers the CUDA provider. Needs a GPU and the base."""
    if subprocess.run(["sh", "-c", "nvidia-smi -L"], capture_output=True).returncode != 0:
        pytest.skip("no NVIDIA GPU here (docs/deploy.md: the GPU image is not built here)")
    images = podman_images()
    cuda = os.environ.get("TIDEGATE_CUDA_IMAGE", "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04")
    log = tmp_path / "gpu-build.log"

    def build(out: Any) -> dict[str, float]:
        tag = "localhost/tidegate:gpu"
        seconds = images.build(
            images.ROOT / "docker" / "Dockerfile.gpu",
            tag,
            out,
            {"CUDA_IMAGE": cuda, "NODE_IMAGE": images.NODE_TAG},
        )
        return {"gpu": seconds}

    build_logged(build, log)
    out = subprocess.run(
        [
            *("podman", "run", "--rm", "--network", "host", "localhost/tidegate:gpu"),
            *("python", "-c", "import onnxruntime; print(onnxruntime.get_available_providers())"),
        ],
        env=images.podman_env(),
        capture_output=True,
        text=True,
        timeout=scaled(300),
    )
    assert "CUDAExecutionProvider" in out.stdout, out.stdout + out.stderr
