"""``tidegate db``: schema migrations (``upgrade``, ``downgrade``, ``current``) of the store
(:mod:`tidegate.store.engine`), with the server's settings."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from tidegate.store import engine as db_engine


def add_commands(sub: Any) -> None:
    db = sub.add_parser("db", help="database schema: upgrade, downgrade, current")
    cmds = db.add_subparsers(dest="db_command", required=True)
    p = cmds.add_parser("upgrade", help="bring the schema up to a revision (default: head)")
    p.add_argument("revision", nargs="?", default="head")
    p.set_defaults(func=lambda a: _run(_upgrade(a.revision)))
    p = cmds.add_parser("downgrade", help="take the schema back to a revision ('base': empty)")
    p.add_argument("revision")
    p.set_defaults(func=lambda a: _run(_downgrade(a.revision)))
    p = cmds.add_parser("current", help="print the schema's revision and the newest one")
    p.set_defaults(func=lambda a: _run(_current()))


def _run(coro: Any) -> int:
    return int(asyncio.run(coro))


async def _with_engine(action: Any) -> int:
    from .settings import Settings

    settings = Settings.load()
    url = db_engine.database_url(settings)
    engine = db_engine.create_engine(url, timeout_s=settings.db_timeout_s)
    try:
        await action(engine, url)
    except Exception as e:
        print(f"tidegate db: {db_engine.describe(url)}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
    return 0


async def _upgrade(revision: str) -> int:

    async def act(engine: Any, url: Any) -> None:
        await db_engine.upgrade(engine, revision)
        print(f"{db_engine.describe(url)}: upgraded to {revision}", file=sys.stderr)

    return await _with_engine(act)


async def _downgrade(revision: str) -> int:

    async def act(engine: Any, url: Any) -> None:
        await db_engine.downgrade(engine, revision)
        print(f"{db_engine.describe(url)}: downgraded to {revision}", file=sys.stderr)

    return await _with_engine(act)


async def _current() -> int:

    async def act(engine: Any, url: Any) -> None:
        async with engine.connect() as conn:
            current = await db_engine.current_revision(conn)
        head = await db_engine.head_revision(engine)
        print(f"current: {current or 'none (empty)'}\nhead: {head}")

    return await _with_engine(act)


__all__ = ["add_commands"]
