"""A plain progress line on stderr while a scenario runs: elapsed time, what runs now, and the
live counts the scenario chooses to show. Redrawn in place at most ``refresh_s`` apart, and
only on a terminal: when stderr is not a TTY (CI, a pipe, a log file) it stays quiet, and
nothing but the scenario's own summary lines reach the log.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REFRESH_S = 0.5


class Progress:
    """``progress.stage("4 sessions")``, then ``progress.update(results=12, lag=0)``."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        enabled: bool | None = None,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.refresh_s = refresh_s
        self.t0 = time.monotonic()
        self._stage = ""
        self._counts: dict[str, object] = {}
        self._drawn = 0.0
        self._width = 0

    def stage(self, text: str) -> None:
        self._stage = text
        self._counts = {}
        self._draw(force=True)

    def update(self, **counts: object) -> None:
        self._counts.update(counts)
        self._draw()

    def _draw(self, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < self.refresh_s:
            return
        self._drawn = now
        counts = "  ".join(f"{k} {v}" for k, v in self._counts.items())
        line = f"[{now - self.t0:6.1f} s] {self._stage}  {counts}".rstrip()
        pad = max(0, self._width - len(line))
        self._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()

    def done(self) -> None:
        """End the line, so that what is printed next starts on its own."""
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


_current = Progress(enabled=False)


def current() -> Progress:
    """The progress display of the running scenario (a silent one outside ``tidegate bench``)."""
    return _current


def install(progress: Progress) -> Progress:
    global _current
    _current = progress
    return progress
