"""A small real OIDC issuer for the tests: discovery, JWKS, authorization code + PKCE, tokens.

It serves HTTP on a real loopback socket (``http.server`` in a thread of its own), signs with
real keys (``cryptography``: RSA, EC P-256, Ed25519) through PyJWT, and can do what the tests
need an identity provider to do: rotate keys (publish a new one, sign with it, retire the old
one), count its JWKS fetches, stop answering and come back on the same port. Used in-process by
tests/server/test_oidc.py, and as a process (``python -m tests.oidc_issuer``) inside the network
namespace of tests/client_web/test_signin.py, where Chromium signs in through it.

The sign-in page is a form (a user name and a button); the code it issues is bound to the
client, the redirect URI and the S256 PKCE challenge, and is good once, for a minute. Signing in
also sets a session cookie, with which ``POST /session-token`` hands out a token the way an SSO
proxy in front of an application does (the operator's token endpoint of docs/security.md).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import secrets
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

CODE_TTL_S = 60.0
SESSION_COOKIE = "idp_session"
GATE_MAX_S = 30.0  # a held JWKS request answers after this at the latest
KINDS = {"RS256": "rsa", "ES256": "ec", "EdDSA": "ed25519"}


@dataclass
class Code:
    client_id: str
    redirect_uri: str
    challenge: str
    subject: str
    issued_s: float


@dataclass
class IssuerState:
    """What the issuer holds; guarded by ``lock`` (the server's threads and the test share it)."""

    issuer: str = ""
    keys: dict[str, tuple[str, Any]] = field(default_factory=dict)  # kid -> (alg, private key)
    published: list[str] = field(default_factory=list)
    signing: str = ""
    max_age_s: int = 300
    audience: str = "tidegate"
    clients: dict[str, str] = field(default_factory=dict)  # client_id -> redirect_uri
    claims: dict[str, Any] = field(default_factory=dict)  # added to tokens from /token
    codes: dict[str, Code] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)  # session cookie -> user name
    undeclared: set[str] = field(default_factory=set)  # kids published without "alg"
    gate: threading.Event = field(default_factory=threading.Event)  # JWKS answers wait on it
    held: int = 0  # JWKS requests waiting at the gate now
    hits: Counter[str] = field(default_factory=Counter)
    exchanges: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def new_key(alg: str) -> Any:
    kind = KINDS[alg]
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def public_jwk(kid: str, alg: str, key: Any) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(alg)
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TestIssuer:
    """The issuer on 127.0.0.1:``port`` (0: a free one); ``start`` / ``stop`` may repeat."""

    __test__ = False  # not a pytest class

    def __init__(self, port: int = 0, *, alg: str = "RS256", max_age_s: int = 300) -> None:
        self.state = IssuerState(max_age_s=max_age_s)
        self.state.gate.set()
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.add_key("k1", alg, sign=True)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TestIssuer:
        state = self.state

        class Handler(_Handler):
            pass

        Handler.state = state
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        with state.lock:
            state.issuer = self.issuer
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering: the port refuses connections until ``start``."""
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> TestIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- keys --

    def add_key(
        self, kid: str, alg: str = "RS256", *, sign: bool = False, declare_alg: bool = True
    ) -> None:
        """Publish a new key (and sign with it from now on, if ``sign``); its JWK names its
        ``alg`` unless ``declare_alg`` is false (the member is optional in a JWKS)."""
        key = new_key(alg)
        with self.state.lock:
            if not declare_alg:
                self.state.undeclared.add(kid)
            self.state.keys[kid] = (alg, key)
            self.state.published.append(kid)
            if sign:
                self.state.signing = kid

    def hold(self) -> None:
        """Make JWKS requests wait (a slow provider) until ``release``."""
        self.state.gate.clear()

    def release(self) -> None:
        self.state.gate.set()

    @property
    def held(self) -> int:
        with self.state.lock:
            return self.state.held

    def sign_with(self, kid: str) -> None:
        with self.state.lock:
            self.state.signing = kid

    def retire(self, kid: str) -> None:
        """Stop publishing ``kid`` (tokens it signed stop verifying after the next fetch)."""
        with self.state.lock:
            self.state.published.remove(kid)

    def public_key(self, kid: str) -> Any:
        return self.state.keys[kid][1].public_key()

    @property
    def jwks_fetches(self) -> int:
        with self.state.lock:
            return self.state.hits["/jwks"]

    # -- tokens --

    def token(
        self,
        claims: dict[str, Any] | None = None,
        *,
        kid: str | None = None,
        ttl_s: float = 600.0,
        headers: dict[str, Any] | None = None,
    ) -> str:
        """A token of this issuer, signed with ``kid`` (default: the current signing key)."""
        with self.state.lock:
            kid = kid or self.state.signing
            alg, key = self.state.keys[kid]
            now = time.time()
            body = {
                "iss": self.state.issuer,
                "aud": self.state.audience,
                "sub": "alice",
                "iat": int(now),
                "exp": int(now + ttl_s),
                **(claims or {}),
            }
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid, **(headers or {})})


class _Handler(BaseHTTPRequestHandler):
    state: IssuerState
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(
        self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")  # no keep-alive: stop() really stops answering
        self.close_connection = True
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def _cors(self) -> dict[str, str]:
        origin = self.headers.get("Origin")
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {}

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        st = self.state
        with st.lock:
            st.hits[url.path] += 1
            issuer = st.issuer
        if url.path == "/.well-known/openid-configuration":
            self._json(
                200,
                {
                    "issuer": issuer,
                    "jwks_uri": f"{issuer}/jwks",
                    "authorization_endpoint": f"{issuer}/authorize",
                    "token_endpoint": f"{issuer}/token",
                    "response_types_supported": ["code"],
                    "grant_types_supported": ["authorization_code"],
                    "code_challenge_methods_supported": ["S256"],
                    "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
                },
                {**self._cors(), "Cache-Control": "max-age=3600"},
            )
        elif url.path == "/jwks":
            if not st.gate.is_set():
                with st.lock:
                    st.held += 1
                st.gate.wait(GATE_MAX_S)
                with st.lock:
                    st.held -= 1
            with st.lock:
                keys = [public_jwk(k, *st.keys[k]) for k in st.published]
                keys = [
                    {m: v for m, v in jwk.items() if m != "alg" or jwk["kid"] not in st.undeclared}
                    for jwk in keys
                ]
                max_age = st.max_age_s
            self._json(200, {"keys": keys}, {"Cache-Control": f"max-age={max_age}"})
        elif url.path == "/authorize":
            self._authorize_page(parse_qs(url.query))
        else:
            self._json(404, {"error": "not_found"})

    def _authorize_page(self, q: dict[str, list[str]]) -> None:
        p = {k: v[0] for k, v in q.items()}
        with self.state.lock:
            registered = self.state.clients.get(p.get("client_id", ""))
        problem = None
        if p.get("response_type") != "code":
            problem = "response_type must be code"
        elif registered is None or p.get("redirect_uri") != registered:
            problem = "unknown client_id or redirect_uri"
        elif p.get("code_challenge_method") != "S256" or not p.get("code_challenge"):
            problem = "PKCE with S256 is required"
        if problem:
            self._send(400, problem.encode(), "text/plain")
            return
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in p.items()
        )
        page = (
            "<!doctype html><html><head><meta charset=utf-8><title>Test issuer</title></head>"
            '<body><form method="post" action="/login"><label>User name '
            '<input name="username" autocomplete="off"></label>'
            f'{hidden}<button type="submit">Sign in</button></form></body></html>'
        )
        self._send(200, page.encode(), "text/html; charset=utf-8")

    def _form(self) -> dict[str, str]:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(n, 65536)).decode()
        return {k: v[0] for k, v in parse_qs(raw).items()}

    def do_OPTIONS(self) -> None:
        self._send(
            204,
            b"",
            "text/plain",
            {
                **self._cors(),
                "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": "Content-Type",
            },
        )

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        st = self.state
        form = self._form()
        with st.lock:
            st.hits[url.path] += 1
        if url.path == "/login":
            code, session = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
            user = form.get("username") or "anonymous"
            with st.lock:
                st.codes[code] = Code(
                    form["client_id"],
                    form["redirect_uri"],
                    form["code_challenge"],
                    user,
                    time.monotonic(),
                )
                st.sessions[session] = user
            back = form["redirect_uri"] + "?" + urlencode({"code": code, "state": form["state"]})
            cookie = f"{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Lax"
            self._send(302, b"", "text/plain", {"Location": back, "Set-Cookie": cookie})
        elif url.path == "/token":
            self._token(form)
        elif url.path == "/session-token":
            self._session_token()
        else:
            self._json(404, {"error": "not_found"})

    def _session_token(self) -> None:
        """The SSO-proxy style endpoint: a token for whoever holds a session cookie."""
        cookies = SimpleCookie(self.headers.get("Cookie", ""))
        morsel = cookies.get(SESSION_COOKIE)
        st = self.state
        with st.lock:
            user = st.sessions.get(morsel.value) if morsel is not None else None
        cors = {**self._cors(), "Access-Control-Allow-Credentials": "true"}
        print(json.dumps({"session_token": {"ok": user is not None}}), flush=True)
        if user is None:
            self._json(401, {"error": "not signed in"}, cors)
            return
        token = self._sign({"sub": user, "azp": "sso-proxy"})
        self._json(
            200, {"token": token, "expires_in_s": 300}, {**cors, "Cache-Control": "no-store"}
        )

    def _sign(self, claims: dict[str, Any]) -> str:
        st = self.state
        with st.lock:
            kid = st.signing
            alg, key = st.keys[kid]
            now = time.time()
            body = {
                "iss": st.issuer,
                "aud": st.audience,
                "iat": int(now),
                "exp": int(now + 300),
                **st.claims,
                **claims,
            }
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})

    def _token(self, form: dict[str, str]) -> None:
        st = self.state
        with st.lock:
            code = st.codes.pop(form.get("code", ""), None)  # good once
        verifier = form.get("code_verifier", "")
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        error = None
        if form.get("grant_type") != "authorization_code":
            error = "unsupported_grant_type"
        elif (
            code is None
            or time.monotonic() - code.issued_s > CODE_TTL_S
            or form.get("client_id") != code.client_id
            or form.get("redirect_uri") != code.redirect_uri
            or not 43 <= len(verifier) <= 128
            or challenge != code.challenge  # PKCE
        ):
            error = "invalid_grant"
        with st.lock:
            st.exchanges.append({"ok": error is None, "error": error, "pkce": bool(verifier)})
        print(json.dumps({"exchange": st.exchanges[-1]}), flush=True)
        if error is not None or code is None:
            self._json(400, {"error": error}, self._cors())
            return
        token = self._sign({"sub": code.subject, "azp": code.client_id})
        self._json(
            200,
            {"access_token": token, "token_type": "Bearer", "expires_in": 300},
            {**self._cors(), "Cache-Control": "no-store"},
        )


def main() -> int:
    p = argparse.ArgumentParser(description="the tests' OIDC issuer, as a process")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--client", action="append", default=[], help="CLIENT_ID=REDIRECT_URI")
    p.add_argument("--claims", default="{}", help="JSON added to tokens from /token")
    args = p.parse_args()
    issuer = TestIssuer(args.port)
    for c in args.client:
        client_id, _, redirect = c.partition("=")
        issuer.state.clients[client_id] = redirect
    issuer.state.claims = json.loads(args.claims)
    issuer.start()
    print(json.dumps({"ready": issuer.issuer}), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        issuer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
