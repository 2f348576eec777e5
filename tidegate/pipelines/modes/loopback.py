"""``loopback``: echoes what arrives, for connectivity checks, tests and the bench."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tidegate.engines.service import EngineService
from tidegate.media import MediaPeer
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
)

from ..config import LaneConfig, LoopbackConfig
from ..errors import InvalidConfigError, NotFoundError
from ..mode import Mode
from ..port import Handler, SessionPort
from ..records import Response as ResponseRecord
from ..reply import new_response_id
from ..vision import check_frame


def build(session: SessionPort, config: LaneConfig, engines: EngineService | None) -> Mode:
    return Mode(
        "loopback", session, config.media, lambda media: [LoopbackLane(session, config.loopback)]
    )


class LoopbackLane:
    """Echoes what arrives: text as a response, audio as ``output.audio`` (at once: no pacing,
    no resampling); counts frames, whose headers are checked as in the assistant
    (``invalid_field`` for one that is not the format it names, or too large; nothing decodes
    them here). Sensor readings go to the session's sensor lane, as in every mode. Every
    upload's credit goes back as soon as it is handled.

    Over WebRTC (``rtc.offer``): the client's audio comes back on our outbound track as it
    arrives, and the video frames are taken and counted (``metrics``: ``lanes.rtc``)."""

    name = "loopback"

    def __init__(self, session: SessionPort, config: LoopbackConfig) -> None:
        self.session = session
        self.config = config
        self.audio_chunks = 0
        self.audio_bytes = 0
        self.frames = 0
        self.last_frame: dict[str, Any] | None = None
        self.responses = 0
        self.rtc_audio_chunks = 0
        self.rtc_audio_ms = 0.0
        self.rtc_concealed_chunks = 0
        self.rtc_echo_trimmed_frames = 0
        self.rtc_frames = 0
        self.rtc_last_frame: dict[str, Any] | None = None

    def handlers(self) -> Mapping[type[Any], Handler]:
        return {
            InputAudio: self._audio,
            InputFrame: self._frame,
            InputText: self._text,
            ResponseCreate: self._create,
            ResponseCancel: self._cancel,
        }

    async def _audio(self, msg: InputAudio) -> None:
        self.audio_chunks += 1
        self.audio_bytes += len(msg.pcm)
        self.session.emit(
            OutputAudio(
                pcm=msg.pcm,
                format=msg.format,
                sample_rate=msg.sample_rate,
                channels=msg.channels,
                ts=msg.ts,
                ref=msg.id,
            )
        )
        self.session.return_credit(len(msg.pcm))

    async def _frame(self, msg: InputFrame) -> None:
        check_frame(msg, self.config.max_pixels)  # the same checks as a looked-at frame
        self.frames += 1
        self.last_frame = {
            "ts": msg.ts,
            "encoding": msg.encoding,
            "width": msg.width,
            "height": msg.height,
            "bytes": len(msg.image),
        }
        self.session.return_credit(len(msg.image))

    async def _text(self, msg: InputText) -> None:
        self._respond(msg.text, msg.id)

    async def _create(self, msg: ResponseCreate) -> None:
        if msg.text is None:
            raise InvalidConfigError(
                "response.create.text: loopback mode echoes text, so it needs 'text'"
            )
        self._respond(msg.text, msg.id)

    async def _cancel(self, msg: ResponseCancel) -> None:
        raise NotFoundError("no response in progress (loopback responses complete at once)")

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
        }

    # -- WebRTC: echo the audio, look at the frames ------------------------------------------

    def start_media(self, peer: MediaPeer) -> None:
        if peer.audio_in is not None:
            self.session.spawn(self._echo(peer), "rtc-echo")
        if peer.video_in is not None:
            self.session.spawn(self._watch_frames(peer), "rtc-frames")

    async def _echo(self, peer: MediaPeer) -> None:
        """Send the client's audio back as it arrives (capped at echo_max_latency_ms queued)."""
        inbox = peer.audio_in
        assert inbox is not None
        out = peer.audio_out
        cap_ms = self.config.echo_max_latency_ms
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
        """Nothing of its own: its tasks are the session's, the peer the media lane's."""
