"""``tidegate bench SCENARIO``: run a scenario, write its JSON report and plots.
``tidegate bench compare A.json B.json``: a regression table of two reports."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from .compare import add_command as add_compare
from .harness import Scenario
from .progress import Progress, install
from .report import write_report
from .scenarios import load_scenarios
from .target import Target, started_server


def add_commands(sub: Any) -> None:
    bench = sub.add_parser("bench", help="run a benchmark scenario and write a JSON report")
    scenarios = bench.add_subparsers(dest="scenario", required=True)
    for sc in load_scenarios().values():
        p = scenarios.add_parser(sc.name, help=sc.help)
        p.add_argument("--out", type=Path, default=Path("reports"), help="report folder")
        p.add_argument("--url", help="an already running server (http://host:port)")
        p.add_argument("--token", help="a token for --url")
        p.add_argument("--admin-token", help="an admin token for --url's /metrics")
        p.add_argument("--metrics-url", help="where the server serves /metrics, if elsewhere")
        p.add_argument("--no-plots", action="store_true", help="write the JSON report only")
        p.add_argument(
            "--progress",
            choices=("auto", "on", "off"),
            default="auto",
            help="the progress line on stderr (auto: only on a terminal)",
        )
        if sc.add_args is not None:
            sc.add_args(p)
        p.set_defaults(func=lambda args, sc=sc: run_scenario(sc, args))
    add_compare(scenarios)


def run_scenario(sc: Scenario, args: argparse.Namespace) -> int:
    enabled = {"auto": None, "on": True, "off": False}[args.progress]
    progress = install(Progress(enabled=enabled))
    progress.stage(f"{sc.name}: starting")
    try:
        results = asyncio.run(_run(sc, args))
    finally:
        progress.done()
    path = finish(sc.name, results, args.out, plots=not args.no_plots)
    print(f"report: {path}", file=sys.stderr)
    return 0


def finish(name: str, results: dict[str, Any], out: Path, *, plots: bool = True) -> Path:
    """Write the report and (unless told not to) its plots; returns the report's path."""
    path = write_report(name, results, out)
    if plots:
        try:
            from .plots import write_plots
        except ImportError:
            print("plots skipped: matplotlib is not installed (tidegate[bench])", file=sys.stderr)
            return path
        from .report import load_report

        for png in write_plots(load_report(path), path):
            print(f"plot: {png}", file=sys.stderr)
    return path


async def _run(sc: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    if not sc.wants_server(args):
        return await sc.run(args, Target("", ""))
    if args.url:
        if not args.token:
            raise SystemExit("--url needs --token")
        target = Target(
            args.url.rstrip("/"),
            args.token,
            metrics_url=args.metrics_url,
            admin_token=args.admin_token,
        )
        return await sc.run(args, target)
    async with started_server(sc.env(args)) as target:
        target.metrics_url = args.metrics_url
        return await sc.run(args, target)
