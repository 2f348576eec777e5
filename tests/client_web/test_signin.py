"""The browser client signs in at an OIDC provider with the authorization code flow and PKCE,
and through an operator's token endpoint:
Playwright drives Debian's Chromium through the built client served by ``tidegate serve`` (its
development login off) and the tests' OIDC issuer (tests/oidc_issuer.py, as a process), all
inside a network namespace this test creates and deletes (NETWORK.md). The page refuses a
return it did not start, is refused by the token endpoint before signing in, goes to the
provider, comes back with a code, exchanges it with its verifier, and opens a session with the
provider's RS256 token; after a reload the token endpoint (which knows the user by then) hands
out the token."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.netns import CHROMIUM, CHROMIUM_FLAGS, in_netns, network_namespace, stop
from tests.support import scaled

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "client-web"
SHOTS = ROOT / "reports" / "client-web-e2e"
NETNS_ADDR = "10.250.0.1"
PORT, IDP_PORT = 8080, 9000  # a fresh namespace has nothing else listening
BROWSER_DEADLINE_S = scaled(60)
ISSUERS = """
[issuers.testidp]
issuer = "http://127.0.0.1:{idp}"
discovery_url = "http://127.0.0.1:{idp}/.well-known/openid-configuration"
audience = "tidegate"
algorithms = ["RS256"]
tenant_claim = "org"
scope_claims = ["scope"]
scope_map = {{ "tidegate-session" = "session" }}
client_id = "tidegate-web"
client_scope = "openid tidegate-session"
display_name = "Test IdP"
"""


def _wait_line(proc: subprocess.Popen[str], key: str) -> dict[str, Any]:
    """The first JSON line of ``proc``'s output that has ``key``."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("{") and key in json.loads(line):
            return dict(json.loads(line))
    raise AssertionError(f"the issuer ended without saying {key!r} (exit {proc.wait()})")


