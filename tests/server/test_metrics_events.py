"""Per-session metrics events."""

from __future__ import annotations

from pathlib import Path

from tests.support import scaled
from tidegate.protocol.messages import InputText, Metrics

from .conftest import make_settings, run_server


async def test_metrics_event_reports_the_session(tmp_path: Path) -> None:
    """A session emits `metrics` periodically with its connection, outbox and lane counters."""
    settings = make_settings(tmp_path, metrics_interval_s=0.1)
    async with run_server(settings) as live, await live.client() as client:
        created = await client.create_session({"mode": "loopback"})
        await client.send(InputText(text="count me"))
        await client.ping()
        event = await client.wait_for(Metrics, timeout_s=scaled(5))
        stats = event.stats
        assert stats["session_id"] == created.session_id
        assert stats["mode"] == "loopback"
        assert stats["connection"]["encoding"] == "cbor"
        assert stats["connection"]["pings"] >= 1
        assert stats["outbox"]["policy"] == "coalesce"
        assert stats["outbox"]["max_items"] == live.settings.outbox_max_messages
        assert stats["lanes"]["responses"] == 1
