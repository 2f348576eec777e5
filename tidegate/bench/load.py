"""What a load level costs: the server's CPU and memory, and the load generator's own CPU.

Server figures come from the server's Prometheus endpoint (``/metrics``: the default process
collector's ``process_cpu_seconds_total`` and ``process_resident_memory_bytes``, read with an
admin token) when it serves one; else from ``/proc`` of a server this harness started itself;
else they are left out. ``source`` in the figures says which. The generator's CPU is this
process's (every thread: aiortc encodes and decrypts on threads), from ``time.process_time``,
so that a report shows when the generator, not the server, was the limit.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .target import Target, process_cpu_s, process_rss_bytes

T = TypeVar("T")

METRICS_TIMEOUT_S = 5.0
MB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    wall_s: float  # time.monotonic()
    generator_cpu_s: float
    server_cpu_s: float | None
    server_rss_bytes: float | None


class ServerResources:
    """Reads the server's CPU seconds and resident memory (see the module docstring)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.source: str | None = None
        self._probed = False

    async def read(self) -> tuple[float | None, float | None]:
        if not self._probed:
            self._probed = True
            if await self._from_metrics() is not None:
                self.source = "metrics"
            elif self.target.pid:
                self.source = "proc"
        if self.source == "metrics":
            got = await self._from_metrics()
            if got is not None:
                return got
        if self.source == "proc" and self.target.pid:
            return process_cpu_s(self.target.pid), float(process_rss_bytes(self.target.pid))
        return None, None

    async def _from_metrics(self) -> tuple[float, float] | None:
        url = self.target.metrics_url or self.target.http_url + "/metrics"
        token = self.target.admin()
        try:
            text = await asyncio.to_thread(_get_text, url, token)
        except (OSError, ValueError):
            return None
        values = parse_prometheus(text)
        cpu = values.get("process_cpu_seconds_total")
        rss = values.get("process_resident_memory_bytes")
        if cpu is None or rss is None:
            return None
        return cpu, rss


async def metrics_text(target: Target) -> str | None:
    """The server's /metrics exposition (an admin token), or None when it cannot be read."""
    url = target.metrics_url or target.http_url + "/metrics"
    try:
        return await asyncio.to_thread(_get_text, url, target.admin())
    except (OSError, ValueError):
        return None


def _get_text(url: str, token: str | None) -> str:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=METRICS_TIMEOUT_S) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as e:
        raise ValueError(f"{url}: HTTP {e.code}") from None


def parse_prometheus(text: str) -> dict[str, float]:
    """Unlabelled samples of a Prometheus text exposition (``name value``)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or "{" in line:
            continue
        parts = line.split()
        if len(parts) >= 2:
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return out


class LoadMeter:
    """``await meter.baseline()`` with no session open, then per level ``await
    meter.start()`` ... ``await meter.stop(sessions)`` for that level's figures."""

    def __init__(self, target: Target) -> None:
        self.server = ServerResources(target)
        self.idle_rss: float | None = None
        self._start: Sample | None = None

    async def sample(self) -> Sample:
        cpu, rss = await self.server.read()
        return Sample(time.monotonic(), time.process_time(), cpu, rss)

    async def baseline(self) -> dict[str, Any]:
        """The idle server's memory (what a session's memory is counted from)."""
        s = await self.sample()
        self.idle_rss = s.server_rss_bytes
        out: dict[str, Any] = {"source": self.server.source}
        if s.server_rss_bytes is not None:
            out["server_rss_mb"] = round(s.server_rss_bytes / MB, 1)
        return out

    async def start(self) -> None:
        self._start = await self.sample()

    async def stop(self, sessions: int) -> dict[str, Any]:
        a, b = self._start, await self.sample()
        assert a is not None, "start() first"
        wall = max(b.wall_s - a.wall_s, 1e-9)
        out: dict[str, Any] = {
            "window_s": round(wall, 3),
            "generator_cpu_s_per_s": round((b.generator_cpu_s - a.generator_cpu_s) / wall, 4),
            "source": self.server.source,
        }
        if a.server_cpu_s is not None and b.server_cpu_s is not None:
            cpu = (b.server_cpu_s - a.server_cpu_s) / wall
            out["server_cpu_s_per_s"] = round(cpu, 4)
            out["server_cpu_s_per_session_s"] = round(cpu / max(sessions, 1), 4)
        if b.server_rss_bytes is not None:
            out["server_rss_mb"] = round(b.server_rss_bytes / MB, 1)
            if self.idle_rss is not None:
                extra = (b.server_rss_bytes - self.idle_rss) / MB
                out["server_rss_mb_per_session"] = round(extra / max(sessions, 1), 2)
        return out


def session_counts(
    spec: str, *, ramp: bool, ramp_max: int, option: str = "--sessions"
) -> list[int]:
    """``--sessions 1,2,4,8`` as a list; with ``--ramp``: 1, 2, 4, ... up to ``ramp_max``
    (the caller stops at the first level that loses real time)."""
    if ramp:
        out, n = [], 1
        while n <= ramp_max:
            out.append(n)
            n *= 2
        return out
    try:
        counts = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise SystemExit(f"{option}: expected counts like 1,2,4,8, got {spec!r}")
    return counts


def real_time_lost_at(levels: list[dict[str, Any]], key: str = "sessions") -> int | None:
    """The smallest level that did not keep real time (``real_time_held`` false), if any."""
    lost = [lv[key] for lv in levels if lv.get("real_time_held") is False]
    return min(lost) if lost else None


START_TIMEOUT_S = 60.0


async def wait_started(
    started: Sequence[asyncio.Event],
    tasks: Sequence[asyncio.Future[Any]],
    timeout_s: float = START_TIMEOUT_S,
) -> None:
    """Wait until every session of a level says it is sending; if one fails first (a refused
    session, ICE that did not connect), cancel the others and raise its error at once rather
    than waiting out the timeout."""
    everyone = asyncio.ensure_future(asyncio.gather(*(ev.wait() for ev in started)))
    try:
        pending: set[asyncio.Future[Any]] = {everyone, *tasks}
        deadline = time.monotonic() + timeout_s
        while not everyone.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"sessions not started within {timeout_s:g} s")
            done, pending = await asyncio.wait(
                pending, timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            for t in done:
                if t is not everyone and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        everyone.cancel()
        await asyncio.gather(everyone, return_exceptions=True)


SessionFn = Callable[[int, asyncio.Event, asyncio.Event], Awaitable[T]]


async def run_level(
    session: SessionFn[T], n: int, meter: LoadMeter, duration_s: float
) -> tuple[list[T], dict[str, Any], float]:
    """One load level: ``n`` sessions, ``session(i, started, stop)`` each (it sets ``started``
    once it is sending and returns its log once ``stop`` is set); measured for ``duration_s``
    once all have started. Returns the logs, the meter's figures and the measured wall time.
    The tasks are this function's: on any failure they are cancelled and awaited."""
    stop = asyncio.Event()
    starts = [asyncio.Event() for _ in range(n)]
    tasks = [asyncio.ensure_future(session(i, ev, stop)) for i, ev in enumerate(starts)]
    try:
        await wait_started(starts, tasks)
        await meter.start()
        t0 = time.monotonic()
        await asyncio.sleep(duration_s)
        wall = time.monotonic() - t0
        load = await meter.stop(n)
    except BaseException:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    stop.set()
    return list(await asyncio.gather(*tasks)), load, wall
