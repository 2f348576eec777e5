"""Trusted OIDC issuers as the operator configures them: ``oidc_issuers_file``, a TOML file of
``[issuers.NAME]`` tables (docs/security.md, "Settings").

Each issuer names the exact ``iss`` of its tokens, where its keys are (a discovery document or a
JWKS URL, https or loopback only), the audiences and public-key algorithms it may use, and its
claim map: where its tokens keep the subject, the tenant and the scopes. ``load_issuers`` refuses
anything unusable with a ConfigError naming the table and the key. The keys themselves are
jwks.py's business; what a token must carry is auth.py's.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

# Public-key algorithms only: HS* (a shared secret) and "none" are never accepted from an issuer.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
NAME_RE = re.compile(r"[a-z0-9_-]{1,64}")

ClaimPath = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ClaimMap:
    """Where a token keeps the subject, the tenant and the scopes (docs/security.md).

    A claim path is one claim name (dots allowed: ``https://example.com/tenant``), or a path into
    nested objects (``("realm_access", "roles")``). A scope claim may be a space-separated string
    (``scope``) or a list of strings (``scp``, ``roles``); all scope claims are merged. With a
    ``scope_map``, only the values it names count, as the tidegate scopes it maps them to.
    """

    subject: ClaimPath = ("sub",)
    tenant: ClaimPath | None = ("tenant",)
    fixed_tenant: str | None = None
    allowed_tenants: frozenset[str] = frozenset()
    scopes: tuple[ClaimPath, ...] = (("scope",),)
    scope_map: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    """One trusted issuer, as configured in ``oidc_issuers_file`` under ``[issuers.NAME]``."""

    name: str
    issuer: str
    audiences: tuple[str, ...]
    discovery_url: str | None = None
    jwks_url: str | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    claims: ClaimMap = ClaimMap()
    # The browser client's sign-in (authorization code + PKCE), when client_id is set.
    client_id: str | None = None
    client_scope: str = "openid"
    display_name: str = ""
    authorize_params: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None


# -- the issuers file ---------------------------------------------------------------------------

ISSUER_KEYS = frozenset(
    {
        "issuer",
        "discovery_url",
        "jwks_url",
        "audience",
        "algorithms",
        "subject_claim",
        "tenant_claim",
        "tenant",
        "allowed_tenants",
        "scope_claims",
        "scope_map",
        "client_id",
        "client_scope",
        "display_name",
        "authorize_params",
        "authorization_endpoint",
        "token_endpoint",
    }
)


def load_issuers(path: Path, *, local_issuer: str | None = None) -> tuple[IssuerConfig, ...]:
    """The issuers of a TOML file (``[issuers.NAME]`` tables); ConfigError names what is wrong."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read oidc_issuers_file {path}: {e}") from None
    unknown = set(data) - {"issuers"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; expected [issuers.NAME]")
    tables = data.get("issuers")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{path}: no [issuers.NAME] table")
    out = [_issuer(f"{path}: [issuers.{name}]", name, t) for name, t in tables.items()]
    seen: set[str] = set()
    for cfg in out:
        if cfg.issuer in seen:
            raise ConfigError(f"{path}: two issuers name {cfg.issuer!r}")
        if cfg.issuer == local_issuer:
            raise ConfigError(
                f"{path}: issuer {cfg.issuer!r} is also jwt_issuer (the local HS256 tokens'); "
                "they must differ"
            )
        seen.add(cfg.issuer)
    return tuple(out)


def _issuer(where: str, name: str, t: Any) -> IssuerConfig:
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: expected a table")
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}: the name must be 1-64 of a-z, 0-9, - and _")
    unknown = set(t) - ISSUER_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(ISSUER_KEYS)}")
    issuer = _text(where, t, "issuer", required=True)
    assert issuer is not None
    discovery = _url(where, t, "discovery_url")
    jwks_url = _url(where, t, "jwks_url")
    if (discovery is None) == (jwks_url is None):
        raise ConfigError(f"{where}: set exactly one of discovery_url and jwks_url")
    audiences = _strings(where, t, "audience")
    if not audiences:
        raise ConfigError(f"{where}: audience is required (a string or a list of strings)")
    algorithms = _strings(where, t, "algorithms") or DEFAULT_ALGORITHMS
    bad = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
    if bad:
        raise ConfigError(
            f"{where}: algorithms {bad} are not accepted from an issuer (never 'none' or HS*, "
            f"whose key would be the public one); expected some of {sorted(ASYMMETRIC_ALGORITHMS)}"
        )
    tenant = _text(where, t, "tenant")
    tenant_claim = _path(where, t["tenant_claim"], "tenant_claim") if "tenant_claim" in t else None
    if (tenant is None) == (tenant_claim is None):
        raise ConfigError(
            f"{where}: set exactly one of tenant (every token of this issuer is that tenant) "
            "and tenant_claim (the claim that names it)"
        )
    if tenant is not None and not 1 <= len(tenant) <= 128:
        raise ConfigError(f"{where}: tenant must be 1 to 128 characters")
    scope_claims_raw = t.get("scope_claims", ["scope"])
    if not isinstance(scope_claims_raw, list) or not scope_claims_raw:
        raise ConfigError(f"{where}: scope_claims must be a non-empty list of claim paths")
    scope_map = _table(where, t, "scope_map")
    wrong = sorted(v for v in scope_map.values() if v not in ("session", "admin"))
    if wrong:
        raise ConfigError(f"{where}: scope_map values must be session or admin, got {wrong}")
    claims = ClaimMap(
        subject=_path(where, t.get("subject_claim", "sub"), "subject_claim"),
        tenant=tenant_claim,
        fixed_tenant=tenant,
        allowed_tenants=frozenset(_strings(where, t, "allowed_tenants")),
        scopes=tuple(_path(where, p, "scope_claims") for p in scope_claims_raw),
        scope_map=types.MappingProxyType(scope_map),
    )
    client_id = _text(where, t, "client_id")
    authorization_endpoint = _url(where, t, "authorization_endpoint")
    token_endpoint = _url(where, t, "token_endpoint")
    if client_id and discovery is None and not (authorization_endpoint and token_endpoint):
        raise ConfigError(
            f"{where}: client_id (browser sign-in) needs discovery_url, or both "
            "authorization_endpoint and token_endpoint"
        )
    return IssuerConfig(
        name=name,
        issuer=issuer,
        audiences=audiences,
        discovery_url=discovery,
        jwks_url=jwks_url,
        algorithms=algorithms,
        claims=claims,
        client_id=client_id,
        client_scope=_text(where, t, "client_scope") or "openid",
        display_name=_text(where, t, "display_name") or name,
        authorize_params=types.MappingProxyType(_table(where, t, "authorize_params")),
        authorization_endpoint=authorization_endpoint,
        token_endpoint=token_endpoint,
    )


