"""Real-time pacing of an uploaded audio stream: its media time against the wall clock.

A stream of ``input.audio`` chunks is live audio: it may run ahead of real time by a window
(``max_ahead_s``), no further. The pace keeps the stream's *origin*, the wall time its first
sample counts as played, and the media seconds accepted since; a chunk whose end would lie more
than ``max_ahead_s`` ahead of the wall clock is refused (:meth:`RealTimePace.check` says how long
until it fits). A stream that falls behind (the client paused) does not bank the idle time: the
origin moves up so that the stream is never behind by more than nothing, and a burst after a
pause gets only the window. ``max_ahead_s`` 0 turns pacing off.

Sans-I/O: time is an argument (seconds of a monotonic clock).
"""

from __future__ import annotations

from typing import Any


class RealTimePace:
    """See the module docstring."""

    def __init__(self, max_ahead_s: float) -> None:
        if max_ahead_s < 0:
            raise ValueError(f"max_ahead_s cannot be negative, got {max_ahead_s}")
        self.max_ahead_s = max_ahead_s
        self.media_s = 0.0  # accepted since the origin
        self._origin_s: float | None = None
        self.refused = 0
        self.peak_ahead_s = 0.0

    def _origin(self, now_s: float) -> float:
        if self._origin_s is None or self._origin_s + self.media_s < now_s:
            self._origin_s = now_s - self.media_s  # behind (or first): no banked idle time
        return self._origin_s

    def ahead_s(self, now_s: float) -> float:
        """How far the accepted audio runs ahead of the wall clock now (0 when behind)."""
        if self._origin_s is None:
            return 0.0
        return max(0.0, self._origin_s + self.media_s - now_s)

    def check(self, duration_s: float, now_s: float) -> float:
        """0.0 when a chunk of ``duration_s`` fits the window now; otherwise the seconds
        until it would (the chunk is refused and counted)."""
        if self.max_ahead_s == 0:
            return 0.0
        end = self._origin(now_s) + self.media_s + duration_s
        over = end - now_s - self.max_ahead_s
        if over > 0:
            self.refused += 1
            return over
        return 0.0

    def commit(self, duration_s: float, now_s: float) -> float:
        """Count an accepted chunk; returns the wall time (same clock) its last sample is due."""
        end = self._origin(now_s) + self.media_s + duration_s
        self.media_s += duration_s
        self.peak_ahead_s = max(self.peak_ahead_s, end - now_s)
        return end

    def stats(self) -> dict[str, Any]:
        return {
            "max_ahead_s": self.max_ahead_s,
            "media_s": round(self.media_s, 3),
            "peak_ahead_s": round(self.peak_ahead_s, 3),
            "refused": self.refused,
        }
