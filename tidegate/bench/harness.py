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
EnvFn = Callable[[argparse.Namespace], dict[str, str]]


@dataclass(frozen=True)
class Scenario:
    name: str
    help: str
    run: RunFn
    add_args: ArgsFn | None = None
    needs_server: bool = True  # False: the scenario starts what it measures itself
    server_env: dict[str, str] | None = None  # settings for a server the harness starts
    env_from_args: EnvFn | None = None  # more settings, from the scenario's arguments
    #: for these arguments the scenario measures in-process and needs no server
    local_when: Callable[[argparse.Namespace], bool] | None = None

    def wants_server(self, args: argparse.Namespace) -> bool:
        return self.needs_server and not (self.local_when is not None and self.local_when(args))

    def env(self, args: argparse.Namespace) -> dict[str, str]:
        """The settings of a server the harness starts for this run."""
        extra = self.env_from_args(args) if self.env_from_args is not None else {}
        return {**(self.server_env or {}), **extra}


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str,
    help: str,
    *,
    add_args: ArgsFn | None = None,
    needs_server: bool = True,
    server_env: dict[str, str] | None = None,
    env_from_args: EnvFn | None = None,
    local_when: Callable[[argparse.Namespace], bool] | None = None,
) -> Callable[[RunFn], RunFn]:
    """Register a scenario under ``name``."""

    def register(fn: RunFn) -> RunFn:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} registered twice")
        SCENARIOS[name] = Scenario(
            name, help, fn, add_args, needs_server, server_env, env_from_args, local_when
        )
        return fn

    return register
