"""Prometheus families of the record writer (docs/metrics.md, "Records"): the database link,
the in-memory queue and the journal on disk, read at scrape time from the writer's counters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .writer import RecordWriter


class RecordWriterCollector(Collector):
    """The record writer's families for the server's registry."""

    def __init__(self, writer: RecordWriter) -> None:
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        st = self.writer.stats()
        journal, queue = st["journal"], st["queue"]
        yield GaugeMetricFamily(
            "tidegate_db_up",
            "1 while the record writer commits to the database; 0 while it only journals.",
            value=1 if st["available"] else 0,
        )
        yield CounterMetricFamily(
            "tidegate_db_committed_records",
            "Records committed to the database.",
            value=st["committed"],
        )
        yield CounterMetricFamily(
            "tidegate_db_failures",
            "Database batches that failed (journaled, retried).",
            value=st["failures"],
        )
        yield CounterMetricFamily(
            "tidegate_db_outages", "Times the database became unreachable.", value=st["outages"]
        )
        yield GaugeMetricFamily(
            "tidegate_db_writer_up",
            "1 while the record writer runs; 0 from a failure of its loop until it restarts.",
            value=1 if st["running"] else 0,
        )
        yield CounterMetricFamily(
            "tidegate_db_writer_restarts",
            "Times the record writer started again after a failure.",
            value=st["restarts"],
        )
        quarantined = CounterMetricFamily(
            "tidegate_db_quarantined_records",
            "Records moved to the dead-letter file, by the stage that could not take them.",
            labels=["stage"],
        )
        for stage, n in sorted(st["quarantined"].items()):
            quarantined.add_metric([stage], n)
        yield quarantined
        yield GaugeMetricFamily(
            "tidegate_db_queue_records",
            "Records waiting in memory for the writer.",
            value=queue["depth"],
        )
        yield CounterMetricFamily(
            "tidegate_db_queue_dropped",
            "Records the full in-memory queue refused.",
            value=queue["dropped"] + queue["rejected"],  # policy reject: refusals are rejected
        )
        yield GaugeMetricFamily(
            "tidegate_journal_bytes", "Size of the record journal on disk.", value=journal["bytes"]
        )
        yield GaugeMetricFamily(
            "tidegate_journal_pending_records",
            "Journaled records not yet committed to the database.",
            value=journal["pending"],
        )
