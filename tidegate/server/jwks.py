"""Trusted OIDC issuers: their settings (``oidc_issuers_file``) and their signing keys.

An issuer is trusted for the tokens whose ``iss`` names it exactly. Its public keys come from
its JWKS, found directly (``jwks_url``) or through its OIDC discovery document
(``discovery_url``, whose ``issuer`` must equal the configured one). A :class:`KeySet` keeps
them: fetched with an async HTTP client (never on the event loop's time), kept for as long as
the issuer's cache headers say within ``[jwks_cache_min_s, jwks_cache_max_s]``, refreshed in the
background when that runs out, and on demand when a token names a key id the set lacks — such
a fetch at most once per ``jwks_refresh_min_s``, whoever asks (forged key ids cannot cause a
refresh storm; concurrent askers share one fetch). When the issuer cannot be reached, the keys
already fetched stay in use and a new key id is refused with an error that says so; the state
is in ``/readyz`` and in the metrics (:class:`IdentityCollector`). What a token must carry, and
how its claims become a principal, is auth.py's business; docs/security.md has the trust model.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import logging
import re
import time
import tomllib
import types
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import ConfigError

log = logging.getLogger(__name__)

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


# -- the key cache ------------------------------------------------------------------------------


class JwksError(Exception):
    """An issuer's discovery document or key set could not be fetched or used."""


