"""``tidegate bench compare A.json B.json``: a regression table of two reports of one scenario.

Every percentile block found in both reports' results (report.percentile_blocks: latencies,
mostly in ms) is one row: p50 and p99 of A and of B and their ratios B / A. A row is flagged
when B is worse than A by more than ``--threshold`` (a fraction: 0.10 = 10 %) at p50 or p99.
Every figure in a percentile block is one where more is worse (a latency, an interval, a
queue wait); throughputs are plain numbers and not compared here. Percentiles written as flat
numbers (``ttft_ms_p50``, ``ttft_ms_p95``: the ``llm`` and ``tts`` reports) are compared too,
with p95 standing in for p99 where that is the tail they keep (the row says so).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import ReportError, flat_blocks, load_report, percentile_blocks

DEFAULT_THRESHOLD = 0.10
POINTS = ("p50", "p99")


@dataclass(frozen=True)
class Row:
    path: str
    a: dict[str, float]
    b: dict[str, float]
    ratios: dict[str, float | None]
    worse: bool


def add_command(sub: Any) -> None:
    p = sub.add_parser("compare", help="compare two reports of one scenario (B against A)")
    p.add_argument("a", type=Path, help="the baseline report (A)")
    p.add_argument("b", type=Path, help="the report to judge (B)")
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="flag a row when B's p50 or p99 is worse than A's by more than this fraction",
    )
    p.add_argument("--min-n", type=int, default=1, help="skip blocks with fewer samples")
    p.add_argument(
        "--fail-on-regression", action="store_true", help="exit with status 1 when flagged"
    )
    p.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    try:
        a, b = load_report(args.a), load_report(args.b)
        rows = compare(a, b, threshold=args.threshold, min_n=args.min_n)
    except ReportError as e:
        print(f"tidegate bench compare: {e}", file=sys.stderr)
        return 2
    print(f"A: {args.a} ({_where(a)})")
    print(f"B: {args.b} ({_where(b)})")
    print(table(rows, args.threshold))
    flagged = sum(r.worse for r in rows)
    print(f"{len(rows)} figures compared, {flagged} worse by more than {args.threshold:.0%}")
    return 1 if flagged and args.fail_on_regression else 0


def _where(doc: dict[str, Any]) -> str:
    env = doc["environment"]
    return f"{doc['created_utc']}, commit {env.get('commit')}, {env.get('cpus')} CPUs"


def compare(
    a: dict[str, Any],
    b: dict[str, Any],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    min_n: int = 1,
) -> list[Row]:
    """The rows of the table: blocks present in both, with enough samples in each."""
    if a["scenario"] != b["scenario"]:
        raise ReportError(
            f"the reports are of different scenarios ({a['scenario']!r}, {b['scenario']!r})"
        )
    blocks_b = dict(_blocks(b["results"]))
    rows = []
    for path, block_a in _blocks(a["results"]):
        block_b = blocks_b.get(path)
        if block_b is None or "p50" not in block_a or "p50" not in block_b:
            continue
        if min(block_a.get("n", min_n), block_b.get("n", min_n)) < max(min_n, 1):
            continue
        va = {p: float(block_a[p]) for p in POINTS if p in block_a}
        vb = {p: float(block_b[p]) for p in POINTS if p in block_b}
        if "p99" not in va and "p95" in block_a and "p95" in block_b:  # the tail there is
            va["p99"], vb["p99"] = float(block_a["p95"]), float(block_b["p95"])
            path += " (p95)"
        ratios: dict[str, float | None] = {}
        for p in POINTS:
            ok = p in va and p in vb and va[p] > 0
            ratios[p] = vb[p] / va[p] if ok else None
        worse = any(r is not None and r > 1 + threshold for r in ratios.values())
        rows.append(Row(path.lstrip("."), va, vb, ratios, worse))
    return rows


def _blocks(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    blocks: list[tuple[str, dict[str, Any]]] = list(percentile_blocks(results))
    return blocks + list(flat_blocks(results))


def table(rows: list[Row], threshold: float) -> str:
    """Plain text, one row per figure."""
    width = max([len("figure")] + [len(r.path) for r in rows])
    head = (
        f"{'figure':<{width}}  {'p50 A':>9} {'p50 B':>9} {'B/A':>6}  "
        f"{'p99 A':>9} {'p99 B':>9} {'B/A':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:

        def ratio(p: str, r: Row = r) -> str:
            x = r.ratios[p]
            return f"{x:6.2f}" if x is not None else "     -"

        def num(d: dict[str, float], p: str) -> str:
            return f"{d[p]:9.2f}" if p in d else "        -"

        flag = f"  worse (> {1 + threshold:.2f}x)" if r.worse else ""
        lines.append(
            f"{r.path:<{width}}  {num(r.a, 'p50')} {num(r.b, 'p50')} {ratio('p50')}  "
            f"{num(r.a, 'p99')} {num(r.b, 'p99')} {ratio('p99')}{flag}"
        )
    return "\n".join(lines)
