"""Images and containers for the tests that build and run them (podman, NETWORK.md).

The images are built by scripts/podman_images.py (the same offline route an operator uses):
the Debian base is made once per machine, and podman's layer cache and build cache mounts
carry the rest from one run to the next. Containers run with the host's network (podman's
default bridge is a private range) and bind 127.0.0.1 only; each is removed afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from tests.support import scaled

ROOT = Path(__file__).resolve().parents[2]
# A first build on a fresh machine downloads every package and converts the models (about
# 15 minutes on the 2-core VM); a cached one takes seconds. See docs/deploy.md.
BUILD_TIMEOUT_S = 2400
START_TIMEOUT_S = 240.0  # the engines load and warm up before /readyz (docs/deploy.md)


def podman_images() -> ModuleType:
    """scripts/podman_images.py, imported (it is a script, not a package module)."""
    path = ROOT / "scripts" / "podman_images.py"
    spec = importlib.util.spec_from_file_location("podman_images", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_logged(build: Any, log_path: Path) -> dict[str, float]:
    """Run one of podman_images' build functions with its output in ``log_path``; fail the
    test with the log's tail when it fails."""
    with log_path.open("w") as log:
        try:
            times: dict[str, float] = build(log)
        except (subprocess.CalledProcessError, RuntimeError) as e:
            log.flush()
            tail = log_path.read_text()[-4000:]
            raise AssertionError(f"image build failed: {e}\n{tail}") from None
    return times


@dataclass
class Container:
    """A running container and what the tests need of it."""

    name: str
    env: dict[str, str]

    def podman(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        images = podman_images()
        return subprocess.run(
            ["podman", *args],
            env=images.podman_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def logs(self) -> str:
        out = self.podman("logs", self.name)
        return out.stdout + out.stderr

    def state(self) -> dict[str, Any]:
        out = self.podman("inspect", "--format", "{{json .State}}", self.name)
        import json

        data: dict[str, Any] = json.loads(out.stdout) if out.returncode == 0 else {}
        return data

    def wait(self, timeout_s: float) -> int:
        """The container's exit code once it has stopped (fails after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.state()
            if state and not state.get("Running"):
                return int(state["ExitCode"])
            time.sleep(0.2)
        raise AssertionError(f"{self.name} still running after {timeout_s} s\n{self.logs()}")


@contextlib.contextmanager
def running(
    image: str, env: Mapping[str, str], *, extra: tuple[str, ...] = ()
) -> Iterator[Container]:
    """``podman run -d --network host`` of ``image`` with ``env``; removed afterwards."""
    images = podman_images()
    name = f"tidegate-test-{os.getpid()}-{secrets.token_hex(3)}"
    argv = ["podman", "run", "-d", "--name", name, "--network", "host", *extra]
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    started = subprocess.run(
        [*argv, image], env=images.podman_env(), capture_output=True, text=True, timeout=scaled(120)
    )
    assert started.returncode == 0, started.stderr
    container = Container(name, dict(env))
    try:
        yield container
    finally:
        container.podman("rm", "-f", "-t", "5", name, timeout=scaled(60))


def wait_ready(container: Container, http: str, timeout_s: float = START_TIMEOUT_S) -> float:
    """Poll ``http``/readyz until 200; the seconds it took. Fails (with the container's log)
    when the container exits or the time is up."""
    start = time.monotonic()
    while True:
        try:
            if httpx.get(f"{http}/readyz", timeout=scaled(2)).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        state = container.state()
        if state and not state.get("Running"):
            raise AssertionError(f"the container exited ({state})\n{container.logs()}")
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not ready after {timeout_s} s\n{container.logs()}")
        time.sleep(0.25)
