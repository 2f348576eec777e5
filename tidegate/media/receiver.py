"""The low-latency audio receive path, in place of aiortc's.

Stock aiortc (1.16) gives each audio receiver a 4-packet prefetch jitter buffer, which stalls
for ~16 packets after a single loss, and a decoder thread fed through a queue for every packet,
which then decodes to 48 kHz stereo. Here an audio receiver is an :class:`AudioReceiver`
instead: each RTP packet is handed to :class:`~tidegate.media.jitter.JitterBuffer` on the event
loop, whatever it releases is decoded at once by libopus straight to 16 kHz mono float32
(:mod:`tidegate.media.opus`: ~13 µs a packet, less than a thread hop), and the chunks go to an
:class:`~tidegate.media.audio_in.AudioInbox`. A gap waits ``target_ms`` at most (one loop timer,
not a task), then is concealed with FEC or PLC.

aiortc creates its receivers itself, so :func:`install_audio_receiver` turns the one of an audio
transceiver into an AudioReceiver after ``setRemoteDescription`` and before the connection
starts it (aiortc's receiver keeps its state in name-mangled attributes, hence the
``_RTCRtpReceiver__`` names; aiortc is pinned to 1.16 for this). What stays aiortc's: the SRTP
session and its keys, the RTP parser, the router's tables, and RTCP receiver reports (so the
sender still sees loss and jitter). Our packets skip aiortc's receive task, though: the *fast
path* takes them from aioice's datagram callback (see ``_install_fast_path``; it relies on
aioice's ``Connection.data_received`` and ``_queue``, and is not installed without them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pylibsrtp
from aiortc.rtcrtpparameters import RTCRtpReceiveParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics
from aiortc.rtp import RtpPacket

from .audio_in import SAMPLE_RATE_HZ, AudioInbox
from .errors import CodecError
from .jitter import JitterBuffer, Release, ReleaseKind
from .opus import OpusDecoder

log = logging.getLogger(__name__)

RTP_CLOCK_HZ = 48_000  # Opus' RTP clock, whatever the audio's real rate (RFC 7587)


def _private(receiver: RTCRtpReceiver, name: str) -> Any:
    """One of aiortc's name-mangled receiver attributes (aiortc is pinned for this)."""
    return getattr(receiver, "_RTCRtpReceiver__" + name)


def _set_private(receiver: RTCRtpReceiver, name: str, value: Any) -> None:
    setattr(receiver, "_RTCRtpReceiver__" + name, value)


