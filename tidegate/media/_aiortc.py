"""The one seam to aiortc's and aioice's internals.

tidegate's media path replaces pieces of aiortc: the audio receive path (our jitter buffer and
decoder, fed straight from aioice's datagram callback), the audio send path (pushed,
pre-serialised packets through aiortc's SRTP), ICE gathering (our addresses and port range),
the video decoder's input queue (bounded, size-checked: video_guard.py) and the video frame
assembly (a frame completes at its marked last packet, not at the next frame's first).
Each of those needs aiortc's or aioice's private attributes: name-mangled receiver and sender
state, the DTLS transport's SRTP sessions and router, a transceiver's codecs and offer
direction, aioice's candidate lists and receive queue. This module is the ONLY one that touches
them (``tests/media/test_aiortc_seam.py`` walks ``tidegate/`` and fails on any other module
that does); everything else calls the small functions and shells below, whose names and
signatures are ours.

It is written against exactly the aiortc and aioice minor versions in :data:`EXPECTED_VERSIONS`
and checks them at import: an upgrade fails loudly here, naming the installed and the expected
versions, rather than quietly at the first packet. Upgrading means re-reading the private code
this module relies on (listed per function) and then moving the pin in pyproject.toml and here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import ipaddress
import logging
import queue
import struct
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol, cast

import pylibsrtp
from aioice.ice import Connection, StunProtocol, server_reflexive_candidate
from aiortc import RTCPeerConnection, RTCRtpTransceiver
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpReceiveParameters,
    RTCRtpSendParameters,
)
from aiortc.rtcrtpreceiver import RTCRtpReceiver, StreamStatistics
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtpPacket

from .errors import LocalMediaError

log = logging.getLogger(__name__)

# (major, minor) of each package this module was written against.
EXPECTED_VERSIONS: dict[str, tuple[int, int]] = {"aiortc": (1, 16), "aioice": (0, 13)}


class AiortcVersionError(LocalMediaError, ImportError):
    """The installed aiortc or aioice is not the version whose internals this seam knows."""


def check_versions(installed: dict[str, str]) -> None:
    """Raise :class:`AiortcVersionError` unless each package in :data:`EXPECTED_VERSIONS` is
    installed at the expected major.minor (``installed``: package name → version string)."""
    wrong = []
    for name, (major, minor) in EXPECTED_VERSIONS.items():
        version = installed.get(name)
        parts = (version or "").split(".")
        try:
            got = (int(parts[0]), int(parts[1]))
        except (IndexError, ValueError):
            got = None
        if got != (major, minor):
            wrong.append(f"{name} {version or 'not installed'} (expected {major}.{minor}.x)")
    if wrong:
        raise AiortcVersionError(
            "tidegate.media reaches into aiortc/aioice internals and supports only the pinned "
            "versions; installed: " + ", ".join(wrong) + ". Install the pinned versions "
            "(pyproject.toml), or port tidegate/media/_aiortc.py to the new ones."
        )


def _installed_versions() -> dict[str, str]:
    out = {}
    for name in EXPECTED_VERSIONS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


check_versions(_installed_versions())


def _get(obj: object, cls: str, name: str) -> Any:
    """One of aiortc's name-mangled attributes (``__name`` in class ``cls``)."""
    return getattr(obj, f"_{cls}__{name}")


def _set(obj: object, cls: str, name: str, value: Any) -> None:
    setattr(obj, f"_{cls}__{name}", value)


# -- transceivers (aiortc.rtcrtptransceiver: _codecs, _offerDirection, _get_mline_index) ------


