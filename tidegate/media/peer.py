"""One session's WebRTC peer connection: offer in, answer out, media to inboxes and back.

:class:`MediaPeer` wraps an aiortc ``RTCPeerConnection`` (answerer only: the client offers):

- audio from the client goes through :mod:`~tidegate.media.receiver` (our jitter buffer and
  Opus decoder) into :attr:`MediaPeer.audio_in`, 16 kHz mono float32;
- video from the client goes into :attr:`MediaPeer.video_in`, the newest frame only; its
  encoded frames pass :mod:`~tidegate.media.video_guard` first (no frame over
  ``video_max_pixels`` reaches aiortc's decoder; its queue is bounded);
- audio to the client comes from :attr:`MediaPeer.audio_out` (when the offer asks to receive);
- ICE gathers as :class:`~tidegate.media.ice.IcePolicy` says; the answer carries every local
  candidate, and :meth:`MediaPeer.local_candidates` lists them again for trickling;
- data channels the client opens are taken when their label is one the peer was built to
  accept (``data_channels``: the Realtime dialect's ``oai-events``), each as an
  :class:`~tidegate.media.datachannel.EventChannel` (bounded both ways;
  :meth:`MediaPeer.event_channel` waits for one); any other is closed at once (counted).

The peer owns its tasks (the video pump) and cancels them in :meth:`MediaPeer.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp

from ._aiortc import mline_index, offer_direction, set_transceiver_codecs, transceiver_codecs
from .audio_in import AudioInbox, LagCallback
from .audio_out import AudioOutTrack
from .datachannel import DataChannelClosedError, EventChannel
from .errors import BadSdpError, MediaStateError
from .ice import IcePolicy, apply_ice_policy
from .receiver import AudioReceiver, install_audio_receiver
from .sender import install_audio_sender
from .video_guard import GuardedDecoderQueue, install_video_guard
from .video_in import VideoInbox

log = logging.getLogger(__name__)

MAX_SDP_CHARS = 65_536
MAX_REMOTE_CANDIDATES = 64

_live_peers: weakref.WeakSet[MediaPeer] = weakref.WeakSet()


def live_peers() -> int:
    """MediaPeers not yet closed and still referenced (for leak checks)."""
    return sum(1 for p in list(_live_peers) if not p.closed)


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """Media limits and knobs, one per setting (see docs/media.md for the numbers)."""

    ice: IcePolicy = field(default_factory=IcePolicy)
    jitter_target_ms: float = 20.0
    jitter_max_gap_packets: int = 50
    audio_fec: bool = True
    audio_buffer_s: float = 3.0
    audio_silence_dbfs: float = -50.0
    audio_lag_report_ms: float = 500.0
    audio_out_buffer_s: float = 10.0
    audio_out_bitrate_bps: int = 32_000
    audio_out_complexity: int = 0
    audio_out_lead_ms: float = 20.0
    video_max_pixels: int = 8_294_400  # larger frames are never decoded (video_guard.py)
    video_decoder_max_frames: int = 32  # encoded frames waiting for aiortc's decoder thread
    data_channel_max_inbound_messages: int = 256  # events from the client not yet read
    data_channel_max_buffered_bytes: int = 1 << 20  # events buffered for the client (SCTP)


@dataclass(frozen=True, slots=True)
class LocalCandidate:
    candidate: str  # "candidate:..." as browsers take it
    sdp_mid: str | None
    sdp_mline_index: int | None


class MediaPeer:
    """See the module docstring."""

    def __init__(
        self,
        config: MediaConfig,
        *,
        on_lag: LagCallback | None = None,
        on_state: Callable[[str], None] | None = None,
        data_channels: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.data_channels = data_channels
        self.on_lag = on_lag
        self.on_state = on_state
        self.pc = RTCPeerConnection(configuration=config.ice.configuration())
        self.audio_in: AudioInbox | None = None
        #: what the client's rtc.offer said of its own echo cancellation (None: nothing)
        self.client_echo_cancellation: bool | None = None
        self.video_in: VideoInbox | None = None
        self.audio_out: AudioOutTrack | None = None
        self._audio_receiver: AudioReceiver | None = None
        self._video_guard: GuardedDecoderQueue | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._answered = False
        self.closed = False
        self.candidates_added = 0
        self.state = "new"
        self.event_channels: dict[str, EventChannel] = {}
        self.data_channels_refused = 0
        self._channel_event = asyncio.Event()  # a channel opened, or the connection ended
        self.pc.on("connectionstatechange", self._state_changed)
        self.pc.on("datachannel", self._data_channel)
        _live_peers.add(self)

    def _state_changed(self) -> None:
        self.state = self.pc.connectionState
        if self.state in ("failed", "closed"):
            self._channel_event.set()
            for channel in self.event_channels.values():
                channel.close()
        if self.on_state is not None:
            self.on_state(self.state)

    def _data_channel(self, channel: Any) -> None:
        """The client opened a data channel: taken if its label is one we accept (once)."""
        label = channel.label
        if label not in self.data_channels or label in self.event_channels or self.closed:
            self.data_channels_refused += 1
            channel.close()
            return
        cfg = self.config
        self.event_channels[label] = EventChannel(
            channel,
            max_inbound_messages=cfg.data_channel_max_inbound_messages,
            max_buffered_bytes=cfg.data_channel_max_buffered_bytes,
        )
        self._channel_event.set()

    async def event_channel(self, label: str) -> EventChannel:
        """The client's data channel ``label`` once it is open; DataChannelClosedError if
        the connection fails or closes first (the caller bounds the wait)."""
        while label not in self.event_channels:
            if self.closed or self.state in ("failed", "closed"):
                raise DataChannelClosedError(f"the connection ended before {label!r} opened")
            self._channel_event.clear()
            await self._channel_event.wait()
        return self.event_channels[label]

    # -- signalling -------------------------------------------------------------------------

    async def accept_offer(self, sdp: str) -> str:
        """Apply the client's offer and return our answer (with all our candidates).
        Raises BadSdpError naming what is wrong with the offer."""
        if self.closed:
            raise MediaStateError("the media connection is closed")
        if self._answered:
            raise MediaStateError(
                "this media connection already has an offer; start a new one with a new offer"
            )
        _check_sdp_shape(sdp)
        cfg = self.config
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except (ValueError, KeyError, IndexError, TypeError, AssertionError) as e:
            raise BadSdpError(f"sdp: the offer does not parse: {_describe(e)}") from None
        except (InvalidAccessError, InvalidStateError, OperationError) as e:
            raise BadSdpError(f"sdp: the offer cannot be used: {_describe(e)}") from None
        kinds = [t.kind for t in self.pc.getTransceivers()]
        if "audio" not in kinds and "video" not in kinds:
            raise BadSdpError("sdp: the offer has no audio or video m= section")
        if self.data_channels and self.pc.sctp is None:
            raise BadSdpError(
                f"sdp: the offer has no data channel (m=application) section; expected one "
                f"for {', '.join(repr(x) for x in self.data_channels)}"
            )
        for t in self.pc.getTransceivers():
            if t.kind == "audio":
                opus = [c for c in transceiver_codecs(t) if c.mimeType.lower() == "audio/opus"]
                if not opus:
                    names = ", ".join(c.mimeType for c in transceiver_codecs(t)) or "none"
                    raise BadSdpError(
                        f"sdp: audio must offer Opus (audio/opus/48000/2); it offers {names}"
                    )
                opus[0].parameters = {**opus[0].parameters, "useinbandfec": 1, "minptime": 10}
                set_transceiver_codecs(t, opus[:1])
                direction = offer_direction(t)  # ours, the offer's reversed
                if direction in ("recvonly", "sendrecv") and self._audio_receiver is None:
                    self.audio_in = AudioInbox(
                        max_s=cfg.audio_buffer_s,
                        silence_dbfs=cfg.audio_silence_dbfs,
                        lag_report_ms=cfg.audio_lag_report_ms,
                        on_lag=self.on_lag,
                    )
                    self._audio_receiver = install_audio_receiver(
                        t.receiver,
                        self.audio_in,
                        target_ms=cfg.jitter_target_ms,
                        max_gap_packets=cfg.jitter_max_gap_packets,
                        fec=cfg.audio_fec,
                    )
                if direction in ("sendonly", "sendrecv") and self.audio_out is None:
                    self.audio_out = AudioOutTrack(
                        max_s=cfg.audio_out_buffer_s,
                        bitrate_bps=cfg.audio_out_bitrate_bps,
                        complexity=cfg.audio_out_complexity,
                        lead_ms=cfg.audio_out_lead_ms,
                    )
                    t.sender.replaceTrack(self.audio_out)
                    install_audio_sender(t.sender)
                    t.direction = direction
            elif t.kind == "video" and offer_direction(t) in ("recvonly", "sendrecv"):
                if self.video_in is None and t.receiver.track is not None:
                    self._video_guard = install_video_guard(
                        t.receiver,
                        max_pixels=cfg.video_max_pixels,
                        max_frames=cfg.video_decoder_max_frames,
                    )
                    self.video_in = VideoInbox(max_pixels=cfg.video_max_pixels)
                    self._spawn(self.video_in.pump(t.receiver.track), "video-pump")
                t.direction = "recvonly"
        apply_ice_policy(self.pc, cfg.ice)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        self._answered = True
        local = self.pc.localDescription
        assert local is not None
        return str(local.sdp)

    def local_candidates(self) -> list[LocalCandidate]:
        """Our candidates, once per ICE transport, tagged with its first media section."""
        out = []
        seen: set[int] = set()
        for t in self.pc.getTransceivers():
            ice = t.receiver.transport.transport
            if id(ice) in seen:
                continue
            seen.add(id(ice))
            for c in ice.iceGatherer.getLocalCandidates():
                out.append(
                    LocalCandidate("candidate:" + candidate_to_sdp(c), t.mid, mline_index(t))
                )
        return out

    async def add_candidate(
        self, candidate: str, sdp_mid: str | None, sdp_mline_index: int | None
    ) -> None:
        """A trickled remote candidate; an empty one ends the trickle."""
        if not self._answered:
            raise MediaStateError("rtc.candidate: send rtc.offer first")
        text = candidate.strip()
        if text.startswith("candidate:"):
            text = text[len("candidate:") :]
        if not text:
            await self.pc.addIceCandidate(None)  # end of candidates
            return
        if sdp_mid is None and sdp_mline_index is None:
            raise BadSdpError("rtc.candidate: needs sdp_mid or sdp_mline_index")
        try:
            cand = candidate_from_sdp(text)
        except (AssertionError, ValueError, IndexError) as e:
            raise BadSdpError(
                "rtc.candidate: expected 'candidate:<foundation> <component> <transport> "
                f"<priority> <address> <port> typ <type> ...': {_describe(e)}"
            ) from None
        cand.sdpMid = sdp_mid
        cand.sdpMLineIndex = sdp_mline_index
        if self.candidates_added >= MAX_REMOTE_CANDIDATES:
            raise BadSdpError(f"rtc.candidate: more than {MAX_REMOTE_CANDIDATES} candidates")
        self.candidates_added += 1
        try:
            await self.pc.addIceCandidate(cand)
        except ValueError as e:
            raise BadSdpError(f"rtc.candidate: {_describe(e)}") from None

    # -- tasks, stats, teardown -------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"media:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state}
        if self._audio_receiver is not None:
            out["audio_rtp"] = self._audio_receiver.stats()
        if self.audio_in is not None:
            out["audio_in"] = self.audio_in.stats.as_dict()
        if self.video_in is not None:
            out["video_in"] = self.video_in.stats()
        if self._video_guard is not None:
            out["video_decoder"] = self._video_guard.stats()
        if self.audio_out is not None:
            out["audio_out"] = self.audio_out.stats()
        if self.event_channels or self.data_channels_refused:
            out["data_channels"] = {k: c.stats() for k, c in self.event_channels.items()}
            out["data_channels_refused"] = self.data_channels_refused
        return out

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        for channel in self.event_channels.values():
            channel.close()
        self._channel_event.set()
        await self.pc.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.audio_in is not None:
            self.audio_in.close()
        if self.video_in is not None:
            self.video_in.close()
        if self.audio_out is not None:
            self.audio_out.stop()
        with contextlib.suppress(KeyError):
            _live_peers.remove(self)


def _check_sdp_shape(sdp: str) -> None:
    if len(sdp) > MAX_SDP_CHARS:
        raise BadSdpError(f"sdp: longer than {MAX_SDP_CHARS} characters")
    if not sdp.lstrip().startswith("v=0"):
        raise BadSdpError("sdp: expected an SDP offer, starting with 'v=0'")
    if "\nm=" not in sdp:
        raise BadSdpError("sdp: the offer has no m= section (no audio, no video)")


def _describe(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text[:200]
