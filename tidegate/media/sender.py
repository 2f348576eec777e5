"""A lean RTP send path for our own Opus packets, in place of aiortc's sender loop.

aiortc's ``RTCRtpSender._run_rtp`` is a task that pulls the track, then for each packet builds
an ``RtpPacket``, stamps header extensions (two datetime-based NTP clock reads), logs, keeps a
retransmission history, serialises and awaits the transport. Our packets are already Opus
(:class:`~tidegate.media.audio_out.AudioOutTrack` encodes them), so an :class:`AudioSender`
does less: the track *pushes* each packet (from ``write()`` itself when its 20 ms window is
open, else from one loop timer), and the sender prefixes a header serialised once at start
(only the sequence number and timestamp change: aiortc's audio sender sends the same marker
bit and the ``mid`` extension on every packet, and never abs-send-time or an audio level for
pre-encoded packets), then protects and sends it through aiortc's own
``RTCDtlsTransport._send_rtp`` (SRTP, counters), run to completion synchronously: it never
suspends (aioice's send is a plain ``sendto``).

What stays aiortc's: registration with the transport's RTP router (so RTCP for our SSRC comes
here: receiver reports, round-trip time), and the RTCP task, which sends sender reports from
the counters this class keeps in aiortc's own attributes (packet and octet counts, the last
packet's RTP timestamp and its NTP send time), so the reports stay consistent with the stream.
Not kept: the retransmission history (aiortc's audio codecs negotiate no NACK).

:func:`install_audio_sender` turns aiortc's sender of an audio transceiver into one, like
:func:`~tidegate.media.receiver.install_audio_receiver` does for the receiver (aiortc keeps its
state in name-mangled attributes, hence ``_RTCRtpSender__``; aiortc is pinned to 1.16).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpSendParameters
from aiortc.rtcrtpsender import RTCRtpSender, random_sequence_number
from aiortc.rtp import RtpPacket
from aiortc.utils import random32

from .audio_out import AudioOutTrack

log = logging.getLogger(__name__)

NTP_EPOCH_OFFSET_S = 2_208_988_800  # 1900-01-01 to 1970-01-01
_HEAD = struct.Struct("!BBHII")


def ntp_now() -> int:
    """The wall clock as a 64-bit NTP timestamp (what aiortc's clock.current_ntp_time gives,
    without building datetimes)."""
    return int((time.time() + NTP_EPOCH_OFFSET_S) * (1 << 32))


def _private(sender: RTCRtpSender, name: str) -> Any:
    return getattr(sender, "_RTCRtpSender__" + name)


def _set_private(sender: RTCRtpSender, name: str, value: Any) -> None:
    setattr(sender, "_RTCRtpSender__" + name, value)


class AudioSender(RTCRtpSender):
    """An aiortc sender fed by pushes from an :class:`AudioOutTrack` (module docstring)."""

    _lean: bool
    _lean_track: AudioOutTrack | None
    _head_b0: int
    _head_b1: int
    _head_tail: bytes
    _seq: int
    _ts_origin: int
    send_errors: int

    def _tidegate_setup(self) -> None:
        self._lean = False
        self._lean_track = None
        self.send_errors = 0

    async def send(self, parameters: RTCRtpSendParameters) -> None:
        """Start sending: register, serialise the header once, attach to the track, run
        aiortc's RTCP task. No RTP task."""
        if _private(self, "started"):
            return
        track = self.track
        codec = parameters.codecs[0] if parameters.codecs else None
        if (
            not isinstance(track, AudioOutTrack)
            or codec is None
            or codec.mimeType.lower() != "audio/opus"
            or codec.payloadType is None
        ):
            await super().send(parameters)  # not ours to send: aiortc's own loop
            return
        _set_private(self, "cname", parameters.rtcp.cname)
        mid = parameters.muxId
        _set_private(self, "mid", mid)
        self.transport._register_rtp_sender(self, parameters)
        ext_map = _private(self, "rtp_header_extensions_map")
        ext_map.configure(parameters)
        template = RtpPacket(payload_type=codec.payloadType, ssrc=self._ssrc)
        template.marker = 1  # as aiortc's sender marks every audio packet
        template.extensions.mid = mid
        head = template.serialize(ext_map)
        self._head_b0, self._head_b1 = head[0], head[1]
        self._head_tail = head[12:]
        self._seq = random_sequence_number()
        self._ts_origin = random32()
        self._lean = True
        self._lean_track = track
        _set_private(self, "rtcp_task", asyncio.ensure_future(self._run_rtcp()))
        _set_private(self, "started", True)
        track.attach(self._send_packet)

    def _send_packet(self, payload: bytes, pts: int) -> None:
        """One Opus packet from the track (``pts`` in 48 kHz RTP clock units)."""
        if not self._enabled:
            return  # as aiortc: a disabled sender drops what its track gives
        timestamp = (self._ts_origin + pts) & 0xFFFFFFFF
        seq = self._seq
        data = (
            _HEAD.pack(self._head_b0, self._head_b1, seq, timestamp, self._ssrc)
            + self._head_tail
            + payload
        )
        coro = self.transport._send_rtp(data)
        try:
            coro.send(None)
        except StopIteration:
            pass
        except ConnectionError:
            # The connection ended: as aiortc's loop does, stop sending and end the track.
            self._end_track()
            return
        else:
            # aioice's send suspended (it never does in 0.13: a plain sendto). The packet is
            # lost; say so loudly and stop rather than reorder or block.
            coro.close()
            self.send_errors += 1
            log.error("audio sender: the transport's send suspended; audio out stops")
            self._end_track()
            return
        self._seq = (seq + 1) & 0xFFFF
        _set_private(self, "ntp_timestamp", ntp_now())
        _set_private(self, "rtp_timestamp", timestamp)
        _set_private(self, "octet_count", _private(self, "octet_count") + len(payload))
        _set_private(self, "packet_count", _private(self, "packet_count") + 1)

    def _end_track(self) -> None:
        track, self._lean_track = self._lean_track, None
        if track is not None:
            track.detach()
            track.stop()

    async def stop(self) -> None:
        if not getattr(self, "_lean", False):
            await super().stop()
            return
        if not _private(self, "started"):
            return
        self.transport._unregister_rtp_sender(self)
        self._end_track()
        await _private(self, "rtcp_started").wait()
        task = _private(self, "rtcp_task")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # its last act is an RTCP BYE


def install_audio_sender(sender: RTCRtpSender) -> AudioSender:
    """Turn aiortc's sender of an audio transceiver into an :class:`AudioSender` (before it
    starts: call between ``setRemoteDescription`` and ``setLocalDescription``). It sends
    leanly when its track is an :class:`AudioOutTrack`, else exactly as aiortc would."""
    if _private(sender, "started"):
        raise RuntimeError("install_audio_sender: the sender has already started")
    sender.__class__ = AudioSender
    assert isinstance(sender, AudioSender)
    sender._tidegate_setup()
    return sender
