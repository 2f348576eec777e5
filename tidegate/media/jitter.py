"""The inbound audio jitter buffer: in order, without stalls, with a small wait for a gap.

A pure data structure (no asyncio, no clock): packets go in with their arrival time, decode
instructions (:class:`Release`) come out, and the caller asks :meth:`JitterBuffer.poll` again at
:attr:`JitterBuffer.deadline_ms`. The consumer is a recogniser, not a loudspeaker, so there is
no playout clock to feed smoothly: what it needs is every 20 ms, in order, as early as possible.

Policy:

- A packet that continues the sequence is released at once: no prefetch, no added delay.
- A packet after a gap is held; the gap waits ``target_ms`` (from the arrival of the first
  packet after it) for the missing packet to turn up late. Then each missing packet is
  concealed: the one just before a held packet is rebuilt from that packet's in-band FEC, the
  others by packet loss concealment. Nothing stalls longer than ``target_ms``.
- A packet older than what was already released is late: counted and dropped.
- A jump of more than ``max_gap_packets`` (a sender restart, a long mute) is a discontinuity:
  the buffer resynchronises on the new packet instead of inventing a second of audio.

Bound: held packets lie within ``max_gap_packets`` of the next expected one, so at most that
many are held (stock aiortc holds 4 packets before releasing any, stalls for ~16 packets after
a loss, and conceals nothing).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
DEFAULT_FRAME_TS = 960  # 20 ms at Opus' 48 kHz RTP clock
MAX_FRAME_TS = 5_760  # 120 ms, the longest Opus packet


class ReleaseKind(enum.Enum):
    PACKET = "packet"  # decode the payload
    FEC = "fec"  # the packet was lost: rebuild it from the FEC in ``payload`` (the next one)
    PLC = "plc"  # the packet was lost: conceal ``duration_ts`` of audio


@dataclass(frozen=True, slots=True)
class Release:
    """One decode instruction, in sequence order."""

    kind: ReleaseKind
    seq: int  # extended (unwrapped) sequence number
    timestamp: int  # extended RTP timestamp (estimated for a lost packet)
    payload: bytes | None
    duration_ts: int  # for PLC/FEC: how long the lost packet lasted, in RTP clock units
    held_ms: float  # how long the buffer kept it (0 for a packet released on arrival)


@dataclass(slots=True)
class JitterStats:
    received: int = 0
    released: int = 0
    late: int = 0
    duplicate: int = 0
    lost: int = 0  # packets that never arrived in time (concealed)
    fec: int = 0
    plc: int = 0
    recovered_late: int = 0  # packets that filled a gap while it waited
    resyncs: int = 0
    held: int = 0
    peak_held: int = 0
    jitter_ms: float = 0.0  # RFC 3550 interarrival jitter
    delay_ms_total: float = 0.0  # sum of held_ms over released packets
    delay_ms_max: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        released = max(self.released, 1)
        return {
            "received": self.received,
            "released": self.released,
            "late": self.late,
            "duplicate": self.duplicate,
            "lost": self.lost,
            "fec": self.fec,
            "plc": self.plc,
            "recovered_late": self.recovered_late,
            "resyncs": self.resyncs,
            "held": self.held,
            "peak_held": self.peak_held,
            "jitter_ms": round(self.jitter_ms, 3),
            "delay_ms_mean": round(self.delay_ms_total / released, 3),
            "delay_ms_max": round(self.delay_ms_max, 3),
        }


@dataclass(slots=True)
class _Held:
    timestamp: int
    payload: bytes
    arrival_ms: float


def _unwrap(value: int, reference: int, modulus: int) -> int:
    """The extended value nearest to ``reference`` whose low bits are ``value``."""
    delta = (value - reference) % modulus
    if delta >= modulus // 2:
        delta -= modulus
    return reference + delta


@dataclass
class JitterBuffer:
    """See the module docstring. ``clock_rate_hz`` is the RTP clock (48 kHz for Opus)."""

    target_ms: float = 20.0
    max_gap_packets: int = 50
    clock_rate_hz: int = 48_000
    fec: bool = True
    stats: JitterStats = field(default_factory=JitterStats)

    def __post_init__(self) -> None:
        if self.target_ms < 0:
            raise ValueError(f"target_ms cannot be negative, got {self.target_ms}")
        if self.max_gap_packets < 1:
            raise ValueError(f"max_gap_packets must be at least 1, got {self.max_gap_packets}")
        self._next: int | None = None  # extended seq of the next packet to release
        self._top_seq = 0  # highest extended seq seen (unwrap reference)
        self._top_ts = 0
        self._last_seq: int | None = None  # last released seq and its timestamp
        self._last_ts = 0
        self._held: dict[int, _Held] = {}
        self._deadline: float | None = None
        self._prev_arrival: float | None = None
        self._prev_ts = 0

    @property
    def deadline_ms(self) -> float | None:
        """When :meth:`poll` must run next (None: nothing is waiting)."""
        return self._deadline

    def push(self, seq: int, timestamp: int, payload: bytes, now_ms: float) -> list[Release]:
        """A packet arrived (16-bit ``seq``, 32-bit RTP ``timestamp``)."""
        st = self.stats
        st.received += 1
        if self._next is None:
            ext, ts = seq, timestamp
            self._next = ext
        else:
            ext = _unwrap(seq, self._top_seq, SEQ_MOD)
            ts = _unwrap(timestamp, self._top_ts, TS_MOD)
        self._update_jitter(ts, now_ms)
        if ext > self._top_seq or st.received == 1:
            self._top_seq, self._top_ts = ext, ts
        if ext < self._next:
            st.late += 1
            return []
        if ext in self._held:
            st.duplicate += 1
            return []
        out: list[Release] = []
        if ext - self._next > self.max_gap_packets:
            # A discontinuity: hand over what is held, then start again from this packet.
            st.resyncs += 1
            out.extend(self._flush_held(now_ms))
            st.lost += ext - self._next
            self._next = ext
        self._held[ext] = _Held(ts, payload, now_ms)
        st.held = len(self._held)
        st.peak_held = max(st.peak_held, st.held)
        if ext == self._next:
            if self._deadline is not None:
                st.recovered_late += 1
            out.extend(self._release_run(now_ms))
            self._deadline = self._next_deadline()
        elif self._deadline is None:
            self._deadline = now_ms + self.target_ms
        if self._deadline is not None and self._deadline <= now_ms:
            out.extend(self.poll(now_ms))
        return out

    def poll(self, now_ms: float) -> list[Release]:
        """Give up on gaps whose wait is over: conceal them and release what follows."""
        out: list[Release] = []
        while self._deadline is not None and self._deadline <= now_ms and self._held:
            assert self._next is not None
            first = min(self._held)
            out.extend(self._conceal(self._next, first))
            self._next = first
            out.extend(self._release_run(now_ms))
            self._deadline = self._next_deadline()
        if not self._held:
            self._deadline = None
        return out

    # -- internals --------------------------------------------------------------------------

    def _next_deadline(self) -> float | None:
        if not self._held:
            return None
        return min(h.arrival_ms for h in self._held.values()) + self.target_ms

    def _release_run(self, now_ms: float) -> list[Release]:
        out = []
        st = self.stats
        assert self._next is not None
        while self._next in self._held:
            h = self._held.pop(self._next)
            held_ms = now_ms - h.arrival_ms
            out.append(Release(ReleaseKind.PACKET, self._next, h.timestamp, h.payload, 0, held_ms))
            st.released += 1
            st.delay_ms_total += held_ms
            st.delay_ms_max = max(st.delay_ms_max, held_ms)
            self._last_seq, self._last_ts = self._next, h.timestamp
            self._next += 1
        st.held = len(self._held)
        return out

    def _conceal(self, start: int, end: int) -> list[Release]:
        """Releases for the lost packets ``start..end-1`` (``end`` is held)."""
        st = self.stats
        nxt = self._held[end]
        missing = end - start
        if self._last_seq is not None and end > self._last_seq:
            step = (nxt.timestamp - self._last_ts) // (end - self._last_seq)
        else:
            step = DEFAULT_FRAME_TS
        if not 0 < step <= MAX_FRAME_TS:
            step = DEFAULT_FRAME_TS
        out = []
        for i in range(missing):
            seq = start + i
            ts = nxt.timestamp - (end - seq) * step
            if self.fec and seq == end - 1:
                out.append(Release(ReleaseKind.FEC, seq, ts, nxt.payload, step, self.target_ms))
                st.fec += 1
            else:
                out.append(Release(ReleaseKind.PLC, seq, ts, None, step, self.target_ms))
                st.plc += 1
            self._last_seq, self._last_ts = seq, ts
        st.lost += missing
        return out

    def _flush_held(self, now_ms: float) -> list[Release]:
        """Release every held packet in order, concealing the gaps between them."""
        out: list[Release] = []
        while self._held:
            first = min(self._held)
            assert self._next is not None
            if first > self._next:
                out.extend(self._conceal(self._next, first))
            self._next = first
            out.extend(self._release_run(now_ms))
        self._deadline = None
        return out

    def _update_jitter(self, ts: int, now_ms: float) -> None:
        if self._prev_arrival is not None:
            transit_delta = (now_ms - self._prev_arrival) - (
                (ts - self._prev_ts) * 1000.0 / self.clock_rate_hz
            )
            self.stats.jitter_ms += (abs(transit_delta) - self.stats.jitter_ms) / 16.0
        self._prev_arrival = now_ms
        self._prev_ts = ts
