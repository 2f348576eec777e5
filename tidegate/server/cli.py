"""Server commands: ``serve``, ``token`` and ``config``."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import time
from types import FrameType
from typing import Any

import uvicorn

from .app import create_app
from .auth import SCOPE_SESSION, load_or_create_secret, mint_token
from .engines import engine_specs
from .errors import ConfigError
from .runtime import Runtime
from .settings import Settings

log = logging.getLogger(__name__)


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


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain in front of its shutdown. The first SIGTERM (or SIGINT)
    marks the runtime draining: /readyz answers 503 and new sessions are refused, while the
    node keeps serving its sessions (resumes included). Once none is left, or after
    ``drain_timeout_s``, uvicorn's own shutdown runs: connections closed, then the lifespan's
    (sessions closed, record journal flushed). A second signal ends the drain at once; the
    process exits 0 either way (uvicorn would re-raise the signal)."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.drain_deadline: float | None = None  # monotonic; set by the first signal
        self._drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: it only flips flags, on_tick (on the loop) acts on them.
        if self.drain_deadline is None and sig in (signal.SIGTERM, signal.SIGINT):
            self.drain_deadline = time.monotonic() + self.runtime.settings.drain_timeout_s
            self.runtime.draining = True
        elif self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up; then, once its sockets are bound and it accepts, the line that
        scripts and tests wait for (printed before binding, a client could connect too early)."""
        await super().startup(sockets)
        if self.started:
            s = self.runtime.settings
            print(
                f"tidegate: listening on http://{s.host}:{s.port} "
                f"(control channel ws://{s.host}:{s.port}/v1/control); "
                "mint a token with `tidegate token`",
                file=sys.stderr,
                flush=True,
            )

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            left = len(self.runtime.registry)
            if not self._drain_logged:
                self._drain_logged = True
                log.warning(
                    "draining: new sessions refused; waiting up to %.0f s for %d session(s)",
                    self.runtime.settings.drain_timeout_s,
                    left,
                )
            if not left or time.monotonic() >= self.drain_deadline:
                log.warning("drained: shutting down, %d session(s) left to close", left)
                self.should_exit = True
        return await super().on_tick(counter)


def prepare_models(settings: Settings) -> None:
    """Prepare the default models the configured engines need and do not have yet (a bare
    ``tidegate serve``'s first start), downloading what is missing, one progress line per
    step on stderr. ModelError (a missing package, a checksum) names what to do; for an
    optional engine (the turn detector) it is a warning, and the server starts without it."""
    from tidegate.engines import models
    from tidegate.engines.errors import ModelError
    from tidegate.engines.registry import KINDS_BY_NAME
    from tidegate.tools.prepare import prepare

    for spec in engine_specs(settings):
        if spec.model not in models.DEFAULT_MODELS or not models.verify(
            settings.data_dir, spec.model, deep=False
        ):
            continue
        print(
            f"tidegate: the {spec.name} engine's model {spec.model} is not prepared in "
            f"{settings.data_dir}; preparing it (once)",
            file=sys.stderr,
            flush=True,
        )
        kind = KINDS_BY_NAME.get(spec.name)
        try:
            prepare(
                settings.data_dir,
                spec.model,
                progress=lambda line: print(f"tidegate: {line}", file=sys.stderr, flush=True),
            )
        except ModelError as e:
            if kind is None or kind.without is None:
                raise
            print(
                f"tidegate: warning: the {spec.name} engine's model {spec.model} cannot be "
                f"prepared ({e}); the server starts without it: {kind.without}",
                file=sys.stderr,
                flush=True,
            )


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
    p.add_argument("--markdown", action="store_true", help="as the table of docs/configuration.md")
    p.set_defaults(func=cmd_config)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings.load(host=args.host, port=args.port)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from tidegate.engines.errors import ModelError

    try:
        prepare_models(settings)
    except ModelError as e:
        print(f"tidegate: cannot prepare the engines' models: {e}", file=sys.stderr)
        return 2
    app = create_app(settings)
    DrainingServer(uvicorn_config(app, settings), app.state.runtime).run()
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
    if args.markdown:
        print(config_table(settings))
        return 0
    for name, default, doc in settings.describe():
        print(f"{name}\n    default: {default}\n    {doc}")
    return 0


def config_table(settings: Settings) -> str:
    """Every setting as a Markdown table (docs/configuration.md holds it, and a test keeps
    it equal to this)."""
    lines = ["| variable | default | what |", "| --- | --- | --- |"]
    for name, default, doc in settings.describe():
        cells = (f"`{name}`", f"`{default}`", doc)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


__all__ = ["ConfigError", "add_commands", "config_table", "uvicorn_config"]
