"""Server commands: ``serve``, ``token`` and ``config``."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import uvicorn

from .app import create_app
from .auth import SCOPE_SESSION, load_or_create_secret, mint_token
from .errors import ConfigError
from .settings import Settings


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration tidegate runs with (also used by the tests): uvicorn's
    httptools and websockets-sansio protocols, behind the app's connection gate (gate.py)."""
    http, ws = app.state.runtime.gate.protocols()
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": http,
        "ws": ws,
        "backlog": settings.listen_backlog_connections,
        "ws_max_size": 2 * settings.max_message_bytes,
        "ws_per_message_deflate": False,
        "ws_ping_interval": 20.0,
        "ws_ping_timeout": 20.0,
        "lifespan": "on",
        "log_level": settings.log_level,
        "access_log": False,
        "server_header": False,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def add_commands(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the server on the embedded defaults")
    p.add_argument("--host", help="address to listen on (TIDEGATE_HOST)")
    p.add_argument("--port", type=int, help="port to listen on (TIDEGATE_PORT)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("token", help="mint a development token")
    p.add_argument("--subject", default="dev", help="sub claim (default: dev)")
    p.add_argument("--tenant", default="default", help="tenant claim (default: default)")
    p.add_argument("--scope", action="append", help="scope: session or admin (repeatable)")
    p.add_argument("--ttl-s", type=float, help="lifetime in seconds (TIDEGATE_TOKEN_TTL_S)")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("config", help="print every setting with its default")
    p.set_defaults(func=cmd_config)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings.load(host=args.host, port=args.port)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    print(
        f"tidegate: listening on http://{settings.host}:{settings.port} "
        f"(control channel ws://{settings.host}:{settings.port}/v1/control); "
        "mint a token with `tidegate token`",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.Server(uvicorn_config(app, settings)).run()
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    settings = Settings.load()
    key = load_or_create_secret(settings)
    token = mint_token(
        key,
        subject=args.subject,
        tenant=args.tenant,
        scopes=args.scope or [SCOPE_SESSION],
        ttl_s=args.ttl_s if args.ttl_s is not None else settings.token_ttl_s,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    print(token)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    settings = Settings.load()
    for name, default, doc in settings.describe():
        print(f"{name}\n    default: {default}\n    {doc}")
    return 0


__all__ = ["ConfigError", "add_commands", "uvicorn_config"]