def transceiver_codecs(t: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    """The codecs the remote offer left on this transceiver (what the answer may choose from)."""
    return list(t._codecs)


def set_transceiver_codecs(t: RTCRtpTransceiver, codecs: Sequence[RTCRtpCodecParameters]) -> None:
    """Restrict the codecs the answer negotiates on this transceiver."""
    t._codecs = list(codecs)


def offer_direction(t: RTCRtpTransceiver) -> str | None:
    """The direction the remote offer asks of us (the offer's own, reversed)."""
    direction: str | None = t._offerDirection
    return direction


def mline_index(t: RTCRtpTransceiver) -> int | None:
    """The index of this transceiver's m= section in the session description."""
    index: int | None = t._get_mline_index()
    return index


# -- ICE gathering (aioice.ice.Connection: _local_candidates*, _components, _protocols) ---------


BindComponent = Callable[[Connection, int], Awaitable[list[StunProtocol]]]


def ice_connections(pc: RTCPeerConnection) -> list[Connection]:
    """The aioice connections (one per ICE transport) of a peer connection."""
    conns = [t.receiver.transport.transport.iceGatherer._connection for t in pc.getTransceivers()]
    if pc.sctp is not None:
        conns.append(pc.sctp.transport.transport.iceGatherer._connection)
    unique: dict[int, Connection] = {id(c): c for c in conns}
    return list(unique.values())


def replace_gathering(conn: Connection, bind_component: BindComponent) -> None:
    """Make ``conn`` gather its host candidates with ``bind_component(conn, component)`` (one
    bound protocol per host address) instead of aioice's every-interface gathering; server-
    reflexive and relayed candidates still come from the connection's STUN/TURN servers. No-op
    once the connection has started gathering."""
    if conn._local_candidates_start:
        return
    conn.gather_candidates = functools.partial(_gather, conn, bind_component)  # type: ignore[method-assign]


async def _gather(conn: Connection, bind_component: BindComponent) -> None:
    """aioice's ``Connection.gather_candidates`` with our host candidates."""
    if conn._local_candidates_start:
        return
    conn._local_candidates_start = True
    for component in sorted(conn._components):
        protocols = await bind_component(conn, component)
        conn._protocols += protocols
        conn._local_candidates += [p.local_candidate for p in protocols]
        # Server-reflexive candidates through our STUN server, if one is configured.
        if conn.stun_server:
            for p in protocols:
                if ipaddress.ip_address(p.local_candidate.host).version == 4:
                    try:
                        async with asyncio.timeout(5):
                            cand, _ = await server_reflexive_candidate(p, conn.stun_server)
                        conn._local_candidates.append(cand)
                    except (TimeoutError, ConnectionError, OSError):
                        pass
        # Relayed candidates through our TURN server, if one is configured: aioice's own
        # code path, with no host addresses of its own.
        if conn.turn_server:
            conn._local_candidates += await conn.get_component_candidates(component, addresses=[])
    conn._local_candidates_end = True


# -- a client's raw packet tap (aiortc.rtcrtpreceiver: _handle_rtp_packet) -------------------


RtpHandler = Callable[[RtpPacket, int], Coroutine[Any, Any, None]]


def tap_rtp(receiver: RTCRtpReceiver, handler: RtpHandler) -> None:
    """Hand every RTP packet of an aiortc receiver to ``handler(packet, arrival_time_ms)``
    instead of its jitter buffer and decoder: for a client that measures when packets arrive
    (the bench), with no playout buffer in between."""
    receiver._handle_rtp_packet = handler  # type: ignore[method-assign,assignment]


# -- the video decoder's input (aiortc.rtcrtpreceiver: __decoder_queue, __started) ------------


def receiver_started(receiver: RTCRtpReceiver) -> bool:
    """Whether aiortc has started this receiver (its decoder thread and tasks run)."""
    return bool(_get(receiver, "RTCRtpReceiver", "started"))


def replace_decoder_queue(receiver: RTCRtpReceiver, decoder_queue: queue.Queue[Any]) -> None:
    """Make ``decoder_queue`` the queue aiortc's receiver puts encoded frames on for its
    decoder thread (aiortc's own is unbounded). Before the receiver starts: aiortc hands the
    queue to the thread when it starts."""
    if receiver_started(receiver):
        raise RuntimeError("replace_decoder_queue: the receiver has already started")
    _set(receiver, "RTCRtpReceiver", "decoder_queue", decoder_queue)


# -- video frame assembly (aiortc.jitterbuffer: _origin, _packets, _remove_frame;
#    aiortc.rtcrtpreceiver: __jitter_buffer) ---------------------------------------------------

VIDEO_JITTER_CAPACITY = 512  # packets, as aiortc's own video receiver


class MarkerJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, completing a frame at its last packet.

    aiortc's buffer emits a frame only when the first packet of the *next* frame (another RTP
    timestamp) arrives, so every frame waits one frame interval (100 ms at 10 fps) before it
    reaches the decoder. A sender marks the last packet of each frame (the RTP marker bit:
    RFC 7741 for VP8, RFC 6184 for H.264; aiortc and browsers set it), so here a contiguous run
    of packets of one timestamp that ends with a marked packet is a frame at once. A sender
    that marks nothing still gets aiortc's rule (the next timestamp completes the frame);
    gaps, reordering, capacity and PLI requests are aiortc's, unchanged."""

    def __init__(self, capacity: int = VIDEO_JITTER_CAPACITY) -> None:
        super().__init__(capacity=capacity, is_video=True)
        self.tg_marker_frames = 0  # frames completed by their marked last packet
        self.tg_next_frames = 0  # frames completed by the next frame's first packet

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        origin = self._origin
        if origin is None:
            return None
        cap = self._capacity
        slots = self._packets
        run: list[RtpPacket] = []
        timestamp: int | None = None
        for count in range(cap):
            packet = slots[(origin + count) % cap]
            if packet is None:
                return None  # a gap (or nothing more yet): no complete frame
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:  # an unmarked frame, ended by the next one
                self.tg_next_frames += 1
                return self._tg_take(run, timestamp, count)
            run.append(packet)
            if packet.marker:
                self.tg_marker_frames += 1
                return self._tg_take(run, timestamp, count + 1)
        return None

    def _tg_take(self, run: list[RtpPacket], timestamp: int, count: int) -> JitterFrame:
        frame = JitterFrame(data=b"".join(p._data for p in run), timestamp=timestamp)  # type: ignore[attr-defined]
        self.remove(count)
        return frame


