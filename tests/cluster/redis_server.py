"""A real Redis for the cluster tests: the one on 127.0.0.1:6379 if it answers, else one
started here (Debian's redis-server, which scripts/setup-system.sh installs) on a free loopback
port. Tests that stop Redis in the middle always start their own (:class:`OwnRedis`): the
machine's shared one is never stopped.

Every test gets a key prefix of its own, and its keys are deleted after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from tests.support import scaled

SHARED_URL = "redis://127.0.0.1:6379/0"
START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(port: int) -> bool:
    """A PING on ``port`` gets PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=scaled(1.0)) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class OwnRedis:
    """A redis-server of this test run on a fixed free port, that can be stopped and started
    again on the same port (no persistence: a restart comes back empty)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "no redis-server: run scripts/setup-system.sh (make setup does) to install "
                "Debian's redis-server package"
            )
        self.binary = binary
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="tidegate-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + scaled(START_TIMEOUT_S)
        while not answers(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    """Wait until ``check()`` is true (generous timeouts: the machine may be loaded)."""
    deadline = time.monotonic() + scaled(timeout_s)
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(interval_s)


@contextlib.contextmanager
def shared_or_own() -> Iterator[str]:
    """The machine's Redis on 6379 when it answers; else one of our own for the duration."""
    if answers(6379):
        yield SHARED_URL
        return
    own = OwnRedis()
    own.start()
    try:
        yield own.url
    finally:
        own.close()
