"""A session's outbound event queue: bounded, coalescing, awaited by the connection's writer.

Policy (DESIGN.md, "outbound events"): consecutive ``response.text.delta`` events of one
response merge into one; anything else that does not fit means the client cannot keep up, and
the connection is closed with 4408 (too slow). The queue belongs to the session, not to the
connection, so a resumed session delivers what was queued while it was detached.
"""

from __future__ import annotations

import asyncio

from tidegate.protocol import BoundedBuffer, Overflow, Push, ServerMessage
from tidegate.protocol.messages import ResponseTextDelta, Timing

MESSAGE_OVERHEAD_BYTES = 64


def estimate_bytes(msg: ServerMessage) -> int:
    """A cheap upper-bound estimate of a message's encoded size."""
    size = MESSAGE_OVERHEAD_BYTES
    for name in ("pcm", "image", "sdp", "text", "delta", "message"):
        value = getattr(msg, name, None)
        if value is not None:
            size += len(value)
    return size


def merge_deltas(queued: ServerMessage, new: ServerMessage) -> ServerMessage | None:
    """Coalesce two token deltas of the same response (timing: first start, last end)."""
    if (
        type(queued) is ResponseTextDelta
        and type(new) is ResponseTextDelta
        and queued.response_id == new.response_id
    ):
        timing = queued.timing
        if timing is not None and new.timing is not None:
            timing = Timing(
                received=timing.received,
                engine_start=timing.engine_start,
                engine_end=new.timing.engine_end,
            )
        return ResponseTextDelta(
            response_id=queued.response_id,
            delta=queued.delta + new.delta,
            timing=timing or new.timing,
            ref=queued.ref,
        )
    return None


class Outbox:
    """Events waiting for the client. :meth:`push` never blocks; the writer awaits :meth:`wait`."""

    def __init__(self, *, max_messages: int, max_bytes: int) -> None:
        self.buffer: BoundedBuffer[ServerMessage] = BoundedBuffer(
            "outbox",
            max_items=max_messages,
            max_bytes=max_bytes,
            policy=Overflow.COALESCE,
            size_of=estimate_bytes,
            coalesce=merge_deltas,
        )
        self._ready = asyncio.Event()

    def push(self, msg: ServerMessage) -> bool:
        """Queue an event; False when it does not fit (the client is too slow)."""
        if self.buffer.push(msg) is Push.REJECTED:
            return False
        self._ready.set()
        return True

    def wake(self) -> None:
        """Wake the writer without an event (e.g. to make it notice a close)."""
        self._ready.set()

    async def wait(self) -> None:
        """Wait until there is something to send (or a wake-up)."""
        await self._ready.wait()
        self._ready.clear()

    def take_all(self) -> list[ServerMessage]:
        items = []
        buffer = self.buffer
        while buffer:
            items.append(buffer.pop())
        return items

    def __len__(self) -> int:
        return len(self.buffer)
