"""Encodings of protocol v1, chosen by WebSocket subprotocol.

- ``tidegate.v1.cbor`` (default): CBOR (RFC 8949), binary WebSocket messages. Semantic tags
  are refused: the protocol uses none, and some (regex, decimal) are costly to decode.
- ``tidegate.v1.msgpack``: MessagePack, binary messages; byte strings use the bin type.
- ``tidegate.v1.json``: JSON text messages, for debugging; byte fields are base64 text
  (RFC 4648, with padding).

A codec turns one map into one WebSocket message payload and back; it raises only
:class:`~tidegate.protocol.errors.DecodeError` on input it cannot read.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Protocol

import cbor2
import msgpack
import orjson

from .errors import DecodeError
from .schema import MAX_DEPTH

CBOR = "cbor"
MSGPACK = "msgpack"
JSON = "json"


class Codec(Protocol):
    """One encoding: ``binary`` says whether payloads travel as binary or text messages."""

    name: str
    binary: bool
    #: Converts a byte field as it arrives in this encoding into bytes (JSON: base64 text).
    binary_decoder: Callable[[Any], bytes] | None

    def encode(self, obj: dict[str, Any]) -> bytes | str: ...

    def decode(self, data: bytes | str) -> Any: ...


def _refuse_tag(decoder: Any, tag: Any = None) -> Any:
    number = getattr(tag, "tag", "?")
    raise DecodeError(f"CBOR semantic tags are not used by this protocol (got tag {number})")


def _no_semantics(tag: int) -> Callable[..., Any]:
    def refuse(*_: Any) -> Any:
        raise DecodeError(f"CBOR semantic tags are not used by this protocol (got tag {tag})")

    return refuse


# cbor2 decodes well-known tags natively; route every one of them to a refusal.
_NO_SEMANTICS = {tag: _no_semantics(tag) for tag in (*range(300), 1004, 1040, 55799)}


class CborCodec:
    name = CBOR
    binary = True
    binary_decoder: Callable[[Any], bytes] | None = None

    def __init__(self, *, max_depth: int = MAX_DEPTH + 2) -> None:
        self.max_depth = max_depth

    def encode(self, obj: dict[str, Any]) -> bytes:
        return cbor2.dumps(obj)

    def decode(self, data: bytes | str) -> Any:
        if isinstance(data, str):
            raise DecodeError("expected a binary WebSocket message (CBOR), got text")
        try:
            return cbor2.loads(
                data,
                tag_hook=_refuse_tag,
                semantic_decoders=_NO_SEMANTICS,
                max_depth=self.max_depth,
                allow_duplicate_keys=False,
                strict_hashable_types=True,
            )
        except DecodeError:
            raise
        except Exception as e:  # the C decoder raises several kinds; all mean "bad bytes"
            cause = e.__cause__ or e.__context__
            if isinstance(cause, DecodeError):
                raise cause from None
            raise DecodeError(f"not valid CBOR: {_short(e)}") from None


class MsgpackCodec:
    name = MSGPACK
    binary = True
    binary_decoder: Callable[[Any], bytes] | None = None

    def __init__(self, *, max_depth: int = MAX_DEPTH + 2) -> None:
        self.max_depth = max_depth

    def encode(self, obj: dict[str, Any]) -> bytes:
        return msgpack.packb(obj, use_bin_type=True)

    def decode(self, data: bytes | str) -> Any:
        if isinstance(data, str):
            raise DecodeError("expected a binary WebSocket message (MessagePack), got text")
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as e:
            raise DecodeError(f"not valid MessagePack: {_short(e)}") from None
        _check_depth(obj, self.max_depth)
        return obj


def _b64(value: Any) -> bytes:
    if type(value) is not str:
        raise TypeError("expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as e:
        raise ValueError(str(e)) from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(obj).decode("ascii")
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


class JsonCodec:
    name = JSON
    binary = False
    binary_decoder: Callable[[Any], bytes] | None = staticmethod(_b64)

    def __init__(self, *, max_depth: int = MAX_DEPTH + 2) -> None:
        self.max_depth = max_depth

    def encode(self, obj: dict[str, Any]) -> str:
        return orjson.dumps(obj, default=_json_default).decode("utf-8")

    def decode(self, data: bytes | str) -> Any:
        try:
            obj = orjson.loads(data)
        except Exception as e:
            raise DecodeError(f"not valid JSON: {_short(e)}") from None
        _check_depth(obj, self.max_depth)
        return obj


def _check_depth(obj: Any, max_depth: int) -> None:
    """Refuse documents nested deeper than ``max_depth`` (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if type(node) is dict:
            children: Any = node.values()
        elif type(node) is list:
            children = node
        else:
            continue
        if depth > max_depth:
            raise DecodeError(f"document nested deeper than {max_depth} levels")
        for child in children:
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))


def _short(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."


CODECS: dict[str, type[CborCodec] | type[MsgpackCodec] | type[JsonCodec]] = {
    CBOR: CborCodec,
    MSGPACK: MsgpackCodec,
    JSON: JsonCodec,
}


def get_codec(name: str) -> Codec:
    """The codec for an encoding name (``cbor``, ``msgpack``, ``json``)."""
    try:
        codec: Codec = CODECS[name]()
    except KeyError:
        raise ValueError(f"unknown encoding {name!r}; expected one of {sorted(CODECS)}") from None
    return codec
