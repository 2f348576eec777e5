"""Session modes: what a session does with what it receives.

``session.create`` names the mode in its config (``{"mode": "loopback"}``); a config without
one gets ``default_mode``. The modes are public names: ``assistant`` (VAD, ASR, LLM, TTS and
vision), ``transcribe`` (VAD and ASR), ``loopback`` (echo, for connectivity checks, tests and
bench). A mode whose engines this server does not have is refused with ``unsupported``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from tidegate.protocol import ClientMessage
from tidegate.protocol.messages import (
    InputAudio,
    InputFrame,
    InputSensor,
    InputText,
    OutputAudio,
    ResponseCancel,
    ResponseCreate,
    ResponseCreated,
    ResponseDone,
    ResponseTextDelta,
    RtcCandidate,
    RtcOffer,
)

from .errors import InvalidConfigError, NotFoundError, UnsupportedError
from .session import Mode, Session

MODE_NAMES = ("assistant", "transcribe", "loopback")
CONFIG_KEYS = frozenset({"mode"})


def new_response_id() -> str:
    return "r_" + secrets.token_urlsafe(9)


class LoopbackMode:
    """Echoes what arrives: text as a response, audio as ``output.audio``; counts frames and
    sensor readings. Every upload's credit goes back as soon as it is handled."""

    name = "loopback"

    def __init__(self, session: Session) -> None:
        self.session = session
        self.audio_chunks = 0
        self.audio_bytes = 0
        self.frames = 0
        self.last_frame: dict[str, Any] | None = None
        self.sensor_readings: dict[str, int] = {}
        self.responses = 0

    async def handle(self, msg: ClientMessage) -> None:
        s = self.session
        kind = type(msg)
        if kind is InputAudio:
            assert isinstance(msg, InputAudio)
            self.audio_chunks += 1
            self.audio_bytes += len(msg.pcm)
            s.emit(
                OutputAudio(
                    pcm=msg.pcm,
                    format=msg.format,
                    sample_rate=msg.sample_rate,
                    channels=msg.channels,
                    ts=msg.ts,
                    ref=msg.id,
                )
            )
            s.return_credit(len(msg.pcm))
        elif kind is InputFrame:
            assert isinstance(msg, InputFrame)
            self.frames += 1
            self.last_frame = {
                "ts": msg.ts,
                "encoding": msg.encoding,
                "width": msg.width,
                "height": msg.height,
                "bytes": len(msg.image),
            }
            s.return_credit(len(msg.image))
        elif kind is InputSensor:
            assert isinstance(msg, InputSensor)
            self.sensor_readings[msg.channel] = self.sensor_readings.get(msg.channel, 0) + 1
            s.return_credit(8 * len(msg.values))
        elif kind is InputText:
            assert isinstance(msg, InputText)
            self._respond(msg.text, msg.id)
        elif kind is ResponseCreate:
            assert isinstance(msg, ResponseCreate)
            if msg.text is None:
                raise InvalidConfigError(
                    "response.create.text: loopback mode echoes text, so it needs 'text'"
                )
            self._respond(msg.text, msg.id)
        elif kind is ResponseCancel:
            raise NotFoundError("no response in progress (loopback responses complete at once)")
        elif kind in (RtcOffer, RtcCandidate):
            raise UnsupportedError(
                "WebRTC media is not available on this server yet; "
                "send media with input.audio and input.frame"
            )
        else:
            raise UnsupportedError(f"{msg.TYPE} is not handled in loopback mode")

    def _respond(self, text: str, ref: str | None) -> None:
        s = self.session
        rid = new_response_id()
        self.responses += 1
        s.emit(ResponseCreated(response_id=rid, ref=ref))
        s.emit(ResponseTextDelta(response_id=rid, delta=text, ref=ref))
        s.emit(ResponseDone(response_id=rid, status="completed", text=text, ref=ref))

    def stats(self) -> dict[str, Any]:
        return {
            "audio_chunks": self.audio_chunks,
            "audio_bytes": self.audio_bytes,
            "frames": self.frames,
            "last_frame": self.last_frame,
            "sensor_readings": dict(self.sensor_readings),
            "responses": self.responses,
        }

    async def close(self) -> None:
        return None


MODES: dict[str, Callable[[Session], Mode]] = {"loopback": LoopbackMode}
_MISSING_ENGINES = {
    "assistant": "the VAD, ASR, LLM and TTS engines",
    "transcribe": "the VAD and ASR engines",
}


def resolve_config(config: dict[str, Any] | None, default_mode: str) -> dict[str, Any]:
    """Validate a session config and fill in defaults; raises a RefusalError naming the problem."""
    config = dict(config or {})
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise InvalidConfigError(
            f"session config: unknown key {unknown[0]!r}; expected only {sorted(CONFIG_KEYS)}"
        )
    mode = config.setdefault("mode", default_mode)
    if mode not in MODE_NAMES:
        raise InvalidConfigError(
            f"session config.mode: expected one of {list(MODE_NAMES)}, got {mode!r}"
        )
    if mode not in MODES:
        raise UnsupportedError(
            f"mode {mode!r} needs {_MISSING_ENGINES.get(mode, 'engines')}, which this server "
            "does not offer yet; use mode 'loopback'"
        )
    return config


def start_mode(session: Session) -> Mode:
    return MODES[session.config["mode"]](session)
