"""Tokens of trusted OIDC issuers against a real issuer process on loopback (tests/oidc_issuer.py):
every entry point, key rotation, an unknown-kid flood, the issuer stopped and back, wrong
iss/aud/alg, algorithm confusion, claim mapping, readiness, metrics and the client config."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.oidc_issuer import TestIssuer, new_key
from tests.support import scaled, wait_ready
from tidegate.protocol import CloseCode
from tidegate.protocol.client import Client, ConnectionClosedError
from tidegate.protocol.messages import Error, InputText, ResponseDone
from tidegate.server.auth import (
    TokenForbiddenError,
    TokenUnauthorizedError,
    TokenVerifier,
    principal_from,
)
from tidegate.server.errors import ConfigError
from tidegate.server.issuers import load_issuers
from tidegate.server.jwks import JwksLimits, cache_lifetime_s

from .conftest import LiveServer, make_settings, run_server
from .test_metrics import documented, samples

ISSUER_TOML = """
[issuers.idp]
issuer = "{issuer}"
discovery_url = "{issuer}/.well-known/openid-configuration"
audience = ["tidegate", "other-api"]
algorithms = ["RS256", "EdDSA"]
tenant_claim = "org"
scope_claims = ["scope", ["realm_access", "roles"]]
scope_map = {{ "tidegate-session" = "session", "tidegate-admin" = "admin" }}
client_id = "tidegate-web"
client_scope = "openid tidegate"
display_name = "Test IdP"
"""
GOOD = {"org": "acme", "scope": "openid tidegate-session"}


@contextlib.asynccontextmanager
async def oidc_server(
    tmp_path: Path, issuer: TestIssuer, **overrides: Any
) -> AsyncIterator[LiveServer]:
    """A live tidegate trusting ``issuer``; ready (the issuer's keys asked for once)."""
    path = tmp_path / "issuers.toml"
    path.write_text(ISSUER_TOML.format(issuer=issuer.issuer))
    settings = make_settings(tmp_path, oidc_issuers_file=path, **overrides)
    async with run_server(settings) as live:
        await wait_ready(live.http, timeout_s=20)
        yield live


async def metrics(live: LiveServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    admin = {"authorization": f"Bearer {live.token(scopes=['admin'])}"}
    async with httpx.AsyncClient(base_url=live.http) as http:
        r = await http.get("/metrics", headers=admin)
    assert r.status_code == 200
    documented(r.text)
    return samples(r.text)


def refusals(m: dict[Any, float], reason: str) -> float:
    key = ("tidegate_token_refusals_total", (("issuer", "idp"), ("reason", reason)))
    return m.get(key, 0.0)


async def refused(live: LiveServer, token: str) -> TokenUnauthorizedError | TokenForbiddenError:
    with pytest.raises((TokenUnauthorizedError, TokenForbiddenError)) as caught:
        await live.runtime.verifier.verify(token)
    assert isinstance(caught.value, TokenUnauthorizedError | TokenForbiddenError)
    return caught.value


@pytest.mark.parametrize("token_in", ["header", "subprotocol"])
async def test_an_issuer_token_opens_the_control_channel(tmp_path: Path, token_in: str) -> None:
    """A token of the trusted issuer opens a session in both forms; its claims are mapped."""
    with TestIssuer() as idp:
        async with oidc_server(tmp_path, idp) as live:
            token = idp.token({**GOOD, "sub": "bob"}, ttl_s=300)
            async with await Client.connect(live.url, token, token_in=token_in) as client:
                created = await client.create_session({"mode": "loopback"})
                session = live.runtime.registry.get(created.session_id)
                assert session is not None
                principal = session.principal
    assert (principal.subject, principal.tenant, principal.scopes) == (
        "bob",
        "acme",
        frozenset({"session"}),
    )
    # The expiry travels as the HS256 tokens' does (what close-at-expiry reads).
    assert principal.expires_at_s == jwt.decode(token, options={"verify_signature": False})["exp"]


async def test_an_issuer_token_expiring_mid_connection_closes_it_and_the_session_resumes(
    tmp_path: Path,
) -> None:
    """An issuer token's exp closes the control connection with 4401 while it is open; a fresh
    token of the same issuer resumes the session."""
    with TestIssuer() as idp:
        async with oidc_server(tmp_path, idp, jwt_leeway_s=0.0) as live:
            client = await Client.connect(live.url, idp.token(GOOD, ttl_s=2.0))
            created = await client.create_session({"mode": "loopback"})
            closed = await client.wait_closed(timeout_s=10.0)
            assert closed.close_code == CloseCode.UNAUTHORIZED and "expired" in closed.reason
            await client.close()
            async with await Client.connect(live.url, idp.token(GOOD, ttl_s=300)) as again:
                resumed = await again.create_session(session_id=created.session_id)
                assert resumed.resumed is True
                await again.send(InputText(text="back"))
                assert (await again.wait_for(ResponseDone)).text == "back"


async def test_every_http_route_takes_and_checks_issuer_tokens(tmp_path: Path) -> None:
    """The records API, the offer, chat completions and /metrics accept an issuer token and
    refuse a forged one with 401."""
    with TestIssuer() as idp:
        async with oidc_server(tmp_path, idp) as live, httpx.AsyncClient(base_url=live.http) as h:
            good = {"authorization": f"Bearer {idp.token(GOOD)}"}
            roles = {"realm_access": {"roles": ["tidegate-admin"]}}
            admin = {"authorization": f"Bearer {idp.token({**GOOD, **roles})}"}
            forged_key = new_key("RS256")
            forged = jwt.encode(
                {"iss": idp.issuer, "aud": "tidegate", "sub": "x", "exp": time.time() + 60, **GOOD},
                forged_key,
                algorithm="RS256",
                headers={"kid": "k1"},
            )
            bad = {"authorization": f"Bearer {forged}"}
            routes = [
                ("GET", "/v1/sessions", 200),
                ("GET", "/v1/sessions/s_nothere", 404),
                ("POST", "/v1/sessions/s_nothere/offer", 404),
                ("POST", "/v1/chat/completions", 503),  # authenticated: no LLM engine here
            ]
            for method, path, status in routes:
                assert (await h.request(method, path, headers=good)).status_code == status, path
                r = await h.request(method, path, headers=bad)
                assert r.status_code == 401, path
                assert "signature" in r.text, r.text
            assert (await h.get("/metrics", headers=good)).status_code == 403
            assert (await h.get("/metrics", headers=admin)).status_code == 200
            assert refusals(await metrics(live), "signature") == len(routes)


async def test_key_rotation_mid_test(tmp_path: Path) -> None:
    """A new key is fetched when a token first names it; a retired key stops verifying after
    the next scheduled refresh (the issuer's max-age, within the configured bounds)."""
    with TestIssuer(max_age_s=1) as idp:
        async with oidc_server(tmp_path, idp, jwks_cache_min_s=0.2, jwks_refresh_min_s=0.2) as live:
            verify = live.runtime.verifier.verify
            old = idp.token(GOOD)
            assert (await verify(old)).subject == "alice"
            idp.add_key("k2", "EdDSA", sign=True)  # rotation: publish k2 and sign with it
            new = idp.token(GOOD)
            assert jwt.get_unverified_header(new)["kid"] == "k2"
            assert (await verify(new)).subject == "alice"
            assert (await verify(old)).subject == "alice"  # k1 still published
            idp.retire("k1")
            before = idp.jwks_fetches
            async with asyncio.timeout(scaled(20)):  # the scheduled refresh (max-age=1)
                while idp.jwks_fetches == before:
                    await asyncio.sleep(0.05)
                while "k1" in live.runtime.verifier.key_sets[0].kids:
                    await asyncio.sleep(0.02)
            error = await refused(live, old)
            assert error.reason == "unknown_key" and "'k1'" in error.message
            assert (await verify(new)).subject == "alice"
            async with await live.client(token=new) as client:
                await client.create_session({"mode": "loopback"})


async def test_unknown_kid_flood_costs_one_refresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Tokens with forged key ids, concurrent and over the wire, cause one JWKS fetch in the
    refresh interval, are all refused and counted, and are logged once."""
    with TestIssuer() as idp:
        async with oidc_server(tmp_path, idp, jwks_refresh_min_s=600.0) as live:
            before = idp.jwks_fetches
            attacker = new_key("RS256")

            def forged() -> str:
                claims = {"iss": idp.issuer, "aud": "tidegate", "exp": time.time() + 60, **GOOD}
                kid = secrets.token_hex(8)
                return jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": kid})

            caplog.set_level(logging.INFO, logger="tidegate.server.auth")
            n = 300
            results = await asyncio.gather(
                *(live.runtime.verifier.verify(forged()) for _ in range(n)),
                return_exceptions=True,
            )
            assert all(isinstance(r, TokenUnauthorizedError) for r in results), results[:3]
            reasons = {r.reason for r in results if isinstance(r, TokenUnauthorizedError)}
            assert reasons == {"unknown_key"}
            async with httpx.AsyncClient(base_url=live.http) as http:
                for _ in range(20):
                    r = await http.get(
                        "/v1/sessions", headers={"authorization": f"Bearer {forged()}"}
                    )
                    assert r.status_code == 401 and "not among the keys" in r.text
            # One fetch, shared by the concurrent first wave; none after it in the interval.
            assert idp.jwks_fetches == before + 1
            m = await metrics(live)
            assert refusals(m, "unknown_key") == n + 20
            key = ("tidegate_jwks_fetches_total", (("issuer", "idp"), ("outcome", "ok")))
            assert m[key] == 2  # at start, and once for the flood
            logged = [r for r in caplog.records if "unknown_key" in r.getMessage()]
            assert len(logged) == 1, [r.getMessage() for r in logged]
            # A real token still verifies (its key is cached).
            assert (await live.runtime.verifier.verify(idp.token(GOOD))).tenant == "acme"


async def test_issuer_stopped_then_back(tmp_path: Path) -> None:
    """With the issuer down, cached keys keep working, a new kid is refused saying why, and
    /readyz and the metrics say so; when it is back, the new key is fetched."""
    with TestIssuer() as idp:
        async with oidc_server(tmp_path, idp, jwks_refresh_min_s=0.2) as live:
            verify = live.runtime.verifier.verify
            cached = idp.token(GOOD)
            assert (await verify(cached)).tenant == "acme"
            idp.stop()
            idp.add_key("k2", sign=True)  # rotated while unreachable
            fresh = idp.token(GOOD)
            await asyncio.sleep(0.25)  # past jwks_refresh_min_s: the kid triggers a fetch
            error = await refused(live, fresh)
            assert error.reason == "keys_unavailable", error.message
            assert "cannot connect" in error.message and "cached key" in error.message
            assert error.retry_after_ms is not None and error.retry_after_ms > 0
            assert (await verify(cached)).tenant == "acme"  # cached keys keep working
            async with await live.client(token=cached) as client:
                await client.create_session({"mode": "loopback"})
            async with httpx.AsyncClient(base_url=live.http) as http:
                ready = await http.get("/readyz")
            assert ready.status_code == 200  # the node still serves the cached keys
            state = ready.json()["issuers"]["idp"]
            assert state["state"] == "unreachable" and state["keys"] == 1, state
            assert "cannot connect" in state["error"]
            m = await metrics(live)
            assert m[("tidegate_jwks_up", (("issuer", "idp"),))] == 0
            assert m[("tidegate_jwks_keys", (("issuer", "idp"),))] == 1
            assert (
                m[("tidegate_jwks_fetches_total", (("issuer", "idp"), ("outcome", "failed")))] >= 1
            )
            assert refusals(m, "keys_unavailable") >= 1

            idp.start()  # back, on the same port
            async with asyncio.timeout(scaled(20)):
                while True:
                    try:
                        principal = await verify(fresh)
                        break
                    except TokenUnauthorizedError:
                        await asyncio.sleep(0.25)
            assert principal.tenant == "acme"
            assert live.runtime.verifier.status()["idp"]["state"] == "ok"


async def test_a_slow_issuer_blocks_nothing_else(tmp_path: Path) -> None:
    """While a key fetch waits on a slow issuer, the server keeps serving (health, a session
    with a cached key); the waiting token verifies once the keys arrive."""
    with TestIssuer() as idp:
        async with oidc_server(tmp_path, idp, jwks_timeout_s=60.0) as live:
            verify = live.runtime.verifier.verify
            cached = idp.token(GOOD)
            idp.add_key("k2", sign=True)
            idp.hold()
            waiting = asyncio.create_task(verify(idp.token(GOOD)))
            try:
                async with asyncio.timeout(scaled(20)):
                    while idp.held == 0:
                        await asyncio.sleep(0.02)
                async with httpx.AsyncClient(base_url=live.http) as http:
                    assert (await http.get("/healthz")).status_code == 200
                async with await live.client(token=cached) as client:
                    await client.create_session({"mode": "loopback"})
                assert (await verify(cached)).tenant == "acme"
                assert not waiting.done() and idp.held == 1
            finally:
                idp.release()
            assert (await waiting).tenant == "acme"


async def test_an_issuer_slower_than_the_timeout_is_unavailable(tmp_path: Path) -> None:
    """A key fetch that outlasts jwks_timeout_s fails: the new kid is refused, saying so."""
    with TestIssuer() as idp:
        async with oidc_server(tmp_path, idp, jwks_timeout_s=0.5) as live:
            idp.add_key("k2", sign=True)
            idp.hold()
            try:
                error = await refused(live, idp.token(GOOD))
            finally:
                idp.release()
    assert error.reason == "keys_unavailable"
    assert "did not answer in time" in error.message


async def test_wrong_iss_aud_alg_and_algorithm_confusion(tmp_path: Path) -> None:
    """Untrusted issuer, wrong audience, an algorithm not accepted, 'none', HS256 signed with
    the issuer's public key, a key of the wrong type, expired: each refused, saying which."""
    with TestIssuer() as idp:
        idp.add_key("ec1", "ES256")  # published, but ES256 is not in the issuer's algorithms
        idp.add_key("ec2", "ES256", declare_alg=False)
        async with oidc_server(tmp_path, idp) as live:
            now = time.time()
            base = {"iss": idp.issuer, "aud": "tidegate", "sub": "a", "exp": now + 60, **GOOD}
            pem = idp.public_key("k1").public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            cases = {
                "untrusted issuer": (
                    idp.token({**GOOD, "iss": "https://evil.example"}),
                    "issuer",
                    "not trusted",
                ),
                "audience": (idp.token({**GOOD, "aud": "someone-else"}), "audience", "audience"),
                "second audience ok": (idp.token({**GOOD, "aud": ["x", "other-api"]}), None, ""),
                "ES256 not accepted": (
                    idp.token(GOOD, kid="ec1"),
                    "algorithm",
                    "'ES256' is not accepted from issuer idp",
                ),
                "none": (
                    # PyJWT's "none" algorithm takes the key None, which encode's annotation omits
                    jwt.encode(base, None, algorithm="none", headers={"kid": "k1"}),  # type: ignore[arg-type]
                    "algorithm",
                    "'none' is not accepted",
                ),
                "HS256 with the public key": (
                    _hs256(base, pem, {"kid": "k1"}),
                    "algorithm",
                    "'HS256' is not accepted",
                ),
                "HS256 with the public key, no iss": (
                    _hs256({k: v for k, v in base.items() if k != "iss"}, pem, {"kid": "k1"}),
                    "signature",
                    "signature",
                ),
                "RS256 header on the EC key": (
                    _resign(idp, base, kid="ec1", alg="RS256", signer="k1"),
                    "algorithm",
                    "is for ES256, not RS256",
                ),
                "RS256 header on an EC key that declares no alg": (
                    _resign(idp, base, kid="ec2", alg="RS256", signer="k1"),
                    "algorithm",
                    "(EC) cannot verify RS256",
                ),
                "expired": (idp.token(GOOD, ttl_s=-60), "expired", "expired"),
                "no kid": (
                    _resign(idp, base, kid=None, alg="RS256", signer="k1"),
                    "unknown_key",
                    "lacks 'kid'",
                ),
                "no exp": (
                    _resign(
                        idp,
                        {k: v for k, v in base.items() if k != "exp"},
                        kid="k1",
                        alg="RS256",
                        signer="k1",
                    ),
                    "claims",
                    "'exp'",
                ),
            }
            for name, (token, reason, words) in cases.items():
                if reason is None:
                    assert (await live.runtime.verifier.verify(token)).tenant == "acme", name
                    continue
                error = await refused(live, token)
                assert error.reason == reason, (name, error.reason, error.message)
                assert words in error.message, (name, error.message)
            # Over the wire: the documented error and close code.
            client = await Client.connect(live.url, cases["HS256 with the public key"][0])
            error_msg = await client.recv(5)
            assert isinstance(error_msg, Error) and error_msg.code == "unauthorized"
            with pytest.raises(ConnectionClosedError) as caught:
                await client.recv(5)
            assert caught.value.close_code == 4401
            await client.close()


def _hs256(claims: dict[str, Any], secret: bytes, headers: dict[str, Any]) -> str:
    """HS256 signed with ``secret`` (here: a public key's PEM), built by hand: PyJWT itself
    refuses to use a PEM key as an HMAC secret."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", **headers}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def _resign(
    idp: TestIssuer, claims: dict[str, Any], *, kid: str | None, alg: str, signer: str
) -> str:
    """``claims`` signed with key ``signer`` under ``alg``, the header naming ``kid``."""
    key = idp.state.keys[signer][1]
    token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)
    if kid is None:
        head = jwt.get_unverified_header(token)
        assert "kid" not in head
    return token


async def test_unreachable_from_the_start_is_ready_and_says_so(tmp_path: Path) -> None:
    """An issuer down at start-up does not hold readiness back for ever: once its first fetch
    has failed, /readyz is ready, naming the issuer unreachable with no keys."""
    idp = TestIssuer().start()
    idp.stop()  # a port that refuses
    async with oidc_server(tmp_path, idp) as live, httpx.AsyncClient(base_url=live.http) as h:
        state = (await h.get("/readyz")).json()["issuers"]["idp"]
        assert state["state"] == "unreachable" and state["keys"] == 0, state
        error = await refused(live, idp.token(GOOD))
        assert error.reason == "keys_unavailable"
        # HS256 tokens of the local key still work.
        async with await live.client() as client:
            await client.create_session({"mode": "loopback"})


async def test_client_config_names_the_provider(tmp_path: Path) -> None:
    """GET /v1/auth/config (no token) lists the issuer's public client and its endpoints
    from the discovery document."""
    with TestIssuer() as idp:
        async with (
            oidc_server(tmp_path, idp, web_token_url="/sso/token") as live,
            httpx.AsyncClient(base_url=live.http) as http,
        ):
            r = await http.get("/v1/auth/config")
    assert r.status_code == 200
    body = r.json()
    assert body["dev_login"] is True and body["token_url"] == "/sso/token"
    (p,) = body["providers"]
    assert p["client_id"] == "tidegate-web" and p["scope"] == "openid tidegate"
    assert p["authorization_endpoint"] == f"{idp.issuer}/authorize"
    assert p["token_endpoint"] == f"{idp.issuer}/token"
    assert "secret" not in r.text


# -- configuration and claim mapping (no server) -------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ('algorithms = ["HS256"]', "never 'none' or HS*"),
        ('algorithms = ["none"]', "never 'none' or HS*"),
        ('jwks_url = "https://idp.example/jwks"', "exactly one of discovery_url and jwks_url"),
        ('token_endpoint = "http://10.1.2.3/token"', "must be https"),
        ('tenant = "acme"', "exactly one of tenant"),
        ('scope_map = { "x" = "root" }', "session or admin"),
        ('colour = "blue"', "unknown keys ['colour']"),
    ],
)
def test_bad_issuer_settings_are_refused(tmp_path: Path, extra: str, words: str) -> None:
    """Each unusable issuer setting is a ConfigError naming it."""
    path = tmp_path / "issuers.toml"
    base = ISSUER_TOML.format(issuer="https://idp.example")
    key = extra.split("=")[0].strip()
    kept = [line for line in base.splitlines() if line.split("=")[0].strip() != key]
    path.write_text("\n".join([*kept, extra, ""]))
    with pytest.raises(ConfigError, match=words.replace("*", r"\*").replace("[", r"\[")):
        load_issuers(path)


def test_plain_http_only_to_loopback(tmp_path: Path) -> None:
    """Keys are fetched over https, or plain http to a loopback address only."""
    path = tmp_path / "issuers.toml"
    path.write_text(ISSUER_TOML.format(issuer="http://idp.example"))
    with pytest.raises(ConfigError, match="must be https"):
        load_issuers(path)
    path.write_text(ISSUER_TOML.format(issuer="http://127.0.0.1:9"))
    (cfg,) = load_issuers(path)
    assert cfg.claims.scopes == (("scope",), ("realm_access", "roles"))
    with pytest.raises(ConfigError, match="also jwt_issuer"):
        load_issuers(path, local_issuer="http://127.0.0.1:9")


def test_claim_shapes_map_to_scopes_and_tenants(tmp_path: Path) -> None:
    """Entra-like (scp string, roles list, tid), Okta-like (scp list) and Keycloak-like
    (realm_access.roles) claims map to tidegate scopes; unmapped or other tenants are refused."""
    path = tmp_path / "issuers.toml"
    path.write_text(
        """
[issuers.entra]
issuer = "https://login.microsoftonline.com/t1/v2.0"
jwks_url = "https://login.microsoftonline.com/t1/discovery/v2.0/keys"
audience = "api://tidegate"
tenant_claim = "tid"
allowed_tenants = ["t1"]
subject_claim = "oid"
scope_claims = ["scp", "roles"]
scope_map = { "Session.Use" = "session", "Tidegate.Admin" = "admin" }
"""
    )
    (entra,) = load_issuers(path)
    m = entra.claims
    base = {"oid": "u-1", "tid": "t1", "exp": 2e9}
    p = principal_from({**base, "scp": "User.Read Session.Use"}, m, "session")
    assert (p.subject, p.tenant, p.scopes) == ("u-1", "t1", frozenset({"session"}))
    assert principal_from({**base, "roles": ["Tidegate.Admin"]}, m, "admin").is_admin
    assert principal_from({**base, "scp": ["Session.Use"]}, m, "session").scopes == {"session"}
    with pytest.raises(TokenForbiddenError, match="lacks scope 'session'"):
        principal_from({**base, "scp": "User.Read session"}, m, "session")  # unmapped
    with pytest.raises(TokenForbiddenError, match="not one this token's issuer may name"):
        principal_from({**base, "tid": "t2", "scp": "Session.Use"}, m, "session")
    with pytest.raises(TokenUnauthorizedError, match="'oid'"):
        principal_from({"tid": "t1", "sub": "x", "scp": "Session.Use", "exp": 2e9}, m, "session")
    with pytest.raises(TokenUnauthorizedError, match="string or a list"):
        principal_from({**base, "scp": 7}, m, "session")


def test_cache_lifetime_follows_headers_within_bounds() -> None:
    """max-age minus Age, no-cache, Expires minus Date, none: clamped to [min, max]."""
    lim = JwksLimits(cache_min_s=60.0, cache_max_s=3600.0)
    assert cache_lifetime_s({"cache-control": "public, max-age=300"}, lim, 0.0) == 300.0
    assert cache_lifetime_s({"cache-control": "max-age=300", "age": "100"}, lim, 0.0) == 200.0
    assert cache_lifetime_s({"cache-control": "max-age=5"}, lim, 0.0) == 60.0
    assert cache_lifetime_s({"cache-control": "max-age=86400"}, lim, 0.0) == 3600.0
    assert cache_lifetime_s({"cache-control": "no-cache"}, lim, 0.0) == 60.0
    assert cache_lifetime_s({}, lim, 0.0) == 3600.0
    dated = {
        "date": "Thu, 01 Jan 2026 00:00:00 GMT",
        "expires": "Thu, 01 Jan 2026 00:10:00 GMT",
    }
    assert cache_lifetime_s(dated, lim, 0.0) == 600.0


async def test_refusals_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """A burst of bad tokens logs one line per reason per interval; the next line counts the
    ones left out; the token itself is never logged."""
    now = [0.0]
    verifier = TokenVerifier(b"k" * 64, audience="tidegate", clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="tidegate.server.auth")

    for _ in range(5):
        with pytest.raises(TokenUnauthorizedError):
            await verifier.verify("not.a.jwt")
    now[0] = 11.0
    with pytest.raises(TokenUnauthorizedError):
        await verifier.verify("not.a.jwt")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "and 4 more refused" in lines[1]
    assert not any("not.a.jwt" in line for line in lines)
    assert verifier.refusals[("local", "malformed")] == 6
