"""The providers' circuit breaker, on a clock the test moves."""

from __future__ import annotations

from tidegate.engines.llm.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(failures_to_open=3, open_s=5.0, clock=clock)


def test_opens_after_consecutive_failures_only() -> None:
    """It opens after N consecutive failures; a success in between starts the count again."""
    b = breaker(Clock())
    b.failure()
    b.failure()
    b.success()
    b.failure()
    b.failure()
    assert b.state is BreakerState.CLOSED and b.allow()
    b.failure()
    # mypy keeps b.state narrowed to CLOSED across the failure() that opened it
    assert b.state is BreakerState.OPEN and not b.allow() and b.opened == 1  # type: ignore[comparison-overlap]


def test_half_open_lets_one_probe_through() -> None:
    """open_s after opening, one request (the probe) goes through; others wait for it."""
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.failure()
    clock.now += 4.9
    assert not b.allow() and 0 < b.retry_after_s() <= 0.1 + 1e-9
    clock.now += 0.2
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow() and not b.allow()


def test_a_probe_success_closes_and_a_probe_failure_reopens() -> None:
    """The probe's success closes the breaker; its failure opens it for another open_s."""
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.failure()
    clock.now += 5
    assert b.allow()
    b.failure()
    assert b.state is BreakerState.OPEN and b.opened == 2 and b.retry_after_s() == 5.0
    clock.now += 5
    assert b.allow()
    b.success()
    # mypy keeps b.state narrowed to OPEN across the success() that closed it
    assert b.state is BreakerState.CLOSED and b.allow() and b.allow()  # type: ignore[comparison-overlap]


def test_a_cancelled_probe_passes_its_turn_on() -> None:
    """A probe that ended neither way (cancelled) lets the next request probe."""
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.failure()
    clock.now += 5
    assert b.allow()
    b.release()
    assert b.allow()
