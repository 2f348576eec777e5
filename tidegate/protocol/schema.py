"""Field checks for wire messages: what a field accepts, and the words for what it expected.

A check is a small callable object: ``check(value, limits)`` returns the (possibly converted)
value or raises :class:`FieldMismatch` naming what was expected. The message layer adds the
field path and turns that into an :class:`~tidegate.protocol.errors.InvalidFieldError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

#: Defaults of :class:`Limits`; each is also a keyword setting of the connection.
MAX_MESSAGE_BYTES = 1_048_576
MAX_DEPTH = 8
MAX_STRING_CHARS = 65_536
MAX_LIST_ITEMS = 1_024
MAX_MAP_ITEMS = 256
#: Integers every later stage can hold (the journal's JSON, MessagePack, the databases): a
#: client integer outside them is refused in an integer or free-form field, and turned into
#: the nearest float64 in a number field (docs/protocol.md, "Numbers and text").
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: The one character refused in every string: PostgreSQL text and JSONB cannot hold it.
NUL = "\x00"
NO_NUL = "text without the character U+0000 (NUL)"
INT64_RANGE = f"integers from {INT64_MIN} to {INT64_MAX}"


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits a connection applies to what it receives."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_depth: int = MAX_DEPTH
    max_string_chars: int = MAX_STRING_CHARS
    max_list_items: int = MAX_LIST_ITEMS
    max_map_items: int = MAX_MAP_ITEMS


DEFAULT_LIMITS = Limits()


class FieldMismatch(Exception):
    """A value did not match its check. ``path`` grows as the error bubbles out."""

    def __init__(self, expected: str, value: object, path: str = "") -> None:
        super().__init__(expected)
        self.expected = expected
        self.value = value
        self.path = path

    def describe(self, prefix: str) -> str:
        where = f"{prefix}.{self.path}" if self.path else prefix
        return f"{where}: expected {self.expected}, got {describe_value(self.value)}"


def describe_value(value: object) -> str:
    """A short, safe description of a received value for an error message."""
    if value is _MISSING:
        return "nothing (the field is required)"
    kind = type(value).__name__
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{len(value)} bytes ({kind})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"{shown!r} (str, {len(value)} chars)"
    if isinstance(value, (list, tuple, dict)):
        return f"{kind} of {len(value)} items"
    text = repr(value)
    return f"{text[:40]} ({kind})"


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()
MISSING: Any = _MISSING


class Check(Protocol):
    expected: str

    def __call__(self, value: Any, limits: Limits) -> Any: ...


class Text:
    """A text string of bounded length, optionally one of fixed choices."""

    __slots__ = ("choices", "expected", "max_chars", "min_chars")

    def __init__(
        self,
        max_chars: int | None = None,
        *,
        min_chars: int = 0,
        choices: tuple[str, ...] | None = None,
    ) -> None:
        self.max_chars = max_chars
        self.min_chars = min_chars
        self.choices = frozenset(choices) if choices else None
        if choices:
            self.expected = "one of " + ", ".join(repr(c) for c in choices)
        elif max_chars is not None:
            self.expected = f"a string of {min_chars} to {max_chars} characters"
        else:
            self.expected = "a string"

    def __call__(self, value: Any, limits: Limits) -> str:
        if type(value) is not str:
            raise FieldMismatch(self.expected, value)
        if NUL in value:
            raise FieldMismatch(NO_NUL, value)
        if self.choices is not None:
            if value not in self.choices:
                raise FieldMismatch(self.expected, value)
            return value
        n = len(value)
        cap = self.max_chars if self.max_chars is not None else limits.max_string_chars
        if n > cap or n < self.min_chars or n > limits.max_string_chars:
            raise FieldMismatch(
                f"a string of {self.min_chars} to {min(cap, limits.max_string_chars)} characters",
                value,
            )
        return value


class Binary:
    """A byte string (raw bytes in CBOR and MessagePack; base64 text in JSON)."""

    __slots__ = ("expected", "max_bytes", "min_bytes")

    def __init__(self, *, max_bytes: int | None = None, min_bytes: int = 0) -> None:
        self.max_bytes = max_bytes
        self.min_bytes = min_bytes
        self.expected = "a byte string"

    def __call__(self, value: Any, limits: Limits) -> bytes:
        if type(value) is not bytes:
            if isinstance(value, (bytearray, memoryview)):
                value = bytes(value)
            else:
                raise FieldMismatch(self.expected, value)
        n = len(value)
        cap = self.max_bytes if self.max_bytes is not None else limits.max_message_bytes
        if n < self.min_bytes or n > cap:
            raise FieldMismatch(f"a byte string of {self.min_bytes} to {cap} bytes", value)
        return value


class Number:
    """A finite number within a closed range; ``integer=True`` accepts integers only.

    A number field holds a float64: an integer outside int64 (which CBOR and MessagePack can
    carry) comes out as the nearest float, so that every later stage can hold it. An integer
    field's range must lie within int64."""

    __slots__ = ("expected", "high", "integer", "low")

    def __init__(self, low: float, high: float, *, integer: bool = False) -> None:
        if integer and not INT64_MIN <= low <= high <= INT64_MAX:
            raise ValueError(f"an integer field's range must lie within int64, not {low}..{high}")
        self.low = low
        self.high = high
        self.integer = integer
        kind = "an integer" if integer else "a number"
        self.expected = f"{kind} from {_fmt(low)} to {_fmt(high)}"

    def __call__(self, value: Any, limits: Limits) -> Any:
        kind = type(value)
        if kind is int:
            pass
        elif kind is float and not self.integer:
            if not math.isfinite(value):
                raise FieldMismatch(self.expected, value)
        else:
            raise FieldMismatch(self.expected, value)
        if value < self.low or value > self.high:
            raise FieldMismatch(self.expected, value)
        if kind is int and not INT64_MIN <= value <= INT64_MAX:
            return float(value)  # only a number field gets here: its range is within int64
        return value


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


