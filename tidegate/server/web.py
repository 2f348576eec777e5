"""The browser client's side of the server: its built files at ``/`` and the development login.

The client (``client-web/``, built by ``make web`` into ``client-web/dist``) is served as static
files; when it has not been built, ``/`` says how to build it. ``POST /v1/dev/token`` mints a
short-lived ``session`` token for whoever can reach the server, so that the page can connect
without an identity provider. It is meant for the embedded default: ``dev_login`` ``auto`` turns
it on only when the server listens on a loopback address, and then answers only requests from
loopback that no proxy forwarded (no ``Forwarded``/``X-Forwarded-For``/``X-Real-IP``: NGINX in
front of a loopback server must not hand tokens to the world); ``off`` answers 404 (as does
``auto`` elsewhere). Browsers keep the token in memory only.

While the development login is on, it and the page that uses it answer only requests whose
``Host`` is this server's loopback name with its port (``127.0.0.1:PORT``, ``localhost:PORT``,
``[::1]:PORT``), plus, with ``on``, the hosts of ``allowed_origins``: a page of another name
that a DNS-rebinding attack points at 127.0.0.1 sends its own name as ``Host`` (and as
``Origin``, which therefore matches) and is refused (403).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import anyio
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from . import edge
from .auth import SCOPE_SESSION, load_or_create_secret, mint_token
from .errors import ForbiddenError, NotFoundError, RefusalError
from .settings import Settings

DEV_TOKEN_PATH = "/v1/dev/token"
DEV_SUBJECT = "browser"
DEV_TENANT = "default"
SOURCE_WEB_DIR = Path(__file__).resolve().parents[2] / "client-web" / "dist"
NOT_BUILT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tidegate</title></head>
<body><main><h1>tidegate</h1>
<p>The browser client is not built: run <code>make web</code> in the source tree
(or <code>npm ci &amp;&amp; npm run build</code> in <code>client-web/</code>) and reload.
It is looked for in <code>{path}</code> (setting <code>TIDEGATE_WEB_DIR</code>).</p>
</main></body></html>
"""


def web_dir(settings: Settings) -> Path:
    """Where the built client is looked for."""
    return settings.web_dir if settings.web_dir is not None else SOURCE_WEB_DIR


def dev_login_enabled(settings: Settings) -> bool:
    """``on``; ``off``; ``auto``: on when the listening address is loopback."""
    if settings.dev_login != "auto":
        return settings.dev_login == "on"
    return _is_loopback(settings.host)


FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _direct_local(request: Request) -> bool:
    """The request comes from this machine, not through a proxy (that would put others
    behind a loopback peer address)."""
    peer = request.client.host if request.client else ""
    return _is_loopback(peer) and not any(h in request.headers for h in FORWARDING_HEADERS)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
DEFAULT_HTTP_PORT = 80


def _host_refusal(scope: Scope, headers: Headers, settings: Settings) -> str | None:
    """Why the request's ``Host`` is not one the development login serves, or None."""
    host = headers.get("host", "").lower()
    server = scope.get("server")
    port = server[1] if server and server[1] else settings.port
    allowed = {f"{name}:{port}" for name in LOOPBACK_HOSTS}
    if port == DEFAULT_HTTP_PORT:
        allowed.update(LOOPBACK_HOSTS)
    if settings.dev_login == "on":
        allowed.update(urlsplit(o).netloc.lower() for o in settings.allowed_origins if o != "*")
    if host in allowed:
        return None
    return (
        f"Host {host!r} is not this server's loopback address: the development login and its "
        f"page answer only 127.0.0.1, localhost or [::1] with port {port}"
        + (" or a host of TIDEGATE_ALLOWED_ORIGINS" if settings.dev_login == "on" else "")
    )


def _admit_dev_login(request: Request, settings: Settings) -> None:
    """Refuse a request the development login must not answer (see the module docstring)."""
    if settings.dev_login == "auto" and not _direct_local(request):
        raise NotFoundError(
            "the development login answers only local, unproxied requests "
            "(TIDEGATE_DEV_LOGIN=on to open it further)"
        )
    refused = _host_refusal(request.scope, request.headers, settings)
    if refused is not None:
        raise ForbiddenError(refused)
    edge.check_origin(request.app.state.runtime, request.headers)  # the edge's allow-list


def dev_token_endpoint(settings: Settings) -> Callable[[Request], Awaitable[Response]]:
    """``POST /v1/dev/token``: a short-lived session token, or 404 when the login is off.

    The signing key is read here, once, at start-up (never per request on the event loop).
    """
    key = load_or_create_secret(settings) if dev_login_enabled(settings) else None

    async def dev_token(request: Request) -> Response:
        try:
            if key is None:
                raise NotFoundError("the development login is off")
            _admit_dev_login(request, settings)
        except RefusalError as e:
            return edge.error_response(e)  # the one error table of every HTTP route
        token = mint_token(
            key,
            subject=DEV_SUBJECT,
            tenant=DEV_TENANT,
            scopes=[SCOPE_SESSION],
            ttl_s=settings.dev_login_ttl_s,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
        body = {"token": token, "expires_in_s": settings.dev_login_ttl_s}
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return dev_token


class WebApp:
    """The built client's files (``index.html`` for ``/``), or a page saying how to build them.

    The folder is looked at per request, so a build made while the server runs is served.
    While the development login is on, only loopback ``Host`` values are served (see the
    module docstring).
    """

    def __init__(self, directory: Path, settings: Settings) -> None:
        self.directory = directory
        self.settings = settings
        self.check_host = dev_login_enabled(settings)
        self.files = StaticFiles(directory=directory, html=True, check_dir=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.check_host:
            refused = _host_refusal(scope, Headers(scope=scope), self.settings)
            if refused is not None:
                await PlainTextResponse(refused, status_code=403)(scope, receive, send)
                return
        index = self.directory / "index.html"
        if scope["type"] == "http" and not await anyio.to_thread.run_sync(index.is_file):
            if scope["path"] == "/":
                page = NOT_BUILT_PAGE.format(path=self.directory)
                await HTMLResponse(page, status_code=404)(scope, receive, send)
            else:
                await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)
            return
        await self.files(scope, receive, send)
