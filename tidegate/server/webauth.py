"""The browser client's sign-in options: ``GET /v1/auth/config`` (public: no token needed).

It tells the page how it may get a token: the development login (when it is on), an operator's
token endpoint (``web_token_url``, e.g. an SSO proxy's), and each trusted issuer that has a
``client_id`` — the page signs in there itself with the authorization code flow and PKCE, as a
public client (no secret in the browser). Nothing here is secret: issuers, client ids and
endpoints are public in every OIDC deployment. The endpoints come from the issuer's
configuration or its discovery document (``null`` until it has been fetched).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from .runtime import Runtime
from .web import dev_login_enabled

AUTH_CONFIG_PATH = "/v1/auth/config"


async def auth_config(request: Request) -> JSONResponse:
    """``GET /v1/auth/config``: ``{dev_login, token_url, providers: [...]}``."""
    runtime: Runtime = request.app.state.runtime
    settings = runtime.settings
    providers: list[dict[str, Any]] = []
    for ks in runtime.verifier.key_sets:
        cfg = ks.config
        if not cfg.client_id:
            continue
        providers.append(
            {
                "name": cfg.name,
                "display_name": cfg.display_name,
                "issuer": cfg.issuer,
                "client_id": cfg.client_id,
                "scope": cfg.client_scope,
                "authorization_endpoint": cfg.authorization_endpoint
                or ks.endpoints.get("authorization_endpoint"),
                "token_endpoint": cfg.token_endpoint or ks.endpoints.get("token_endpoint"),
                "params": dict(cfg.authorize_params),
            }
        )
    body = {
        "dev_login": dev_login_enabled(settings),
        "token_url": settings.web_token_url or None,
        "providers": providers,
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})