def _text(where: str, t: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    v = t.get(key)
    if v is None:
        if required:
            raise ConfigError(f"{where}: {key} is required")
        return None
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return v


def _strings(where: str, t: Mapping[str, Any], key: str) -> tuple[str, ...]:
    v = t.get(key)
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        raise ConfigError(f"{where}: {key} must be a string or a list of non-empty strings")
    return tuple(items)


def _table(where: str, t: Mapping[str, Any], key: str) -> dict[str, str]:
    v = t.get(key, {})
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise ConfigError(f"{where}: {key} must be a table of strings")
    return dict(v)


def _path(where: str, v: Any, key: str) -> ClaimPath:
    """A claim name (a string, taken whole) or a path into nested objects (a list)."""
    if isinstance(v, str) and v:
        return (v,)
    if isinstance(v, list) and v and all(isinstance(s, str) and s for s in v):
        return tuple(v)
    raise ConfigError(f"{where}: {key}: expected a claim name or a list of names (a path)")


def _url(where: str, t: Mapping[str, Any], key: str) -> str | None:
    v = _text(where, t, key)
    if v is None:
        return None
    problem = url_problem(v)
    if problem:
        raise ConfigError(f"{where}: {key}: {problem}")
    return v


def url_problem(url: str) -> str | None:
    """Why ``url`` may not be fetched for keys: https, or http to a loopback host only."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname and _loopback(parts.hostname):
        return None
    return f"{url!r} must be https (plain http only to a loopback address)"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
