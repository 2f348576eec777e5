"""JWT authentication: every kind of bad token is refused with the documented code."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
import websockets
from websockets.typing import Subprotocol

from tidegate.protocol import CloseCode
from tidegate.protocol.client import Client, ConnectionClosedError
from tidegate.protocol.messages import Error
from tidegate.server.auth import (
    TokenVerifier,
    bearer_from_header,
    load_or_create_secret,
    mint_token,
)
from tidegate.server.errors import ConfigError, ForbiddenError, UnauthorizedError
from tidegate.server.settings import Settings

from .conftest import LiveServer, make_settings, run_server

KEY = b"k" * 64


def verifier() -> TokenVerifier:
    return TokenVerifier(KEY, audience="tidegate")


async def test_valid_token() -> None:
    """A good token yields its principal."""
    p = await verifier().verify(
        mint_token(KEY, subject="bob", tenant="acme", scopes=["session", "admin"])
    )
    assert (p.subject, p.tenant, p.is_admin) == ("bob", "acme", True)


@pytest.mark.parametrize(
    ("token", "error", "words"),
    [
        (None, UnauthorizedError, "no token"),
        ("not-a-jwt", UnauthorizedError, "malformed"),
        (mint_token(KEY, subject="a", tenant="t", ttl_s=-60), UnauthorizedError, "expired"),
        (mint_token(KEY, subject="a", tenant="t", audience="other"), UnauthorizedError, "audience"),
        (mint_token(b"x" * 64, subject="a", tenant="t"), UnauthorizedError, "signature"),
        (
            mint_token(KEY, subject="a", tenant="t", scopes=[]),
            ForbiddenError,
            "lacks scope 'session'",
        ),
        (
            jwt.encode(
                {"sub": "a", "aud": "tidegate", "exp": time.time() + 86_400, "scope": "session"},
                KEY,
            ),
            ForbiddenError,
            "tenant",
        ),
        (
            jwt.encode({"sub": "a", "tenant": "t", "aud": "tidegate", "scope": "session"}, KEY),
            UnauthorizedError,
            "'exp'",
        ),
        (
            jwt.encode(
                {"sub": "a", "tenant": "t", "aud": "tidegate", "exp": time.time() + 86_400},
                KEY,
                algorithm="HS512",
            ),
            UnauthorizedError,
            "algorithm",
        ),
    ],
    ids=[
        "missing",
        "malformed",
        "expired",
        "audience",
        "signature",
        "scope",
        "tenant",
        "exp",
        "alg",
    ],
)
async def test_bad_tokens(token: str | None, error: type[Exception], words: str) -> None:
    """Each defect is refused with a message that says which."""
    with pytest.raises(error) as caught:
        await verifier().verify(token)
    assert words in str(caught.value)


def test_bearer_header_parsing() -> None:
    """Only 'Bearer <token>' is a bearer header."""
    assert bearer_from_header("Bearer abc") == "abc"
    assert bearer_from_header("bearer  abc ") == "abc"
    assert bearer_from_header("Basic abc") is None
    assert bearer_from_header(None) is None


def test_key_is_generated_once_and_never_a_default(tmp_path: Path) -> None:
    """Without a configured secret a random key is written (0600) and reused."""
    settings = Settings(data_dir=tmp_path)
    key = load_or_create_secret(settings)
    assert len(key) >= 32
    assert (tmp_path / "jwt.key").stat().st_mode & 0o777 == 0o600
    assert load_or_create_secret(settings) == key
    assert load_or_create_secret(Settings(data_dir=tmp_path / "other")) != key
    with pytest.raises(ConfigError, match="at least 32"):
        load_or_create_secret(Settings(data_dir=tmp_path, jwt_secret="short"))


@pytest.mark.parametrize(
    ("kind", "close_code", "code"),
    [
        ("missing", CloseCode.UNAUTHORIZED, "unauthorized"),
        ("expired", CloseCode.UNAUTHORIZED, "unauthorized"),
        ("audience", CloseCode.UNAUTHORIZED, "unauthorized"),
        ("signature", CloseCode.UNAUTHORIZED, "unauthorized"),
        ("scope", CloseCode.FORBIDDEN, "forbidden"),
    ],
)
@pytest.mark.parametrize("token_in", ["header", "subprotocol"])
async def test_bad_tokens_over_the_wire(
    server: LiveServer, kind: str, close_code: CloseCode, code: str, token_in: str
) -> None:
    """The control channel answers a bad token with an error message and a close code."""
    token = {
        "missing": None,
        "expired": server.token(ttl_s=-60),
        "audience": server.token(audience="elsewhere"),
        "signature": mint_token(b"z" * 64, subject="a", tenant="t"),
        "scope": server.token(scopes=[]),
    }[kind]
    client = await Client.connect(server.url, token, token_in=token_in)
    error = await client.recv(5)
    assert isinstance(error, Error)
    assert error.code == code
    with pytest.raises(ConnectionClosedError) as caught:
        await client.recv(5)
    assert caught.value.close_code == close_code
    assert caught.value.reason
    await client.close()


async def test_origin_allow_list(tmp_path: Path) -> None:
    """Browsers from an unlisted origin are refused with 4403; listed ones get in."""
    settings = make_settings(tmp_path, allowed_origins=("https://app.example",))
    async with run_server(settings) as live:
        bad = await Client.connect(live.url, live.token(), origin="https://evil.example")
        error = await bad.recv(5)
        assert isinstance(error, Error)
        assert error.code == "forbidden" and "origin" in error.message
        await bad.close()
        good = await Client.connect(live.url, live.token(), origin="https://app.example")
        assert (await good.create_session({"mode": "loopback"})).session_id
        await good.close()


async def test_same_origin_is_allowed_by_default(server: LiveServer) -> None:
    """With no allow-list, a page served by this server may connect; others may not."""
    same = f"http://127.0.0.1:{server.port}"
    client = await Client.connect(server.url, server.token(), origin=same)
    assert (await client.create_session({"mode": "loopback"})).session_id
    await client.close()
    with pytest.raises(ConnectionClosedError):
        other = await Client.connect(server.url, server.token(), origin="http://elsewhere:1")
        await other.create_session({"mode": "loopback"})


async def test_auth_refusal_is_counted_and_other_sessions_unaffected(server: LiveServer) -> None:
    """A refused connection does not disturb an authenticated one."""
    async with await server.client() as good:
        await good.create_session({"mode": "loopback"})
        ws = await websockets.connect(server.url, subprotocols=[Subprotocol("tidegate.v1.cbor")])
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await ws.recv()
        assert server.runtime.counters["auth_refused"] >= 1
        assert (await good.ping()).rtt_ms > 0
