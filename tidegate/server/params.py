"""Query and path values of the HTTP routes, parsed by explicit ASCII patterns.

Python's ``int()``, ``float()`` and ``str.isdigit()`` accept far more than a URL should carry:
superscripts (``limit=²``: ``isdigit()`` is true and ``int()`` raises), other scripts'
digits (Arabic-Indic one-zero reads as 10), underscores, surrounding spaces, ``nan`` and
``inf``. Every value a route reads goes through one of these functions instead: it matches an
ASCII pattern in full, or is refused with ``invalid_field`` (400) naming the parameter and
what was expected.
"""

from __future__ import annotations

import re

from starlette.requests import Request

from tidegate.protocol.messages import MAX_ID_CHARS

from .errors import InvalidConfigError

INTEGER_RE = re.compile(r"0|[1-9][0-9]{0,17}")
EPOCH_MS_RE = re.compile(r"-?(?:0|[1-9][0-9]{0,15})(?:\.[0-9]{1,6})?")
CURSOR_MAX_CHARS = 512
CURSOR_RE = re.compile(rf"[A-Za-z0-9_\-]{{1,{CURSOR_MAX_CHARS}}}")  # unpadded base64url
ID_RE = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_ID_CHARS}}}")
TEXT_MAX_CHARS = 256
TEXT_RE = re.compile(rf"[^\x00-\x1f\x7f]{{1,{TEXT_MAX_CHARS}}}")  # no control characters


def _query(request: Request, name: str) -> str | None:
    return request.query_params.get(name)


def integer(request: Request, name: str, *, low: int, high: int) -> int | None:
    """A query integer written in ASCII digits, from ``low`` to ``high`` (None if absent)."""
    raw = _query(request, name)
    if raw is None:
        return None
    if INTEGER_RE.fullmatch(raw) is None or not low <= int(raw) <= high:
        raise InvalidConfigError(f"{name}: expected an integer from {low} to {high}, got {raw!r}")
    return int(raw)


def epoch_ms(request: Request, name: str) -> float | None:
    """A query time in epoch milliseconds: ASCII digits, an optional sign and decimals."""
    raw = _query(request, name)
    if raw is None:
        return None
    if EPOCH_MS_RE.fullmatch(raw) is None:
        raise InvalidConfigError(
            f"{name}: expected epoch milliseconds (digits, optional '-' and decimals), got {raw!r}"
        )
    return float(raw)  # at most 16 digits: always finite


def text(request: Request, name: str, *, max_chars: int = TEXT_MAX_CHARS) -> str | None:
    """A free-text query value: 1 to ``max_chars`` characters, no control characters."""
    raw = _query(request, name)
    if raw is None:
        return None
    if TEXT_RE.fullmatch(raw) is None or len(raw) > max_chars:
        raise InvalidConfigError(
            f"{name}: expected 1 to {max_chars} characters without control characters"
        )
    return raw


def cursor(request: Request, name: str = "cursor") -> str | None:
    """A pagination cursor as handed out: unpadded base64url (its content is checked by the
    store that made it)."""
    raw = _query(request, name)
    if raw is not None and CURSOR_RE.fullmatch(raw) is None:
        raise InvalidConfigError(
            f"{name}: not one this server handed out (base64url, at most {CURSOR_MAX_CHARS} "
            "characters); use next_cursor as given"
        )
    return raw


def path_id(request: Request, name: str) -> str:
    """An id in the path (a session id): 1 to MAX_ID_CHARS of ``A-Z a-z 0-9 _ . -``."""
    raw = str(request.path_params[name])
    if ID_RE.fullmatch(raw) is None:
        raise InvalidConfigError(
            f"{name}: expected 1 to {MAX_ID_CHARS} of A-Z, a-z, 0-9, '_', '.', '-', got {raw!r}"
        )
    return raw
