"""What one server process holds: settings, the token verifier, the sessions, counters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from tidegate.cluster import Cluster
from tidegate.cluster.metrics import ClusterCollector
from tidegate.engines.registry import LLM
from tidegate.sessions.admission import Admission
from tidegate.sessions.api import Sessions
from tidegate.sessions.limits import Limiter
from tidegate.sessions.sensorbus import SensorBus
from tidegate.sessions.session import SessionRegistry
from tidegate.store.metrics import RecordWriterCollector
from tidegate.store.writer import RecordWriter

from .auth import TokenVerifier
from .gate import ConnectionGate
from .metrics import ServerMetrics, StageTimes
from .modes import ModeStarter
from .settings import Settings

if TYPE_CHECKING:
    from tidegate.engines.service import EngineService

log = logging.getLogger(__name__)
WATCHDOG_INTERVAL_S = 1.0


def prepare_offline(data_dir: Path, name: str) -> None:
    """Prepare a default model an engine needs from what is installed (no download): the
    converters are imported only when a model is missing."""
    from tidegate.tools.prepare import prepare_offline as prepare

    prepare(data_dir, name)


class Channel(Protocol):
    """A live control connection, as the send watchdog sees it (server/control.py)."""

    def check_send_stuck(self, now_s: float) -> bool: ...


class Runtime:
    """Shared state of the application, built at start-up and closed at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.verifier = TokenVerifier.from_settings(settings)
        self.recorder = RecordWriter.from_settings(settings)
        self.limiter = Limiter(settings)
        self.gate = ConnectionGate.from_settings(settings)  # every TCP connection (gate.py)
        self.stage_times = StageTimes()
        self.registry = SessionRegistry(
            settings, recorder=self.recorder, limiter=self.limiter, stage_times=self.stage_times
        )
        self.cluster = Cluster(
            settings,
            self.registry,
            self.limiter,
            node_id=self.recorder.node_id,
            llm_model=settings.engine(LLM).model,
        )
        self.counters: Counter[str] = Counter()
        self.sensor_bus: SensorBus = self.cluster.sensor_bus  # over Redis when it is set
        self.admission = Admission(settings)
        #: the one way to open, resume and close a session (every transport calls it)
        self.sessions = Sessions(
            self,
            self.registry,
            self.cluster,
            self.admission,
            self.sensor_bus,
            ModeStarter(settings),
            default_mode=settings.default_mode,
            max_tools_items=settings.assistant_max_tools_items,
            max_tools_bytes=settings.assistant_max_tools_bytes,
            metrics_interval_s=settings.metrics_interval_s,
        )
        self.refusals: Counter[str] = Counter()  # wire error codes sent, for /metrics
        self.metrics = ServerMetrics(self)
        self.metrics.registry.register(ClusterCollector(self.cluster))
        self.metrics.registry.register(RecordWriterCollector(self.recorder))
        self.metrics.registry.register(self.verifier.collector)
        self.registry.removed_hooks.append(self.metrics.collector.session_removed)
        self.channels: set[Channel] = set()
        #: control connections without a session, per subject (tenant, sub); see control.py
        self.sessionless: Counter[tuple[str, str]] = Counter()
        self.ready = False
        self.draining = False
        self.startup_error: str | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        #: Realtime WebRTC calls being served (realtime_calls.py): each ends its session
        self.calls: set[asyncio.Task[Any]] = set()
        #: the calls whose oai-events channel is open, by call id (their session's id): what
        #: a sideband (/v1/realtime?call_id=) attaches to (realtime_calls.CallSocket)
        self.call_sockets: dict[str, Any] = {}
        self.engines: EngineService | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await self.verifier.start()  # trusted issuers' keys, fetched in the background
        await self.recorder.open()
        await self.cluster.start()
        self._tasks.append(loop.create_task(self.recorder.run(), name="db-writer"))
        self._tasks.append(loop.create_task(self.registry.run_reaper(), name="session-reaper"))
        self._tasks.append(loop.create_task(self._watchdog(), name="send-watchdog"))
        await self.metrics.start()  # the separate metrics port, if configured
        if self.settings.engines:
            # Load in the background: /healthz answers at once, /readyz once engines are warm.
            self._tasks.append(loop.create_task(self._start_engines(), name="engine-start"))
        else:
            self.ready = True

    @property
    def engines_warming(self) -> bool:
        """Engines are configured but not loaded yet (and have not failed)."""
        return bool(self.settings.engines) and self.engines is None and self.startup_error is None

    async def _start_engines(self) -> None:
        """Load and warm up the configured engines (model work runs in threads, so the loop
        keeps serving); ``ready`` turns true after this, ``startup_error`` says why not."""
        from tidegate.engines.models import load_custom_models
        from tidegate.engines.service import EngineService

        from .engines import engine_specs

        s = self.settings
        try:
            custom = load_custom_models(s.models_file) if s.models_file else {}
            service = EngineService(
                engine_specs(s),
                s.data_dir,
                custom=custom,
                prepare=prepare_offline,
                media_worker_threads=s.media_worker_threads,
                media_max_pending_items=s.media_max_pending_items,
            )
        except Exception as e:
            self._engines_failed(e)
            return
        try:
            await service.start()
        except asyncio.CancelledError:
            await service.close()
            raise
        except Exception as e:
            await service.close()
            self._engines_failed(e)
            return
        self.engines = service
        self.ready = True
        log.info("engines ready: %s", ", ".join(s.engines))

    def _engines_failed(self, error: Exception) -> None:
        self.startup_error = f"engines failed to start: {error}"
        log.error("%s", self.startup_error)

    def spawn_call(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a Realtime call's task (owned here: cancelled at shutdown)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.calls.add(task)
        task.add_done_callback(self.calls.discard)
        return task

    async def stop(self) -> None:
        self.ready = False
        self.draining = True
        calls = list(self.calls)
        for task in calls:
            task.cancel()
        if calls:
            await asyncio.gather(*calls, return_exceptions=True)
        await self.registry.close_all()
        await self.cluster.close()
        await self.recorder.close()  # journals what is queued, tries a last commit
        if self.engines is not None:
            await self.engines.close()
        await self.sensor_bus.close()  # the sessions closed their subscriptions already
        await self.metrics.close()
        await self.verifier.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _watchdog(self) -> None:
        """Close connections whose send has been stuck past ``send_timeout_s``."""
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            now = time.monotonic()
            for channel in list(self.channels):
                try:
                    channel.check_send_stuck(now)
                except Exception:
                    log.exception("send watchdog failed on a channel")

    def limits(self) -> dict[str, Any]:
        """The limits a client is told in ``session.created``."""
        s = self.settings
        return {
            "max_message_bytes": s.max_message_bytes,
            "max_string_chars": s.max_string_chars,
            "max_depth": s.max_depth,
            "outbox_max_messages": s.outbox_max_messages,
            "upload_credit_messages": s.upload_credit_messages,
            "upload_credit_bytes": s.upload_credit_bytes,
            "session_resume_s": s.session_resume_s,
        }

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """Browsers send Origin; others usually do not. Unlisted origins must be same-origin."""
        if origin is None:
            return True
        if origin in self.settings.allowed_origins or "*" in self.settings.allowed_origins:
            return True
        if self.settings.allowed_origins:
            return False
        return urlsplit(origin).netloc == (host or "")
