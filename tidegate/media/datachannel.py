"""A text data channel of a :class:`~tidegate.media.MediaPeer`, with stated bounds both ways.

The Realtime dialect's WebRTC flavour carries its JSON events on a data channel the client
opens (the API names it ``oai-events``). :class:`EventChannel` wraps aiortc's
``RTCDataChannel`` for a transport shell that reads and writes text:

- **in**: messages wait in a queue of at most ``max_inbound_messages``; one that finds it full
  is dropped (policy ``reject``: the shell is not reading, which only a bug or a flood
  causes) and counted; :meth:`receive` returns the oldest, ``None`` once the channel closed.
- **out**: aiortc's ``send`` never blocks, it buffers in SCTP without a bound. :meth:`send`
  therefore waits while more than ``max_buffered_bytes`` are buffered (policy ``block``), until
  the buffer drains below half of it (``bufferedamountlow``). A client that stops reading
  keeps the sender waiting: the shell's send watchdog (``send_timeout_s``) closes it, as a
  WebSocket that stops reading.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from .errors import MediaStateError

MAX_INBOUND_MESSAGES = 256
MAX_BUFFERED_BYTES = 1 << 20  # 1 MiB of events waiting in SCTP for the client


class DataChannelClosedError(MediaStateError):
    """The data channel is closed (by the client, or with its peer connection)."""


class EventChannel:
    """See the module docstring."""

    def __init__(
        self,
        channel: Any,
        *,
        max_inbound_messages: int = MAX_INBOUND_MESSAGES,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
    ) -> None:
        self.channel = channel
        self.label: str = channel.label
        self.max_inbound_messages = max_inbound_messages
        self.max_buffered_bytes = max_buffered_bytes
        self._inbox: deque[str | bytes] = deque()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self.closed = False
        self.counters = {"received": 0, "dropped": 0, "sent": 0, "sent_bytes": 0, "waits": 0}
        channel.bufferedAmountLowThreshold = max_buffered_bytes // 2
        channel.on("message", self._on_message)
        channel.on("close", self._on_close)
        channel.on("bufferedamountlow", self._drained.set)

    @property
    def open(self) -> bool:
        return not self.closed and self.channel.readyState == "open"

    def _on_message(self, message: str | bytes) -> None:
        if self.closed:
            return
        if len(self._inbox) >= self.max_inbound_messages:
            self.counters["dropped"] += 1
            return
        self.counters["received"] += 1
        self._inbox.append(message)
        self._wake.set()

    def _on_close(self) -> None:
        self.closed = True
        self._wake.set()
        self._drained.set()

    async def receive(self) -> str | bytes | None:
        """The next message from the client; None once the channel has closed."""
        while not self._inbox:
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        return self._inbox.popleft()

    async def send(self, text: str) -> None:
        """Send one message, waiting while the client's buffer is over its bound."""
        while not self.closed and self.channel.bufferedAmount > self.max_buffered_bytes:
            self.counters["waits"] += 1
            self._drained.clear()
            await self._drained.wait()
        if self.closed or self.channel.readyState != "open":
            raise DataChannelClosedError(f"data channel {self.label!r} is closed")
        self.channel.send(text)
        self.counters["sent"] += 1
        self.counters["sent_bytes"] += len(text)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._wake.set()
            self._drained.set()
            self.channel.close()

    def stats(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "inbound_queued": len(self._inbox),
            "buffered_bytes": self.channel.bufferedAmount,
            **self.counters,
        }
