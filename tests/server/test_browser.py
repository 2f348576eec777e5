"""A real headless Chromium, with fake camera and microphone, talks WebRTC to the server.

Both run inside a network namespace this test creates and deletes (NETWORK.md): loopback plus
a veth pair that stays inside, no route out. The server is ``tidegate serve`` in the
namespace; Chromium is driven over its DevTools protocol on a pipe (file descriptors cross
namespaces; no port is opened for it). The page (``browser/page.js``) runs on the server's own
origin, ``http://127.0.0.1:PORT`` (a secure context, so it has getUserMedia), and does what a
browser client does: control channel, loopback session, offer with trickled candidates.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import CHROMIUM, chromium, in_netns, network_namespace, stop
from tests.support import scaled
from tidegate.server.auth import mint_token

PAGE_JS = (Path(__file__).parent / "browser" / "page.js").read_text()
NETNS_ADDR = "10.250.0.1"
PORT = 8080  # a fresh namespace has nothing else listening


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace with lo and a veth pair inside it (no way out); deleted afterwards."""
    with network_namespace([NETNS_ADDR]) as name:
        yield name


def _wait_listening(proc: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + scaled(timeout_s)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"tidegate serve exited ({proc.poll()}) before listening")
        if "listening on" in line:
            return
    raise TimeoutError("tidegate serve did not start")


@pytest.mark.slow
def test_chromium_sends_camera_and_microphone_and_hears_the_echo(netns: str) -> None:
    """Chromium's fake devices reach the server as audio chunks and video frames (the server's
    metrics say so), and the echoed audio reaches the page (its getStats says so)."""
    assert shutil.which("ip"), "iproute2 is needed (scripts/setup-system.sh installs it)"
    assert Path(CHROMIUM).exists(), "chromium is needed (scripts/setup-system.sh installs it)"
    secret = secrets.token_hex(32)
    with tempfile.TemporaryDirectory(prefix="tidegate-browser-") as tmp:
        env = {
            **os.environ,
            "TIDEGATE_HOST": "127.0.0.1",
            "TIDEGATE_PORT": str(PORT),
            "TIDEGATE_JWT_SECRET": secret,
            "TIDEGATE_DATA_DIR": tmp,
            "TIDEGATE_LOG_LEVEL": "warning",
            "TIDEGATE_ENGINES": "",
            "TIDEGATE_METRICS_INTERVAL_S": "0.5",
            "TIDEGATE_ICE_HOSTS": NETNS_ADDR,
            "TIDEGATE_ICE_PORTS": "40000-40010",
        }
        server = subprocess.Popen(
            in_netns(netns, [sys.executable, "-m", "tidegate", "serve"]),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            _wait_listening(server)
            with chromium(netns, Path(tmp) / "chromium-profile") as page:
                origin = f"http://127.0.0.1:{PORT}"
                page.navigate(origin + "/healthz")
                token = mint_token(secret.encode(), subject="browser", tenant="acme")
                args = {"url": f"ws://127.0.0.1:{PORT}/v1/control", "token": token}
                result = page.run(PAGE_JS, args)
        finally:
            stop(server)
            assert server.stdout is not None
            server.stdout.close()
    # The browser's candidates are its own addresses in the namespace, and ours are the
    # address we gave the server, in the port range we gave it.
    assert result["local"], "Chromium trickled candidates"
    assert all(NETNS_ADDR in c or "127.0.0.1" in c for c in result["remote"]), result["remote"]
    rtc, media = result["rtc"], result["media"]
    assert media["state"] == "connected"
    assert rtc["audio_chunks"] > 100, rtc  # real Opus from Chromium, decoded at 16 kHz
    assert media["audio_rtp"]["not_opus"] == 0 and media["audio_rtp"]["decode_errors"] == 0
    assert rtc["frames"] > 10 and rtc["last_frame"]["width"] == 320, rtc  # real video frames
    assert media["video_in"]["frames"] >= rtc["frames"]
    assert media["audio_out"]["frames_sent"] > 50
    inbound = result["inbound"]
    assert inbound is not None and inbound["packetsReceived"] > 50, inbound
    assert inbound["totalAudioEnergy"] > 0, inbound  # the fake microphone's beeps, echoed
