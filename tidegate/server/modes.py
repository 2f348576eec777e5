"""Session modes: what a session does with what it receives.

``session.create`` names the mode in its config (``{"mode": "loopback"}``); a config without
one gets ``default_mode``. The modes are public names: ``assistant`` (VAD, ASR, LLM, TTS and
vision), ``transcribe`` (VAD and ASR), ``loopback`` (echo, for connectivity checks, tests and
bench). A mode whose engines this server does not have is refused with ``unsupported``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tidegate.engines.errors import RequestError
from tidegate.engines.llm.tools import validate_tool_choice, validate_tools
from tidegate.media import MediaPeer
from tidegate.pipelines.records import Response as ResponseRecord
from tidegate.protocol import ClientMessage
from tidegate.protocol.messages import (
    InputAudio,
    InputFrame,
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
from .rtc import SessionMedia
from .session import Mode, Session
from .vision import check_frame

if TYPE_CHECKING:
    from tidegate.engines.service import EngineService

MODE_NAMES = ("assistant", "transcribe", "loopback")
CONFIG_KEYS = frozenset({"mode", "tools", "tool_choice"})


def new_response_id() -> str:
    return "r_" + secrets.token_urlsafe(9)


class LoopbackMode:
    """Echoes what arrives: text as a response, audio as ``output.audio`` (at once: no pacing,
    no resampling); counts frames, whose headers are checked as in the assistant
    (``invalid_field`` for one that is not the format it names, or too large; nothing decodes
    them here). Sensor readings go to the session's sensor lane, as in every mode. Every
    upload's credit goes back as soon as it is handled.

    Over WebRTC (``rtc.offer``): the client's audio comes back on our outbound track as it
    arrives, and the video frames are taken and counted (``metrics``: ``lanes.rtc``)."""

    name = "loopback"

    def __init__(self, session: Session) -> None:
        self.session = session
        self.audio_chunks = 0
        self.audio_bytes = 0
        self.frames = 0
        self.last_frame: dict[str, Any] | None = None
        self.responses = 0
        self.media = SessionMedia(session, self._start_media)
        self.rtc_audio_chunks = 0
        self.rtc_audio_ms = 0.0
        self.rtc_concealed_chunks = 0
        self.rtc_echo_trimmed_frames = 0
        self.rtc_frames = 0
        self.rtc_last_frame: dict[str, Any] | None = None

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
            check_frame(msg, s.settings.frame_max_pixels)  # the same checks as a looked-at frame
            self.frames += 1
            self.last_frame = {
                "ts": msg.ts,
                "encoding": msg.encoding,
                "width": msg.width,
                "height": msg.height,
                "bytes": len(msg.image),
            }
            s.return_credit(len(msg.image))
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
        elif kind is RtcOffer:
            assert isinstance(msg, RtcOffer)
            await self.media.handle_offer(msg.sdp, msg.id)
        elif kind is RtcCandidate:
            assert isinstance(msg, RtcCandidate)
            await self.media.handle_candidate(msg)
        else:
            raise UnsupportedError(f"{msg.TYPE} is not handled in loopback mode")

    def _respond(self, text: str, ref: str | None) -> None:
        s = self.session
        rid = new_response_id()
        self.responses += 1
        s.emit(ResponseCreated(response_id=rid, ref=ref))
        s.emit(ResponseTextDelta(response_id=rid, delta=text, ref=ref))
        s.emit(ResponseDone(response_id=rid, status="completed", text=text, ref=ref))
        s.record(ResponseRecord(response_id=rid, text=text, status="completed", ref=ref))

    def stats(self) -> dict[str, Any]:
        return {
            "audio_chunks": self.audio_chunks,
            "audio_bytes": self.audio_bytes,
            "frames": self.frames,
            "last_frame": self.last_frame,
            "responses": self.responses,
            "rtc": {
                "audio_chunks": self.rtc_audio_chunks,
                "audio_ms": round(self.rtc_audio_ms, 1),
                "concealed_chunks": self.rtc_concealed_chunks,
                "echo_trimmed_frames": self.rtc_echo_trimmed_frames,
                "frames": self.rtc_frames,
                "last_frame": self.rtc_last_frame,
            },
            "media": self.media.stats(),
        }

    # -- WebRTC: echo the audio, look at the frames ------------------------------------------

    def _start_media(self, peer: MediaPeer) -> None:
        if peer.audio_in is not None:
            self.session.spawn(self._echo(peer), "rtc-echo")
        if peer.video_in is not None:
            self.session.spawn(self._watch_frames(peer), "rtc-frames")

    async def _echo(self, peer: MediaPeer) -> None:
        """Send the client's audio back as it arrives (capped at echo_max_latency_ms queued)."""
        inbox = peer.audio_in
        assert inbox is not None
        out = peer.audio_out
        cap_ms = self.session.settings.echo_max_latency_ms
        while (chunk := await inbox.read()) is not None:
            self.rtc_audio_chunks += 1
            self.rtc_audio_ms += chunk.duration_ms
            self.rtc_concealed_chunks += chunk.concealed
            if out is not None:
                out.write(chunk.pcm)
                self.rtc_echo_trimmed_frames += out.trim(cap_ms)

    async def _watch_frames(self, peer: MediaPeer) -> None:
        """Take the newest frame whenever there is one; report what was seen."""
        video = peer.video_in
        assert video is not None
        while (frame := await video.take()) is not None:
            self.rtc_frames += 1
            self.rtc_last_frame = {
                "width": frame.width,
                "height": frame.height,
                "pts_ms": round(frame.pts_ms, 1),
                "index": frame.index,
            }

    async def close(self) -> None:
        await self.media.close()


