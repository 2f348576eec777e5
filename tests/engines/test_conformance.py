"""The conformance suite: every engine, on every runtime, passes the same tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tidegate.engines.engine import Engine, Failed, Ok, StateBinding, TensorEngine
from tidegate.engines.errors import DeadlineError, EngineClosedError, EngineError, RequestError
from tidegate.engines.runtime import RuntimeOptions
from tidegate.engines.scheduler import BatchPolicy, Scheduler
from tidegate.engines.service import EngineSpec, build_engine
from tidegate.engines.vision import FaceDetections

from .conftest import affine_model, recurrent_model

CPU = RuntimeOptions(providers=("cpu",))
CUDA = RuntimeOptions(providers=("cuda",), require_first=True)


@dataclass
class Case:
    make: Callable[..., Engine[Any, Any, Any]]
    requests: Callable[[int], list[Any]]
    bad: Callable[[], Any]
    tolerance: float = 0.0
    gpu: bool = False
    #: Runs on the triton runtime: ``make(tmp, data, server)`` gets the test Triton server.
    triton: bool = False
    #: The scheduler's deadline for a full batch (Smart Turn scores 8 s per request).
    deadline_s: float = 1.0


def _affine(runtime: RuntimeOptions) -> Callable[[Path, Path], Engine[Any, Any, Any]]:
    def make(tmp: Path, data: Path) -> Engine[Any, Any, Any]:
        path = affine_model(tmp / "affine.onnx")
        if runtime.runtime == "tensorrt":
            from tidegate.engines.runtime.tensorrt import build_engine as build_trt

            path = build_trt(path, tmp / "affine.engine", max_batch=16)
        return TensorEngine(path, name="affine", runtime=runtime)

    return make


def _recurrent(tmp: Path, data: Path) -> Engine[Any, Any, Any]:
    return TensorEngine(
        recurrent_model(tmp / "rec.onnx"),
        name="recurrent",
        runtime=CPU,
        constants={"sr": np.array(16000, dtype=np.int64)},
        states=[StateBinding("state", "stateN", batch_axis=1)],
    )


def _real(name: str, model: str, runtime: RuntimeOptions = CPU) -> Callable[..., Any]:
    def make(tmp: Path, data: Path) -> Engine[Any, Any, Any]:
        return build_engine(EngineSpec(name, model, runtime=runtime), data)

    return make


def _triton(kind: str) -> Callable[..., Engine[Any, Any, Any]]:
    """An engine on the triton runtime of the test server (tests/engines/conftest.py)."""

    def make(tmp: Path, data: Path, server: Any) -> Engine[Any, Any, Any]:
        rt = RuntimeOptions(runtime="triton", triton_url=server.url, triton_timeout_s=30.0)
        if kind == "affine":
            return TensorEngine(server.tiny / "affine.onnx", name="affine", runtime=rt)
        if kind == "recurrent":
            return TensorEngine(
                server.tiny / "rec.onnx",
                name="recurrent",
                runtime=rt,
                constants={"sr": np.array(16000, dtype=np.int64)},
                states=[StateBinding("state", "stateN", batch_axis=1)],
            )
        return build_engine(EngineSpec(kind, MODELS[kind], runtime=rt), data)

    return make


MODELS = {"vad": "silero-vad", "vision": "blazeface"}


def _arrays(n: int, shape: tuple[int, ...], name: str) -> list[Any]:
    rng = np.random.default_rng(n)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _audio(n: int) -> list[Any]:
    rng = np.random.default_rng(n)
    t = np.arange(512) / 16000
    return [
        (0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.05 * rng.standard_normal(512)).astype(
            np.float32
        )
        for i in range(n)
    ]


def _speechlike(n: int) -> list[Any]:
    """Turn-detection requests: 0.5-3 s of voiced-like audio, a different length each."""
    rng = np.random.default_rng(n)
    out = []
    for i in range(n):
        t = np.arange(8000 + 5000 * i) / 16000
        voiced = sum(np.sin(2 * np.pi * k * (110 + 15 * i) * t) / k for k in range(1, 6))
        out.append((0.2 * voiced * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32))
        out[-1] += 0.01 * rng.standard_normal(len(t)).astype(np.float32)
    return out


def _frames(n: int) -> list[Any]:
    rng = np.random.default_rng(n)
    sizes = [(480, 640), (360, 640), (512, 512), (240, 320)]
    return [rng.integers(0, 256, (*sizes[i % 4], 3), dtype=np.uint8) for i in range(n)]


CASES = {
    "tensor-onnx-cpu": Case(_affine(CPU), lambda n: _arrays(n, (4,), "x"), lambda: {"x": "nope"}),
    "tensor-stateful": Case(
        _recurrent, lambda n: _arrays(n, (8,), "input"), lambda: {"input": np.zeros(3)}
    ),
    "vad": Case(_real("vad", "silero-vad"), _audio, lambda: np.zeros(100, np.float32)),
    "blazeface": Case(_real("vision", "blazeface"), _frames, lambda: np.zeros((4, 4), np.uint8)),
    "turn": Case(
        _real("turn", "smart-turn-v3.2"),
        _speechlike,
        lambda: np.zeros(100, np.float32),
        deadline_s=30.0,
    ),
    "mtcnn": Case(_real("vision", "mtcnn"), _frames, lambda: np.zeros((8, 8, 3), np.float64)),
    "tensor-onnx-cuda": Case(
        _affine(CUDA), lambda n: _arrays(n, (4,), "x"), lambda: {"x": "nope"}, 1e-4, gpu=True
    ),
    "tensor-tensorrt": Case(
        _affine(RuntimeOptions(runtime="tensorrt")),
        lambda n: _arrays(n, (4,), "x"),
        lambda: {"x": "nope"},
        1e-3,
        gpu=True,
    ),
    "tensor-triton": Case(
        _triton("affine"), lambda n: _arrays(n, (4,), "x"), lambda: {"x": "nope"}, triton=True
    ),
    "tensor-stateful-triton": Case(
        _triton("recurrent"),
        lambda n: _arrays(n, (8,), "input"),
        lambda: {"input": np.zeros(3)},
        triton=True,
    ),
    "vad-triton": Case(_triton("vad"), _audio, lambda: np.zeros(100, np.float32), triton=True),
    "blazeface-triton": Case(
        _triton("vision"), _frames, lambda: np.zeros((4, 4), np.uint8), triton=True
    ),
    "vad-onnx-cuda": Case(
        _real("vad", "silero-vad", CUDA), _audio, lambda: np.zeros(3), 1e-4, True
    ),
}


def _params() -> list[Any]:
    return [
        pytest.param(name, marks=[pytest.mark.gpu] if case.gpu else [], id=name)
        for name, case in CASES.items()
    ]


@pytest.fixture(params=_params())
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    case = CASES[request.param]
    if case.gpu:
        request.getfixturevalue("require_gpu")
    data = (
        request.getfixturevalue("data_dir") if not request.param.startswith("tensor") else tmp_path
    )
    if case.triton:
        engine = case.make(tmp_path, data, request.getfixturevalue("triton_server"))
    else:
        engine = case.make(tmp_path, data)
    engine.load()
    yield case, engine
    engine.close()


def same(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], tol) for k in a)
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and bool(
            np.allclose(a, b, rtol=tol, atol=tol) if tol else np.array_equal(a, b)
        )
    if isinstance(a, FaceDetections) and tol:
        return len(a) == len(b)
    if hasattr(a, "probability") and tol:
        return bool(abs(a.probability - b.probability) <= tol)
    if hasattr(a, "rnn"):  # a VAD state
        return same(a.rnn, b.rnn, tol) and same(a.context, b.context, tol)
    return bool(a == b)


def fresh(engine: Engine[Any, Any, Any]) -> Any:
    return engine.new_state() if engine.stateful else None


def test_signature(case: Any) -> None:
    """The engine declares named, typed tensors with a leading batch axis, and its own
    example request and the case's requests pass its validation."""
    c, engine = case
    sig = engine.signature
    assert sig.inputs and sig.outputs
    for spec in (*sig.inputs, *sig.outputs):
        assert spec.name and np.dtype(spec.dtype)
        assert len(spec.shape) >= 1 and isinstance(spec.shape[0], str)
    engine.prepare(engine.example_request())
    for r in c.requests(3):
        engine.prepare(r)
    with pytest.raises(RequestError):
        engine.prepare(c.bad())


