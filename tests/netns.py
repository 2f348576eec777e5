"""Network namespaces and headless Chromium for the tests that need them (NETWORK.md).

A test that runs a browser, NGINX or coturn runs them inside a network namespace it creates
and deletes: loopback plus a veth pair whose two ends stay inside (no route out), carrying the
addresses the test asks for. Chromium is driven over its DevTools protocol on a pipe (file
descriptors cross namespaces; no port is opened for it). Used by tests/server/test_browser.py
and tests/deploy/.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support import scaled

CHROMIUM = "/usr/bin/chromium"
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
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=scaled(20))


@contextlib.contextmanager
def network_namespace(addresses: Sequence[str] = ("10.250.0.1",)) -> Iterator[str]:
    """A namespace with lo up and a veth pair inside it carrying ``addresses`` (/24 each);
    yields its name; deleted afterwards. Fails the test (never skips) where it cannot be made."""
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
        for addr in addresses:
            _ip(*run, "addr", "add", f"{addr}/24", "dev", "v0")
        _ip(*run, "link", "set", "v0", "up")
        _ip(*run, "link", "set", "v1", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=scaled(20))


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``netns``."""
    return ["ip", "netns", "exec", netns, *argv]


def stop(proc: subprocess.Popen[Any] | None, timeout_s: float = 15.0) -> None:
    """Terminate a process we started (by its own handle), killing it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(scaled(timeout_s))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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


class ChromiumPage:
    """One page of a headless Chromium started inside a namespace."""

    def __init__(self, cdp: Cdp, session_id: str) -> None:
        self.cdp = cdp
        self.session_id = session_id

    def navigate(self, url: str, settle_s: float = 0.5) -> None:
        self.cdp.call("Page.navigate", {"url": url}, sessionId=self.session_id)
        time.sleep(settle_s)

    def run(self, function_js: str, args: dict[str, Any], timeout_s: float = 60.0) -> Any:
        """Evaluate ``(function_js)(args)``, await its promise and return its value."""
        out = self.cdp.call(
            "Runtime.evaluate",
            {
                "expression": f"({function_js})({json.dumps(args)})",
                "awaitPromise": True,
                "returnByValue": True,
                "timeout": int(scaled(timeout_s) * 1000),
            },
            sessionId=self.session_id,
        )
        if "exceptionDetails" in out:
            raise AssertionError(f"page failed: {out['exceptionDetails']}")
        return out["result"]["value"]


@contextlib.contextmanager
def chromium(
    netns: str, profile_dir: Path, extra_flags: Sequence[str] = ()
) -> Iterator[ChromiumPage]:
    """Headless Chromium (fake camera and microphone) inside ``netns``, attached to its page."""
    assert Path(CHROMIUM).exists(), "chromium is needed (scripts/setup-system.sh installs it)"
    profile_dir.mkdir(parents=True, exist_ok=True)
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    browser: subprocess.Popen[bytes] | None = None
    cdp: Cdp | None = None
    try:
        cmd = " ".join(
            [
                "exec ip netns exec",
                netns,
                CHROMIUM,
                *CHROMIUM_FLAGS,
                *extra_flags,
                f"--user-data-dir={profile_dir}",
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
        session = cdp.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})
        yield ChromiumPage(cdp, session["sessionId"])
    finally:
        if cdp is not None:
            cdp.close()
        else:
            for fd in (to_r, to_w, from_r, from_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
        stop(browser)
