"""The audio lane's echo path: the session's own speech removed from its microphone audio,
before VAD and ASR (WebRTC AEC3, :class:`tidegate.engines.audio.EchoCanceller`).

The server knows what it played and when. The reply lane tells this path of every frame of
speech it sends (:meth:`EchoPath.played`: the frame and the monotonic time its playout starts,
which its pacing fixes: on the WebRTC track, when the frame is sent; WS-only, when the
``output.audio`` frame is due, its ``ts`` on the reply's clock); a WS-only client may add the
delay between receiving and playing (``input.audio.playout_delay_ms``), which moves the
reference later. The reference goes through a low-pass to 16 kHz (:class:`Decimator`).

The microphone audio is stamped with its capture time on the same clock:

- with a media clock (WebRTC's RTP time; ``input.audio.ts`` when the client sends it): its
  media time, anchored so that the first read's first sample was captured ``MEDIA_LEAD_S``
  before that read arrived, less its own length;
- without one: the running count of samples the lane has read, anchored at the first
  chunk's arrival less ``CAPTURE_LEAD_S``, and re-anchored when the stream stays behind its
  arrival by more than ``REANCHOR_S`` for ``REANCHOR_AFTER_S`` (the client paused; a burst
  after a network stall catches up before). The lane's own lag does not move it.

Stamps err early, never late: a reference ahead of its echo AEC3 finds by its own delay
tracking at once, one after it cannot be cancelled. What the stamps do not show (network,
device buffers, the air) AEC3 tracks; the canceller's envelope estimate only realigns for a
change of ``realign_min_s`` or more (docs/ears.md; by default never: it misjudged speech echo).

Threading: the canceller is thread-confined and CPU work, so every call to it runs on the
engine service's bounded media worker pool (:class:`tidegate.engines.workers.WorkerPool`), one
call at a time per session (the lane awaits each before the next): the frames played since the
last call are fed as reference first, then the microphone audio is cleaned. The frames played
wait in a bounded queue (``max_pending_frames``, policy ``drop_oldest``, counted) between
calls. When the pool refuses a call (full), that audio goes on uncleaned and is counted.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import numpy as np

from tidegate.engines.audio import EchoCanceller
from tidegate.engines.errors import EngineError
from tidegate.engines.runtime import Array
from tidegate.engines.workers import WorkerPool

SAMPLE_RATE_HZ = 16_000
BLOCK_SAMPLES = 160  # the canceller's 10 ms block
REANCHOR_S = 0.2  # the microphone stream this far behind its arrival ...
REANCHOR_AFTER_S = 1.0  # ... for this long (a burst after a stall catches up before): re-anchored
#: how much earlier than its arrival a chunk's capture is taken to start: the longest chunk
#: expected. Erring early keeps the reference ahead of its echo (which AEC3 tracks); late
#: would put it after (which AEC3 cannot cancel).
CAPTURE_LEAD_S = 0.1
#: with a media clock, the first read's own length is known: this much more is allowed for
MEDIA_LEAD_S = 0.02
ECHO_CANCELLATION = ("auto", "on", "off")


class Decimator:
    """Speech at a multiple of 16 kHz (int16 or float32) to 16 kHz float32, frame by frame: a
    windowed-sinc low-pass below 7.2 kHz (its history carried from frame to frame), then every
    ``step``-th sample. The reference must match what the speaker played: aliasing a crude
    filter lets through is sound the echo does not have."""

    TAPS = 24  # half-length, at the input rate

    def __init__(self) -> None:
        self._rate = 0
        self._h = np.ones(1, np.float32)
        self._hist = np.zeros(0, np.float32)

    def __call__(self, pcm: Array, rate_hz: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        x = np.asarray(pcm)
        f = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
        if rate_hz == SAMPLE_RATE_HZ:
            return f
        step = rate_hz // SAMPLE_RATE_HZ
        if step * SAMPLE_RATE_HZ != rate_hz:
            raise ValueError(f"reference at {rate_hz} Hz: a multiple of 16 kHz is expected")
        if rate_hz != self._rate:
            taps = np.arange(-self.TAPS, self.TAPS + 1)
            cut = 0.45 / step
            h = 2 * cut * np.sinc(2 * cut * taps) * np.hamming(len(taps))
            self._h = (h / h.sum()).astype(np.float32)
            self._hist = np.zeros(2 * self.TAPS, np.float32)
            self._rate = rate_hz
        full = np.concatenate([self._hist, f])
        self._hist = full[-2 * self.TAPS :]
        y = np.convolve(full, self._h, mode="valid")  # len(f), delayed by TAPS samples
        out: np.ndarray[Any, np.dtype[np.float32]] = y[::step].astype(np.float32)
        return out


class EchoPath:
    """See the module docstring. ``origin`` is the monotonic time of sample 0."""

    def __init__(
        self,
        workers: WorkerPool,
        *,
        noise_suppression: bool = False,
        max_delay_s: float = 0.5,
        realign_min_s: float = 1.0,
        max_pending_frames: int = 500,
    ) -> None:
        self.workers = workers
        # The reference goes in at its play time (initial delay 0): ahead of its echo, never
        # after it, which AEC3 cannot cancel; AEC3's own delay tracking closes the gap at
        # once, while a realignment restarts its adaptation (a leak of ~0.75 s measured), so
        # only a larger estimated change (realign_min_s) moves the reference.
        self.canceller = EchoCanceller(
            max_delay_s=max_delay_s,
            initial_delay_s=0.0,
            realign_min_s=realign_min_s,
            reference_buffer_s=max(3.0, max_delay_s + 2.0),
            noise_suppression=noise_suppression,
        )
        self.origin = time.monotonic()
        self.playout_delay_s = 0.0
        self._far: deque[tuple[Array, int, float]] = deque()
        self._max_far = max_pending_frames
        self._near_next: int | None = None  # the capture sample of the next near sample
        self._behind_since: float | None = None  # since when the stream lags its arrival
        self._media_anchor: int | None = None  # capture sample of media time 0
        self._rest = np.zeros(0, np.float32)  # near samples short of a whole block
        self._decimate = Decimator()  # on the worker only
        self._lock = asyncio.Lock()  # one call at a time (the canceller is thread-confined)
        self.counters: dict[str, int] = {
            "far_frames": 0,
            "far_dropped_frames": 0,
            "near_blocks": 0,
            "uncleaned_blocks": 0,
            "reanchors": 0,
        }

    def sample_at(self, t: float) -> int:
        return round((t - self.origin) * SAMPLE_RATE_HZ)

    # -- the far end (the reply lane, on the event loop) --------------------------------------
    def played(self, pcm: Array, rate_hz: int, at: float) -> None:
        """A frame of the session's speech whose playout starts at monotonic ``at``."""
        self._far.append((pcm, rate_hz, at + self.playout_delay_s))
        self.counters["far_frames"] += 1
        while len(self._far) > self._max_far:
            self._far.popleft()
            self.counters["far_dropped_frames"] += 1

    # -- the near end (the audio lane) --------------------------------------------------------
    async def clean(
        self,
        pcm: np.ndarray[Any, np.dtype[np.float32]],
        arrival_s: float,
        media_ms: float | None = None,
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Microphone audio (16 kHz float32) whose first part arrived at ``arrival_s``, with
        the session's echo removed; whole 10 ms blocks come out (the rest waits for the next
        call), so the output may be up to 10 ms shorter or longer than the input."""
        async with self._lock:
            return await self._clean(pcm, arrival_s, media_ms)

    async def _clean(
        self,
        pcm: np.ndarray[Any, np.dtype[np.float32]],
        arrival_s: float,
        media_ms: float | None,
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        x = np.concatenate([self._rest, pcm]) if len(self._rest) else pcm
        n = len(x) // BLOCK_SAMPLES * BLOCK_SAMPLES
        self._rest = x[n:]
        if n == 0:
            return x[:0]
        arrived = self.sample_at(arrival_s - CAPTURE_LEAD_S)  # where this audio starts, or before
        if media_ms is not None:  # the client's media clock: gaps, drops and lag do not matter
            if self._media_anchor is None:  # its first sample: before the read arrived
                first = self.sample_at(arrival_s - MEDIA_LEAD_S) - len(pcm)
                self._media_anchor = first - round(media_ms * SAMPLE_RATE_HZ / 1000)
            self._near_next = self._media_anchor + round(media_ms * SAMPLE_RATE_HZ / 1000)
            self._near_next -= len(x) - len(pcm)
            arrived = self._near_next
        behind = self._near_next is not None and (
            arrived - self._near_next > REANCHOR_S * SAMPLE_RATE_HZ
        )
        if not behind:
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = arrival_s
        if self._near_next is None or (
            self._behind_since is not None and arrival_s - self._behind_since >= REANCHOR_AFTER_S
        ):
            if self._near_next is not None:
                self.counters["reanchors"] += 1
            self._near_next = arrived - (len(x) - len(pcm))
            self._behind_since = None
        at = self._near_next
        self._near_next += n
        far = list(self._far)
        self._far.clear()
        try:
            out: np.ndarray[Any, np.dtype[np.float32]] = await self.workers.run(
                self._run, far, x[:n], at
            )
        except EngineError:  # the pool is full (or closing): this audio goes on uncleaned
            self._far.extendleft(reversed(far))  # the reference waits for the next call
            while len(self._far) > self._max_far:
                self._far.popleft()
                self.counters["far_dropped_frames"] += 1
            self.counters["uncleaned_blocks"] += n // BLOCK_SAMPLES
            return x[:n]
        self.counters["near_blocks"] += n // BLOCK_SAMPLES
        return out

    def _run(self, far: list[tuple[Array, int, float]], near: Array, at: int) -> Array:
        """On a worker thread: feed the reference played since the last call, then clean."""
        for pcm, rate_hz, played in far:
            self.canceller.add_far(self._decimate(pcm, rate_hz), self.sample_at(played))
        return self.canceller.process_near(near, at)

    def stats(self) -> dict[str, Any]:
        return {**self.counters, **{f"aec_{k}": v for k, v in self.canceller.stats().items()}}
