"""The conversation as the Realtime client sees it: items, their ids and their wire form.

tidegate keeps the model's history itself; the translator keeps only what the dialect needs to
answer about items (ids, order, kinds, transcripts, audio durations for truncation), bounded by
``max_items`` (the oldest forgotten first, as tidegate's history drops its oldest messages).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

ITEM_KINDS = ("user_audio", "user_text", "assistant", "function_call", "function_call_output")


@dataclasses.dataclass(slots=True)
class ItemRecord:
    id: str
    kind: str  # one of ITEM_KINDS
    status: str = "completed"  # completed | incomplete | in_progress
    text: str = ""  # transcript, input text, output text, or arguments
    audio: bool = False  # assistant: the content part is output_audio
    audio_ms: float = 0.0  # assistant: audio sent so far
    truncated_ms: int | None = None
    call_id: str = ""
    name: str = ""
    output: str = ""
    transcript_known: bool = False  # user_audio: the ASR final arrived
    response_tid: str = ""  # assistant / function_call: tidegate's response_id
    sent: bool = True  # user_text: handed to tidegate already (False: waits for response.create)

    def to_wire(self) -> dict[str, Any]:
        base: dict[str, Any] = {"id": self.id, "object": "realtime.item", "status": self.status}
        if self.kind == "user_audio":
            transcript = self.text if self.transcript_known else None
            content = [{"type": "input_audio", "transcript": transcript}]
            return {**base, "type": "message", "role": "user", "content": content}
        if self.kind == "user_text":
            content = [{"type": "input_text", "text": self.text}]
            return {**base, "type": "message", "role": "user", "content": content}
        if self.kind == "assistant":
            part = (
                {"type": "output_audio", "transcript": self.text}
                if self.audio
                else {"type": "output_text", "text": self.text}
            )
            return {**base, "type": "message", "role": "assistant", "content": [part]}
        if self.kind == "function_call":
            return {
                **base,
                "type": "function_call",
                "call_id": self.call_id,
                "name": self.name,
                "arguments": self.text,
            }
        return {
            **base,
            "type": "function_call_output",
            "call_id": self.call_id,
            "output": self.output,
        }


class Conversation:
    """The items, in order, at most ``max_items`` of them."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: OrderedDict[str, ItemRecord] = OrderedDict()
        self.forgotten = 0

    def add(self, item: ItemRecord) -> str | None:
        """Append; returns the previous item's id (None for the first)."""
        previous = next(reversed(self._items), None) if self._items else None
        self._items[item.id] = item
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
            self.forgotten += 1
        return previous

    def get(self, item_id: str) -> ItemRecord | None:
        return self._items.get(item_id)

    def items(self) -> list[ItemRecord]:
        return list(self._items.values())

    def remove(self, item_id: str) -> None:
        self._items.pop(item_id, None)

    @property
    def last_id(self) -> str | None:
        return next(reversed(self._items), None) if self._items else None

    def __len__(self) -> int:
        return len(self._items)
