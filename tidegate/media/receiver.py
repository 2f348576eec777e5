"""The low-latency audio receive path, in place of aiortc's.

Stock aiortc (1.16) gives each audio receiver a 4-packet prefetch jitter buffer, which stalls
for ~16 packets after a single loss, and a decoder thread fed through a queue for every packet,
which then decodes to 48 kHz stereo. Here the RTP packets of an audio receiver go to an
:class:`AudioReceiver` instead: each is handed to :class:`~tidegate.media.jitter.JitterBuffer`
on the event loop, whatever it releases is decoded at once by libopus straight to 16 kHz mono
float32 (:mod:`tidegate.media.opus`: ~13 µs a packet, less than a thread hop), and the chunks go
to an :class:`~tidegate.media.audio_in.AudioInbox`. A gap waits ``target_ms`` at most (one loop
timer, not a task), then is concealed with FEC or PLC.

aiortc creates its receivers itself, so :func:`install_audio_receiver` has the seam
(:func:`tidegate.media._aiortc.adopt_receiver`) turn the receiver of an audio transceiver into
a shell that hands its packets here, after ``setRemoteDescription`` and before the connection
starts it. What stays aiortc's: the SRTP session and its keys, the RTP parser, the router's
tables, and RTCP receiver reports (so the sender still sees loss and jitter). Our packets skip
aiortc's receive task, though: the seam's *fast path* takes them from aioice's datagram
callback.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aioice.ice import Connection
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from ._aiortc import ReceiveShell, adopt_receiver
from .audio_in import SAMPLE_RATE_HZ, AudioInbox
from .errors import CodecError
from .jitter import JitterBuffer, Release, ReleaseKind
from .opus import OpusDecoder

RTP_CLOCK_HZ = 48_000  # Opus' RTP clock, whatever the audio's real rate (RFC 7587)


class AudioReceiver:
    """Our jitter buffer and decoder for the Opus packets of one aiortc audio receiver (the
    seam's :class:`~tidegate.media._aiortc.ReceiveShell` hands them to :meth:`on_rtp`)."""

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        inbox: AudioInbox,
        *,
        target_ms: float,
        max_gap_packets: int,
        fec: bool,
    ) -> None:
        self.inbox = inbox
        self.jitter = JitterBuffer(
            target_ms=target_ms,
            max_gap_packets=max_gap_packets,
            clock_rate_hz=RTP_CLOCK_HZ,
            fec=fec,
        )
        self._decoder = OpusDecoder(SAMPLE_RATE_HZ)
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._ssrc: int | None = None
        self._first_ts: int | None = None
        self.counters = dict.fromkeys(
            (
                "packets",
                "bytes",
                "not_opus",
                "decode_errors",
                "ssrc_changes",
                "fast_path",
                "unprotect_errors",
            ),
            0,
        )
        self.shell: ReceiveShell = adopt_receiver(receiver, self)  # last: it may call us

    @property
    def fast_connection(self) -> Connection | None:
        """The aioice connection whose datagrams reach us directly (None: not installed)."""
        return self.shell.tg_fast_conn

    def on_not_opus(self) -> None:
        self.counters["not_opus"] += 1

    def on_rtp(self, packet: RtpPacket) -> None:
        if packet.ssrc != self._ssrc:
            if self._ssrc is not None:  # the sender restarted: a new stream
                self.counters["ssrc_changes"] += 1
                self._restart()
            self._ssrc = packet.ssrc
        self.counters["packets"] += 1
        self.counters["bytes"] += len(packet.payload)
        now_ms = self._loop.time() * 1000.0
        releases = self.jitter.push(
            packet.sequence_number, packet.timestamp, packet.payload, now_ms
        )
        if releases:
            self._decode(releases)
        self._schedule()

    def _restart(self) -> None:
        old = self.jitter
        self.jitter = JitterBuffer(
            target_ms=old.target_ms,
            max_gap_packets=old.max_gap_packets,
            clock_rate_hz=old.clock_rate_hz,
            fec=old.fec,
            stats=old.stats,
        )
        self._decoder.close()
        self._decoder = OpusDecoder(SAMPLE_RATE_HZ)
        self._first_ts = None

    def _schedule(self) -> None:
        deadline = self.jitter.deadline_ms
        if self._timer is not None:
            if deadline is not None and self._timer.when() * 1000.0 == deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_at(deadline / 1000.0, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        releases = self.jitter.poll(self._loop.time() * 1000.0)
        if releases:
            self._decode(releases)
        self._schedule()

    def _decode(self, releases: list[Release]) -> None:
        dec = self._decoder
        for r in releases:
            if self._first_ts is None:
                self._first_ts = r.timestamp
            media_ms = (r.timestamp - self._first_ts) * 1000.0 / RTP_CLOCK_HZ
            samples = r.duration_ts * SAMPLE_RATE_HZ // RTP_CLOCK_HZ
            try:
                if r.kind is ReleaseKind.PACKET:
                    assert r.payload is not None
                    pcm = dec.decode(r.payload)
                elif r.kind is ReleaseKind.FEC:
                    assert r.payload is not None
                    pcm = dec.recover(r.payload, samples)
                else:
                    pcm = dec.conceal(samples)
            except CodecError:
                self.counters["decode_errors"] += 1
                try:
                    pcm = dec.conceal(samples or None)
                except CodecError:
                    continue
            self.inbox.push(pcm, media_ms, concealed=r.kind is not ReleaseKind.PACKET)

    def on_close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.inbox.close()

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "jitter_buffer": self.jitter.stats.as_dict(),
            "target_ms": self.jitter.target_ms,
        }


def install_audio_receiver(
    receiver: RTCRtpReceiver,
    inbox: AudioInbox,
    *,
    target_ms: float,
    max_gap_packets: int,
    fec: bool = True,
) -> AudioReceiver:
    """Have aiortc's receiver of an audio transceiver hand its packets to a new
    :class:`AudioReceiver` feeding ``inbox``.

    Call between ``setRemoteDescription`` and ``setLocalDescription`` (before aiortc starts the
    receiver)."""
    return AudioReceiver(
        receiver, inbox, target_ms=target_ms, max_gap_packets=max_gap_packets, fec=fec
    )
