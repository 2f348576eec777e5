"""Counters and fixed-bucket histograms of the engine layer (Prometheus-shaped: cumulative
bucket counts, a sum and a count). Written by one worker thread, read by anyone."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

# Milliseconds: queue waits and run times of real-time inference.
TIME_BUCKETS_MS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0)


class Histogram:
    """Counts of observations at or below each bound (the last bucket is +Inf)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.sum += value * n
        self.count += n

    def as_dict(self) -> dict[str, Any]:
        cumulative, running = [], 0
        for c in self.counts:
            running += c
            cumulative.append(running)
        labels = [*(f"{b:g}" for b in self.bounds), "+Inf"]
        return {
            "buckets": dict(zip(labels, cumulative, strict=True)),
            "sum": self.sum,
            "count": self.count,
            "mean": self.sum / self.count if self.count else 0.0,
        }


def batch_buckets(max_batch: int) -> tuple[float, ...]:
    """1, 2, 4, ... up to ``max_batch`` (inclusive)."""
    out, b = [], 1
    while b < max_batch:
        out.append(float(b))
        b *= 2
    out.append(float(max_batch))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class QueueLoad:
    """How loaded an engine's queue is now: what admission control looks at."""

    engine: str
    depth: int
    max_items: int
    oldest_wait_s: float  # how long the oldest queued request has waited (0: none queued)
    deadline_s: float  # how long a queued request may wait before it fails
    retry_after_s: float  # a hint: roughly when the queue will have drained

    @property
    def fraction(self) -> float:
        return self.depth / self.max_items


@dataclass(slots=True)
class SchedulerStats:
    """What one engine scheduler counted."""

    max_batch: int
    submitted: int = 0
    completed: int = 0
    failed: int = 0  # requests answered with an error (bad input, model failure)
    refused: int = 0  # queue full: refused at once
    deadline_missed: int = 0
    cancelled: int = 0
    urgent: int = 0  # requests submitted urgent (a user waits on them: scheduler.py)
    batches: int = 0
    batch_size: Histogram = field(init=False)
    queue_wait_ms: Histogram = field(init=False)
    urgent_queue_wait_ms: Histogram = field(init=False)  # of the urgent requests alone
    run_ms: Histogram = field(init=False)

    def __post_init__(self) -> None:
        self.batch_size = Histogram(batch_buckets(self.max_batch))
        self.queue_wait_ms = Histogram(TIME_BUCKETS_MS)
        self.urgent_queue_wait_ms = Histogram(TIME_BUCKETS_MS)
        self.run_ms = Histogram(TIME_BUCKETS_MS)

    def as_dict(self) -> dict[str, Any]:
        return {
            "submitted": self.submitted,
            "completed": self.completed,
            "failed": self.failed,
            "refused": self.refused,
            "deadline_missed": self.deadline_missed,
            "cancelled": self.cancelled,
            "urgent": self.urgent,
            "batches": self.batches,
            "batch_size": self.batch_size.as_dict(),
            "queue_wait_ms": self.queue_wait_ms.as_dict(),
            "urgent_queue_wait_ms": self.urgent_queue_wait_ms.as_dict(),
            "run_ms": self.run_ms.as_dict(),
        }
