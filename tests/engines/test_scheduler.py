"""The batching scheduler: bounds, refusals, per-session order, several loops, metrics."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tidegate.engines.engine import Failed, Ok, Outcome, StateBinding, TensorEngine
from tidegate.engines.errors import InferenceError, OverloadedError, SessionError
from tidegate.engines.runtime import Array
from tidegate.engines.scheduler import BatchPolicy, Scheduler

from .conftest import affine_model, gather_model, recurrent_model


@pytest.fixture
def affine(tmp_path: Path) -> TensorEngine:
    return TensorEngine(affine_model(tmp_path / "a.onnx"), name="affine")


def test_model_failure_is_isolated(tmp_path: Path) -> None:
    """When the batched model call fails inside ONNX Runtime, each request is retried
    alone: only the culprit fails, with an error that leaks no details."""
    engine = TensorEngine(gather_model(tmp_path / "g.onnx"), name="gather")
    engine.load()
    reqs = [{"idx": np.array([i])} for i in (1, 99, 3)]
    out = engine.run_batch(reqs, [None] * 3)
    assert isinstance(out[0], Ok) and out[0].value["out"].tolist() == [[4.0, 5.0, 6.0, 7.0]]
    assert isinstance(out[1], Failed) and isinstance(out[1].error, InferenceError)
    assert "99" not in str(out[1].error)
    assert isinstance(out[2], Ok) and out[2].value["out"][0, 0] == 12.0


async def test_full_queue_refuses_with_retry_hint(affine: TensorEngine) -> None:
    """A full queue refuses new work at once with OverloadedError and a retry hint, and
    counts the refusal; queued work is unaffected."""
    sched = Scheduler(affine, BatchPolicy(max_batch_items=4, batch_wait_s=0.2, max_queue_items=2))
    await sched.start()
    try:
        x = {"x": np.ones(4, np.float32)}
        queued = [asyncio.create_task(sched.submit(x)) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError) as info:
            await sched.submit(x)
        assert info.value.retry_after_s > 0
        assert "queue full" in str(info.value)
        results = await asyncio.gather(*queued)
        assert all(np.array_equal(r["y"], results[0]["y"]) for r in results)
        stats = sched.stats()
        assert stats["refused"] == 1 and stats["queue"]["rejected"] == 1
        assert stats["queue"]["max_items"] == 2 and stats["queue"]["policy"] == "reject"
    finally:
        await sched.close()


async def test_batch_size_is_bounded(affine: TensorEngine) -> None:
    """No batch exceeds max_batch_items; the histogram counts every request."""
    sched = Scheduler(affine, BatchPolicy(max_batch_items=4, batch_wait_s=0.05))
    await sched.start()
    try:
        rng = np.random.default_rng(1)
        await asyncio.gather(
            *(sched.submit({"x": rng.standard_normal(4).astype(np.float32)}) for _ in range(10))
        )
        hist = sched.stats()["batch_size"]
        assert hist["sum"] == 10 and hist["buckets"]["4"] == hist["count"]
        assert hist["count"] >= 3
        assert sched.stats()["queue_wait_ms"]["count"] == 10
        assert sched.stats()["run_ms"]["count"] == hist["count"]
    finally:
        await sched.close()


async def test_session_state_in_order(tmp_path: Path) -> None:
    """A session's requests run one at a time and in order, each on the state the previous
    one left, whatever the batching: the results match a sequential run."""
    engine = TensorEngine(
        recurrent_model(tmp_path / "r.onnx"),
        name="rec",
        constants={"sr": np.array(16000, dtype=np.int64)},
        states=[StateBinding("state", "stateN", 1)],
    )
    engine.load()
    rng = np.random.default_rng(2)
    streams = [
        [{"input": rng.standard_normal(8).astype(np.float32)} for _ in range(5)] for _ in range(3)
    ]
    expected = []
    for stream in streams:
        state, outs = engine.new_state(), []
        for r in stream:
            o = engine.run_batch([r], [state])[0]
            assert isinstance(o, Ok)
            state = o.state
            outs.append(o.value["output"])
        expected.append(outs)
    sched = Scheduler(engine, BatchPolicy(max_batch_items=8, batch_wait_s=0.01))
    await sched.start()
    try:
        for i in range(3):
            sched.open_session(f"s{i}")
        with pytest.raises(SessionError):
            sched.open_session("s0")

        async def run_stream(i: int) -> list[np.ndarray]:
            # All of a session's requests are submitted at once: the scheduler orders them.
            results = await asyncio.gather(*(sched.submit(r, session=f"s{i}") for r in streams[i]))
            return [r["output"] for r in results]

        got = await asyncio.gather(*(run_stream(i) for i in range(3)))
        # The tiny model's reduction order depends on the batch: equal to float rounding.
        for g, e in zip(got, expected, strict=True):
            assert all(np.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(g, e, strict=True))
        assert sched.stats()["batch_size"]["sum"] == 15
        with pytest.raises(SessionError):
            await sched.submit(streams[0][0], session="nobody")
        with pytest.raises(SessionError):
            await sched.submit(streams[0][0])
    finally:
        await sched.close()


async def test_max_sessions(tmp_path: Path) -> None:
    """A stateful engine holds at most max_sessions sessions; closing one frees a place."""
    engine = TensorEngine(
        recurrent_model(tmp_path / "r.onnx"),
        constants={"sr": np.array(16000, dtype=np.int64)},
        states=[StateBinding("state", "stateN", 1)],
    )
    sched = Scheduler(engine, BatchPolicy(max_sessions=2))
    await sched.start()
    try:
        sched.open_session("a")
        sched.open_session("b")
        with pytest.raises(SessionError, match="max_sessions"):
            sched.open_session("c")
        sched.close_session("a")
        sched.open_session("c")
        assert sched.sessions == 2
    finally:
        await sched.close()


async def test_results_go_back_to_each_callers_loop(affine: TensorEngine) -> None:
    """Callers on different event loops (threads) share batches; each gets its own result
    on its own loop."""
    sched = Scheduler(affine, BatchPolicy(max_batch_items=8, batch_wait_s=0.1))
    await sched.start()
    try:
        results: dict[int, object] = {}

        def other_thread(i: int) -> None:
            async def one() -> None:
                results[i] = await sched.submit({"x": np.full(4, i, np.float32)})

            asyncio.run(one())

        threads = [threading.Thread(target=other_thread, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        mine = await sched.submit({"x": np.full(4, 7, np.float32)})
        for t in threads:
            await asyncio.to_thread(t.join)
        assert sorted(results) == [0, 1, 2]
        assert float(mine["s"][0]) == 28.0
        assert all(float(results[i]["s"][0]) == 4.0 * i for i in range(3))  # type: ignore[index]
        assert sched.stats()["batches"] < 4
    finally:
        await sched.close()


class _GatedAffine(TensorEngine):
    """The real affine model; each batch's requests (their first value) are noted, and a
    batch of a request whose first value is negative waits for ``gate``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, name="affine")
        self.gate = threading.Event()
        self.started = threading.Event()
        self.batches: list[list[int]] = []

    def infer(
        self, items: Sequence[dict[str, Array]], states: Sequence[Any]
    ) -> list[Outcome[dict[str, Array]]]:
        firsts = [int(item["x"][0]) for item in items]
        self.batches.append(firsts)
        if min(firsts) < 0:
            self.started.set()
            self.gate.wait(10)
        return super().infer(items, states)


