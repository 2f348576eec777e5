"""Outbound audio: a track fed by a bounded queue of PCM, sent as 20 ms Opus packets paced by
the clock.

The producer (the loopback echo, later TTS) :meth:`AudioOutTrack.write`\\ s 16 kHz mono float32
of any length; it is cut into 20 ms frames with numpy (no per-sample Python). We encode each
frame with libopus ourselves (so aiortc's 48 kHz stereo resampler and encoder never run), and
the packet leaves one of two ways:

- *push* (what :class:`~tidegate.media.peer.MediaPeer` uses): our
  :class:`~tidegate.media._aiortc.SendShell` attaches a sink (:meth:`~AudioOutTrack.attach`),
  and each packet goes to it from :meth:`~AudioOutTrack.write` itself when its window is open, else
  from one loop timer when it opens: no task and no hop per packet;
- *pull*: aiortc's own sender awaits :meth:`AudioOutTrack.recv` (any other use of the track).

Pacing: frame *k* may leave in the 20 ms window that ends at ``start + k·20 ms``, or up to
``lead_ms`` before it opens (``TIDEGATE_AUDIO_OUT_LEAD_MS``, 20 ms for sessions: a producer that
itself runs in real time, like the echo, then never waits for a timer because of its own jitter;
0 for strict windows). A frame that is queued goes as soon as its window opens (so audio that
arrives mid-window goes out at once, not at the next tick), and the track never runs ahead of
the clock by more than ``lead_ms``. With nothing queued nothing is sent (like Opus DTX: no
packets, and no timer wakeups, for a quiet session); the RTP timestamp then jumps by the
silence, as the receiver expects.

Bound: ``max_s`` of queued audio, policy ``drop_oldest`` (counted); :meth:`flush` empties the
queue at once (barge-in).
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from tidegate.protocol import BoundedBuffer, Overflow

from .opus import Float32Array, OpusEncoder

SAMPLE_RATE_HZ = 16_000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE_HZ * FRAME_MS // 1000
RTP_CLOCK_HZ = 48_000
FRAME_TS = RTP_CLOCK_HZ * FRAME_MS // 1000
TIME_BASE = fractions.Fraction(1, RTP_CLOCK_HZ)
FRAME_S = FRAME_MS / 1000
MAX_BEHIND_FRAMES = 3  # further behind the clock than this: skip ahead, don't burst
#: the send times of this many last packets are kept (1.28 s: longer than any playout delay a
#: client may give, docs/protocol.md ``rtc.offer``), for :meth:`AudioOutTrack.sent_since`
SENT_TIMES_KEPT = 64

PacketSink = Callable[[bytes, int], None]  # (Opus payload, pts in RTP clock units)


class AudioOutTrack(MediaStreamTrack):
    """An outbound audio track (see the module docstring)."""

    kind = "audio"

    def __init__(
        self,
        *,
        max_s: float = 10.0,
        bitrate_bps: int = 32_000,
        complexity: int = 0,
        lead_ms: float = 0.0,
    ) -> None:
        super().__init__()
        max_frames = max(1, int(max_s * 1000 / FRAME_MS))
        self.queue: BoundedBuffer[Float32Array] = BoundedBuffer(
            "audio_out", max_items=max_frames, policy=Overflow.DROP_OLDEST
        )
        self._encoder = OpusEncoder(SAMPLE_RATE_HZ, bitrate_bps=bitrate_bps, complexity=complexity)
        self._carry = np.zeros(0, np.float32)
        self._start: float | None = None
        self._slot = 0
        self._waiter: asyncio.Future[None] | None = None
        self._sink: PacketSink | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.lead_s = lead_ms / 1000.0
        self.waits = 0
        self.sent = 0
        self._sent_at: deque[float] = deque(maxlen=SENT_TIMES_KEPT)  # time.monotonic()
        self.skipped_slots = 0
        self.flushed_ms = 0.0

    @property
    def queued_ms(self) -> float:
        return len(self.queue) * FRAME_MS + len(self._carry) * 1000 / SAMPLE_RATE_HZ

    def write(self, pcm: Float32Array) -> int:
        """Queue 16 kHz mono float32 audio; returns how many old frames the bound dropped."""
        if self.readyState != "live":
            return 0
        data = np.concatenate((self._carry, pcm)) if len(self._carry) else pcm
        n = len(data) // FRAME_SAMPLES
        dropped_before = self.queue.stats.dropped
        if n:
            frames = np.ascontiguousarray(data[: n * FRAME_SAMPLES], np.float32).reshape(
                n, FRAME_SAMPLES
            )
            for frame in frames:
                self.queue.push(frame)
        self._carry = np.array(data[n * FRAME_SAMPLES :], np.float32)
        if n:
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)
            if self._sink is not None and self._timer is None:
                self._pump()
        return self.queue.stats.dropped - dropped_before

    def trim(self, max_ms: float) -> int:
        """Drop the oldest queued frames until at most ``max_ms`` wait (a latency cap)."""
        n = 0
        while len(self.queue) * FRAME_MS > max_ms:
            self.queue.pop()
            self.queue.stats.dropped += 1
            n += 1
        return n

    def flush(self) -> float:
        """Drop everything queued, at once; returns the ms dropped."""
        ms = self.queued_ms
        self.queue.clear()
        self._carry = np.zeros(0, np.float32)
        self.flushed_ms += ms
        return ms

    # -- pacing, shared by the pull (recv) and push (attach) paths ------------------------

    def _wait_s(self, now: float) -> float:
        """Seconds until the next frame's window opens (0: it is open, and claimed)."""
        if self._start is None:
            self._start = now  # slot 0's window opens now
            self._slot = 0
            return 0.0
        slot = self._slot + 1
        nominal = self._start + slot * FRAME_S
        opens = nominal - self.lead_s
        if now < opens:
            self.waits += 1
            return opens - now
        behind = int((now - nominal) / FRAME_S)  # whole windows gone since it opened
        if behind > MAX_BEHIND_FRAMES:
            # Idle (nothing to send) or a stalled loop: resume at the window of now, rather
            # than bursting old slots.
            slot += behind
            self.skipped_slots += behind
        self._slot = slot
        return 0.0

    def _encode_next(self) -> bytes:
        frame = self.queue.pop()
        self.sent += 1
        self._sent_at.append(time.monotonic())
        return self._encoder.encode(frame)

    def sent_since(self, t: float) -> int:
        """How many packets left after monotonic time ``t`` (at most the last
        ``SENT_TIMES_KEPT``): those a client that plays each packet that long after it came
        has not played yet."""
        n = 0
        for at in reversed(self._sent_at):
            if at <= t:
                break
            n += 1
        return n

    # -- pull: aiortc's own sender calls recv() --------------------------------------------

    async def recv(self) -> av.Packet[Any]:
        """The next Opus packet, when its window opens (see the module docstring)."""
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        while not self.queue:
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
            if self.readyState != "live":
                raise MediaStreamError
        wait = self._wait_s(loop.time())
        if wait > 0:
            await asyncio.sleep(wait)
            if self.readyState != "live":
                raise MediaStreamError
            self._slot += 1
        if not self.queue:  # flushed while we waited
            return await self.recv()
        packet = av.Packet(self._encode_next())
        packet.pts = self._slot * FRAME_TS
        packet.time_base = TIME_BASE
        return packet

    # -- push: our sender (sender.py) attaches a sink --------------------------------------

    def attach(self, sink: PacketSink) -> None:
        """Send by push instead of pull: from now on each packet goes to ``sink(payload,
        pts)`` (``pts`` in 48 kHz RTP clock units) from :meth:`write` itself when its window
        is open, else from one loop timer at the window's opening. No task, no hop."""
        self._sink = sink
        self._pump()

    def detach(self) -> None:
        self._sink = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pump(self) -> None:
        self._timer = None
        sink = self._sink
        if sink is None:
            return
        loop = asyncio.get_running_loop()
        while self.queue and self.readyState == "live":
            wait = self._wait_s(loop.time())
            if wait > 0:
                self._timer = loop.call_later(wait, self._pump_at_window)
                return
            sink(self._encode_next(), self._slot * FRAME_TS)
            if self._sink is None:  # the sink detached (its connection ended)
                return

    def _pump_at_window(self) -> None:
        self._timer = None
        self._slot += 1  # the window that _wait_s found closed is open now: claim it
        sink = self._sink
        if sink is None or not self.queue or self.readyState != "live":
            return  # detached, flushed or stopped while it waited
        sink(self._encode_next(), self._slot * FRAME_TS)
        self._pump()

    def stop(self) -> None:
        super().stop()
        self.detach()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._encoder.close()

    def stats(self) -> dict[str, Any]:
        st = self.queue.stats
        return {
            "frames_sent": self.sent,
            "queued_ms": self.queued_ms,
            "peak_frames": st.peak,
            "dropped_frames": st.dropped,
            "flushed_ms": self.flushed_ms,
            "skipped_slots": self.skipped_slots,
            "paced_waits": self.waits,
            "policy": st.policy,
            "max_frames": st.max_items,
        }
