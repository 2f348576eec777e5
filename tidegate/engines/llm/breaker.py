"""A circuit breaker per LLM provider: closed (requests go through), open after
``failures_to_open`` consecutive failures (requests skip the provider), half-open once
``open_s`` have passed (one request goes through as a probe: its success closes the breaker,
its failure opens it again for another ``open_s``). Time is an argument (a clock), not read
from the wall."""

from __future__ import annotations

import enum
from collections.abc import Callable


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, *, failures_to_open: int, open_s: float, clock: Callable[[], float]) -> None:
        if failures_to_open < 1 or open_s <= 0:
            raise ValueError("failures_to_open must be at least 1 and open_s positive")
        self.failures_to_open = failures_to_open
        self.open_s = open_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probing = False
        self.consecutive_failures = 0
        self.opened = 0  # times it opened

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() >= self._opened_at + self.open_s:
            return BreakerState.HALF_OPEN
        return self._state

    def allow(self) -> bool:
        """May a request go to this provider now? In half-open, only one (the probe)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._state = BreakerState.HALF_OPEN
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self.consecutive_failures = 0
        self._probing = False
        self._state = BreakerState.CLOSED

    def failure(self) -> None:
        self.consecutive_failures += 1
        probe = self._probing
        self._probing = False
        if probe or self.consecutive_failures >= self.failures_to_open:
            if self._state is not BreakerState.OPEN or probe:
                self.opened += 1
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()

    def release(self) -> None:
        """A request that ended neither way (cancelled): a probe's turn passes on."""
        self._probing = False

    def retry_after_s(self) -> float:
        """How long until the breaker lets a probe through (0 when it would now)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.open_s - self._clock())
