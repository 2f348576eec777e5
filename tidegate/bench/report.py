"""Bench reports: percentiles and a JSON file that says what was measured, where and how."""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import re
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


def distribution(values: Sequence[float], *, decimals: int = 2) -> dict[str, Any]:
    """:func:`percentiles` plus the samples themselves (rounded), so that a report can be
    plotted as a CDF later and compared sample by sample."""
    out: dict[str, Any] = dict(percentiles(values))
    out["samples"] = [round(float(v), decimals) for v in values]
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
    n = 1
    while path.exists():  # two runs within a second keep both reports
        n += 1
        path = out_dir / f"{scenario}-{stamp}-{n}.json"
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


class ReportError(ValueError):
    """A file that is not a valid bench report; the message says where and why."""


ENVELOPE = {
    "report_version": int,
    "scenario": str,
    "created_utc": str,
    "environment": dict,
    "results": dict,
}
PERCENTILE_KEYS = ("p50", "p90", "p99", "mean", "min", "max")


def load_report(path: Path) -> dict[str, Any]:
    """Read and validate a report (raises :class:`ReportError`)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: not a readable JSON file ({e})") from None
    validate_report(doc, str(path))
    return doc  # type: ignore[no-any-return]


def validate_report(doc: Any, where: str = "report") -> None:
    """Check a report's schema: the envelope's fields and types, and every percentile block
    in its results: ``n`` (when given) a count; unless ``n`` is 0, numbers in order
    (min <= p50 <= p90 <= p99 <= max, those present; with ``n``, all of them and the mean);
    ``samples``, when kept, ``n`` numbers."""
    if not isinstance(doc, dict):
        raise ReportError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    for key, kind in ENVELOPE.items():
        if key not in doc:
            raise ReportError(f"{where}: missing field {key!r}")
        if not isinstance(doc[key], kind) or isinstance(doc[key], bool):
            raise ReportError(f"{where}.{key}: expected {kind.__name__}")
    if doc["report_version"] != REPORT_VERSION:
        raise ReportError(
            f"{where}.report_version: expected {REPORT_VERSION}, got {doc['report_version']}"
        )
    for path, block in percentile_blocks(doc["results"]):
        _check_block(block, f"{where}.results{path}")


def percentile_blocks(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every percentile block (a dict with ``p50``, or ``n`` = 0 with nothing else) in
    ``node``, with a readable path. A list of dicts is keyed by its items'
    ``sessions``, ``streams`` or ``rate_hz`` when they have one (so that two reports whose
    lists differ in length still line up), else by position."""
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if _is_block(node):
            return [(path, node)]
        for k, v in node.items():
            out += percentile_blocks(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            out += percentile_blocks(item, f"{path}[{_list_key(item, i)}]")
    return out


LEVEL_KEYS = ("sessions", "streams", "rate_hz", "concurrent")
FLAT_POINT = re.compile(r"^(?P<name>.+)_(?P<point>p50|p90|p95|p99)$")


def flat_blocks(node: Any, path: str = "") -> list[tuple[str, dict[str, float]]]:
    """Percentiles written as flat numbers (``ttft_ms_p50``, ``ttft_ms_p95``: the engine
    layer's benches) gathered into blocks named without the suffix, for :func:`compare`."""
    out: list[tuple[str, dict[str, float]]] = []
    if isinstance(node, dict):
        found: dict[str, dict[str, float]] = {}
        for k, v in node.items():
            m = FLAT_POINT.match(str(k))
            if m and isinstance(v, (int, float)) and not isinstance(v, bool):
                found.setdefault(m["name"], {})[m["point"]] = float(v)
            else:
                out += flat_blocks(v, f"{path}.{k}")
        out += [(f"{path}.{name}", block) for name, block in found.items() if "p50" in block]
    elif isinstance(node, list):
        for i, item in enumerate(node):
            out += flat_blocks(item, f"{path}[{_list_key(item, i)}]")
    return out


def _list_key(item: Any, index: int) -> str:
    if isinstance(item, dict):
        for k in LEVEL_KEYS:
            if isinstance(item.get(k), (int, float)) and not isinstance(item.get(k), bool):
                return f"{k}={item[k]:g}"
    return str(index)


def _is_block(node: dict[str, Any]) -> bool:
    if "p50" in node:
        return True
    return "n" in node and set(node) <= {"n", "samples"}


ORDER = ("min", "p50", "p90", "p99", "max")


def _check_block(block: dict[str, Any], where: str) -> None:
    n = block.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
        raise ReportError(f"{where}.n: expected a count, got {n!r}")
    if n != 0:
        present = [k for k in ORDER if k in block]
        for k in (*present, *(["mean"] if "mean" in block else [])):
            if not isinstance(block[k], (int, float)) or isinstance(block[k], bool):
                raise ReportError(f"{where}.{k}: expected a number, got {block[k]!r}")
        if n is not None:
            missing = [k for k in PERCENTILE_KEYS if k not in block]
            if missing:
                raise ReportError(f"{where}: missing {', '.join(missing)} (n = {n})")
        order = [block[k] for k in present]
        if any(a > b for a, b in itertools.pairwise(order)):
            raise ReportError(f"{where}: expected {' <= '.join(present)}, got {order}")
    samples = block.get("samples")
    if samples is not None:
        if not isinstance(samples, list) or len(samples) != n:
            raise ReportError(f"{where}.samples: expected {n} numbers")
        if not all(isinstance(x, (int, float)) for x in samples):
            raise ReportError(f"{where}.samples: expected numbers")
