"""JWT authentication for every entry point.

Two kinds of token verify. HS256 tokens of the local key, with ``sub`` (the subject),
``tenant`` (which tenant's sessions and records the token can see), ``scope`` (space-separated:
``session``, ``admin``), ``aud`` and ``exp``; the key comes from TIDEGATE_JWT_SECRET or is
generated on first run into ``data_dir/jwt.key`` (mode 0600): there is no built-in secret. And
tokens of the trusted OIDC issuers (``oidc_issuers_file``, issuers.py), signed with their
public keys (jwks.py), whose claims are mapped per issuer. docs/security.md has the trust model.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import jwt

from tidegate.sessions.principal import SCOPE_ADMIN, SCOPE_SESSION, Principal

from .errors import ConfigError, ForbiddenError, UnauthorizedError
from .issuers import ClaimMap, load_issuers
from .jwks import (
    IdentityCollector,
    JwksLimits,
    KeyRefusedError,
    KeySet,
    make_http_client,
    quote_untrusted,
)
from .settings import Settings

__all__ = ["SCOPE_ADMIN", "SCOPE_SESSION", "Principal"]

log = logging.getLogger(__name__)

ALGORITHM = "HS256"
KNOWN_SCOPES = frozenset({SCOPE_SESSION, SCOPE_ADMIN})
MIN_SECRET_BYTES = 32
MAX_SUBJECT_CHARS = 256


def load_or_create_secret(settings: Settings) -> bytes:
    """The signing key: the configured secret, or the key file (created on first run)."""
    if settings.jwt_secret:
        key = settings.jwt_secret.encode()
        if len(key) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"TIDEGATE_JWT_SECRET is {len(key)} bytes; use at least {MIN_SECRET_BYTES}"
            )
        return key
    path = settings.key_path
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its key
        return _read_key(path)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


def _read_key(path: Path) -> bytes:
    key = path.read_bytes().strip()
    if len(key) < MIN_SECRET_BYTES:
        raise ConfigError(f"{path} holds a key of {len(key)} bytes; expected {MIN_SECRET_BYTES}+")
    return key


class TokenUnauthorizedError(UnauthorizedError):
    """A token refused (4401 / ``unauthorized``); ``reason`` is its metric label."""

    def __init__(self, reason: str, message: str, *, retry_after_ms: float | None = None) -> None:
        super().__init__(message, retry_after_ms=retry_after_ms)
        self.reason = reason


class TokenForbiddenError(ForbiddenError):
    """A valid token without the scope or tenant needed (4403 / ``forbidden``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


LOCAL_CLAIMS = ClaimMap()
LOCAL = "local"  # the issuer label of HS256 tokens signed with the local key
UNTRUSTED = "untrusted"  # the issuer label of tokens no configured issuer signed


class TokenVerifier:
    """Verifies tokens for every entry point: the local HS256 key (development, ``tidegate
    token``, the dev login) and the trusted OIDC issuers' public keys (jwks.py).

    A token goes to the issuer its ``iss`` names; a token naming no trusted issuer must be an
    HS256 token of the local key. Signature, expiry (with ``leeway_s``), audience and issuer are
    checked, then the claims become a :class:`Principal` through the issuer's claim map.
    Refusals are counted by issuer and reason and logged at most once per reason per
    ``log_interval_s`` (never the token itself).
    """

    def __init__(
        self,
        key: bytes,
        *,
        audience: str,
        issuer: str | None = None,
        leeway_s: float = 5.0,
        key_sets: Sequence[KeySet] = (),
        http: httpx.AsyncClient | None = None,
        log_interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key = key
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        self.key_sets = tuple(key_sets)
        self._trusted = {ks.config.issuer: ks for ks in self.key_sets}
        self._http = http
        self.refusals: Counter[tuple[str, str]] = Counter()
        self.collector = IdentityCollector(self.refusals, self.key_sets)
        self._log = _RefusalLog(log_interval_s, clock)

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        sets: tuple[KeySet, ...] = ()
        http = None
        if settings.oidc_issuers_file is not None:
            issuers = load_issuers(settings.oidc_issuers_file, local_issuer=settings.jwt_issuer)
            limits = JwksLimits(
                cache_min_s=settings.jwks_cache_min_s,
                cache_max_s=settings.jwks_cache_max_s,
                refresh_min_s=settings.jwks_refresh_min_s,
                timeout_s=settings.jwks_timeout_s,
                max_bytes=settings.jwks_max_bytes,
            )
            http = make_http_client(limits)
            sets = tuple(KeySet(cfg, http, limits) for cfg in issuers)
        return cls(
            load_or_create_secret(settings),
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway_s=settings.jwt_leeway_s,
            key_sets=sets,
            http=http,
            log_interval_s=settings.auth_log_interval_s,
        )

    async def start(self) -> None:
        """Fetch every trusted issuer's keys, now and when they run out (in the background)."""
        for ks in self.key_sets:
            ks.start()

    async def close(self) -> None:
        for ks in self.key_sets:
            await ks.close()
        if self._http is not None:
            await self._http.aclose()

    @property
    def starting(self) -> bool:
        """Some trusted issuer has not been asked for its keys yet (no answer, no failure)."""
        return any(not ks.fetches for ks in self.key_sets)

    def status(self) -> dict[str, Any]:
        """Each trusted issuer's key state, for /readyz."""
        return {ks.config.name: ks.status() for ks in self.key_sets}

    async def verify(self, token: str | None, required_scope: str = SCOPE_SESSION) -> Principal:
        """The token's principal, or UnauthorizedError / ForbiddenError saying what is wrong."""
        label = LOCAL
        try:
            if not token:
                raise TokenUnauthorizedError(
                    "missing",
                    "no token: send 'Authorization: Bearer <jwt>' or the WebSocket subprotocol "
                    "'tidegate.bearer.<jwt>'",
                )
            try:
                header = jwt.get_unverified_header(token)
                unverified = jwt.decode(token, options={"verify_signature": False})
            except jwt.PyJWTError:
                raise TokenUnauthorizedError(
                    "malformed", "token is malformed; expected a signed JWT"
                ) from None
            iss = unverified.get("iss")
            trusted = self._trusted.get(iss) if isinstance(iss, str) else None
            if trusted is not None:
                label = trusted.config.name
                return await self._verify_trusted(token, header, trusted, required_scope)
            if self._trusted and header.get("alg") != ALGORITHM:
                label = UNTRUSTED
                names = ", ".join(repr(i) for i in self._trusted)
                raise TokenUnauthorizedError(
                    "issuer",
                    f"token issuer {quote_untrusted(iss)} is not trusted; trusted: {names}",
                )
            return self._verify_local(token, required_scope)
        except (TokenUnauthorizedError, TokenForbiddenError) as e:
            self.refusals[(label, e.reason)] += 1
            self._log.refused(label, e.reason, e.message)
            raise

    def _verify_local(self, token: str, required_scope: str) -> Principal:
        claims = self._decode(
            token,
            self._key,
            [ALGORITHM],
            audience=self.audience,
            issuer=self.issuer,
            require=["exp", "aud", "sub"],
        )
        return principal_from(claims, LOCAL_CLAIMS, required_scope)

    async def _verify_trusted(
        self, token: str, header: Mapping[str, Any], keys: KeySet, required_scope: str
    ) -> Principal:
        cfg = keys.config
        alg = header.get("alg")
        if alg not in cfg.algorithms:
            raise TokenUnauthorizedError(
                "algorithm",
                f"token algorithm {quote_untrusted(alg)} is not accepted from issuer {cfg.name}; "
                f"expected one of {', '.join(cfg.algorithms)}",
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenUnauthorizedError(
                "unknown_key", f"token header lacks 'kid' (the key id of issuer {cfg.name})"
            )
        try:
            key = await keys.key(kid, alg)
        except KeyRefusedError as e:
            raise TokenUnauthorizedError(
                e.reason, e.message, retry_after_ms=e.retry_after_ms
            ) from None
        claims = self._decode(
            token,
            key.key,
            [alg],
            audience=list(cfg.audiences),
            issuer=cfg.issuer,
            require=["exp", "aud", "iss"],
        )
        return principal_from(claims, cfg.claims, required_scope)

    def _decode(
        self,
        token: str,
        key: Any,
        algorithms: list[str],
        *,
        audience: str | list[str],
        issuer: str | None,
        require: list[str],
    ) -> dict[str, Any]:
        expected_aud = audience if isinstance(audience, str) else " or ".join(audience)
        try:
            return jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=audience,
                issuer=issuer,
                leeway=self.leeway_s,
                options={"require": require},
            )
        except jwt.ExpiredSignatureError:
            raise TokenUnauthorizedError("expired", "token expired; get a new one") from None
        except jwt.InvalidAudienceError:
            raise TokenUnauthorizedError(
                "audience", f"token audience does not match; expected aud {expected_aud!r}"
            ) from None
        except jwt.InvalidIssuerError:
            raise TokenUnauthorizedError(
                "issuer", f"token issuer does not match; expected {issuer!r}"
            ) from None
        except jwt.InvalidSignatureError:
            raise TokenUnauthorizedError("signature", "token signature does not verify") from None
        except jwt.MissingRequiredClaimError as e:
            raise TokenUnauthorizedError(
                "claims", f"token lacks the required claim {e.claim!r}"
            ) from None
        except jwt.InvalidAlgorithmError:
            raise TokenUnauthorizedError(
                "algorithm", f"token algorithm not accepted; expected {', '.join(algorithms)}"
            ) from None
        except jwt.ImmatureSignatureError:
            raise TokenUnauthorizedError(
                "not_yet_valid", "token is not valid yet (nbf/iat in the future)"
            ) from None
        except jwt.PyJWTError:
            raise TokenUnauthorizedError(
                "malformed", "token is malformed; expected a signed JWT"
            ) from None


def principal_from(claims: Mapping[str, Any], mapping: ClaimMap, required_scope: str) -> Principal:
    """The principal a verified token's claims name, through ``mapping``."""
    sub = _claim(claims, mapping.subject)
    sub_name = _path_name(mapping.subject)
    if not isinstance(sub, str) or not sub or len(sub) > MAX_SUBJECT_CHARS:
        raise TokenUnauthorizedError(
            "claims",
            f"token claim {sub_name!r} must be a string of 1 to {MAX_SUBJECT_CHARS} characters",
        )
    if mapping.fixed_tenant is not None:
        tenant: Any = mapping.fixed_tenant
    else:
        assert mapping.tenant is not None
        tenant = _claim(claims, mapping.tenant)
        if not isinstance(tenant, str) or not tenant or len(tenant) > 128:
            raise TokenForbiddenError(
                "tenant",
                f"token lacks a {_path_name(mapping.tenant)!r} claim (the tenant: a string of "
                "1 to 128 characters)",
            )
    if mapping.allowed_tenants and tenant not in mapping.allowed_tenants:
        raise TokenForbiddenError(
            "tenant", f"tenant {quote_untrusted(tenant)} is not one this token's issuer may name"
        )
    raw: list[str] = []
    for path in mapping.scopes:
        value = _claim(claims, path)
        if value is None:
            continue
        if isinstance(value, str):
            raw.extend(value.split())
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            raw.extend(value)
        else:
            raise TokenUnauthorizedError(
                "claims",
                f"token claim {_path_name(path)!r} must be a space-separated string or a list "
                "of strings",
            )
    if mapping.scope_map:
        scopes = frozenset(mapping.scope_map[v] for v in raw if v in mapping.scope_map)
    else:
        scopes = frozenset(raw)
    # admin implies every other scope
    if required_scope not in scopes and SCOPE_ADMIN not in scopes:
        had = " ".join(raw)[:200] or "none"
        raise TokenForbiddenError("scope", f"token lacks scope {required_scope!r} (it has: {had})")
    exp = claims.get("exp")
    return Principal(sub, tenant, scopes, float(exp) if isinstance(exp, (int, float)) else 0.0)


def _claim(claims: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = claims
    for name in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value


def _path_name(path: tuple[str, ...]) -> str:
    return ".".join(path) if len(path) > 1 else path[0]


class _RefusalLog:
    """Logs a refusal reason at most once per interval, with the count of those left out."""

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._left_out: Counter[str] = Counter()

    def refused(self, issuer: str, reason: str, message: str) -> None:
        now = self._clock()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval_s:
            self._left_out[reason] += 1
            return
        self._last[reason] = now
        more = self._left_out.pop(reason, 0)
        suffix = f" (and {more} more refused for this reason since the last line)" if more else ""
        log.info("token refused (issuer %s, %s): %s%s", issuer, reason, message, suffix)


def mint_token(
    key: bytes,
    *,
    subject: str,
    tenant: str,
    scopes: Iterable[str] = (SCOPE_SESSION,),
    ttl_s: float = 3600.0,
    audience: str = "tidegate",
    issuer: str | None = None,
    now_s: float | None = None,
) -> str:
    """A signed token (development and tests; production tokens come from your IdP)."""
    scopes = list(scopes)
    unknown = set(scopes) - KNOWN_SCOPES
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; expected {sorted(KNOWN_SCOPES)}")
    now = time.time() if now_s is None else now_s
    claims: dict[str, object] = {
        "sub": subject,
        "tenant": tenant,
        "scope": " ".join(scopes),
        "aud": audience,
        "iat": int(now),
        "exp": int(now + ttl_s),
    }
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def bearer_from_header(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if that is what it is."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
