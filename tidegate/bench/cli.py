"""``tidegate bench SCENARIO``: run a scenario and write its JSON report."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from .harness import Scenario, load_scenarios
from .report import write_report
from .target import Target, started_server


def add_commands(sub: Any) -> None:
    bench = sub.add_parser("bench", help="run a benchmark scenario and write a JSON report")
    scenarios = bench.add_subparsers(dest="scenario", required=True)
    for sc in load_scenarios().values():
        p = scenarios.add_parser(sc.name, help=sc.help)
        p.add_argument("--out", type=Path, default=Path("reports"), help="report folder")
        p.add_argument("--url", help="an already running server (http://host:port)")
        p.add_argument("--token", help="a token for --url")
        if sc.add_args is not None:
            sc.add_args(p)
        p.set_defaults(func=lambda args, sc=sc: run_scenario(sc, args))


def run_scenario(sc: Scenario, args: argparse.Namespace) -> int:
    results = asyncio.run(_run(sc, args))
    path = write_report(sc.name, results, args.out)
    print(f"report: {path}", file=sys.stderr)
    return 0


async def _run(sc: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    if not sc.needs_server:
        return await sc.run(args, Target("", ""))
    if args.url:
        if not args.token:
            raise SystemExit("--url needs --token")
        return await sc.run(args, Target(args.url.rstrip("/"), args.token))
    async with started_server(sc.server_env) as target:
        return await sc.run(args, target)
