"""docs/realtime.md covers the whole GA catalogue, and what it says is emitted is what the
translator can emit."""

from __future__ import annotations

import re
from pathlib import Path

from tidegate.protocol.realtime import translator

from .samples import GA_CLIENT_EVENTS, GA_SERVER_EVENTS

DOC = Path(__file__).resolve().parents[3] / "docs" / "realtime.md"


def _rows(heading: str) -> dict[str, str]:
    """First-column event names of the table under ``heading`` -> their status cell."""
    text = DOC.read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`([a-z_.]+)`", cells[0]):
            base = name
            for suffix in re.findall(r"/ `?(\.[a-z_]+)`?", cells[0]):
                rows[base.rsplit(".", 1)[0] + suffix] = cells[1]
            rows[base] = cells[1]
    return rows


def test_every_ga_client_event_is_documented() -> None:
    """Each GA client event has a row: supported, partial or not."""
    rows = _rows("## Client events")
    assert set(rows) >= GA_CLIENT_EVENTS
    assert {rows[e] for e in GA_CLIENT_EVENTS} <= {"supported", "partial", "not"}


def test_every_ga_server_event_is_documented_and_emitted_ones_are_served() -> None:
    """Each GA server event has a row; those the translator emits are supported or partial,
    and the rest are marked not."""
    rows = _rows("## Server events")
    assert set(rows) >= GA_SERVER_EVENTS, sorted(GA_SERVER_EVENTS - set(rows))
    source = Path(translator.__file__).read_text()
    emitted = set(
        re.findall(
            r'"((?:session|input_audio_buffer|output_audio_buffer|conversation|response|rate_limits|error)[a-z_.]*)"',
            source,
        )
    )
    emitted &= GA_SERVER_EVENTS
    assert emitted, "no emitted events found"
    for event in GA_SERVER_EVENTS:
        assert rows[event] == ("not" if event not in emitted else rows[event]), event
        if event in emitted:
            assert rows[event] in {"supported", "partial"}, event
