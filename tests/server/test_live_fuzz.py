"""Fuzzing a live server with every message type in all three encodings while a victim
session works beside it (issue 17, "Done means"): random bytes, mutated payloads and
well-formed messages of every type with hostile values, for a bounded time. Afterwards the
writer is alive, every victim record is stored, no session or task is left behind, and
/readyz is ready."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidState

from tests.store.helpers import eventually, query
from tidegate.protocol import CloseCode, ErrorCode
from tidegate.protocol.client import Client, ConnectionClosedError, RefusedError
from tidegate.protocol.messages import Error, InputSensor, InputText, ResponseDone

from ..protocol.strategies import ENCODINGS, SAMPLE_OF, raw, spots, with_value
from .conftest import LiveServer, make_settings, run_server

pytestmark = pytest.mark.slow

FUZZ_S = 8.0  # how long the fuzzers run
MAX_PAYLOADS = 3_000  # per fuzzer, whichever comes first
SEED = 20261203
DOCUMENTED_ERRORS = {c.value for c in ErrorCode} - {ErrorCode.INTERNAL.value}
#: how a fuzzer's connection may end: all documented, none of them ours (4500)
DOCUMENTED_CLOSES = {int(c) for c in CloseCode} - {int(CloseCode.INTERNAL)}
#: values that broke, or could break, a stage after the protocol: range edges of every
#: encoding, non-finite floats, NUL, the longest strings; and shapes of the wrong kind
NUMBERS: list[Any] = [
    -(2**64),
    -(2**63) - 1,
    -(2**63),
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**53 + 1,
    -0.0,
    1e300,
    1e308,
    5e-324,
    float("nan"),
    float("inf"),
]
STRINGS: list[Any] = ["", "a\x00b", "\x00", "\U0010ffff", "x" * 70_000, "s_" + "9" * 62]
SHAPES: list[Any] = [
    None,
    True,
    [],
    [1, "a", None],
    {"mode": "loopback"},
    b"\x00" * 64,
    {"k": {"k": {"k": {"k": {"k": {"k": {"k": {"k": {"k": 1}}}}}}}}},
]
CHANNELS = ("imu", "temp", "a.b:c/d-e_f")
SPOTS = spots()


def _carried(value: Any, encoding: str) -> Any:
    """``value`` as the encoding can write it (MessagePack has no integer below -2^63; JSON
    no bytes)."""
    if encoding == "msgpack" and isinstance(value, int) and value < -(2**63):
        return -(2**63)
    if encoding == "json" and isinstance(value, bytes):
        return value.hex()
    return value


class Messages:
    """Messages of every type, from their samples: each with one numeric or string field (or
    list item, map value or key) made hostile, or several fields replaced, dropped or added.
    Readings get increasing times, so that a hostile one is not refused as out of order."""

    def __init__(self, rng: random.Random, encoding: str) -> None:
        self.rng = rng
        self.encoding = encoding
        self.ts = 0.0

    def __call__(self) -> bytes | str:
        rng = self.rng
        mtype = rng.choice(sorted(SAMPLE_OF))
        base = SAMPLE_OF[mtype].to_wire()
        if mtype == "input.sensor":
            self.ts += 1.0
            base.update(ts=self.ts, channel=rng.choice(CHANNELS))
        if rng.random() < 0.7:
            spot = rng.choice([s for s in SPOTS if s.mtype == mtype])
            pool = NUMBERS if spot.numeric else STRINGS
            wire = with_value(spot, _carried(rng.choice(pool), self.encoding), base=base)
        else:
            wire = base
            for _ in range(rng.randint(1, 3)):
                keys = [k for k in wire if k != "type"]
                value = _carried(rng.choice(NUMBERS + STRINGS + SHAPES), self.encoding)
                roll = rng.random()
                if roll < 0.5 and keys:
                    wire[rng.choice(keys)] = value
                elif roll < 0.8 and keys:
                    del wire[rng.choice(keys)]
                else:
                    wire[rng.choice(["extra", "seq", "ref"])] = value
        try:
            return raw(self.encoding, wire)
        except (TypeError, ValueError, OverflowError):  # the encoder itself cannot write it
            return raw(self.encoding, SAMPLE_OF["ping"].to_wire())


def _payload(rng: random.Random, messages: Messages) -> bytes | str:
    """Random bytes, a mutated encoded message, or a hostile message."""
    roll = rng.random()
    if roll < 0.15:
        return rng.randbytes(rng.randint(0, 300))
    message = messages()
    if roll < 0.35:
        data = bytearray(message.encode() if isinstance(message, str) else message)
        for _ in range(rng.randint(1, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[: rng.randint(1, max(1, len(data)))]
        return data.decode("utf-8", "replace") if isinstance(message, str) else bytes(data)
    return message


class Fuzzer:
    """One hostile client of one encoding: reconnects whenever its connection ends."""

    def __init__(self, server: LiveServer, encoding: str, seed: int) -> None:
        self.server = server
        self.encoding = encoding
        self.rng = random.Random(seed)
        self.messages = Messages(self.rng, encoding)
        self.sent = 0
        self.connections = 0
        self.errors: list[Error] = []
        self.closes: list[int | None] = []

    async def run(self, until: float) -> None:
        while time.monotonic() < until and self.sent < MAX_PAYLOADS:
            self.connections += 1
            # a subject per connection: the per-subject session rate must not keep it sessionless
            subject = f"fuzz-{self.encoding}-{self.connections}"
            token = self.server.token(subject=subject, tenant="fuzzers")
            client = await self.server.client(token=token, encoding=self.encoding)
            drain = asyncio.get_running_loop().create_task(self._drain(client))
            try:
                if self.rng.random() < 0.8:
                    with contextlib.suppress(RefusedError, ConnectionClosedError):
                        await client.create_session({"mode": "loopback"})
                while time.monotonic() < until and self.sent < MAX_PAYLOADS:
                    if client.closed is not None:
                        break
                    await client.send_raw(_payload(self.rng, self.messages))
                    self.sent += 1
                    if self.sent % 20 == 0:
                        await asyncio.sleep(0.005)  # let the victim's traffic in
            except ConnectionClosedError:  # the server closed it: see closes
                pass
            except InvalidState:  # the server is closing it: learn its close code
                with contextlib.suppress(TimeoutError):
                    await client.wait_closed(10)
            finally:
                # how the server ended it (None: still open, we close it ourselves)
                self.closes.append(client.closed.close_code if client.closed else None)
                drain.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drain
                await client.close()

    async def _drain(self, client: Client) -> None:
        """Read every event (a fuzzer that stops reading is another attack, not this one)."""
        with contextlib.suppress(ConnectionClosedError):
            async for event in client:
                if isinstance(event, Error):
                    self.errors.append(event)


class Victim:
    """A well-behaved session: pings, sensor readings and texts, each of them recorded."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.session_id = ""
        self.pings = 0
        self.readings = 0
        self.texts: list[str] = []

    async def run(self, until: float) -> None:
        token = self.server.token(subject="victim", tenant="victims")
        async with await self.server.client(token=token) as client:
            self.session_id = (await client.create_session({"mode": "loopback"})).session_id
            i = 0
            while time.monotonic() < until:
                await client.ping()
                self.pings += 1
                await client.send(InputSensor(channel="imu", ts=float(i), values=(i, 0.5)))
                self.readings += 1
                if i % 5 == 0:
                    text = f"victim {i}"
                    await client.send(InputText(id=f"v{i}", text=text))
                    done = await client.wait_for(ResponseDone, timeout_s=10)
                    assert done.text == text
                    self.texts.append(text)
                i += 1
                await asyncio.sleep(0.01)
            await client.close_session()


