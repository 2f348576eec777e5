"""Flow primitives shared by every layer: bounded buffers, latest-only slots, credits.

These are pure data structures: no asyncio, no clock. Every buffer states its bound (items,
and optionally bytes) and what happens when it is full (:class:`Overflow`), and counts what
went through it (:class:`BufferStats`) so the counts can reach the metrics endpoint. Waiting
for space or for items belongs to the layer that waits (see ``tidegate.sessions.outbox`` or the
engine scheduler), which builds on these.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class Overflow(enum.StrEnum):
    """What a full buffer does with a new item."""

    BLOCK = "block"  # refuse for now; the producer waits for space
    DROP_OLDEST = "drop_oldest"  # evict the oldest item to make room
    LATEST_ONLY = "latest_only"  # keep only the newest item (a slot of one)
    COALESCE = "coalesce"  # merge into the newest queued item if possible, else reject
    REJECT = "reject"  # refuse the new item; the caller reports it


class Push(enum.Enum):
    """The outcome of :meth:`BoundedBuffer.push`."""

    ACCEPTED = "accepted"
    COALESCED = "coalesced"  # merged into the item at the tail
    DROPPED_OLDEST = "dropped_oldest"  # accepted, after evicting the oldest item(s)
    REJECTED = "rejected"  # not accepted (REJECT, COALESCE that could not merge, too big)
    FULL = "full"  # not accepted; BLOCK policy: wait for space and push again


@dataclass(slots=True)
class BufferStats:
    """Counters of one buffer. ``depth``/``depth_bytes`` are current; ``peak*`` are maxima."""

    name: str
    max_items: int
    max_bytes: int | None
    policy: str
    depth: int = 0
    depth_bytes: int = 0
    peak: int = 0
    peak_bytes: int = 0
    pushed: int = 0
    popped: int = 0
    dropped: int = 0
    coalesced: int = 0
    rejected: int = 0
    flushed: int = 0

    def as_dict(self) -> dict[str, int | str | None]:
        return {
            "name": self.name,
            "policy": self.policy,
            "max_items": self.max_items,
            "max_bytes": self.max_bytes,
            "depth": self.depth,
            "depth_bytes": self.depth_bytes,
            "peak": self.peak,
            "peak_bytes": self.peak_bytes,
            "pushed": self.pushed,
            "popped": self.popped,
            "dropped": self.dropped,
            "coalesced": self.coalesced,
            "rejected": self.rejected,
            "flushed": self.flushed,
        }


def _one(_: object) -> int:
    return 0


class BoundedBuffer(Generic[T]):
    """A FIFO with a bound in items (and optionally bytes) and an overflow policy.

    ``size_of`` gives an item's size in bytes (used only with ``max_bytes``). ``coalesce``
    merges a new item into the tail item, returning the merged item or None when the two
    cannot merge; it is used by the COALESCE policy, and by every policy when the buffer is
    not empty (merging into a queued item never delays anything).
    """

    __slots__ = (
        "_coalesce",
        "_items",
        "_size_of",
        "_sizes",
        "max_bytes",
        "max_items",
        "policy",
        "stats",
    )

    def __init__(
        self,
        name: str,
        *,
        max_items: int,
        policy: Overflow,
        max_bytes: int | None = None,
        size_of: Callable[[T], int] | None = None,
        coalesce: Callable[[T, T], T | None] | None = None,
    ) -> None:
        if max_items < 1:
            raise ValueError(f"{name}: max_items must be at least 1, got {max_items}")
        if policy is Overflow.LATEST_ONLY and max_items != 1:
            raise ValueError(f"{name}: a latest_only buffer holds exactly one item")
        if policy is Overflow.COALESCE and coalesce is None:
            raise ValueError(f"{name}: the coalesce policy needs a coalesce function")
        if max_bytes is not None and size_of is None:
            raise ValueError(f"{name}: max_bytes needs size_of")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.policy = policy
        self._items: deque[T] = deque()
        self._sizes: deque[int] = deque()
        self._size_of: Callable[[T], int] = size_of or _one
        self._coalesce = coalesce
        self.stats = BufferStats(name, max_items, max_bytes, policy.value)

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    @property
    def nbytes(self) -> int:
        return self.stats.depth_bytes

    def is_full(self, extra_bytes: int = 0) -> bool:
        if len(self._items) >= self.max_items:
            return True
        return self.max_bytes is not None and self.stats.depth_bytes + extra_bytes > self.max_bytes

    def push(self, item: T) -> Push:
        """Offer an item; the result says what happened to it (never raises when full)."""
        st = self.stats
        size = self._size_of(item)
        if self._coalesce is not None and self._items:
            merged = self._coalesce(self._items[-1], item)
            if merged is not None:
                old = self._sizes[-1]
                new = self._size_of(merged)
                if self.max_bytes is None or st.depth_bytes - old + new <= self.max_bytes:
                    self._items[-1] = merged
                    self._sizes[-1] = new
                    st.depth_bytes += new - old
                    st.coalesced += 1
                    st.peak_bytes = max(st.peak_bytes, st.depth_bytes)
                    return Push.COALESCED
        if self.max_bytes is not None and size > self.max_bytes:
            st.rejected += 1
            return Push.REJECTED
        result = Push.ACCEPTED
        if self.is_full(size):
            policy = self.policy
            if policy is Overflow.BLOCK:
                return Push.FULL
            if policy is Overflow.REJECT or policy is Overflow.COALESCE:
                st.rejected += 1
                return Push.REJECTED
            # DROP_OLDEST and LATEST_ONLY: evict until the new item fits.
            while self._items and self.is_full(size):
                self._items.popleft()
                st.depth_bytes -= self._sizes.popleft()
                st.dropped += 1
            result = Push.DROPPED_OLDEST
        self._items.append(item)
        self._sizes.append(size)
        st.pushed += 1
        st.depth = len(self._items)
        st.depth_bytes += size
        st.peak = max(st.peak, st.depth)
        st.peak_bytes = max(st.peak_bytes, st.depth_bytes)
        return result

    def pop(self) -> T:
        """Take the oldest item (IndexError when empty)."""
        item = self._items.popleft()
        st = self.stats
        st.depth_bytes -= self._sizes.popleft()
        st.popped += 1
        st.depth = len(self._items)
        return item

    def peek(self) -> T:
        return self._items[0]

    def take(self, wanted: Callable[[T], bool], max_items: int) -> list[T]:
        """Take up to ``max_items`` of the items ``wanted`` says yes to, oldest first; the
        others keep their places (a priority class served ahead of the rest)."""
        taken: list[T] = []
        if max_items < 1:
            return taken
        keep_items: deque[T] = deque()
        keep_sizes: deque[int] = deque()
        freed = 0
        for item, size in zip(self._items, self._sizes, strict=True):
            if len(taken) < max_items and wanted(item):
                taken.append(item)
                freed += size
            else:
                keep_items.append(item)
                keep_sizes.append(size)
        if taken:
            self._items, self._sizes = keep_items, keep_sizes
            st = self.stats
            st.depth_bytes -= freed
            st.popped += len(taken)
            st.depth = len(self._items)
        return taken

    def clear(self) -> int:
        """Discard everything queued (a flush, e.g. on barge-in); returns how many items."""
        n = len(self._items)
        self._items.clear()
        self._sizes.clear()
        st = self.stats
        st.flushed += n
        st.depth = 0
        st.depth_bytes = 0
        return n


class LatestSlot(Generic[T]):
    """Holds only the newest item: a new one replaces the old (counted as dropped)."""

    __slots__ = ("_has", "_item", "stats")

    def __init__(self, name: str) -> None:
        self._item: T | None = None
        self._has = False
        self.stats = BufferStats(name, 1, None, Overflow.LATEST_ONLY.value)

    def __bool__(self) -> bool:
        return self._has

    def put(self, item: T) -> bool:
        """Store the item; True if it replaced one that was never taken."""
        replaced = self._has
        self._item = item
        self._has = True
        st = self.stats
        st.pushed += 1
        st.depth = 1
        st.peak = 1
        if replaced:
            st.dropped += 1
        return replaced

    def take(self) -> T:
        """Take the item, leaving the slot empty (LookupError when empty)."""
        if not self._has:
            raise LookupError(f"{self.stats.name}: slot is empty")
        item = self._item
        self._item = None
        self._has = False
        self.stats.popped += 1
        self.stats.depth = 0
        return item  # type: ignore[return-value]

    def peek(self) -> T | None:
        """The newest item without taking it (None when empty)."""
        return self._item


@dataclass(slots=True)
class Credits:
    """Upload credit in messages and bytes: the server grants, each upload consumes.

    The same ledger serves both ends: the server refuses an upload that exceeds it, and the
    client waits until it has enough before sending.
    """

    messages: int = 0
    bytes: int = 0
    granted_messages: int = 0
    granted_bytes: int = 0
    consumed_messages: int = 0
    consumed_bytes: int = 0
    refused: int = 0

    def grant(self, messages: int, nbytes: int) -> None:
        if messages < 0 or nbytes < 0:
            raise ValueError("credit grants cannot be negative")
        self.messages += messages
        self.bytes += nbytes
        self.granted_messages += messages
        self.granted_bytes += nbytes

    def can_consume(self, nbytes: int) -> bool:
        return self.messages >= 1 and self.bytes >= nbytes

    def try_consume(self, nbytes: int) -> bool:
        """Take one message and ``nbytes`` of credit; False (and counted) if not enough."""
        if self.messages >= 1 and self.bytes >= nbytes:
            self.messages -= 1
            self.bytes -= nbytes
            self.consumed_messages += 1
            self.consumed_bytes += nbytes
            return True
        self.refused += 1
        return False


class RecentCount:
    """How many events happened within the last ``window_ms``, up to ``limit``: a sliding
    window over the times of the last ``limit`` events (at most ``limit`` floats are kept).
    Time is an argument, in ms. :meth:`hit` says whether the limit is reached."""

    __slots__ = ("_times", "limit", "window_ms")

    def __init__(self, limit: int, window_ms: float) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.window_ms = window_ms
        self._times: deque[float] = deque(maxlen=limit)

    def hit(self, now_ms: float) -> bool:
        """Count one event at ``now_ms``; True once ``limit`` of them fall within the window."""
        times = self._times
        times.append(now_ms)
        return len(times) == self.limit and now_ms - times[0] <= self.window_ms

    def count(self, now_ms: float) -> int:
        """Events within the window that ends at ``now_ms``."""
        return sum(1 for t in self._times if now_ms - t <= self.window_ms)
