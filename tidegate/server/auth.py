"""JWT authentication for every entry point.

Tokens are HS256 JWTs with: ``sub`` (the subject), ``tenant`` (which tenant's sessions and
records the token can see), ``scope`` (space-separated: ``session``, ``admin``), ``aud`` and
``exp``. The key comes from TIDEGATE_JWT_SECRET or is generated on first run into
``data_dir/jwt.key`` (mode 0600): there is no built-in secret.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jwt

from .errors import ConfigError, ForbiddenError, UnauthorizedError
from .settings import Settings

ALGORITHM = "HS256"
SCOPE_SESSION = "session"
SCOPE_ADMIN = "admin"
KNOWN_SCOPES = frozenset({SCOPE_SESSION, SCOPE_ADMIN})
MIN_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    subject: str
    tenant: str
    scopes: frozenset[str]
    expires_at_s: float

    @property
    def is_admin(self) -> bool:
        return SCOPE_ADMIN in self.scopes


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


class TokenVerifier:
    """Verifies tokens: signature, expiry, audience (and issuer if configured), scopes."""

    def __init__(
        self,
        key: bytes,
        *,
        audience: str,
        issuer: str | None = None,
        leeway_s: float = 5.0,
    ) -> None:
        self._key = key
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        return cls(
            load_or_create_secret(settings),
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway_s=settings.jwt_leeway_s,
        )

    def verify(self, token: str | None, required_scope: str = SCOPE_SESSION) -> Principal:
        """The token's principal, or UnauthorizedError / ForbiddenError saying what is wrong."""
        if not token:
            raise UnauthorizedError(
                "no token: send 'Authorization: Bearer <jwt>' or the WebSocket subprotocol "
                "'tidegate.bearer.<jwt>'"
            )
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise UnauthorizedError("token expired; get a new one") from None
        except jwt.InvalidAudienceError:
            raise UnauthorizedError(
                f"token audience does not match; expected aud {self.audience!r}"
            ) from None
        except jwt.InvalidIssuerError:
            raise UnauthorizedError(
                f"token issuer does not match; expected {self.issuer!r}"
            ) from None
        except jwt.InvalidSignatureError:
            raise UnauthorizedError("token signature does not verify") from None
        except jwt.MissingRequiredClaimError as e:
            raise UnauthorizedError(f"token lacks the required claim {e.claim!r}") from None
        except jwt.InvalidAlgorithmError:
            raise UnauthorizedError(f"token algorithm not accepted; expected {ALGORITHM}") from None
        except jwt.ImmatureSignatureError:
            raise UnauthorizedError("token is not valid yet (nbf/iat in the future)") from None
        except jwt.PyJWTError:
            raise UnauthorizedError("token is malformed; expected a signed JWT") from None
        return _principal(claims, required_scope)


def _principal(claims: Mapping[str, object], required_scope: str) -> Principal:
    sub = claims.get("sub")
    tenant = claims.get("tenant")
    scope = claims.get("scope", "")
    if not isinstance(sub, str) or not sub:
        raise UnauthorizedError("token claim 'sub' must be a non-empty string")
    if not isinstance(tenant, str) or not tenant or len(tenant) > 128:
        raise ForbiddenError("token lacks a 'tenant' claim (a string of 1 to 128 characters)")
    if not isinstance(scope, str):
        raise UnauthorizedError("token claim 'scope' must be a space-separated string")
    scopes = frozenset(scope.split())
    # admin implies every other scope
    if required_scope not in scopes and SCOPE_ADMIN not in scopes:
        raise ForbiddenError(f"token lacks scope {required_scope!r} (it has: {scope or 'none'})")
    exp = claims.get("exp")
    return Principal(sub, tenant, scopes, float(exp) if isinstance(exp, (int, float)) else 0.0)


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
