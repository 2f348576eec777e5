"""What each encoding can carry, as hypothesis strategies, and a client message with one of
its numeric or string fields replaced by such a value, as a raw payload of that encoding.

Shared by the protocol's boundary property (tests/protocol/test_numbers_text.py) and the
live persistence property (tests/store/test_poison.py).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import cbor2
import msgpack
from hypothesis import strategies as st

from tidegate.protocol.messages import CLIENT_MESSAGES, ClientMessage
from tidegate.protocol.schema import Binary, Flag, FreeMap, ListOf, Number, Text

from .samples import CLIENT_SAMPLES

ENCODINGS = ("cbor", "msgpack", "json")
SAMPLE_OF: dict[str, ClientMessage] = {
    m.TYPE: m for m in CLIENT_SAMPLES if isinstance(m, ClientMessage)
}

#: integers each encoding carries without a semantic tag (CBOR's bignums are tags, refused)
INT_RANGE = {"cbor": (-(2**64), 2**64 - 1), "msgpack": (-(2**63), 2**64 - 1), "json": None}


def numbers(encoding: str) -> st.SearchStrategy[Any]:
    """Every number ``encoding`` can carry: its integers (JSON: any) and every float (JSON has
    no NaN or infinity; Python's ``json`` writes them anyway, and they must be refused)."""
    bounds = INT_RANGE[encoding]
    ints = st.integers() if bounds is None else st.integers(*bounds)
    edges = st.sampled_from(
        [-(2**64), -(2**63) - 1, -(2**63), 2**63 - 1, 2**63, 2**64 - 1, 2**53, -(2**53) - 1]
    ).filter(lambda v: bounds is None or bounds[0] <= v <= bounds[1])
    return st.one_of(edges, ints, st.floats(), st.sampled_from([0.0, -0.0, 1e300, 5e-324]))


def strings() -> st.SearchStrategy[str]:
    """Text any encoding carries: every code point but lone surrogates (which no codec
    decodes), with NUL made likely."""
    return st.one_of(st.text(max_size=40), st.text(alphabet="a\x00\U0010ffff", max_size=8))


@dataclass(frozen=True)
class FieldSpot:
    """Where a value goes in a message: ``field`` of ``mtype``; ``kind`` says how (the field
    itself, an item of its list, a value in its map, a key of its map)."""

    mtype: str
    field: str
    kind: str  # "scalar", "item", "map_value", "map_key"
    numeric: bool


def spots() -> list[FieldSpot]:
    """Every numeric and string field of every client message, with the envelope's ``id``."""
    out: list[FieldSpot] = []
    for mtype, cls in sorted(CLIENT_MESSAGES.items()):
        out.append(FieldSpot(mtype, "id", "scalar", numeric=False))
        for plan in cls._plan:
            check = plan.check
            if isinstance(check, Number | Text):
                out.append(FieldSpot(mtype, plan.name, "scalar", isinstance(check, Number)))
            elif isinstance(check, ListOf) and isinstance(check.item, Number | Text):
                out.append(FieldSpot(mtype, plan.name, "item", isinstance(check.item, Number)))
            elif isinstance(check, FreeMap):
                out.append(FieldSpot(mtype, plan.name, "map_value", numeric=True))
                out.append(FieldSpot(mtype, plan.name, "map_value", numeric=False))
                out.append(FieldSpot(mtype, plan.name, "map_key", numeric=False))
            else:  # bytes, lists of maps, booleans: no number or text to put there
                assert isinstance(check, Binary | ListOf | Flag), (mtype, plan.name)
    return out


def with_value(
    spot: FieldSpot, value: Any, *, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The sample message of ``spot.mtype`` (or ``base``) as a wire map, ``value`` put in."""
    wire = dict(base if base is not None else SAMPLE_OF[spot.mtype].to_wire())
    if spot.kind == "scalar":
        wire[spot.field] = value
    elif spot.kind == "item":
        items = list(wire.get(spot.field) or ["x"])
        wire[spot.field] = [value, *items[1:]]
    elif spot.kind == "map_value":
        wire[spot.field] = {**(wire.get(spot.field) or {}), "probe": value}
    else:
        wire[spot.field] = {**(wire.get(spot.field) or {}), value: 1}
    return wire


def raw(encoding: str, wire: dict[str, Any]) -> bytes | str:
    """``wire`` written by the encoding's own library (not tidegate's codec), as a client in
    another language would: what it can carry goes through, checked or not."""
    if encoding == "cbor":
        return cbor2.dumps(wire)
    if encoding == "msgpack":
        return bytes(msgpack.packb(wire, use_bin_type=True))
    text = {k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in wire.items()}
    return json.dumps(text)  # writes any integer, and NaN/Infinity, which JSON has not
