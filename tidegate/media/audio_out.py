"""Outbound audio: a track fed by a bounded queue of PCM, sent as 20 ms Opus packets paced by
the clock.

The producer (the loopback echo, later TTS) :meth:`AudioOutTrack.write`\\ s 16 kHz mono float32
of any length; it is cut into 20 ms frames with numpy (no per-sample Python). aiortc's sender
pulls with :meth:`AudioOutTrack.recv`; we encode each frame with libopus ourselves and hand
aiortc the packet (so aiortc's 48 kHz stereo resampler and encoder never run).

Pacing: frame *k* may leave in the 20 ms window that ends at ``start + k·20 ms``. A frame that
is queued goes as soon as its window opens (so audio that arrives mid-window goes out at once,
not at the next tick), and the track never runs ahead of the clock. With nothing queued nothing
is sent (like Opus DTX: no packets, and no timer wakeups, for a quiet session); the RTP
timestamp then jumps by the silence, as the receiver expects.

Bound: ``max_s`` of queued audio, policy ``drop_oldest`` (counted); :meth:`flush` empties the
queue at once (barge-in).
"""

from __future__ import annotations

import asyncio
import fractions
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


class AudioOutTrack(MediaStreamTrack):
    """An outbound audio track (see the module docstring)."""

    kind = "audio"

    def __init__(
        self,
        *,
        max_s: float = 10.0,
        bitrate_bps: int = 32_000,
        complexity: int = 0,
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
        self.sent = 0
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
        if n and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
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
        now = loop.time()
        if self._start is None:
            self._start = now  # slot 0's window opens now
            self._slot = 0
        else:
            slot = self._slot + 1
            opens = self._start + slot * FRAME_S
            if now < opens:
                await asyncio.sleep(opens - now)
                if self.readyState != "live":
                    raise MediaStreamError
            else:
                behind = int((now - opens) / FRAME_S)  # whole windows gone since it opened
                if behind > MAX_BEHIND_FRAMES:
                    # Idle (nothing to send) or a stalled loop: resume at the window of now,
                    # rather than bursting old slots.
                    slot += behind
                    self.skipped_slots += behind
            self._slot = slot
            if not self.queue:  # flushed while we waited
                return await self.recv()
        frame = self.queue.pop()
        packet = av.Packet(self._encoder.encode(frame))
        packet.pts = self._slot * FRAME_TS
        packet.time_base = TIME_BASE
        self.sent += 1
        return packet

    def stop(self) -> None:
        super().stop()
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
            "policy": st.policy,
            "max_frames": st.max_items,
        }