def test_batch_of_n_equals_n_single_calls(case: Any) -> None:
    """A batch of N gives the same results (and next states) as N separate calls."""
    c, engine = case
    reqs = c.requests(6)
    batch = engine.run_batch(reqs, [fresh(engine) for _ in reqs])
    singles = [engine.run_batch([r], [fresh(engine)])[0] for r in reqs]
    for b, s in zip(batch, singles, strict=True):
        assert isinstance(b, Ok) and isinstance(s, Ok)
        assert same(b.value, s.value, c.tolerance)
        assert same(b.state, s.state, c.tolerance)


def test_failing_request_does_not_sink_its_batch(case: Any) -> None:
    """A bad request in the middle of a batch fails alone; the others get their results."""
    c, engine = case
    good = c.requests(2)
    out = engine.run_batch([good[0], c.bad(), good[1]], [fresh(engine) for _ in range(3)])
    assert isinstance(out[1], Failed) and isinstance(out[1].error, RequestError)
    for o, r in zip((out[0], out[2]), good, strict=True):
        assert isinstance(o, Ok)
        alone = engine.run_batch([r], [fresh(engine)])[0]
        assert isinstance(alone, Ok) and same(o.value, alone.value, c.tolerance)


async def _scheduler(engine: Engine[Any, Any, Any], **policy: Any) -> Scheduler[Any, Any]:
    sched: Scheduler[Any, Any] = Scheduler(engine, BatchPolicy(**policy))
    await sched.start()
    return sched


