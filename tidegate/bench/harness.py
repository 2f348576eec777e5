"""The scenario registry. A scenario is an async function that takes its parsed arguments and
a :class:`Target`, and returns the ``results`` of its report (plain JSON data)."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .target import Target

RunFn = Callable[[argparse.Namespace, Target], Awaitable[dict[str, Any]]]
ArgsFn = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    help: str
    run: RunFn
    add_args: ArgsFn | None = None
    needs_server: bool = True  # False: the scenario starts what it measures itself
    server_env: dict[str, str] | None = None  # settings for a server the harness starts


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str,
    help: str,
    *,
    add_args: ArgsFn | None = None,
    needs_server: bool = True,
    server_env: dict[str, str] | None = None,
) -> Callable[[RunFn], RunFn]:
    """Register a scenario under ``name``."""

    def register(fn: RunFn) -> RunFn:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} registered twice")
        SCENARIOS[name] = Scenario(name, help, fn, add_args, needs_server, server_env)
        return fn

    return register


def load_scenarios() -> dict[str, Scenario]:
    """Import every scenario module (each registers itself)."""
    from . import scenarios  # noqa: F401

    return SCENARIOS
