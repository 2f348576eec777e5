"""Query and path values parsed by explicit ASCII patterns."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from starlette.requests import Request

from tidegate.server import params
from tidegate.server.errors import InvalidConfigError


def _request(query: str = "", **path: str) -> Request:
    return Request(
        {"type": "http", "query_string": query.encode(), "path_params": path, "headers": []}
    )


def test_integers_are_ascii_digits_in_range() -> None:
    """``0``-``9`` only, no sign, space, underscore or leading zero, within the bounds."""
    assert params.integer(_request("limit=25"), "limit", low=1, high=200) == 25
    assert params.integer(_request(), "limit", low=1, high=200) is None
    other_scripts = ("²", "\u0661\u0660", "\uff15")  # superscript, Arabic-Indic, fullwidth
    for raw in (*other_scripts, "+5", " 5", "5 ", "05", "1_0", "0x1", "", "201", "0", "-1"):
        with pytest.raises(InvalidConfigError, match=r"^limit: expected an integer from 1 to 200"):
            params.integer(_request("limit=" + quote(raw)), "limit", low=1, high=200)


def test_epoch_ms_is_a_plain_decimal() -> None:
    """Digits with an optional sign and decimals; never nan, inf, exponents or other scripts."""
    assert params.epoch_ms(_request("t=-12.5"), "t") == -12.5
    assert params.epoch_ms(_request("t=1764000000000"), "t") == 1764000000000.0
    too_long = "12345678901234567"
    for raw in ("nan", "inf", "-inf", "1e3", "1_000", "\u0661", " 1", "1.", ".5", too_long):
        with pytest.raises(InvalidConfigError, match=r"^t: expected epoch milliseconds"):
            params.epoch_ms(_request("t=" + quote(raw)), "t")


def test_text_refuses_control_characters_and_long_values() -> None:
    """Free text: any printable characters, 1 to max_chars; no control characters."""
    assert params.text(_request("subject=" + quote("bob é")), "subject") == "bob é"
    for raw in ("\x00", "a\nb", "x" * 257, ""):
        with pytest.raises(InvalidConfigError, match=r"^subject:"):
            params.text(_request("subject=" + quote(raw)), "subject")


def test_path_ids_and_cursors_have_their_alphabets() -> None:
    """A session id is 1-64 of A-Z a-z 0-9 _ . -; a cursor is unpadded base64url."""
    assert params.path_id(_request(session_id="s_ab1.Xy-z_"), "session_id") == "s_ab1.Xy-z_"
    for raw in ("s x", "²", "a/b", "x" * 65, ""):
        with pytest.raises(InvalidConfigError, match=r"^session_id:"):
            params.path_id(_request(session_id=raw), "session_id")
    assert params.cursor(_request("cursor=MTAwMC4wfHNfYQ")) == "MTAwMC4wfHNfYQ"
    for raw in ("a=", "a+b", "\u0661"):
        with pytest.raises(InvalidConfigError, match=r"^cursor:"):
            params.cursor(_request("cursor=" + quote(raw)))