def request_keyframe(receiver: RTCRtpReceiver) -> None:
    """Have aiortc's video receiver ask the sender for a keyframe (an RTCP PLI) at its next
    packet, as it does after a decoding error (its ``__decoder_error`` event, which it checks
    and clears for every packet). Thread-safe."""
    _get(receiver, "RTCRtpReceiver", "decoder_error").set()


def complete_frames_at_marker(receiver: RTCRtpReceiver) -> MarkerJitterBuffer:
    """Give aiortc's video receiver a :class:`MarkerJitterBuffer` (before it starts; aiortc
    creates its buffer in the receiver's constructor and only ever reads the attribute)."""
    if receiver_started(receiver):
        raise RuntimeError("complete_frames_at_marker: the receiver has already started")
    buffer = MarkerJitterBuffer()
    _set(receiver, "RTCRtpReceiver", "jitter_buffer", buffer)
    return buffer


# -- the audio receive path (aiortc.rtcrtpreceiver, aiortc.rtcdtlstransport, aioice.ice) ------


class RtpSink(Protocol):
    """Where :class:`ReceiveShell` hands the Opus RTP packets of its receiver."""

    counters: dict[str, int]  # the shell counts "fast_path" and "unprotect_errors" here

    def on_rtp(self, packet: RtpPacket) -> None:
        """One Opus packet (already SRTP-unprotected and parsed), on the event loop."""

    def on_not_opus(self) -> None:
        """A packet whose payload type is not Opus (dropped)."""

    def on_close(self) -> None:
        """The receiver stopped or its transport disconnected: no more packets."""