class KeyRefusedError(Exception):
    """A token's key cannot be had: ``reason`` is ``unknown_key`` or ``keys_unavailable``."""

    def __init__(self, reason: str, message: str, retry_after_ms: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after_ms = retry_after_ms


@dataclass(frozen=True, slots=True)
class JwksLimits:
    cache_min_s: float = 60.0
    cache_max_s: float = 3600.0
    refresh_min_s: float = 30.0
    timeout_s: float = 5.0
    max_bytes: int = 1_048_576


def cache_lifetime_s(headers: Mapping[str, str], limits: JwksLimits, now_s: float) -> float:
    """How long a response may be used, from Cache-Control (max-age minus Age; no-store and
    no-cache are 0) or Expires minus Date, clamped to [cache_min_s, cache_max_s]; no header:
    cache_max_s. ``now_s`` is wall-clock time (for Expires without Date)."""
    lifetime: float | None = None
    cc = headers.get("cache-control", "")
    directives = {d.strip().split("=", 1)[0].lower(): d.strip() for d in cc.split(",") if d.strip()}
    if "no-store" in directives or "no-cache" in directives:
        lifetime = 0.0
    elif "max-age" in directives:
        try:
            lifetime = float(directives["max-age"].split("=", 1)[1].strip().strip('"'))
            lifetime -= float(headers.get("age", "0") or 0)
        except (IndexError, ValueError):
            lifetime = None
    if lifetime is None and "expires" in headers:
        expires = _http_date(headers["expires"])
        date = _http_date(headers.get("date", "")) or now_s
        lifetime = (expires - date) if expires is not None else 0.0
    if lifetime is None:
        return limits.cache_max_s
    return min(max(lifetime, limits.cache_min_s), limits.cache_max_s)


def _http_date(value: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _parse_jwks(doc: Any, where: str) -> dict[str, dict[str, Any]]:
    """Signing keys by ``kid``: public keys of the types we verify with; others are skipped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksError(f"{where} is not a JWKS (expected an object with a 'keys' list)")
    keys: dict[str, dict[str, Any]] = {}
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            continue
        if jwk.get("kty") not in KEY_TYPES or jwk.get("use", "sig") != "sig":
            continue
        if "d" in jwk:  # a private key published by mistake: not a key we verify with
            continue
        keys[jwk["kid"]] = jwk
    return keys


class KeySet:
    """One issuer's signing keys, cached and refreshed (see the module docstring)."""

    def __init__(
        self,
        config: IssuerConfig,
        http: httpx.AsyncClient,
        limits: JwksLimits,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._http = http
        self._limits = limits
        self._clock = clock
        self._jwks: dict[str, dict[str, Any]] = {}
        self._keys: dict[tuple[str, str], jwt.PyJWK] = {}
        self.jwks_url = config.jwks_url
        self.endpoints: dict[str, str] = {}  # authorization / token endpoint, from discovery
        self.fetched_at_s: float | None = None  # clock() of the last good fetch
        self.refresh_at_s = 0.0  # clock() when the next scheduled fetch is due
        self.last_attempt_s: float | None = None
        self.last_demand_s: float | None = None  # the last fetch a token's unknown kid caused
        self.last_error: str | None = None
        self.fetches: Counter[str] = Counter()  # ok, failed
        self._inflight: asyncio.Task[None] | None = None
        self._runner: asyncio.Task[None] | None = None

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._jwks)

    # -- used by the verifier --

    async def key(self, kid: str, alg: str) -> jwt.PyJWK:
        """The key ``kid`` for ``alg``; one rate-limited refresh when the kid is unknown."""
        jwk = self._jwks.get(kid)
        if jwk is None:
            await self._refresh_for(kid)
            jwk = self._jwks.get(kid)
            if jwk is None:
                raise self._unknown(kid)
        cached = self._keys.get((kid, alg))
        if cached is not None:
            return cached
        declared = jwk.get("alg")
        if declared is not None and declared != alg:
            raise KeyRefusedError(
                "algorithm",
                f"key {kid!r} of issuer {self.config.name} is for {declared}, not {alg}",
            )
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as e:  # wrong type, malformed
            raise KeyRefusedError(
                "algorithm",
                f"key {kid!r} of issuer {self.config.name} ({jwk.get('kty')}) cannot verify "
                f"{alg}: {e}",
            ) from None
        self._keys[(kid, alg)] = key
        return key

    async def _refresh_for(self, kid: str) -> None:
        if self._inflight is None:
            if self._demand_wait_s() > 0:
                raise self._unknown(kid)
            self.last_demand_s = self._clock()
            self._start_refresh("unknown_kid")
        assert self._inflight is not None
        await asyncio.shield(self._inflight)  # shared: a caller that goes away leaves it running

    def _demand_wait_s(self) -> float:
        """Seconds until an unknown kid may cause a fetch: one such fetch per refresh interval,
        and none within the interval after a failed fetch (scheduled fetches are bounded by
        cache_min_s on their own)."""
        gates = [self.last_demand_s]
        if self.last_error is not None:
            gates.append(self.last_attempt_s)
        since = max((g for g in gates if g is not None), default=None)
        if since is None:
            return 0.0
        return since + self._limits.refresh_min_s - self._clock()

    def _unknown(self, kid: str) -> KeyRefusedError:
        name, shown = self.config.name, quote_untrusted(kid)
        wait_s = max(self._demand_wait_s(), 0.0)
        retry_ms = round(wait_s * 1000) or None
        if self.last_error is not None:
            return KeyRefusedError(
                "keys_unavailable",
                f"key id {shown} is not among the cached keys of issuer {name}, and its keys "
                f"cannot be fetched now ({self.last_error}); tokens signed with a cached key "
                "still verify",
                retry_ms,
            )
        return KeyRefusedError(
            "unknown_key",
            f"key id {shown} is not among the keys of issuer {name} (fetched "
            f"{self.age_s():.0f} s ago; the next fetch may happen in {wait_s:.0f} s)",
            retry_ms,
        )

    def age_s(self) -> float:
        return self._clock() - self.fetched_at_s if self.fetched_at_s is not None else float("inf")

    # -- fetching --

    def _start_refresh(self, trigger: str) -> None:
        self._inflight = asyncio.get_running_loop().create_task(
            self._refresh(trigger), name=f"jwks-{self.config.name}"
        )

    async def _refresh(self, trigger: str) -> None:
        """Fetch the key set (discovering its URL first if needed); never raises."""
        self.last_attempt_s = now = self._clock()
        try:
            async with asyncio.timeout(self._limits.timeout_s):
                if self.jwks_url is None:
                    await self._discover()
                assert self.jwks_url is not None
                doc, lifetime_s = await self._get_json(self.jwks_url)
            keys = _parse_jwks(doc, self.jwks_url)
        except (httpx.HTTPError, JwksError, TimeoutError, OSError) as e:
            self.fetches["failed"] += 1
            self.last_error = _describe(e, self.jwks_url or self.config.discovery_url or "")
            self.refresh_at_s = now + self._limits.refresh_min_s
            if self.config.discovery_url is not None:
                self.jwks_url = None  # discover again next time: the URL may have moved
            held = f"{len(self._jwks)} cached keys stay in use" if self._jwks else "no keys yet"
            log.warning(
                "issuer %s: keys not fetched (%s, %s): %s",
                self.config.name,
                trigger,
                held,
                self.last_error,
            )
            return
        finally:
            self._inflight = None
        added, removed = set(keys) - set(self._jwks), set(self._jwks) - set(keys)
        self._jwks = keys
        self._keys = {k: v for k, v in self._keys.items() if k[0] in keys}
        self.fetched_at_s, self.last_error = now, None
        self.refresh_at_s = now + lifetime_s
        self.fetches["ok"] += 1
        if added or removed or trigger != "scheduled":
            log.info(
                "issuer %s: %d keys (%s; added %s, removed %s), next refresh in %.0f s",
                self.config.name,
                len(keys),
                trigger,
                sorted(added) or "none",
                sorted(removed) or "none",
                lifetime_s,
            )

    async def _discover(self) -> None:
        assert self.config.discovery_url is not None
        doc, _ = await self._get_json(self.config.discovery_url)
        where = self.config.discovery_url
        if not isinstance(doc, dict):
            raise JwksError(f"{where} is not a discovery document (expected an object)")
        if doc.get("issuer") != self.config.issuer:
            raise JwksError(
                f"{where} names issuer {quote_untrusted(doc.get('issuer'))}, expected "
                f"{self.config.issuer!r}"
            )
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or url_problem(jwks_uri):
            shown = quote_untrusted(jwks_uri)
            raise JwksError(f"{where}: jwks_uri {shown} is missing or not https")
        for name in ("authorization_endpoint", "token_endpoint"):
            value = doc.get(name)
            if isinstance(value, str) and not url_problem(value):
                self.endpoints[name] = value
        self.jwks_url = jwks_uri

    async def _get_json(self, url: str) -> tuple[Any, float]:
        limit = self._limits.max_bytes
        async with self._http.stream("GET", url, headers={"accept": "application/json"}) as r:
            if r.status_code != 200:
                raise JwksError(f"{url} answered HTTP {r.status_code}")
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise JwksError(f"{url} sent more than {limit} bytes (jwks_max_bytes)")
            headers = r.headers
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise JwksError(f"{url} did not answer JSON") from None
        return doc, cache_lifetime_s(headers, self._limits, time.time())

    # -- the scheduled refresh --

    def start(self) -> None:
        """Fetch now, then whenever the cached set runs out (owned; ``close`` ends it)."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(
                self._run(), name=f"jwks-refresh-{self.config.name}"
            )

    async def _run(self) -> None:
        while True:
            if self._inflight is None and self._clock() >= self.refresh_at_s:
                self._start_refresh("scheduled" if self.fetched_at_s is not None else "start")
            if self._inflight is not None:
                await asyncio.shield(self._inflight)
            await asyncio.sleep(max(self.refresh_at_s - self._clock(), 0.0))

    async def close(self) -> None:
        for task in (self._runner, self._inflight):
            if task is not None:
                task.cancel()
        for task in (self._runner, self._inflight):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._runner = self._inflight = None

    def status(self) -> dict[str, Any]:
        """For /readyz: ``starting`` (no fetch yet), ``ok`` or ``unreachable``."""
        if not self.fetches:
            state = "starting"
        elif self.last_error is None:
            state = "ok"
        else:
            state = "unreachable"
        out: dict[str, Any] = {"state": state, "keys": len(self._jwks)}
        if self.fetched_at_s is not None:
            out["age_s"] = round(self.age_s(), 1)
        if self.last_error is not None:
            out["error"] = self.last_error
        return out


def quote_untrusted(value: object, limit: int = 64) -> str:
    """An untrusted value for a message or a log line: repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(e: BaseException, url: str) -> str:
    if isinstance(e, JwksError):
        return str(e)
    if isinstance(e, TimeoutError | httpx.TimeoutException):
        return f"{url} did not answer in time (jwks_timeout_s)"
    if isinstance(e, httpx.ConnectError):
        return f"cannot connect to {url}"
    return f"{url}: {type(e).__name__}: {e}"


def make_http_client(limits: JwksLimits) -> httpx.AsyncClient:
    """The client the key sets share: bounded timeouts, no redirects (a key URL is exact)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(limits.timeout_s),
        follow_redirects=False,
        limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
        headers={"user-agent": "tidegate"},
    )


# -- metrics ------------------------------------------------------------------------------------


class IdentityCollector(Collector):
    """Token refusals by issuer and reason, and each issuer's key set (docs/metrics.md)."""

    def __init__(self, refusals: Counter[tuple[str, str]], sets: Sequence[KeySet]) -> None:
        self.refusals = refusals
        self.sets = sets

    def collect(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "tidegate_token_refusals",
            "Tokens refused at any entry point, by issuer (local, a configured name, or "
            "untrusted: a public-key token naming no trusted issuer) and reason.",
            labels=["issuer", "reason"],
        )
        for (issuer, reason), n in sorted(self.refusals.items()):
            refused.add_metric([issuer, reason], n)
        yield refused
        fetches = CounterMetricFamily(
            "tidegate_jwks_fetches",
            "Fetches of an issuer's key set, by outcome (ok, failed).",
            labels=["issuer", "outcome"],
        )
        up = GaugeMetricFamily(
            "tidegate_jwks_up",
            "1 when the issuer's last key fetch succeeded, 0 when it failed (cached keys in use).",
            labels=["issuer"],
        )
        keys = GaugeMetricFamily(
            "tidegate_jwks_keys", "Signing keys cached for an issuer.", labels=["issuer"]
        )
        age = GaugeMetricFamily(
            "tidegate_jwks_age_seconds",
            "Time since the issuer's keys were last fetched successfully.",
            labels=["issuer"],
        )
        for ks in self.sets:
            name = ks.config.name
            for outcome in ("ok", "failed"):
                fetches.add_metric([name, outcome], ks.fetches[outcome])
            ok = ks.last_error is None and ks.fetched_at_s is not None
            up.add_metric([name], 1.0 if ok else 0.0)
            keys.add_metric([name], len(ks.kids))
            if ks.fetched_at_s is not None:
                age.add_metric([name], ks.age_s())
        yield from (fetches, up, keys, age)