@pytest.mark.slow
def test_browser_signs_in_with_pkce_and_opens_a_session(tmp_path: Path) -> None:
    """Sign-in at the provider (code + PKCE, no secret), back with a token in memory only, a
    session opened with it; a forged return is refused; the operator's token endpoint works
    once the user is known to it."""
    assert shutil.which("ip"), "iproute2 is needed (scripts/setup-system.sh installs it)"
    assert Path(CHROMIUM).exists(), "chromium is needed (scripts/setup-system.sh installs it)"
    assert (WEB / "dist" / "index.html").exists(), "the client is not built: run `make web`"
    assert (WEB / "node_modules" / "playwright-core").exists(), "run `make web` (npm ci)"
    SHOTS.mkdir(parents=True, exist_ok=True)
    issuers = tmp_path / "issuers.toml"
    issuers.write_text(ISSUERS.format(idp=IDP_PORT))
    env = {
        "TIDEGATE_HOST": "127.0.0.1",
        "TIDEGATE_PORT": str(PORT),
        "TIDEGATE_JWT_SECRET": secrets.token_hex(32),
        "TIDEGATE_DATA_DIR": str(tmp_path / "data"),
        "TIDEGATE_LOG_LEVEL": "info",
        "TIDEGATE_ENGINES": "",  # sign-in needs no engine (the default is every CPU engine)
        "TIDEGATE_DEV_LOGIN": "off",
        "TIDEGATE_OIDC_ISSUERS_FILE": str(issuers),
        "TIDEGATE_WEB_TOKEN_URL": f"http://127.0.0.1:{IDP_PORT}/session-token",
        "TIDEGATE_ICE_HOSTS": NETNS_ADDR,
        "TIDEGATE_ICE_PORTS": "40000-40010",
    }
    flags = [f for f in CHROMIUM_FLAGS if f not in ("--headless=new", "--remote-debugging-pipe")]
    args = {
        "origin": f"http://127.0.0.1:{PORT}",
        "chromium": CHROMIUM,
        "flags": flags,
        "shots": str(SHOTS),
        "deadline_s": BROWSER_DEADLINE_S,
    }
    claims = json.dumps({"org": "acme", "scope": "openid tidegate-session"})
    log = (tmp_path / "server.log").open("w+")
    with network_namespace([NETNS_ADDR]) as ns:
        idp = subprocess.Popen(
            in_netns(
                ns,
                [
                    sys.executable,
                    "-m",
                    "tests.oidc_issuer",
                    f"--port={IDP_PORT}",
                    f"--client=tidegate-web=http://127.0.0.1:{PORT}/",
                    f"--claims={claims}",
                ],
            ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        server = None
        try:
            _wait_line(idp, "ready")
            server = subprocess.Popen(
                in_netns(ns, [sys.executable, "-m", "tidegate", "serve"]),
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
            run = subprocess.run(
                in_netns(ns, ["node", str(WEB / "e2e" / "signin.mjs"), json.dumps(args)]),
                cwd=WEB,
                capture_output=True,
                text=True,
                timeout=BROWSER_DEADLINE_S + 15,
            )
        finally:
            stop(server)
            stop(idp)
    assert idp.stdout is not None
    said = [json.loads(ln) for ln in idp.stdout.read().splitlines() if ln.startswith("{")]
    idp.stdout.close()
    log.seek(0)
    server_log = log.read()
    log.close()
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no result from the browser:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    seen: dict[str, Any] = json.loads(lines[-1])
    print(json.dumps(seen["steps"]))
    context = (
        f"\nsteps: {seen['steps']}\nconsole: {seen['console'][-20:]}\nserver: {server_log[-3000:]}"
    )
    assert run.returncode == 0 and "error" not in seen, seen.get("error", "") + context

    # A return the page did not start is refused, and the code leaves the address bar.
    assert "did not start" in seen["forgedReturn"]["alert"], seen["forgedReturn"]
    assert "code=" not in seen["forgedReturn"]["url"]
    # Not signed in yet: the operator's token endpoint refuses, and the page says so.
    assert "did not sign you in (HTTP 401)" in seen["before"]["status"], seen["before"]

    # The authorization request: code flow, S256 challenge, the registered redirect, no secret.
    auth = parse_qs(urlsplit(seen["atProvider"]["url"]).query)
    assert auth["response_type"] == ["code"] and auth["code_challenge_method"] == ["S256"]
    assert auth["client_id"] == ["tidegate-web"]
    assert auth["redirect_uri"] == [f"http://127.0.0.1:{PORT}/"]
    assert "client_secret" not in seen["atProvider"]["url"]
    # The exchange the page posted: the verifier whose S256 is that challenge; no secret.
    (post,) = [r for r in seen["requests"] if r["url"].endswith("/token")]
    form = parse_qs(post["post"])
    verifier = form["code_verifier"][0]
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    assert digest.decode() == auth["code_challenge"][0]
    assert "client_secret" not in form and form["grant_type"] == ["authorization_code"]
    assert [e["exchange"] for e in said if "exchange" in e] == [
        {"ok": True, "error": None, "pkce": True}
    ]
    assert [e["session_token"]["ok"] for e in said if "session_token" in e] == [False, True]

    # Back on the page: signed in, the mode kept, nothing left in storage, no cookie of the
    # page's own (the provider's session cookie is the provider's).
    back = seen["back"]
    assert "carol" in back["who"] and "Test IdP" in back["who"]
    assert back["url"] == f"http://127.0.0.1:{PORT}/?mode=loopback"
    assert back["session"] == {} and back["local"] == {}
    assert [c["name"] for c in back["cookies"]] == ["idp_session"]
    # The provider's token opened a session (the dev login is off: it was the only way in).
    assert seen["connected"]["session"].startswith("s_")
    # After a reload the token is gone (memory only); the operator's endpoint, which now knows
    # the user, gave one that opened another session.
    assert seen["reloaded"]["signedIn"] is False
    assert seen["reloaded"]["session"].startswith("s_")
    assert seen["reloaded"]["session"] != seen["connected"]["session"]
    assert "token refused" not in server_log