class ReceiveShell(RTCRtpReceiver):
    """aiortc's receiver of an audio transceiver, with its packets handed to a :class:`RtpSink`
    instead of aiortc's jitter buffer and decoder thread (see :func:`adopt_receiver`).

    What stays aiortc's: the SRTP session and keys, the RTP parser, the router's tables, and
    the RTCP task (receiver reports, from the stream statistics kept here). Attributes of ours
    on this aiortc object are prefixed ``tg_`` so that they cannot collide with aiortc's."""

    tg_sink: RtpSink
    tg_fast_conn: Connection | None
    # aiortc's own dicts (created once in its __init__, changed in place), looked up once
    tg_codecs: dict[int, RTCRtpCodecParameters]
    tg_streams: dict[int, StreamStatistics]

    async def receive(self, parameters: RTCRtpReceiveParameters) -> None:
        """Start receiving: register with the transport and run RTCP; no decoder thread."""
        if _get(self, "RTCRtpReceiver", "started"):
            return
        for codec in parameters.codecs:
            self.tg_codecs[codec.payloadType] = codec  # type: ignore[index]  # as aiortc
        self.transport._register_rtp_receiver(self, parameters)
        self._install_fast_path()
        # aiortc's RTCP task (receiver reports); its stop() cancels it.
        _set(self, "RTCRtpReceiver", "rtcp_task", asyncio.ensure_future(self._run_rtcp()))
        _set(self, "RTCRtpReceiver", "started", True)

    def _install_fast_path(self) -> None:
        """Take our own audio RTP straight from aioice's datagram callback: SRTP unprotect,
        parse and the sink run right there, instead of aioice queueing the datagram for
        aiortc's DTLS task to wake up, await through five coroutines, parse and await again.
        Anything else (DTLS, RTCP, other receivers' RTP, packets before SRTP is keyed) takes
        aiortc's path unchanged, and so does our packet while anything waits in that path's
        queue, so that no packet overtakes another. aiortc's transport counters are kept.
        Relies on aioice's ``Connection.data_received`` and ``_queue``; not installed
        without them."""
        dtls = self.transport
        conn = getattr(dtls.transport, "_connection", None)
        queued = getattr(conn, "data_received", None)
        backlog = getattr(conn, "_queue", None)  # what waits for aiortc's DTLS task
        if conn is None or queued is None or backlog is None or self.tg_fast_conn is not None:
            return
        router = dtls._rtp_router
        ext_map = dtls._rtp_header_extensions_map
        counters = self.tg_sink.counters

        def data_received(data: bytes, component: int) -> None:
            srtp = dtls._rx_srtp
            if (
                srtp is None
                or len(data) < 12
                or not 128 <= data[0] < 192
                or 192 <= data[1] <= 208  # RTCP
                or backlog.qsize()  # keep the order: nothing overtakes what waits there
                or not self._tg_ours(router, data)
            ):
                queued(data, component)
                return
            # aiortc's transport counters (name-mangled; mypy does not mangle: hence ignore)
            dtls._RTCDtlsTransport__rx_bytes += len(data)  # type: ignore[attr-defined]
            dtls._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]
            counters["fast_path"] += 1
            try:
                packet = RtpPacket.parse(srtp.unprotect(data), ext_map)
            except (pylibsrtp.Error, ValueError):
                counters["unprotect_errors"] += 1
                return  # aiortc drops these too
            self._tg_on_rtp(packet)

        conn.data_received = data_received
        self.tg_fast_conn = conn

    def _tg_ours(self, router: Any, data: bytes) -> bool:
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

    def _tg_remove_fast_path(self) -> None:
        conn, self.tg_fast_conn = self.tg_fast_conn, None
        if conn is not None:
            with contextlib.suppress(AttributeError):
                del conn.data_received  # back to the class's method

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        self._tg_on_rtp(packet)  # aiortc's slow path (before SRTP is keyed, or queued behind)

    def _tg_on_rtp(self, packet: RtpPacket) -> None:
        if not self._enabled:
            return
        codec = self.tg_codecs.get(packet.payload_type)
        if codec is None or codec.name.lower() != "opus":
            self.tg_sink.on_not_opus()
            return
        # RTCP receiver-report statistics (aiortc's, so that its RTCP task reports them).
        streams = self.tg_streams
        stream = streams.get(packet.ssrc)
        if stream is None:
            stream = streams[packet.ssrc] = StreamStatistics(codec.clockRate)
        stream.add(packet)
        self.tg_sink.on_rtp(packet)

    def _handle_disconnect(self) -> None:
        self._tg_close()

    async def stop(self) -> None:
        self._tg_close()
        await super().stop()

    def _tg_close(self) -> None:
        self._tg_remove_fast_path()
        self.tg_sink.on_close()


