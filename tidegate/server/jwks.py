"""The signing keys of trusted OIDC issuers (issuers.py), fetched and cached.

A :class:`KeySet` keeps one issuer's public keys, from its JWKS, found directly (``jwks_url``)
or through its OIDC discovery document (``discovery_url``, whose ``issuer`` must equal the
configured one). They are fetched with an async HTTP client (the event loop never waits on the
issuer), kept for as long as the issuer's cache headers say within ``[jwks_cache_min_s,
jwks_cache_max_s]``, refreshed in the background when that runs out, and on demand when a token
names a key id the set lacks — such a fetch at most once per ``jwks_refresh_min_s``, whoever
asks (forged key ids cannot cause a refresh storm; concurrent askers share one fetch). When the
issuer cannot be reached, the keys already fetched stay in use and a new key id is refused with
an error that says so; the state is in ``/readyz`` and in the metrics
(:class:`IdentityCollector`). docs/security.md has the trust model.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import ServerError
from .issuers import KEY_TYPES, IssuerConfig, url_problem

log = logging.getLogger(__name__)


class JwksError(ServerError):
    """An issuer's discovery document or key set could not be fetched or used (ours to log;
    the token that needed it gets a KeyRefusedError)."""


class KeyRefusedError(ServerError):
    """A token's key cannot be had: ``reason`` is ``unknown_key``, ``keys_unavailable`` or
    ``algorithm`` (the key cannot verify the token's algorithm); auth.py turns it into an
    ``unauthorized`` refusal."""

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
