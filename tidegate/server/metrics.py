"""Prometheus metrics: ``GET /metrics`` (admin-scope JWT) or, with ``metrics_port`` set, the
same exposition without authentication on a port of its own (``metrics_host``).

Nothing here sits on the media path. Almost every value is read *at scrape time* from counters
the parts keep anyway (engine schedulers, the session registry, outboxes, lanes) by one
:class:`ServerCollector`; the only thing observed as it happens is the stage times of outgoing
events (:class:`StageTimes`), into fixed-bucket histograms of the engine layer
(:class:`~tidegate.engines.metrics.Histogram`: a bisect and two additions, no lock, no
allocation; the event loop is its only writer). Counters of a session that closes are folded
into running totals (:meth:`ServerCollector.session_removed`), so totals never go down.

Metric names are documented in docs/metrics.md; a test checks that every name exported is
there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from tidegate.engines.llm import ProviderPool
from tidegate.engines.metrics import Histogram
from tidegate.pipelines.registry import MODES

from .errors import ConfigError

if TYPE_CHECKING:
    from tidegate.engines.service import EngineService
    from tidegate.protocol import ServerMessage
    from tidegate.sessions.admission import Admission
    from tidegate.sessions.session import Session, SessionRegistry

    from .gate import ConnectionGate
    from .settings import Settings

log = logging.getLogger(__name__)


class Observed(Protocol):
    """What the metrics read of the server process at scrape time (the runtime satisfies it;
    the runtime builds the metrics, so they name what they read instead of the runtime)."""

    settings: Settings
    gate: ConnectionGate
    stage_times: StageTimes
    registry: SessionRegistry
    admission: Admission
    engines: EngineService | None
    #: counts by event (connections, refusals by reason), and wire error codes sent
    counters: Counter[str]
    refusals: Counter[str]


METRICS_PATH = "/metrics"
# Milliseconds: server stages of events, from a VAD frame (ms) to a whole reply (seconds).
STAGE_BUCKETS_MS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)
STAGES = ("queue", "engine", "send", "total")
MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0


class StageTimes:
    """Per event type, histograms of the server stages its ``timing`` names: ``queue``
    (received -> engine start), ``engine`` (engine start -> end), ``send`` (engine end ->
    sent) and ``total`` (received -> sent), per ``dialect`` of the connection that sent it
    (``tidegate``: the control channel; ``realtime``: ``/v1/realtime``). Written from the
    event loop only."""

    def __init__(self) -> None:
        #: (dialect, event type) -> the four stage histograms
        self.by_type: dict[tuple[str, str], tuple[Histogram, Histogram, Histogram, Histogram]] = {}
        # A spoken turn's last audio -> its reply's first audio frame handed to the connection.
        self.voice_to_voice = Histogram(STAGE_BUCKETS_MS)

    def observe(self, msg: ServerMessage, sent_ms: float, dialect: str = "tidegate") -> None:
        timing = getattr(msg, "timing", None)
        if timing is None:
            return
        key = (dialect, msg.TYPE)
        hists = self.by_type.get(key)
        if hists is None:
            b = STAGE_BUCKETS_MS
            hists = (Histogram(b), Histogram(b), Histogram(b), Histogram(b))
            self.by_type[key] = hists
        queue, engine, send, total = hists
        received, start, end = timing.received, timing.engine_start, timing.engine_end
        if received is not None:
            total.observe(max(0.0, sent_ms - received))
            if start is not None:
                queue.observe(max(0.0, start - received))
        if start is not None and end is not None:
            engine.observe(max(0.0, end - start))
        if end is not None:
            send.observe(max(0.0, sent_ms - end))


def _buckets(h: Histogram, scale: float) -> list[tuple[str, float]]:
    out, running = [], 0
    for bound, count in zip((*h.bounds, float("inf")), h.counts, strict=True):
        running += count
        out.append(("+Inf" if bound == float("inf") else f"{bound * scale:g}", float(running)))
    return out


def _session_counts(stats: dict[str, Any]) -> Counter[tuple[str, str]]:
    """The monotonic counters of one session's stats: (metric, label) -> value."""
    c: Counter[tuple[str, str]] = Counter()
    outbox = stats.get("outbox") or {}
    c[("outbox_coalesced", "")] += outbox.get("coalesced", 0)
    lanes = stats.get("lanes") or {}
    audio = lanes.get("audio_in") or {}
    c[("audio_dropped", "silence")] += audio.get("dropped_silence_ms", 0.0) / 1000.0
    c[("audio_dropped", "speech")] += audio.get("dropped_speech_ms", 0.0) / 1000.0
    vision = lanes.get("vision") or {}
    c[("dropped", "video_frames")] += (vision.get("slot") or {}).get("dropped", 0)
    c[("dropped", "bad_frames")] += vision.get("bad_frames", 0)
    sensors = stats.get("sensors") or {}
    c[("sensor_readings", "")] += sum((sensors.get("readings") or {}).values())
    for reason, n in (sensors.get("refused") or {}).items():
        c[("sensor_refused", reason)] += n
    for sub in sensors.get("subscriptions") or ():
        c[("dropped", "sensor_readings")] += sub.get("dropped", 0)
    return c


