"""A real headless Chromium, with fake camera and microphone, talks WebRTC to the server.

Both run inside a network namespace this test creates and deletes (NETWORK.md): loopback plus
a veth pair that stays inside, no route out. The server is ``tidegate serve`` in the
namespace; Chromium is driven over its DevTools protocol on a pipe (file descriptors cross
namespaces; no port is opened for it). The page (``browser/page.js``) runs on the server's own
origin, ``http://127.0.0.1:PORT`` (a secure context, so it has getUserMedia), and does what a
browser client does: control channel, loopback session, offer with trickled candidates.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tidegate.server.auth import mint_token

PAGE_JS = (Path(__file__).parent / "browser" / "page.js").read_text()
CHROMIUM = "/usr/bin/chromium"
NETNS_ADDR = "10.250.0.1"
PORT = 8080  # a fresh namespace has nothing else listening
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
    "--remote-debugging-pipe",
]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


@pytest.fixture
def netns() -> Iterator[str]:
    """A namespace with lo and a veth pair inside it (no way out); deleted afterwards."""
    name = f"tg-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", name)
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        pytest.fail(f"cannot create a network namespace (needs root and iproute2): {detail}")
    try:
        run = ["netns", "exec", name, "ip"]
        _ip(*run, "link", "set", "lo", "up")
        _ip(*run, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _ip(*run, "addr", "add", f"{NETNS_ADDR}/24", "dev", "v0")
        _ip(*run, "link", "set", "v0", "up")
        _ip(*run, "link", "set", "v1", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


class Cdp:
    """The DevTools protocol over Chromium's pipe (NUL-terminated JSON messages)."""

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self.w = os.fdopen(to_browser, "wb", buffering=0)
        self.r = os.fdopen(from_browser, "rb", buffering=0)
        self.buf = b""
        self.ids = 0

    def call(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        self.ids += 1
        msg = {"id": self.ids, "method": method, "params": params or {}, **kw}
        self.w.write(json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self.buf:
                chunk = self.r.read(65536)
                if not chunk:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.ids:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def close(self) -> None:
        self.w.close()
        self.r.close()


def _wait_listening(proc: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
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
            "TIDEGATE_METRICS_INTERVAL_S": "0.5",
            "TIDEGATE_ICE_HOSTS": NETNS_ADDR,
            "TIDEGATE_ICE_PORTS": "40000-40010",
        }
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "tidegate", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        browser: subprocess.Popen[bytes] | None = None
        cdp: Cdp | None = None
        try:
            _wait_listening(server)
            profile = Path(tmp) / "chromium-profile"
            profile.mkdir()
            cmd = " ".join(
                [
                    "exec ip netns exec",
                    netns,
                    CHROMIUM,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    "about:blank",
                    f"3<&{to_r} 4>&{from_w}",
                ]
            )
            browser = subprocess.Popen(
                ["bash", "-c", cmd],
                pass_fds=(to_r, from_w),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            os.close(to_r)
            os.close(from_w)
            cdp = Cdp(to_w, from_r)
            targets = cdp.call("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            session = cdp.call(
                "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}
            )
            sid = session["sessionId"]
            origin = f"http://127.0.0.1:{PORT}"
            cdp.call("Page.navigate", {"url": origin + "/healthz"}, sessionId=sid)
            time.sleep(0.5)
            token = mint_token(secret.encode(), subject="browser", tenant="acme")
            args = json.dumps({"url": f"ws://127.0.0.1:{PORT}/v1/control", "token": token})
            out = cdp.call(
                "Runtime.evaluate",
                {
                    "expression": f"({PAGE_JS})({args})",
                    "awaitPromise": True,
                    "returnByValue": True,
                    "timeout": 60000,
                },
                sessionId=sid,
            )
            if "exceptionDetails" in out:
                raise AssertionError(f"page failed: {out['exceptionDetails']}")
            result = out["result"]["value"]
        finally:
            if cdp is not None:
                cdp.close()
            else:
                for fd in (to_r, to_w, from_r, from_w):
                    with contextlib.suppress(OSError):
                        os.close(fd)
            for proc in (browser, server):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(15)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
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