def adopt_receiver(receiver: RTCRtpReceiver, sink: RtpSink) -> ReceiveShell:
    """Turn aiortc's receiver of an audio transceiver into a :class:`ReceiveShell` feeding
    ``sink`` (aiortc creates its receivers itself, hence the class swap). Call between
    ``setRemoteDescription`` and ``setLocalDescription``, before aiortc starts the receiver."""
    if receiver_started(receiver):
        raise RuntimeError("adopt_receiver: the receiver has already started")
    receiver.__class__ = ReceiveShell
    assert isinstance(receiver, ReceiveShell)
    receiver.tg_sink = sink
    receiver.tg_fast_conn = None
    receiver.tg_codecs = _get(receiver, "RTCRtpReceiver", "codecs")
    receiver.tg_streams = _get(receiver, "RTCRtpReceiver", "remote_streams")
    return receiver


# -- the audio send path (aiortc.rtcrtpsender, aiortc.rtcdtlstransport._send_rtp) --------------

_HEAD = struct.Struct("!BBHII")


class PushTrack(Protocol):
    """A track that pushes pre-encoded Opus packets to one sink (AudioOutTrack)."""

    def attach(self, sink: Callable[[bytes, int], None]) -> None: ...

    def detach(self) -> None: ...

    def stop(self) -> None: ...


class RtpStamp(Protocol):
    """Numbers each packet of a stream (media/sender.py's :class:`RtpStamper`)."""

    def next(self, pts: int) -> tuple[int, int]:
        """(sequence number, RTP timestamp) of the packet with presentation time ``pts``."""

    def now_ntp(self) -> int:
        """The wall clock as a 64-bit NTP timestamp (for the sender reports)."""