MODES: dict[str, Callable[[Session], Mode]] = {"loopback": LoopbackMode}
_MISSING_ENGINES = {
    "assistant": "the VAD, ASR, LLM and TTS engines",
    "transcribe": "the VAD and ASR engines",
}


# Modes that run on engines: the engines each needs, by name (see server/engines.py).
ENGINE_MODES: dict[str, tuple[str, ...]] = {
    "assistant": ("vad", "asr", "llm", "tts"),
    "transcribe": ("vad", "asr"),
}


def resolve_config(
    config: dict[str, Any] | None,
    default_mode: str,
    engines: EngineService | None = None,
    *,
    max_tools_items: int = 32,
    max_tools_bytes: int = 32_768,
) -> dict[str, Any]:
    """Validate a session config and fill in defaults; raises a RefusalError naming the problem.
    ``engines`` are the running engines: an engine mode needs its engines among them. ``tools``
    (and ``tool_choice``) are for the assistant mode on an LLM that can call them."""
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
    needs = ENGINE_MODES.get(mode)
    if needs is not None:
        running = set(engines.schedulers) | set(engines.batchers) if engines is not None else set()
        if not set(needs) <= running:
            raise UnsupportedError(
                f"mode {mode!r} needs {_MISSING_ENGINES[mode]}, which this server does not "
                f"run (start it with engines {','.join(needs)}); use mode 'loopback'"
            )
    elif mode not in MODES:
        raise UnsupportedError(
            f"mode {mode!r} needs {_MISSING_ENGINES.get(mode, 'engines')}, which this server "
            "does not offer yet; use mode 'loopback'"
        )
    if "tools" in config or "tool_choice" in config:
        _resolve_tools(config, engines, max_tools_items, max_tools_bytes)
    return config


def _resolve_tools(
    config: dict[str, Any], engines: EngineService | None, max_items: int, max_bytes: int
) -> None:
    """Validate ``tools`` / ``tool_choice`` in place (normalised to the Chat Completions
    form)."""
    if config["mode"] != "assistant":
        raise InvalidConfigError("session config.tools: only the assistant mode calls tools")
    try:
        tools = validate_tools(config.get("tools", []), max_items=max_items, max_bytes=max_bytes)
        choice = validate_tool_choice(config.get("tool_choice"), tools)
    except RequestError as e:
        raise InvalidConfigError(f"session config.{e}") from None
    config["tools"] = list(tools)
    if choice is None:
        config.pop("tool_choice", None)
    else:
        config["tool_choice"] = choice
    llm = engines.batchers.get("llm") if engines is not None else None
    if tools and llm is not None and not llm.supports_tools:
        raise UnsupportedError(
            "session config.tools: the local LLM cannot call tools (it has no grammar for "
            "them); run the LLM on OpenAI-compatible providers (llm_runtime=providers)"
        )


def start_mode(session: Session, engines: EngineService | None = None) -> Mode:
    mode = session.config["mode"]
    if mode == "assistant":
        assert engines is not None  # resolve_config checked it
        from .assistant import AssistantMode

        return AssistantMode(session, engines)
    if mode == "transcribe":
        assert engines is not None  # resolve_config checked it
        from .transcribe import TranscribeMode

        return TranscribeMode(session, engines)
    return MODES[mode](session)
