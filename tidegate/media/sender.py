"""A lean RTP send path for our own Opus packets, in place of aiortc's sender loop.

aiortc's ``RTCRtpSender._run_rtp`` is a task that pulls the track, then for each packet builds
an ``RtpPacket``, stamps header extensions (two datetime-based NTP clock reads), logs, keeps a
retransmission history, serialises and awaits the transport. Our packets are already Opus
(:class:`~tidegate.media.audio_out.AudioOutTrack` encodes them), so the sender does less: the
track *pushes* each packet (from ``write()`` itself when its 20 ms window is open, else from one
loop timer), and the sender prefixes a header serialised once at start (only the sequence
number and timestamp change: aiortc's audio sender sends the same marker bit and the ``mid``
extension on every packet, and never abs-send-time or an audio level for pre-encoded packets),
then protects and sends it through aiortc's own SRTP, run to completion synchronously: it never
suspends (aioice's send is a plain ``sendto``).

What stays aiortc's: registration with the transport's RTP router (so RTCP for our SSRC comes
here: receiver reports, round-trip time), and the RTCP task, which sends sender reports from
the counters the sender keeps in aiortc's own attributes (packet and octet counts, the last
packet's RTP timestamp and its NTP send time), so the reports stay consistent with the stream.
Not kept: the retransmission history (aiortc's audio codecs negotiate no NACK).

The part that touches aiortc's internals is the seam's
:class:`~tidegate.media._aiortc.SendShell`; here: how packets are numbered
(:class:`RtpStamper`), and :func:`install_audio_sender`, which has the seam turn aiortc's sender
of an audio transceiver into one, like :func:`~tidegate.media.receiver.install_audio_receiver`
does for the receiver.
"""

from __future__ import annotations

import time
from typing import Any

from aiortc.rtcrtpsender import RTCRtpSender, random_sequence_number
from aiortc.utils import random32

from ._aiortc import SendShell, adopt_sender
from .audio_out import AudioOutTrack

NTP_EPOCH_OFFSET_S = 2_208_988_800  # 1900-01-01 to 1970-01-01


def ntp_now() -> int:
    """The wall clock as a 64-bit NTP timestamp (what aiortc's clock.current_ntp_time gives,
    without building datetimes)."""
    return int((time.time() + NTP_EPOCH_OFFSET_S) * (1 << 32))


class RtpStamper:
    """Sequence numbers and RTP timestamps of one stream: both start at random values (RFC
    3550), the sequence counts packets, the timestamp follows the track's ``pts``."""

    def __init__(self) -> None:
        self._seq = random_sequence_number()
        self._ts_origin = random32()

    def next(self, pts: int) -> tuple[int, int]:
        """(sequence number, RTP timestamp) of the next packet, ``pts`` in RTP clock units."""
        seq = self._seq
        self._seq = (seq + 1) & 0xFFFF
        return seq, (self._ts_origin + pts) & 0xFFFFFFFF

    def now_ntp(self) -> int:
        return ntp_now()


def _is_ours(track: Any) -> bool:
    return isinstance(track, AudioOutTrack)


def install_audio_sender(sender: RTCRtpSender) -> SendShell:
    """Turn aiortc's sender of an audio transceiver into the seam's lean sender (before it
    starts: call between ``setRemoteDescription`` and ``setLocalDescription``). It sends
    leanly when its track is an :class:`AudioOutTrack`, else exactly as aiortc would."""
    return adopt_sender(sender, accepts=_is_ours, stamp_factory=RtpStamper)