class ServerCollector(Collector):
    """Reads what the server's parts count, at scrape time (see the module docstring)."""

    def __init__(self, runtime: Observed) -> None:
        self.runtime = runtime
        self.closed_totals: Counter[tuple[str, str]] = Counter()

    def session_removed(self, session: Session) -> None:
        """Fold a closing session's counters into the totals (they must not go down)."""
        self.closed_totals.update(_session_counts(session.stats()))

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        yield from self._engines()
        yield from self._sessions()
        refusals = CounterMetricFamily(
            "tidegate_refusals",
            "Requests refused with an error, by wire error code.",
            labels=["code"],
        )
        for code, n in sorted(rt.refusals.items()):
            refusals.add_metric([code], n)
        yield refusals
        admission = CounterMetricFamily(
            "tidegate_admission_refusals",
            "New sessions refused by admission control, by the saturated engine.",
            labels=["engine"],
        )
        for engine, n in sorted(rt.admission.refused.items()):
            admission.add_metric([engine], n)
        yield admission
        for name, key, doc in (
            ("tidegate_auth_refusals", "auth_refused", "Connections refused at authentication."),
            ("tidegate_bad_messages", "bad_messages", "Client messages that did not parse."),
            ("tidegate_outbox_closes", "too_slow", "Connections closed as too slow (4408)."),
            (
                "tidegate_encode_errors",
                "encode_errors",
                "Outbound events the connection's encoding could not carry (each became an "
                "error event).",
            ),
        ):
            yield CounterMetricFamily(name, doc, value=rt.counters[key])
        yield from self._connections()
        stages = HistogramMetricFamily(
            "tidegate_event_stage_seconds",
            "Server stages of outgoing events, from their timing: queue (received to engine "
            "start), engine, send (engine end to sent), total (received to sent), by the "
            "dialect of the connection (tidegate, realtime).",
            labels=["type", "stage", "dialect"],
        )
        for (dialect, mtype), hists in sorted(rt.stage_times.by_type.items()):
            for stage, h in zip(STAGES, hists, strict=True):
                stages.add_metric([mtype, stage, dialect], _buckets(h, 0.001), h.sum / 1000.0)
        yield stages
        v2v = rt.stage_times.voice_to_voice
        voice = HistogramMetricFamily(
            "tidegate_voice_to_voice_seconds",
            "Assistant: from a spoken turn's last audio to its reply's first audio frame "
            "handed to the connection.",
        )
        voice.add_metric([], _buckets(v2v, 0.001), v2v.sum / 1000.0)
        yield voice

    def _connections(self) -> Iterator[Metric]:
        """The connection gate (gate.py) and the control channel's own closes (control.py)."""
        rt = self.runtime
        gate = rt.gate
        yield GaugeMetricFamily(
            "tidegate_connections_open", "TCP connections open (HTTP and WebSocket).", len(gate)
        )
        yield GaugeMetricFamily(
            "tidegate_connections_max",
            "The connection cap in force (max_connections, lowered to the open-file limit).",
            gate.max_connections,
        )
        refused = CounterMetricFamily(
            "tidegate_connections_refused",
            "Connections refused: per_address (429), cap (503), subject (control connections "
            "without a session over the subject's cap, 4429).",
            labels=["reason"],
        )
        refused.add_metric(["per_address"], gate.counts["refused_address"])
        refused.add_metric(["cap"], gate.counts["refused_cap"])
        refused.add_metric(["subject"], rt.counters["connections_refused"])
        yield refused
        dropped = CounterMetricFamily(
            "tidegate_connections_dropped",
            "Connections dropped: handshake_timeout, evicted (at the cap, for a new one), "
            "stalled (a peer that does not read, aborted at its close), idle (4409), "
            "token_expired (4401).",
            labels=["reason"],
        )
        dropped.add_metric(["handshake_timeout"], gate.counts["handshake_timeouts"])
        dropped.add_metric(["evicted"], gate.counts["evicted"])
        dropped.add_metric(["stalled"], gate.counts["aborted_stalled"])
        dropped.add_metric(["idle"], rt.counters["idle_closes"])
        dropped.add_metric(["token_expired"], rt.counters["token_expired_closes"])
        yield dropped

    def _engines(self) -> Iterator[Metric]:
        engines = self.runtime.engines
        depth = GaugeMetricFamily(
            "tidegate_engine_queue_depth",
            "Requests waiting in an engine's queue.",
            labels=["engine"],
        )
        capacity = GaugeMetricFamily(
            "tidegate_engine_queue_capacity", "An engine queue's bound.", labels=["engine"]
        )
        requests = CounterMetricFamily(
            "tidegate_engine_requests",
            "Engine requests by outcome (completed, failed, refused, deadline_missed, cancelled).",
            labels=["engine", "outcome"],
        )
        batches = CounterMetricFamily(
            "tidegate_engine_batches", "Batches an engine ran.", labels=["engine"]
        )
        wait = HistogramMetricFamily(
            "tidegate_engine_wait_seconds",
            "Time a request waited in an engine's queue before its batch ran.",
            labels=["engine"],
        )
        urgent_wait = HistogramMetricFamily(
            "tidegate_engine_urgent_wait_seconds",
            "Time an urgent request (an ASR final, a reply's first audio) waited in an engine's "
            "queue before its batch ran.",
            labels=["engine"],
        )
        run = HistogramMetricFamily(
            "tidegate_engine_run_seconds",
            "Time an engine took to run one batch (the LLM: one decode step).",
            labels=["engine"],
        )
        size = HistogramMetricFamily(
            "tidegate_engine_batch_size", "Requests in one batch.", labels=["engine"]
        )
        prefill = HistogramMetricFamily(
            "tidegate_llm_prefill_seconds", "Time the LLM took to prefill joining prompts."
        )
        tokens = CounterMetricFamily("tidegate_llm_tokens", "Tokens the LLM generated.")
        if engines is not None:
            for name, sched in sorted(engines.schedulers.items()):
                load = sched.queue_load()
                depth.add_metric([name], load.depth)
                capacity.add_metric([name], load.max_items)
                c = sched.counters
                for outcome in ("completed", "failed", "refused", "deadline_missed", "cancelled"):
                    requests.add_metric([name, outcome], getattr(c, outcome))
                batches.add_metric([name], c.batches)
                wait.add_metric([name], _buckets(c.queue_wait_ms, 0.001), c.queue_wait_ms.sum / 1e3)
                uw = c.urgent_queue_wait_ms
                urgent_wait.add_metric([name], _buckets(uw, 0.001), uw.sum / 1e3)
                run.add_metric([name], _buckets(c.run_ms, 0.001), c.run_ms.sum / 1e3)
                size.add_metric([name], _buckets(c.batch_size, 1.0), c.batch_size.sum)
            for name, llm in sorted(engines.batchers.items()):
                load = llm.queue_load()
                depth.add_metric([name], load.depth)
                capacity.add_metric([name], load.max_items)
                if isinstance(llm, ProviderPool):  # no local steps: its providers' metrics
                    for outcome in ("completed", "failed", "refused", "cancelled"):
                        requests.add_metric([name, outcome], getattr(llm, outcome))
                    continue
                lc = llm.counters
                for outcome in ("completed", "failed", "refused", "deadline_missed", "cancelled"):
                    requests.add_metric([name, outcome], getattr(lc, outcome))
                batches.add_metric([name], lc.steps)
                run.add_metric([name], _buckets(lc.step_ms, 0.001), lc.step_ms.sum / 1e3)
                size.add_metric([name], _buckets(lc.batch_size, 1.0), lc.batch_size.sum)
                prefill.add_metric([], _buckets(lc.prefill_ms, 0.001), lc.prefill_ms.sum / 1e3)
                tokens.add_metric([], lc.tokens)
            pool = engines.media  # image decoding and resampling (engines/workers.py)
            depth.add_metric(["media"], pool.pending)
            capacity.add_metric(["media"], pool.max_pending)
            for outcome, n in (("completed", pool.done), ("failed", pool.failed)):
                requests.add_metric(["media", outcome], n)
            requests.add_metric(["media", "refused"], pool.refused)
        yield from (
            depth,
            capacity,
            requests,
            batches,
            wait,
            urgent_wait,
            run,
            size,
            prefill,
            tokens,
        )
        yield from self._providers()

    def _providers(self) -> Iterator[Metric]:
        """The LLM providers (llm_runtime=providers): state, requests, failures, time to
        first token, failovers. Nothing names a key or a URL."""
        engines = self.runtime.engines
        pool = engines.batchers.get("llm") if engines is not None else None
        state = GaugeMetricFamily(
            "tidegate_llm_provider_state",
            "A provider's circuit breaker: 1 for its current state (closed, open, half_open).",
            labels=["provider", "state"],
        )
        in_flight = GaugeMetricFamily(
            "tidegate_llm_provider_in_flight",
            "Requests a provider serves now.",
            labels=["provider"],
        )
        requests = CounterMetricFamily(
            "tidegate_llm_provider_requests",
            "Requests sent to a provider by outcome (completed, failed, refused: a 4xx other "
            "than 429) and requests that skipped it (skipped_open, skipped_full).",
            labels=["provider", "outcome"],
        )
        failovers = CounterMetricFamily(
            "tidegate_llm_provider_failovers",
            "Requests that moved on from a provider to the next, before the first token "
            "(before_first_token) or during the reply (midstream).",
            labels=["provider", "when"],
        )
        standby = CounterMetricFamily(
            "tidegate_llm_provider_standby_warms",
            "Warming requests a provider got as the next one in a reply's chain "
            "(standby_every_tokens), by outcome (answered, failed: nothing else changes).",
            labels=["provider", "outcome"],
        )
        ttft = HistogramMetricFamily(
            "tidegate_llm_provider_first_token_seconds",
            "From sending a request to a provider to its first token.",
            labels=["provider"],
        )
        failover = HistogramMetricFamily(
            "tidegate_llm_failover_seconds",
            "User-visible failover: from a provider's failure to the first token of the next.",
        )
        switch = HistogramMetricFamily(
            "tidegate_llm_failover_switch_seconds",
            "The failover switch: from a provider's failure to the request sent to the next.",
        )
        if isinstance(pool, ProviderPool):
            for p in pool.providers:
                current = p.breaker.state.value
                for st in ("closed", "open", "half_open"):
                    state.add_metric([p.name, st], 1.0 if st == current else 0.0)
                in_flight.add_metric([p.name], p.in_flight)
                c = p.stats
                outcomes = {
                    "completed": c.completed,
                    "failed": c.failures - c.refusals,
                    "refused": c.refusals,
                    "skipped_open": c.skipped_open,
                    "skipped_full": c.skipped_full,
                }
                for outcome, value in outcomes.items():
                    requests.add_metric([p.name, outcome], value)
                failovers.add_metric(
                    [p.name, "before_first_token"], c.failovers_from - c.failovers_midstream
                )
                failovers.add_metric([p.name, "midstream"], c.failovers_midstream)
                standby.add_metric([p.name, "answered"], c.standby_warms)
                standby.add_metric([p.name, "failed"], c.standby_warm_failures)
                ttft.add_metric([p.name], _buckets(c.ttft_ms, 0.001), c.ttft_ms.sum / 1e3)
            h = pool.failover_ms
            failover.add_metric([], _buckets(h, 0.001), h.sum / 1e3)
            h = pool.switch_ms
            switch.add_metric([], _buckets(h, 0.001), h.sum / 1e3)
        yield from (state, in_flight, requests, failovers, standby, ttft, failover, switch)

    def _sessions(self) -> Iterator[Metric]:
        rt = self.runtime
        reg = rt.registry
        by_mode: Counter[str] = Counter()
        backlog_messages = backlog_bytes = 0
        credit_messages = credit_bytes = 0
        live: Counter[tuple[str, str]] = Counter()
        for session in reg:
            by_mode[session.mode.name if session.mode is not None else "none"] += 1
            st = session.outbox.buffer.stats
            backlog_messages += st.depth
            backlog_bytes += st.depth_bytes
            attachment = session.attachment
            if attachment is not None:
                conn = attachment.stats()
                credit_messages += conn.get("credit_messages", 0)
                credit_bytes += conn.get("credit_bytes", 0)
            live.update(_session_counts(session.stats()))
        sessions = GaugeMetricFamily(
            "tidegate_sessions", "Sessions this node holds, by mode.", labels=["mode"]
        )
        for mode in sorted(set(by_mode) | set(MODES)):  # every mode of the registry, 0 too
            sessions.add_metric([mode], by_mode[mode])
        yield sessions
        stats = reg.stats()
        yield GaugeMetricFamily(
            "tidegate_sessions_attached",
            "Sessions with a connection (the rest wait to be resumed).",
            value=stats["attached"],
        )
        events = CounterMetricFamily(
            "tidegate_session_events",
            "Session lifecycle: created, resumed, expired, refused (node or tenant limit).",
            labels=["event"],
        )
        for event in ("created", "resumed", "expired", "refused"):
            events.add_metric([event], stats[event])
        yield events
        yield GaugeMetricFamily(
            "tidegate_outbox_backlog_messages",
            "Events queued for clients, all sessions.",
            value=backlog_messages,
        )
        yield GaugeMetricFamily(
            "tidegate_outbox_backlog_bytes",
            "Bytes of events queued for clients, all sessions (estimated).",
            value=backlog_bytes,
        )
        yield GaugeMetricFamily(
            "tidegate_upload_credit_messages",
            "Upload credit the attached clients hold (messages they may still send).",
            value=credit_messages,
        )
        yield GaugeMetricFamily(
            "tidegate_upload_credit_bytes",
            "Upload credit the attached clients hold (bytes they may still send).",
            value=credit_bytes,
        )
        totals = self.closed_totals + live
        yield CounterMetricFamily(
            "tidegate_outbox_coalesced",
            "Events merged into a queued one (token deltas) instead of queued.",
            value=totals[("outbox_coalesced", "")],
        )
        audio = CounterMetricFamily(
            "tidegate_audio_dropped_seconds",
            "Inbound audio dropped from full audio lanes, silence first.",
            labels=["kind"],
        )
        for kind in ("silence", "speech"):
            audio.add_metric([kind], totals[("audio_dropped", kind)])
        yield audio
        dropped = CounterMetricFamily(
            "tidegate_dropped",
            "Items dropped by a flow policy: video_frames (latest-only slot), bad_frames "
            "(undecodable), sensor_readings (coalesced for a slow subscriber).",
            labels=["what"],
        )
        for what in ("video_frames", "bad_frames", "sensor_readings"):
            dropped.add_metric([what], totals[("dropped", what)])
        yield dropped
        yield CounterMetricFamily(
            "tidegate_sensor_readings",
            "Sensor readings accepted.",
            value=totals[("sensor_readings", "")],
        )
        refused = CounterMetricFamily(
            "tidegate_sensor_refused",
            "Sensor readings refused, by reason.",
            labels=["reason"],
        )
        for reason in ("rate_limited", "out_of_order", "invalid", "channels"):
            refused.add_metric([reason], totals[("sensor_refused", reason)])
        yield refused


class ServerMetrics:
    """The registry (ours and the process collector) and the optional separate port."""

    def __init__(self, runtime: Observed) -> None:
        self.runtime = runtime
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = ServerCollector(runtime)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)
        self._server: asyncio.Server | None = None
        self.port: int | None = None
        self.scrapes = 0

    def exposition(self) -> bytes:
        self.scrapes += 1
        return generate_latest(self.registry)

    async def start(self) -> None:
        """Serve /metrics without authentication on ``metrics_port``, if it is set."""
        s = self.runtime.settings
        if s.metrics_port is None:
            return
        if not 0 <= s.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be 0..65535, got {s.metrics_port}")
        self._server = await asyncio.start_server(self._serve, s.metrics_host, s.metrics_port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d%s", s.metrics_host, self.port, METRICS_PATH)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A minimal HTTP/1.0 answer: GET /metrics, or 404/405."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_REQUEST_BYTES:
                raise ValueError("request head too large")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            if path != METRICS_PATH:
                status, ctype, body = "404 Not Found", "text/plain", b"only /metrics here\n"
            elif method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            else:
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self.exposition()
                if method == "HEAD":
                    body = b""
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}"
                "\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.LimitOverrunError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