class Flag:
    """A boolean."""

    __slots__ = ("expected",)

    def __init__(self) -> None:
        self.expected = "true or false"

    def __call__(self, value: Any, limits: Limits) -> bool:
        if type(value) is not bool:
            raise FieldMismatch(self.expected, value)
        return value


class ListOf:
    """A list whose items all pass one check."""

    __slots__ = ("expected", "item", "max_items", "min_items")

    def __init__(self, item: Check, *, max_items: int | None = None, min_items: int = 0) -> None:
        self.item = item
        self.max_items = max_items
        self.min_items = min_items
        self.expected = f"a list of {item.expected}"

    def __call__(self, value: Any, limits: Limits) -> tuple[Any, ...]:
        if type(value) not in (list, tuple):
            raise FieldMismatch(self.expected, value)
        cap = self.max_items if self.max_items is not None else limits.max_list_items
        if len(value) > cap or len(value) < self.min_items:
            raise FieldMismatch(f"{self.min_items} to {cap} items", value)
        out = []
        item = self.item
        for i, v in enumerate(value):
            try:
                out.append(item(v, limits))
            except FieldMismatch as e:
                e.path = f"{i}.{e.path}" if e.path else str(i)
                raise
        return tuple(out)


class FreeMap:
    """A JSON-like map (config): string keys; values null, bool, number, string, list, map.

    Depth, item counts and string lengths are bounded by the connection's limits.
    """

    __slots__ = ("expected",)

    def __init__(self) -> None:
        self.expected = "a map with string keys and JSON-like values"

    def __call__(self, value: Any, limits: Limits) -> dict[str, Any]:
        if type(value) is not dict:
            raise FieldMismatch(self.expected, value)
        _check_json_like(value, limits, 1)
        return value


def _check_json_like(value: Any, limits: Limits, depth: int) -> None:
    kind = type(value)
    if kind is dict:
        if depth > limits.max_depth:
            raise FieldMismatch(f"nesting of at most {limits.max_depth} levels", value)
        if len(value) > limits.max_map_items:
            raise FieldMismatch(f"a map of at most {limits.max_map_items} items", value)
        for k, v in value.items():
            if type(k) is not str or len(k) > 128 or NUL in k:
                raise FieldMismatch("string keys of at most 128 characters, without NUL", k)
            try:
                _check_json_like(v, limits, depth + 1)
            except FieldMismatch as e:
                e.path = f"{k}.{e.path}" if e.path else k
                raise
    elif kind is list:
        if depth > limits.max_depth:
            raise FieldMismatch(f"nesting of at most {limits.max_depth} levels", value)
        if len(value) > limits.max_list_items:
            raise FieldMismatch(f"a list of at most {limits.max_list_items} items", value)
        for i, v in enumerate(value):
            try:
                _check_json_like(v, limits, depth + 1)
            except FieldMismatch as e:
                e.path = f"{i}.{e.path}" if e.path else str(i)
                raise
    elif kind is str:
        if len(value) > limits.max_string_chars:
            raise FieldMismatch(f"strings of at most {limits.max_string_chars} characters", value)
        if NUL in value:
            raise FieldMismatch(NO_NUL, value)
    elif kind is float:
        if not math.isfinite(value):
            raise FieldMismatch("finite numbers", value)
    elif kind is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise FieldMismatch(INT64_RANGE, value)
    elif value is None or kind is bool:
        pass
    else:
        raise FieldMismatch("null, true/false, numbers, strings, lists or maps", value)
