"""Flow primitives: each overflow policy does what its name says, and counts it."""

from __future__ import annotations

import pytest

from tidegate.protocol import BoundedBuffer, Credits, LatestSlot, Overflow, Push


def test_block_refuses_when_full_without_losing_anything() -> None:
    """BLOCK answers FULL and keeps what it has; the caller waits and retries."""
    b: BoundedBuffer[int] = BoundedBuffer("b", max_items=2, policy=Overflow.BLOCK)
    assert [b.push(1), b.push(2), b.push(3)] == [Push.ACCEPTED, Push.ACCEPTED, Push.FULL]
    assert list(b) == [1, 2]
    assert b.stats.rejected == 0 and b.stats.dropped == 0
    assert b.pop() == 1 and b.push(3) is Push.ACCEPTED


def test_drop_oldest_evicts_and_counts() -> None:
    """DROP_OLDEST makes room by evicting the oldest items, counted as dropped."""
    b: BoundedBuffer[int] = BoundedBuffer("b", max_items=3, policy=Overflow.DROP_OLDEST)
    for i in range(5):
        b.push(i)
    assert list(b) == [2, 3, 4]
    assert b.stats.dropped == 2 and b.stats.peak == 3 and b.stats.pushed == 5


def test_byte_bound() -> None:
    """max_bytes bounds the sum of item sizes; an item bigger than the bound is rejected."""
    b: BoundedBuffer[bytes] = BoundedBuffer(
        "b", max_items=100, max_bytes=10, policy=Overflow.DROP_OLDEST, size_of=len
    )
    b.push(b"aaaa")
    b.push(b"bbbb")
    assert b.push(b"cccc") is Push.DROPPED_OLDEST
    assert list(b) == [b"bbbb", b"cccc"] and b.nbytes == 8
    assert b.push(b"x" * 11) is Push.REJECTED
    assert b.stats.peak_bytes == 8


def test_reject_and_coalesce() -> None:
    """REJECT refuses new items when full; COALESCE merges into the tail or rejects."""
    r: BoundedBuffer[int] = BoundedBuffer("r", max_items=1, policy=Overflow.REJECT)
    assert r.push(1) is Push.ACCEPTED and r.push(2) is Push.REJECTED and r.stats.rejected == 1

    def merge(a: str, b: str) -> str | None:
        return a + b if a[0] == b[0] else None

    c: BoundedBuffer[str] = BoundedBuffer(
        "c", max_items=2, policy=Overflow.COALESCE, coalesce=merge
    )
    assert [c.push("a1"), c.push("a2"), c.push("b1"), c.push("c1")] == [
        Push.ACCEPTED,
        Push.COALESCED,
        Push.ACCEPTED,
        Push.REJECTED,
    ]
    assert list(c) == ["a1a2", "b1"] and c.stats.coalesced == 1


def test_clear_counts_flushed() -> None:
    """clear() empties the buffer (a flush) and counts what was discarded."""
    b: BoundedBuffer[int] = BoundedBuffer("b", max_items=5, policy=Overflow.REJECT)
    for i in range(3):
        b.push(i)
    assert b.clear() == 3 and len(b) == 0 and b.stats.flushed == 3 and b.stats.depth == 0


def test_take_serves_a_class_first_and_keeps_the_rest_in_order() -> None:
    """take() removes the wanted items oldest first (up to a count); the others keep their
    order, and depth, bytes and popped stay counted."""
    b: BoundedBuffer[bytes] = BoundedBuffer(
        "b", max_items=8, policy=Overflow.REJECT, max_bytes=100, size_of=len
    )
    for item in (b"a1", b"B22", b"a3", b"B44", b"B55"):
        b.push(item)
    assert b.take(lambda x: x.startswith(b"B"), 2) == [b"B22", b"B44"]
    assert list(b) == [b"a1", b"a3", b"B55"]
    assert b.stats.depth == 3 and b.nbytes == 7 and b.stats.popped == 2
    assert b.take(lambda x: False, 5) == [] and b.take(lambda x: True, 0) == []
    assert b.pop() == b"a1" and len(b) == 2


def test_invalid_configurations() -> None:
    """Nonsense bounds are refused at construction."""
    with pytest.raises(ValueError, match="max_items"):
        BoundedBuffer("x", max_items=0, policy=Overflow.BLOCK)
    with pytest.raises(ValueError, match="coalesce"):
        BoundedBuffer("x", max_items=2, policy=Overflow.COALESCE)
    with pytest.raises(ValueError, match="exactly one"):
        BoundedBuffer("x", max_items=2, policy=Overflow.LATEST_ONLY)


def test_latest_slot() -> None:
    """A latest-only slot keeps the newest item and counts replaced ones as dropped."""
    s: LatestSlot[str] = LatestSlot("frames")
    assert not s and s.peek() is None
    assert s.put("f1") is False and s.put("f2") is True
    assert s.take() == "f2" and not s
    assert s.stats.dropped == 1 and s.stats.popped == 1
    with pytest.raises(LookupError):
        s.take()


def test_credits() -> None:
    """Credits are granted and consumed in messages and bytes; refusals are counted."""
    c = Credits()
    assert not c.try_consume(1)
    c.grant(2, 100)
    assert c.try_consume(60) and not c.try_consume(60) and c.try_consume(40)
    assert not c.try_consume(0)
    assert (c.consumed_messages, c.consumed_bytes, c.refused) == (2, 100, 3)
    with pytest.raises(ValueError, match="negative"):
        c.grant(-1, 0)
