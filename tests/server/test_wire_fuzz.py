"""Fuzzing a live server: random and mutated payloads over a real connection."""

from __future__ import annotations

import random
from pathlib import Path

import cbor2

from tidegate.protocol import ErrorCode
from tidegate.protocol.client import Client
from tidegate.protocol.messages import Error, InputText, Ping, Pong, ResponseDone

from ..protocol.samples import CLIENT_SAMPLES
from .conftest import make_settings, run_server

DOCUMENTED = {c.value for c in ErrorCode}


async def test_garbage_over_the_wire_gets_documented_errors_only(tmp_path: Path) -> None:
    """500 random and mutated payloads: every reply is a documented error; the session lives."""
    settings = make_settings(tmp_path, max_bad_messages=10_000)
    rng = random.Random(20261123)
    valid = [
        cbor2.dumps(m.to_wire())
        for m in CLIENT_SAMPLES
        if m.TYPE not in ("session.create", "session.close")
    ]
    async with run_server(settings) as live, await live.client() as client:
        await client.create_session({"mode": "loopback"})
        for _ in range(500):
            kind = rng.random()
            if kind < 0.3:
                payload = rng.randbytes(rng.randint(0, 200))
            else:
                raw = bytearray(rng.choice(valid))
                for _ in range(rng.randint(1, 4)):
                    raw[rng.randrange(len(raw))] = rng.randrange(256)
                payload = bytes(raw[: rng.randint(1, len(raw))])
            await client.send_raw(payload)
        await client.send(InputText(text="still alive", id="alive"))
        errors = []
        while True:
            event = await client.recv(10)
            if isinstance(event, Error):
                errors.append(event)
                assert event.code in DOCUMENTED
                assert event.message
                assert "Traceback" not in event.message
            if isinstance(event, ResponseDone) and event.ref == "alive":
                break
        assert errors, "garbage must be answered"
        assert live.runtime.counters["internal_errors"] == 0
        assert isinstance(await client.request(_ping(client)), Pong)


def _ping(client: Client) -> Ping:
    return Ping(id=client.next_id(), t_client=0.0)
