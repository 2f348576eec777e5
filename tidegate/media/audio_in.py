"""Inbound audio for the engines: a bounded inbox of 16 kHz mono float32 chunks.

Policy (DESIGN.md, "inbound audio"): the inbox holds at most ``max_s`` of audio. The consumer
(the recogniser, or the loopback echo) catches up by reading everything queued at once, up to
``max_ms`` per read. When it is full, the oldest *silent* chunk is dropped first; only when
nothing queued is silent does speech go, and then ``on_lag`` says so (with the lag and what
was dropped), as it does when the lag first passes ``lag_report_ms``. Nothing is dropped
without being counted.

The arrival time of every chunk is kept, so each read measures how long its audio waited
(``wait_ms``): the lag that a consumer actually saw.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tidegate.protocol import Overflow

from .opus import Float32Array

SAMPLE_RATE_HZ = 16_000
SILENCE_FLOOR = 1e-12

LagCallback = Callable[[float, float], None]  # (lag_ms, dropped_ms since the last report)


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Audio as the engines take it: 16 kHz mono float32 in [-1, 1]."""

    pcm: Float32Array
    media_ms: float  # media time of the first sample (ms since the stream's first packet)
    arrival_s: float  # when it arrived (the inbox's clock)
    concealed: bool = False  # produced by loss concealment, not decoded from a packet
    silent: bool = False
    #: a read of several pieces: the samples of the first one (the one that arrived at
    #: ``arrival_s``); None: the chunk is one piece
    first_samples: int | None = None

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) * 1000.0 / SAMPLE_RATE_HZ


@dataclass(slots=True)
class InboxStats:
    max_ms: float
    policy: str = Overflow.DROP_OLDEST.value + " (silence first)"
    chunks_in: int = 0
    chunks_out: int = 0
    reads: int = 0
    queued_ms: float = 0.0
    peak_ms: float = 0.0
    received_ms: float = 0.0
    dropped_silence_ms: float = 0.0
    dropped_speech_ms: float = 0.0
    lag_reports: int = 0
    wait_ms_last: float = 0.0
    wait_ms_max: float = 0.0
    wait_ms_total: float = 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "policy": self.policy,
            "max_ms": self.max_ms,
            "chunks_in": self.chunks_in,
            "chunks_out": self.chunks_out,
            "queued_ms": round(self.queued_ms, 1),
            "peak_ms": round(self.peak_ms, 1),
            "received_ms": round(self.received_ms, 1),
            "dropped_silence_ms": round(self.dropped_silence_ms, 1),
            "dropped_speech_ms": round(self.dropped_speech_ms, 1),
            "lag_reports": self.lag_reports,
            "wait_ms_last": round(self.wait_ms_last, 3),
            "wait_ms_max": round(self.wait_ms_max, 3),
            "wait_ms_mean": round(self.wait_ms_total / max(self.reads, 1), 3),
        }


def is_silent(pcm: Float32Array, silence_dbfs: float) -> bool:
    """True when the chunk's RMS level is below ``silence_dbfs`` (dB full scale)."""
    if len(pcm) == 0:
        return True
    power = float(np.dot(pcm, pcm)) / len(pcm)
    return 10.0 * math.log10(power + SILENCE_FLOOR) < silence_dbfs


class AudioInbox:
    """See the module docstring. One producer (the receiver), one consumer."""

    def __init__(
        self,
        *,
        max_s: float = 3.0,
        silence_dbfs: float = -50.0,
        lag_report_ms: float = 500.0,
        on_lag: LagCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_s <= 0:
            raise ValueError(f"max_s must be positive, got {max_s}")
        self.max_ms = max_s * 1000.0
        self.silence_dbfs = silence_dbfs
        self.lag_report_ms = lag_report_ms
        self.on_lag = on_lag
        self.clock = clock
        self.stats = InboxStats(self.max_ms)
        self._chunks: deque[AudioChunk] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._lagging = False
        self._unreported_drop_ms = 0.0

    @property
    def lag_ms(self) -> float:
        """How much audio waits for the consumer."""
        return self.stats.queued_ms

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, pcm: Float32Array, media_ms: float, *, concealed: bool = False) -> None:
        """Queue a decoded chunk (never blocks; full means a drop, as the policy says)."""
        if self._closed:
            return
        chunk = AudioChunk(
            pcm, media_ms, self.clock(), concealed, is_silent(pcm, self.silence_dbfs)
        )
        st = self.stats
        dur = chunk.duration_ms
        st.chunks_in += 1
        st.received_ms += dur
        while self._chunks and st.queued_ms + dur > self.max_ms:
            self._evict()
        self._chunks.append(chunk)
        st.queued_ms += dur
        st.peak_ms = max(st.peak_ms, st.queued_ms)
        self._check_lag()
        self._ready.set()

    def _evict(self) -> None:
        st = self.stats
        # By position, never by value: chunks hold numpy arrays, which do not compare as a bool.
        index = next((i for i, c in enumerate(self._chunks) if c.silent), None)
        if index is not None:
            victim = self._chunks[index]
            del self._chunks[index]
            st.dropped_silence_ms += victim.duration_ms
        else:
            victim = self._chunks.popleft()
            st.dropped_speech_ms += victim.duration_ms
            self._unreported_drop_ms += victim.duration_ms
        st.queued_ms -= victim.duration_ms

    def _check_lag(self) -> None:
        st = self.stats
        report = False
        if st.queued_ms >= self.lag_report_ms and not self._lagging:
            self._lagging = True
            report = True
        elif st.queued_ms < self.lag_report_ms / 2:
            self._lagging = False
        # Speech dropped: say so, at most once per lag_report_ms of dropped audio after the first.
        if self._unreported_drop_ms > 0 and (
            st.lag_reports == 0 or self._unreported_drop_ms >= self.lag_report_ms or report
        ):
            report = True
        if report:
            st.lag_reports += 1
            dropped, self._unreported_drop_ms = self._unreported_drop_ms, 0.0
            if self.on_lag is not None:
                self.on_lag(st.queued_ms, dropped)

    def read_nowait(self, max_ms: float = 1_000.0) -> AudioChunk | None:
        """Everything queued, up to ``max_ms``, as one chunk (None when empty)."""
        if not self._chunks:
            return None
        st = self.stats
        taken = [self._chunks.popleft()]
        total = taken[0].duration_ms
        while self._chunks and total + self._chunks[0].duration_ms <= max_ms:
            c = self._chunks.popleft()
            taken.append(c)
            total += c.duration_ms
        st.queued_ms -= total
        if st.queued_ms < 1e-6:
            st.queued_ms = 0.0
        st.chunks_out += len(taken)
        st.reads += 1
        first = taken[0]
        wait = (self.clock() - first.arrival_s) * 1000.0
        st.wait_ms_last = wait
        st.wait_ms_max = max(st.wait_ms_max, wait)
        st.wait_ms_total += wait
        if len(taken) == 1:
            return first
        return AudioChunk(
            np.concatenate([c.pcm for c in taken]),
            first.media_ms,
            first.arrival_s,
            any(c.concealed for c in taken),
            all(c.silent for c in taken),
            len(first.pcm),
        )

    async def read(self, max_ms: float = 1_000.0) -> AudioChunk | None:
        """Wait for audio and return everything queued, up to ``max_ms``; None once closed
        and drained."""
        while True:
            chunk = self.read_nowait(max_ms)
            if chunk is not None:
                return chunk
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        """The stream ended: readers get what is queued, then None."""
        self._closed = True
        self._ready.set()