async def test_urgent_requests_go_first_in_a_batch_of_their_own(tmp_path: Path) -> None:
    """While a batch runs, urgent requests queued after normal ones run next, batched only
    with each other; the normal ones keep their order and run after; each gets its own
    result and the urgent ones are counted."""
    engine = _GatedAffine(affine_model(tmp_path / "a.onnx"))
    sched = Scheduler(engine, BatchPolicy(max_batch_items=4, batch_wait_s=0.0))
    await sched.start()
    try:
        engine.batches.clear()  # the warm-up's

        def x(i: int) -> dict[str, np.ndarray]:
            return {"x": np.array([i, 0, 0, 0], np.float32)}

        blocker = asyncio.create_task(sched.submit(x(-1)))
        await asyncio.to_thread(engine.started.wait, 10)
        normal = [asyncio.create_task(sched.submit(x(i))) for i in (1, 2, 3)]
        urgent = [asyncio.create_task(sched.submit(x(i), urgent=True)) for i in (11, 12)]
        await asyncio.sleep(0.05)  # all five are queued behind the blocked batch
        engine.gate.set()
        results = await asyncio.gather(blocker, *normal, *urgent)
        assert engine.batches == [[-1], [11, 12], [1, 2, 3]]
        assert [float(r["s"][0]) for r in results] == [-1.0, 1.0, 2.0, 3.0, 11.0, 12.0]
        stats = sched.stats()
        assert stats["urgent"] == 2 and stats["urgent_queue_wait_ms"]["count"] == 2
        assert stats["queue"]["depth"] == 0 and stats["completed"] == 6
    finally:
        engine.gate.set()
        await sched.close()


async def test_an_urgent_request_does_not_wait_for_a_batch_to_fill(tmp_path: Path) -> None:
    """A batch_wait_s long enough to fill a batch is not waited out for an urgent request:
    it runs alone at once while a normal one waits for company."""
    engine = _GatedAffine(affine_model(tmp_path / "a.onnx"))
    sched = Scheduler(engine, BatchPolicy(max_batch_items=4, batch_wait_s=30.0))
    await sched.start()
    try:
        engine.batches.clear()
        got = await asyncio.wait_for(
            sched.submit({"x": np.array([5, 0, 0, 0], np.float32)}, urgent=True), 10
        )
        assert float(got["s"][0]) == 5.0 and engine.batches == [[5]]
        late = asyncio.create_task(sched.submit({"x": np.ones(4, np.float32)}))
        await asyncio.sleep(0.1)
        assert not late.done()  # normal work still waits to fill its batch
        late.cancel()
    finally:
        engine.gate.set()
        await sched.close()


def test_policy_limits_are_checked() -> None:
    """Nonsense limits are refused when the policy is made."""
    with pytest.raises(ValueError, match="max_batch_items"):
        BatchPolicy(max_batch_items=0)
    with pytest.raises(ValueError, match="deadline_s"):
        BatchPolicy(deadline_s=0)
