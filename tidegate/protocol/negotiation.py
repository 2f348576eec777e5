"""Version and encoding negotiation through WebSocket subprotocols.

A client offers one or more encodings, ``tidegate.v1.cbor``, ``tidegate.v1.msgpack`` or
``tidegate.v1.json`` (in its order of preference), and — when it cannot set an
``Authorization`` header, as in a browser — its token as one more entry,
``tidegate.bearer.<jwt>``. The server answers with the first encoding it speaks; it never
echoes the bearer entry. A client that offers no tidegate subprotocol gets CBOR.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .codec import CBOR, CODECS
from .errors import NegotiationError

PROTOCOL_VERSION = 1
SUBPROTOCOL_PREFIX = f"tidegate.v{PROTOCOL_VERSION}."
BEARER_PREFIX = "tidegate.bearer."
DEFAULT_ENCODING = CBOR

# RFC 6455 subprotocol names are HTTP tokens; a JWT (base64url and dots) fits.
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9\-_.~+/=]+$")


def subprotocol_for(encoding: str) -> str:
    """``cbor`` -> ``tidegate.v1.cbor``."""
    if encoding not in CODECS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {sorted(CODECS)}")
    return SUBPROTOCOL_PREFIX + encoding


def bearer_subprotocol(token: str) -> str:
    """The subprotocol entry that carries a token (for clients that cannot set headers)."""
    if not _TOKEN_CHARS.match(token):
        raise ValueError("token contains characters that cannot travel in a subprotocol")
    return BEARER_PREFIX + token


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome: the encoding, the subprotocol to answer with (None: answer with none),
    and the bearer token if one was offered as a subprotocol."""

    encoding: str
    subprotocol: str | None
    bearer_token: str | None


def negotiate(offered: Iterable[str]) -> Negotiated:
    """Pick the encoding from the client's offered subprotocols (raises NegotiationError)."""
    encoding: str | None = None
    chosen: str | None = None
    token: str | None = None
    unknown: list[str] = []
    for raw in offered:
        entry = raw.strip()
        if entry.startswith(BEARER_PREFIX):
            if token is None:
                token = entry[len(BEARER_PREFIX) :]
            continue
        if entry.startswith("tidegate."):
            name = (
                entry[len(SUBPROTOCOL_PREFIX) :] if entry.startswith(SUBPROTOCOL_PREFIX) else None
            )
            if name in CODECS and encoding is None:
                encoding, chosen = name, entry
            elif name not in CODECS:
                unknown.append(entry[:64])
    if encoding is None:
        if unknown:
            raise NegotiationError(
                "no supported protocol among the offered subprotocols "
                f"{unknown}; expected one of " + ", ".join(subprotocol_for(n) for n in CODECS)
            )
        return Negotiated(DEFAULT_ENCODING, None, token)
    return Negotiated(encoding, chosen, token)