class AudioReceiver(RTCRtpReceiver):
    """An aiortc receiver whose packets go through our jitter buffer and decoder."""

    # Set by install_audio_receiver (the instance was created by aiortc, not by us).
    inbox: AudioInbox
    jitter: JitterBuffer
    _decoder: OpusDecoder
    _timer: asyncio.TimerHandle | None
    _loop: asyncio.AbstractEventLoop
    _ssrc: int | None
    _first_ts: int | None
    counters: dict[str, int]

    def _tidegate_setup(
        self, inbox: AudioInbox, *, target_ms: float, max_gap_packets: int, fec: bool
    ) -> None:
        self.inbox = inbox
        self.jitter = JitterBuffer(
            target_ms=target_ms,
            max_gap_packets=max_gap_packets,
            clock_rate_hz=RTP_CLOCK_HZ,
            fec=fec,
        )
        self._decoder = OpusDecoder(SAMPLE_RATE_HZ)
        self._timer = None
        self._loop = asyncio.get_running_loop()
        self._ssrc = None
        self._first_ts = None
        self._fast_conn: Any = None
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

    async def receive(self, parameters: RTCRtpReceiveParameters) -> None:
        """Start receiving: register with the transport and run RTCP; no decoder thread."""
        if _private(self, "started"):
            return
        codecs = _private(self, "codecs")
        for codec in parameters.codecs:
            codecs[codec.payloadType] = codec
        self.transport._register_rtp_receiver(self, parameters)
        self._install_fast_path()
        # aiortc's RTCP task (receiver reports); its stop() cancels it.
        _set_private(self, "rtcp_task", asyncio.ensure_future(self._run_rtcp()))
        _set_private(self, "started", True)

    # -- the fast path: our SRTP packets straight from the socket's callback -----------------

    def _install_fast_path(self) -> None:
        """Take our own audio RTP straight from aioice's datagram callback: SRTP unprotect,
        parse and our handler run right there, instead of aioice queueing the datagram for
        aiortc's DTLS task to wake up, await through five coroutines, parse and await again.
        Anything else (DTLS, RTCP, other receivers' RTP, packets before SRTP is keyed) takes
        aiortc's path unchanged, and so does our packet while anything waits in that path's
        queue, so that no packet overtakes another. aiortc's transport counters are kept."""
        dtls = self.transport
        conn = getattr(dtls.transport, "_connection", None)
        queued = getattr(conn, "data_received", None)
        backlog = getattr(conn, "_queue", None)  # what waits for aiortc's DTLS task
        if conn is None or queued is None or backlog is None or self._fast_conn is not None:
            return
        router = dtls._rtp_router
        ext_map = dtls._rtp_header_extensions_map

        def data_received(data: bytes, component: int) -> None:
            srtp = dtls._rx_srtp
            if (
                srtp is None
                or len(data) < 12
                or not 128 <= data[0] < 192
                or 192 <= data[1] <= 208  # RTCP
                or backlog.qsize()  # keep the order: nothing overtakes what waits there
                or not self._ours(router, data)
            ):
                queued(data, component)
                return
            dtls._RTCDtlsTransport__rx_bytes += len(data)  # type: ignore[attr-defined]
            dtls._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]
            self.counters["fast_path"] += 1
            try:
                packet = RtpPacket.parse(srtp.unprotect(data), ext_map)
            except (pylibsrtp.Error, ValueError):
                self.counters["unprotect_errors"] += 1
                return  # aiortc drops these too
            self._on_rtp(packet)

        conn.data_received = data_received
        self._fast_conn = conn

    def _ours(self, router: Any, data: bytes) -> bool:
        """Whether aiortc's router would hand this RTP packet to us (its header's payload
        type and SSRC are not encrypted)."""
        ssrc = int.from_bytes(data[8:12], "big")
        owner = router.ssrc_table.get(ssrc)
        by_pt = router.payload_type_table.get(data[1] & 0x7F)
        if owner is None:
            if by_pt is not None and len(by_pt) == 1 and self in by_pt:
                router.ssrc_table[ssrc] = self  # as route_rtp learns a new SSRC
                return True
            return False
        return owner is self and by_pt is not None and self in by_pt

    def _remove_fast_path(self) -> None:
        conn, self._fast_conn = self._fast_conn, None
        if conn is not None:
            with contextlib.suppress(AttributeError):
                del conn.data_received  # back to the class's method

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        self._on_rtp(packet)

    def _on_rtp(self, packet: RtpPacket) -> None:
        if not self._enabled:
            return
        codec = _private(self, "codecs").get(packet.payload_type)
        if codec is None or codec.name.lower() != "opus":
            self.counters["not_opus"] += 1
            return
        # RTCP receiver-report statistics (aiortc's, so that its RTCP task reports them).
        streams: dict[int, StreamStatistics] = _private(self, "remote_streams")
        stream = streams.get(packet.ssrc)
        if stream is None:
            stream = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stream.add(packet)
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

    def _handle_disconnect(self) -> None:
        self._close_path()

    async def stop(self) -> None:
        self._close_path()
        await super().stop()

    def _close_path(self) -> None:
        self._remove_fast_path()
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
    """Turn aiortc's receiver of an audio transceiver into an :class:`AudioReceiver`.

    Call between ``setRemoteDescription`` and ``setLocalDescription`` (before aiortc starts the
    receiver)."""
    if _private(receiver, "started"):
        raise RuntimeError("install_audio_receiver: the receiver has already started")
    receiver.__class__ = AudioReceiver
    assert isinstance(receiver, AudioReceiver)
    receiver._tidegate_setup(inbox, target_ms=target_ms, max_gap_packets=max_gap_packets, fec=fec)
    return receiver
