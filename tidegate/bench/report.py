"""Bench reports: percentiles and a JSON file that says what was measured, where and how."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPORT_VERSION = 1


def percentiles(
    values: Sequence[float], points: Sequence[float] = (50, 90, 99)
) -> dict[str, float]:
    """p50/p90/p99 (nearest-rank on the sorted sample), mean, min, max and n."""
    if not values:
        return {"n": 0}
    xs = sorted(values)
    n = len(xs)
    out: dict[str, float] = {"n": n}
    for p in points:
        rank = max(1, math.ceil(p / 100 * n))
        out[f"p{p:g}"] = xs[rank - 1]
    out["mean"] = sum(xs) / n
    out["min"] = xs[0]
    out["max"] = xs[-1]
    return out


def environment() -> dict[str, Any]:
    """Where the numbers were taken: they mean little without it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "commit": commit or None,
    }


def write_report(scenario: str, results: dict[str, Any], out_dir: Path, **meta: Any) -> Path:
    """Write ``<out_dir>/<scenario>-<timestamp>.json`` and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = out_dir / f"{scenario}-{stamp}.json"
    doc = {
        "report_version": REPORT_VERSION,
        "scenario": scenario,
        "created_utc": stamp,
        "environment": environment(),
        **meta,
        "results": results,
    }
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path
