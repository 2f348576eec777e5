"""Encoding negotiation through WebSocket subprotocols."""

from __future__ import annotations

import pytest

from tidegate.protocol import NegotiationError, bearer_subprotocol, negotiate, subprotocol_for


def test_first_supported_encoding_wins_and_bearer_is_extracted() -> None:
    """The client's first supported encoding is chosen; the bearer entry is never echoed."""
    n = negotiate(["tidegate.bearer.abc.def.ghi", "tidegate.v1.json", "tidegate.v1.cbor"])
    assert (n.encoding, n.subprotocol, n.bearer_token) == (
        "json",
        "tidegate.v1.json",
        "abc.def.ghi",
    )


def test_no_subprotocol_means_cbor() -> None:
    """A client that offers nothing gets CBOR and no subprotocol in the answer."""
    n = negotiate([])
    assert (n.encoding, n.subprotocol, n.bearer_token) == ("cbor", None, None)


def test_unknown_versions_only_are_refused() -> None:
    """Offering only unknown tidegate protocols is an error naming what to offer."""
    with pytest.raises(NegotiationError, match=r"tidegate\.v1\.cbor"):
        negotiate(["tidegate.v2.cbor", "tidegate.v1.xml"])
    assert negotiate(["tidegate.v2.cbor", "tidegate.v1.msgpack"]).encoding == "msgpack"


def test_names() -> None:
    """Subprotocol names are built from the encoding; tokens must be subprotocol-safe."""
    assert subprotocol_for("msgpack") == "tidegate.v1.msgpack"
    with pytest.raises(ValueError, match="unknown encoding"):
        subprotocol_for("xml")
    assert bearer_subprotocol("a.b-c_d") == "tidegate.bearer.a.b-c_d"
    with pytest.raises(ValueError, match="cannot travel"):
        bearer_subprotocol("has space")