class SendShell(RTCRtpSender):
    """aiortc's sender of an audio transceiver that, when its track is a :class:`PushTrack`,
    takes pushed Opus packets and sends each with a header serialised once at start through
    aiortc's own ``RTCDtlsTransport._send_rtp``, run to completion synchronously (it never
    suspends: aioice's send is a plain ``sendto``). Any other track: aiortc's own loop.

    aiortc's RTCP task still runs and sends sender reports from the packet and octet counts,
    last RTP timestamp and its NTP time that this class keeps in aiortc's own attributes."""

    tg_accepts: Callable[[Any], bool]
    tg_stamp_factory: Callable[[], RtpStamp]
    tg_stamp: RtpStamp | None
    tg_lean: bool
    tg_track: PushTrack | None
    tg_head: tuple[int, int, bytes]  # first two header bytes, and what follows the SSRC
    tg_send_errors: int

    async def send(self, parameters: RTCRtpSendParameters) -> None:
        """Start sending: register, serialise the header once, attach to the track, run
        aiortc's RTCP task. No RTP task."""
        if _get(self, "RTCRtpSender", "started"):
            return
        track = self.track
        codec = parameters.codecs[0] if parameters.codecs else None
        if (
            not self.tg_accepts(track)
            or codec is None
            or codec.mimeType.lower() != "audio/opus"
            or codec.payloadType is None
        ):
            await super().send(parameters)  # not ours to send: aiortc's own loop
            return
        _set(self, "RTCRtpSender", "cname", parameters.rtcp.cname)
        mid = parameters.muxId
        _set(self, "RTCRtpSender", "mid", mid)
        self.transport._register_rtp_sender(self, parameters)
        ext_map = _get(self, "RTCRtpSender", "rtp_header_extensions_map")
        ext_map.configure(parameters)
        template = RtpPacket(payload_type=codec.payloadType, ssrc=self._ssrc)
        template.marker = 1  # as aiortc's sender marks every audio packet
        template.extensions.mid = mid
        head = template.serialize(ext_map)
        self.tg_head = (head[0], head[1], head[12:])
        self.tg_stamp = self.tg_stamp_factory()
        self.tg_lean = True
        self.tg_track = cast(PushTrack, track)
        _set(self, "RTCRtpSender", "rtcp_task", asyncio.ensure_future(self._run_rtcp()))
        _set(self, "RTCRtpSender", "started", True)
        self.tg_track.attach(self._tg_send_packet)

    @property
    def tg_ssrc(self) -> int:
        """The SSRC this sender sends with."""
        ssrc: int = self._ssrc
        return ssrc

    def _tg_send_packet(self, payload: bytes, pts: int) -> None:
        """One Opus packet from the track (``pts`` in 48 kHz RTP clock units)."""
        if not self._enabled:
            return  # as aiortc: a disabled sender drops what its track gives
        stamp = self.tg_stamp
        assert stamp is not None
        b0, b1, tail = self.tg_head
        seq, timestamp = stamp.next(pts)
        data = _HEAD.pack(b0, b1, seq, timestamp, self._ssrc) + tail + payload
        coro = self.transport._send_rtp(data)
        try:
            coro.send(None)
        except StopIteration:
            pass
        except ConnectionError:
            # The connection ended: as aiortc's loop does, stop sending and end the track.
            self._tg_end_track()
            return
        else:
            # aioice's send suspended (it never does in 0.13: a plain sendto). The packet is
            # lost; say so loudly and stop rather than reorder or block.
            coro.close()
            self.tg_send_errors += 1
            log.error("audio sender: the transport's send suspended; audio out stops")
            self._tg_end_track()
            return
        # aiortc's sender-report state (name-mangled; mypy does not mangle: hence ignore)
        self._RTCRtpSender__ntp_timestamp = stamp.now_ntp()
        self._RTCRtpSender__rtp_timestamp = timestamp
        self._RTCRtpSender__octet_count += len(payload)  # type: ignore[attr-defined]
        self._RTCRtpSender__packet_count += 1  # type: ignore[attr-defined]

    def _tg_end_track(self) -> None:
        track, self.tg_track = self.tg_track, None
        if track is not None:
            track.detach()
            track.stop()

    async def stop(self) -> None:
        if not self.tg_lean:
            await super().stop()
            return
        if not _get(self, "RTCRtpSender", "started"):
            return
        self.transport._unregister_rtp_sender(self)
        self._tg_end_track()
        await _get(self, "RTCRtpSender", "rtcp_started").wait()
        task = _get(self, "RTCRtpSender", "rtcp_task")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # its last act is an RTCP BYE


def adopt_sender(
    sender: RTCRtpSender,
    *,
    accepts: Callable[[Any], bool],
    stamp_factory: Callable[[], RtpStamp],
) -> SendShell:
    """Turn aiortc's sender of an audio transceiver into a :class:`SendShell` (before it
    starts: call between ``setRemoteDescription`` and ``setLocalDescription``). It sends
    leanly when ``accepts(track)`` (the track must then be a :class:`PushTrack`), numbering
    packets with a fresh ``stamp_factory()``; else exactly as aiortc would."""
    if _get(sender, "RTCRtpSender", "started"):
        raise RuntimeError("adopt_sender: the sender has already started")
    sender.__class__ = SendShell
    assert isinstance(sender, SendShell)
    sender.tg_accepts = accepts
    sender.tg_stamp_factory = stamp_factory
    sender.tg_stamp = None
    sender.tg_lean = False
    sender.tg_track = None
    sender.tg_send_errors = 0
    return sender
