"""Regenerate tests/protocol/vectors/wire.json from samples.py (run deliberately, review the
diff: the vectors are the wire contract that other implementations — client-web — test against).

    .venv/bin/python -m tests.protocol.gen_vectors
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tidegate.protocol import get_codec

from .samples import SAMPLES

PATH = Path(__file__).parent / "vectors" / "wire.json"


def to_json_value(obj: Any) -> Any:
    """JSON view of a decoded document: byte strings become {"$bytes": "<hex>"}."""
    if isinstance(obj, bytes):
        return {"$bytes": obj.hex()}
    if isinstance(obj, dict):
        return {k: to_json_value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_value(v) for v in obj]
    return obj


def from_json_value(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"$bytes"}:
            return bytes.fromhex(obj["$bytes"])
        return {k: from_json_value(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json_value(v) for v in obj]
    return obj


def build() -> dict[str, Any]:
    vectors = []
    for msg in SAMPLES:
        wire = msg.to_wire()
        entry: dict[str, Any] = {
            "type": msg.TYPE,
            "direction": msg.DIRECTION.value,
            "value": to_json_value(wire),
            "cbor": get_codec("cbor").encode(wire).hex(),  # type: ignore[union-attr]
            "msgpack": get_codec("msgpack").encode(wire).hex(),  # type: ignore[union-attr]
            "json": get_codec("json").encode(wire),
        }
        vectors.append(entry)
    return {
        "description": "tidegate protocol v1 wire vectors: each value encoded in each encoding. "
        "Floats are encoded as 64-bit; byte strings as CBOR/MessagePack byte strings and as "
        "base64 text in JSON. In 'value', {\"$bytes\": hex} stands for a byte string.",
        "protocol_version": 1,
        "vectors": vectors,
    }


if __name__ == "__main__":
    PATH.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {PATH}")
