"""Prometheus ``/metrics``: admin-scope JWT on the main port, or no auth on ``metrics_port``;
the process collector, sessions by mode, refusals by code, sensor counters; every exported
name documented in docs/metrics.md."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tidegate.protocol.client import RefusedError
from tidegate.protocol.messages import InputSensor, InputText, ResponseDone

from .conftest import LiveServer, make_settings, run_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def documented(text: str) -> None:
    """Every tidegate_* and process_* family in ``text`` is named in docs/metrics.md."""
    doc = DOC.read_text()
    names = {f.name for f in text_string_to_metric_families(text)}
    missing = sorted(n for n in names if n.startswith("tidegate_") and f"`{n}" not in doc)
    assert not missing, f"not in docs/metrics.md: {missing}"


async def test_metrics_need_an_admin_token(server: LiveServer) -> None:
    """No token is 401, a session token 403, an admin token gets the exposition."""
    async with httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/metrics")).status_code == 401
        user = {"Authorization": f"Bearer {server.token()}"}
        assert (await http.get("/metrics", headers=user)).status_code == 403
        admin = {"Authorization": f"Bearer {server.token(scopes=('session', 'admin'))}"}
        r = await http.get("/metrics", headers=admin)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)
    assert got[("process_cpu_seconds_total", ())] > 0
    assert got[("process_resident_memory_bytes", ())] > 0


async def test_sessions_refusals_and_sensors_are_counted(server: LiveServer) -> None:
    """A loopback session shows under its mode; a refused message counts under its code; an
    accepted and a refused sensor reading count; the totals of a closed session stay."""
    admin = {"Authorization": f"Bearer {server.token(scopes=('session', 'admin'))}"}
    async with await server.client() as client, httpx.AsyncClient(base_url=server.http) as http:
        await client.create_session({"mode": "loopback"})
        await client.send(InputSensor(channel="temp", ts=1.0, values=(1.0,)))
        with pytest.raises(RefusedError):
            await client.request(InputSensor(id="late", channel="temp", ts=0.5, values=(1.0,)))
        await client.send(InputText(id="t", text="hello"))
        await client.wait_for(ResponseDone)
        during = samples((await http.get("/metrics", headers=admin)).text)
        await client.close_session()
        after = samples((await http.get("/metrics", headers=admin)).text)
        text = (await http.get("/metrics", headers=admin)).text
    assert during[("tidegate_sessions", (("mode", "loopback"),))] == 1
    assert after[("tidegate_sessions", (("mode", "loopback"),))] == 0
    assert during[("tidegate_refusals_total", (("code", "invalid_field"),))] == 1
    for got in (during, after):
        assert got[("tidegate_sensor_readings_total", ())] == 1
        assert got[("tidegate_sensor_refused_total", (("reason", "out_of_order"),))] == 1
    assert after[("tidegate_session_events_total", (("event", "created"),))] == 1
    documented(text)


async def test_a_metrics_port_serves_without_auth(tmp_path: Path) -> None:
    """With metrics_port set, /metrics answers there without a token; other paths are 404;
    the main port still needs the admin scope."""
    settings = make_settings(tmp_path, metrics_port=0)
    async with run_server(settings) as live, httpx.AsyncClient() as http:
        port = live.runtime.metrics.port
        assert port is not None and port != live.port
        r = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200
        assert re.search(r"^process_resident_memory_bytes ", r.text, re.M)
        assert (await http.get(f"http://127.0.0.1:{port}/other")).status_code == 404
        assert (await http.get(f"{live.http}/metrics")).status_code == 401
