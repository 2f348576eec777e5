"""The progress line is drawn in place on a terminal and says nothing elsewhere."""

from __future__ import annotations

import io

from tidegate.bench.load import parse_prometheus
from tidegate.bench.progress import Progress


def test_progress_redraws_one_line_when_enabled() -> None:
    """Stages and counts are drawn with a carriage return, each draw padding over the last;
    done() ends the line."""
    out = io.StringIO()
    p = Progress(out, enabled=True, refresh_s=0.0)
    p.stage("vision ws: 4 session(s)")
    p.update(results=12)
    p.done()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "vision ws: 4 session(s)" in text and "results 12" in text


def test_progress_is_quiet_when_not_a_terminal() -> None:
    """A StringIO is not a TTY: nothing is written."""
    out = io.StringIO()
    p = Progress(out)
    p.stage("x")
    p.update(n=1)
    p.done()
    assert out.getvalue() == ""


def test_prometheus_text_is_read() -> None:
    """Unlabelled samples are read; comments and labelled series are skipped."""
    text = (
        "# HELP process_cpu_seconds_total Total user and system CPU time.\n"
        "# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total 12.5\n"
        "process_resident_memory_bytes 1.5e+08\n"
        'tidegate_queue_depth{engine="asr"} 3\n'
    )
    got = parse_prometheus(text)
    assert got == {"process_cpu_seconds_total": 12.5, "process_resident_memory_bytes": 1.5e8}
