"""PNG plots of a report: latency CDFs, and latency against the number of sessions.

- ``<report>-cdf.png``: one panel per figure that kept its samples (report.distribution), one
  line per place it was measured (a load level, a transport), the fraction of samples at or
  below each latency.
- ``<report>-sessions.png``: for each list of load levels (items with ``sessions``, ``streams``
  or ``rate_hz``), one panel per percentile block of the items: p50, p90 and p99 against the
  level. Written only when a list has two levels or more.

matplotlib is imported here only (the Agg backend: no display needed).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from .report import LEVEL_KEYS, percentile_blocks

MAX_PANELS = 12
PANEL_IN = (4.8, 3.4)


def write_plots(report: dict[str, Any], report_path: Path) -> list[Path]:
    """Write the plots of ``report`` next to ``report_path``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    out = []
    cdf = _cdf_series(report["results"])
    if cdf:
        path = report_path.with_name(report_path.stem + "-cdf.png")
        _plot_cdfs(cdf, f"{report['scenario']}: latency CDFs", path)
        out.append(path)
    levels = _level_series(report["results"])
    if levels:
        path = report_path.with_name(report_path.stem + "-sessions.png")
        _plot_levels(levels, f"{report['scenario']}: latency against load", path)
        out.append(path)
    return out


def _cdf_series(results: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """figure name -> {where: samples}."""
    out: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for path, block in percentile_blocks(results):
        samples = block.get("samples")
        if not samples:
            continue
        where, _, name = path.lstrip(".").rpartition(".")
        out[name][where or "all"] = [float(x) for x in samples]
    return dict(out)


def _level_series(
    results: dict[str, Any],
) -> dict[str, list[tuple[float, dict[str, float]]]]:
    """'<list path>.<figure>' -> [(level, block)], for lists of load levels."""
    out: dict[str, list[tuple[float, dict[str, float]]]] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(node, list):
            key = _level_key(node)
            if key is not None and len(node) >= 2:
                for item in node:
                    for name, block in percentile_blocks(item):
                        if block.get("n", 1) and name.count(".") == 1:  # the item's own blocks
                            series = out.setdefault(f"{path}{name} vs {key}", [])
                            series.append((float(item[key]), block))
            for item in node:
                walk(item, path)

    walk(results, "")
    return {k: sorted(v, key=lambda x: x[0]) for k, v in out.items() if len(v) >= 2}


def _level_key(items: list[Any]) -> str | None:
    for key in LEVEL_KEYS:
        if items and all(isinstance(i, dict) and key in i for i in items):
            return key
    return None


def _natural(text: str) -> list[Any]:
    """Sort key that puts ``sessions=2`` before ``sessions=16``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def _plot_cdfs(series: dict[str, dict[str, list[float]]], title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = sorted(series)[:MAX_PANELS]
    rows, cols = _grid(len(names))
    fig, axes = plt.subplots(
        rows, cols, figsize=(PANEL_IN[0] * cols, PANEL_IN[1] * rows), squeeze=False
    )
    for ax, name in zip(axes.flat, names, strict=False):
        for where, samples in sorted(series[name].items(), key=lambda kv: _natural(kv[0])):
            xs = sorted(samples)
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.step(xs, ys, where="post", label=f"{where} (n={len(xs)})")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("ms" if name.endswith("_ms") else "value")
        ax.set_ylabel("fraction at or below")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _plot_levels(
    series: dict[str, list[tuple[float, dict[str, float]]]], title: str, path: Path
) -> None:
    import matplotlib.pyplot as plt

    names = sorted(series)[:MAX_PANELS]
    rows, cols = _grid(len(names))
    fig, axes = plt.subplots(
        rows, cols, figsize=(PANEL_IN[0] * cols, PANEL_IN[1] * rows), squeeze=False
    )
    for ax, name in zip(axes.flat, names, strict=False):
        points = series[name]
        xs = [x for x, _ in points]
        for p in ("p50", "p90", "p99"):
            if all(p in b for _, b in points):
                ax.plot(xs, [b[p] for _, b in points], marker="o", label=p)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(name.rsplit(" vs ", 1)[-1])
        ax.set_ylabel("ms" if " vs " in name and name.split(" vs ")[0].endswith("_ms") else "")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