async def test_fuzzing_every_message_type_leaves_the_server_whole(tmp_path: Path) -> None:
    """Random, mutated and hostile messages of every type in CBOR, MessagePack and JSON for a
    bounded time: the victim's every ping is answered and every record stored, no internal
    error, the writer alive, no session or task left, /readyz ready."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    settings = make_settings(
        tmp_path,
        database_url=url,
        session_resume_s=0.5,
        sensor_batch_max_readings=16,
        max_message_bytes=262_144,
    )
    async with run_server(settings) as server:
        baseline = len(asyncio.all_tasks())
        until = time.monotonic() + FUZZ_S
        fuzzers = [Fuzzer(server, e, SEED + i) for i, e in enumerate(ENCODINGS)]
        victim = Victim(server)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(victim.run(until))
            for fuzzer in fuzzers:
                tg.create_task(fuzzer.run(until))
        runtime = server.runtime
        for fuzzer in fuzzers:
            assert fuzzer.sent > 0 and fuzzer.errors, fuzzer.encoding
            bad = [e for e in fuzzer.errors if e.code not in DOCUMENTED_ERRORS]
            assert not bad, bad[:3]
            assert set(fuzzer.closes) <= DOCUMENTED_CLOSES | {None}, fuzzer.closes
        assert runtime.counters["internal_errors"] == 0
        assert runtime.counters["encode_errors"] == 0
        assert victim.pings > 10 and victim.texts
        # no session outlives its connection's resume window; no task is left behind
        await eventually(lambda: len(runtime.registry) == 0, what="every session gone")
        await eventually(
            lambda: len(asyncio.all_tasks()) <= baseline,
            what=f"tasks back to {baseline}: {sorted(t.get_name() for t in asyncio.all_tasks())}",
        )
        writer = runtime.recorder
        assert await writer.flush(20), writer.stats()
        assert writer.running and writer.restarts == 0
        assert writer.quarantined == {"journal": 0, "database": 0, "writer": 0}
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
    sid = victim.session_id
    batches = await query(url, "SELECT readings FROM sensor_batches WHERE session_id = :s", s=sid)
    stored = sorted(reading[0] for b in batches for reading in b["readings"])
    assert stored == [float(i) for i in range(victim.readings)]
    texts = await query(url, "SELECT text FROM responses WHERE session_id = :s", s=sid)
    assert sorted(t["text"] for t in texts) == sorted(victim.texts)