def _sessions(sched: Scheduler[Any, Any], n: int, idle: int = 0) -> list[str | None]:
    """Open ``n`` sessions (stateful engines), plus ``idle`` ones that submit nothing, so
    that the scheduler waits for them (up to batch_wait_s) before running a batch."""
    if not sched.engine.stateful:
        return [None] * n
    for i in range(n + idle):
        sched.open_session(f"s{i}")
    return [f"s{i}" for i in range(n)]


async def test_scheduler_batches_across_sessions(case: Any) -> None:
    """N concurrent submissions are served in shared batches, with the answers of N
    separate calls."""
    c, engine = case
    reqs = c.requests(8)
    expected = [engine.run_batch([r], [fresh(engine)])[0] for r in reqs]
    sched = await _scheduler(engine, max_batch_items=8, batch_wait_s=0.05, deadline_s=c.deadline_s)
    try:
        sessions = _sessions(sched, len(reqs))
        got = await asyncio.gather(
            *(sched.submit(r, session=s) for r, s in zip(reqs, sessions, strict=True))
        )
        for g, e in zip(got, expected, strict=True):
            assert isinstance(e, Ok) and same(g, e.value, c.tolerance)
        stats = sched.stats()
        assert stats["completed"] == len(reqs)
        assert stats["batches"] < len(reqs)  # some batch held more than one request
    finally:
        await sched.close()


async def test_cancelled_request_never_runs(case: Any) -> None:
    """Cancelling the awaiting task withdraws a queued request; the others still run."""
    c, engine = case
    reqs = c.requests(2)
    sched = await _scheduler(engine, max_batch_items=8, batch_wait_s=0.3)
    try:
        sessions = _sessions(sched, 2, idle=1)
        first = asyncio.create_task(sched.submit(reqs[0], session=sessions[0]))
        second = asyncio.create_task(sched.submit(reqs[1], session=sessions[1]))
        await asyncio.sleep(0.02)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert same(await first, engine.run_batch([reqs[0]], [fresh(engine)])[0].value, c.tolerance)
        stats = sched.stats()
        assert stats["cancelled"] == 1
        assert stats["batch_size"]["sum"] == 1  # only the first one ran
    finally:
        await sched.close()


async def test_deadline(case: Any) -> None:
    """A request whose result is not ready by its deadline fails with DeadlineError and,
    still queued, never runs; the engine keeps serving."""
    c, engine = case
    reqs = c.requests(2)
    sched = await _scheduler(engine, max_batch_items=8, batch_wait_s=0.5)
    try:
        sessions = _sessions(sched, 2)
        with pytest.raises(DeadlineError):
            await sched.submit(reqs[0], session=sessions[0], deadline_s=0.05)
        assert sched.stats()["deadline_missed"] == 1
        await asyncio.sleep(0.6)  # the worker wakes, finds it expired, runs nothing
        assert sched.stats()["batches"] == 0
        result = await sched.submit(reqs[1], session=sessions[1], deadline_s=5.0)
        assert same(result, engine.run_batch([reqs[1]], [fresh(engine)])[0].value, c.tolerance)
    finally:
        await sched.close()


async def test_close(case: Any) -> None:
    """Closing fails queued requests with EngineClosedError, refuses new ones, and closes
    the engine (which can be loaded again)."""
    c, engine = case
    reqs = c.requests(1)
    sched = await _scheduler(engine, max_batch_items=8, batch_wait_s=5.0)
    sessions = _sessions(sched, 1, idle=1)
    queued = asyncio.create_task(sched.submit(reqs[0], session=sessions[0]))
    await asyncio.sleep(0.02)
    await sched.close()
    with pytest.raises(EngineClosedError):
        await queued
    with pytest.raises(EngineClosedError):
        await sched.submit(reqs[0], session=sessions[0])
    out = engine.run_batch(reqs, [fresh(engine)])
    assert isinstance(out[0], Failed) and isinstance(out[0].error, EngineError)
    engine.load()
    assert isinstance(engine.run_batch(reqs, [fresh(engine)])[0], Ok)
