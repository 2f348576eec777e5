"""The triton runtime against a real Triton server (pytriton's, tests/engines/conftest.py): the
same answers as the local runtime, the exported repository's configs, and what happens when
the server is slow, stopped mid-stream, or restarted."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import scaled
from tidegate.engines.asr.request import AsrRequest
from tidegate.engines.asr.whisper_onnx import WhisperOnnx
from tidegate.engines.engine import Failed, Ok, TensorEngine
from tidegate.engines.errors import DeadlineError, SessionError
from tidegate.engines.runtime import Array, RuntimeOptions
from tidegate.engines.runtime.triton import (
    TritonDeadlineError,
    TritonUnavailableError,
    triton_model_name,
)
from tidegate.engines.scheduler import BatchPolicy, Scheduler
from tidegate.engines.service import EngineSpec, build_engine
from tidegate.engines.vad import SileroVad, VadResult
from tidegate.tools.triton_export import ExportOptions, export_repository, onnx_signature

from ..asr_audio import read_wav
from ..triton_server import free_port

LOCAL = RuntimeOptions(providers=("cpu",))


def _triton(server: Any, **kw: Any) -> RuntimeOptions:
    return RuntimeOptions(runtime="triton", triton_url=server.url, **kw)


def _frames(assets: Path, n: int) -> list[np.ndarray]:
    audio = read_wav(assets / "beckett.wav")
    return [audio[i * 512 : (i + 1) * 512] for i in range(n)]


def test_vad_stream_same_as_local(triton_server: Any, data_dir: Path, assets: Path) -> None:
    """A VAD stream (recurrent state carried in each request) gives the local runtime's
    probabilities (within 1e-5: locally the batched graph runs, Triton serves the shipped
    file) and speech events through Triton."""
    frames = _frames(assets, 120)
    got = []
    for rt in (LOCAL, _triton(triton_server)):
        engine = build_engine(EngineSpec("vad", "silero-vad", runtime=rt), data_dir)
        assert isinstance(engine, SileroVad)
        engine.load()
        state, probs = engine.new_state(), []
        for f in frames:
            out = engine.run_batch([f], [state])[0]
            assert isinstance(out, Ok)
            state = out.state
            probs.append((out.value.probability, out.value.speech))
        engine.close()
        got.append(probs)
    assert [s for _, s in got[0]] == [s for _, s in got[1]]
    assert max(abs(a - b) for (a, _), (b, _) in zip(got[0], got[1], strict=True)) <= 1e-5
    assert any(speech for _, speech in got[0])  # the clip has speech


def _asr_requests(engine: Any, assets: Path) -> list[AsrRequest]:
    """The test clips as a transcribe session sends them: finals of different lengths, a
    partial with a committed prefix (forced tokens), and silence."""
    beckett = read_wav(assets / "beckett.wav")
    cities = read_wav(assets / "two_cities.wav", seconds=8.0)
    prefix = tuple(engine.tokenizer.encode(" Ever tried, never"))
    return [
        AsrRequest(beckett[: 4 * 16000]),
        AsrRequest(cities),
        AsrRequest(beckett[: 6 * 16000], prefix),
        AsrRequest(np.zeros(16000, np.float32)),
    ]


def _results(rt: RuntimeOptions, data_dir: Path, assets: Path) -> tuple[list[Any], list[Any]]:
    """Each clip alone, then all of them in one batch."""
    engine = build_engine(EngineSpec("asr", "whisper-tiny-en", runtime=rt), data_dir)
    assert isinstance(engine, WhisperOnnx)
    engine.load()
    try:
        reqs = _asr_requests(engine, assets)
        singles = [engine.run_batch([r], [None])[0] for r in reqs]
        batch = engine.run_batch(reqs, [None] * len(reqs))
    finally:
        engine.close()
    for out in (*singles, *batch):
        assert isinstance(out, Ok), out
    return [o.value for o in singles], [o.value for o in batch]  # type: ignore[union-attr]


def _same_asr(a: Any, b: Any) -> None:
    assert (a.tokens, a.text, a.generated, a.audio_ctx) == (
        b.tokens,
        b.text,
        b.generated,
        b.audio_ctx,
    )
    # The evidence within what no gate decision can feel: the Triton side runs in pytriton's
    # venv, whose numpy 1.x (pytriton needs numpy<2) computes the log-mel FFT a float32 ulp
    # apart from numpy 2 (2.4e-7 measured), and the int8 encoder turns that into ~2e-3 of
    # average log-probability and ~8e-3 of no-speech probability with the same tokens;
    # QualityGate's thresholds are 0.6 and -1.0 (-1.5).
    assert a.avg_logprob == pytest.approx(b.avg_logprob, abs=0.02)
    assert a.no_speech_prob == pytest.approx(b.no_speech_prob, abs=0.02)


def test_whisper_same_as_local(triton_server: Any, data_dir: Path, assets: Path) -> None:
    """Whisper's whole decode on the server (the python transcribe model, one call per batch)
    gives the local runtime's tokens, text and evidence (the QualityGate's inputs): each test
    clip alone, and all of them in one batch (a partial's forced prefix included)."""
    local = _results(LOCAL, data_dir, assets)
    remote = _results(_triton(triton_server, triton_timeout_s=60.0), data_dir, assets)
    for mine, theirs in zip(local, remote, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            _same_asr(a, b)
    singles = remote[0]
    assert "tried" in singles[0].text.lower() and "best of times" in singles[1].text.lower()
    assert singles[2].text.startswith("Ever tried, never")
    assert all(r.timings_ms["call"] > 0 for r in singles)


def _transcribe_counts(server: Any) -> tuple[int, int]:
    """Rows and model executions of the transcribe model, from Triton's metrics endpoint."""
    import re
    import urllib.request

    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=scaled(10)) as r:
        text = r.read().decode()
    found = []
    for metric in ("nv_inference_count", "nv_inference_exec_count"):
        pattern = rf'^{metric}{{[^}}]*model="whisper-tiny-en.transcribe"[^}}]*}} (\S+)$'
        m = re.search(pattern, text, re.M)
        assert m is not None, f"{metric} not in Triton's metrics"
        found.append(int(float(m.group(1))))
    return found[0], found[1]


async def test_whisper_one_call_per_request(
    triton_server: Any, data_dir: Path, assets: Path
) -> None:
    """Through the scheduler, concurrent ASR requests are answered with one Triton call per
    batch (not one per token): Triton counts each row once, in at most one execution per
    request."""
    rt = _triton(triton_server, triton_timeout_s=60.0)
    engine = build_engine(EngineSpec("asr", "whisper-tiny-en", runtime=rt), data_dir)
    sched: Scheduler[Any, Any] = Scheduler(
        engine, BatchPolicy(max_batch_items=8, batch_wait_s=0.05)
    )
    await sched.start()
    try:
        reqs = _asr_requests(engine, assets)
        before = await asyncio.to_thread(_transcribe_counts, triton_server)
        got = await asyncio.gather(*(sched.submit(r, deadline_s=60.0) for r in reqs))
        after = await asyncio.to_thread(_transcribe_counts, triton_server)
    finally:
        await sched.close()
    assert "tried" in got[0].text.lower()
    assert after[0] - before[0] == len(reqs)  # each row once: no per-token calls
    assert 1 <= after[1] - before[1] <= len(reqs)


def test_whisper_fallback_runs_the_same_decode(data_dir: Path, assets: Path) -> None:
    """With no Triton, the fallback policy answers from the same decode run locally."""
    rt = RuntimeOptions(runtime="triton", triton_url=f"127.0.0.1:{free_port()}",
                        triton_timeout_s=2.0, triton_policy="fallback")  # fmt: skip
    engine = build_engine(EngineSpec("asr", "whisper-tiny-en", runtime=rt), data_dir)
    assert isinstance(engine, WhisperOnnx)
    engine.load()
    try:
        req = _asr_requests(engine, assets)[2]
        out = engine.run_batch([req], [None])[0]
        assert "fallback" in engine.provider
    finally:
        engine.close()
    local = build_engine(EngineSpec("asr", "whisper-tiny-en", runtime=LOCAL), data_dir)
    assert isinstance(local, WhisperOnnx)
    local.load()
    expected = local.run_batch([req], [None])[0]
    local.close()
    assert isinstance(out, Ok) and isinstance(expected, Ok)
    _same_asr(out.value, expected.value)


def test_slow_server_deadline_and_fallback(triton_server: Any) -> None:
    """A model slower than triton_timeout_s fails with a deadline error (refuse), or is
    answered by the local file (fallback); the engine keeps serving either way."""
    path = triton_server.slow / "tiny.affine.onnx"
    assert triton_model_name(path) == "slow.tiny.affine"
    x = {"x": np.arange(4, dtype=np.float32)}
    local = TensorEngine(path, name="affine", runtime=LOCAL)
    local.load()
    expected = local.run_batch([x], [None])[0]
    assert isinstance(expected, Ok)
    refuse = TensorEngine(path, name="affine", runtime=_triton(triton_server, triton_timeout_s=0.3))
    refuse.load()
    out = refuse.run_batch([x, x], [None, None])
    assert all(isinstance(o, Failed) and isinstance(o.error, TritonDeadlineError) for o in out)
    assert isinstance(out[0], Failed) and isinstance(out[0].error, DeadlineError)
    assert "triton_timeout_s" in str(out[0].error)
    fallback = TensorEngine(
        path,
        name="affine",
        runtime=_triton(
            triton_server, triton_timeout_s=0.3, triton_policy="fallback", triton_retry_s=60
        ),
    )
    fallback.load()
    for _ in range(2):  # the first call waits for Triton, the second goes local at once
        got = fallback.run_batch([x], [None])[0]
        assert isinstance(got, Ok)
        assert np.array_equal(got.value["y"], expected.value["y"])
    assert fallback.model.fallbacks == 2  # type: ignore[attr-defined]
    assert "fallback" in fallback.provider
    for e in (local, refuse, fallback):
        e.close()


def test_server_down_at_load() -> None:
    """With no server, loading fails with a clear error (refuse) or loads the local file
    (fallback)."""
    import tempfile

    from ..conftest import affine_model

    with tempfile.TemporaryDirectory() as tmp:
        path = affine_model(Path(tmp) / "affine.onnx")
        rt = RuntimeOptions(runtime="triton", triton_url=f"127.0.0.1:{free_port()}",
                            triton_timeout_s=2.0)  # fmt: skip
        with pytest.raises(TritonUnavailableError, match="unavailable"):
            TensorEngine(path, runtime=rt).load()
        engine = TensorEngine(path, runtime=replace(rt, triton_policy="fallback"))
        engine.load()
        assert isinstance(engine.run_batch([{"x": np.ones(4, np.float32)}], [None])[0], Ok)
        assert "fallback" in engine.provider


async def test_server_stopped_mid_stream_and_restarted(
    triton_server: Any, data_dir: Path, assets: Path
) -> None:
    """Two VAD streams run through Triton, one under each policy; the server stops mid-stream
    and starts again. refuse: the stream's frames fail with TritonUnavailableError (the
    session stays open) and new sessions are refused until a call succeeds again; fallback:
    every frame is answered, with the local runtime's results (within 1e-5: locally the
    batched graph runs), state carried across. After the restart both streams are served by
    Triton again (a new channel)."""
    frames = _frames(assets, 60)
    local = build_engine(EngineSpec("vad", "silero-vad", runtime=LOCAL), data_dir)
    assert isinstance(local, SileroVad)
    local.load()
    state, expected = local.new_state(), []
    for f in frames:
        out = local.run_batch([f], [state])[0]
        assert isinstance(out, Ok)
        state = out.state
        expected.append(out.value.probability)
    local.close()

    async def start(policy: str) -> Scheduler[Array, VadResult]:
        rt = _triton(triton_server, triton_timeout_s=5.0, triton_policy=policy, triton_retry_s=0.5)
        engine = build_engine(EngineSpec("vad", "silero-vad", runtime=rt), data_dir)
        assert isinstance(engine, SileroVad)
        sched = Scheduler(engine, BatchPolicy(batch_wait_s=0.0))
        await sched.start()
        sched.open_session("a")
        return sched

    refuse, fallback = await start("refuse"), await start("fallback")
    try:
        got: list[float] = []
        for f in frames[:20]:
            assert 0.0 <= (await refuse.submit(f, session="a")).probability <= 1.0
            got.append((await fallback.submit(f, session="a")).probability)
        await asyncio.to_thread(triton_server.stop)
        with pytest.raises(TritonUnavailableError, match="unavailable"):
            await refuse.submit(frames[20], session="a")
        with pytest.raises(SessionError, match="Triton server"):
            refuse.open_session("b")
        for f in frames[20:40]:
            got.append((await fallback.submit(f, session="a")).probability)
        assert isinstance(fallback.engine, SileroVad)
        assert fallback.engine.provider.endswith("(triton fallback)")
        await asyncio.to_thread(triton_server.start)
        await asyncio.sleep(0.6)  # past triton_retry_s: Triton is tried again
        for f in frames[40:]:
            got.append((await fallback.submit(f, session="a")).probability)
        assert fallback.engine.provider == "triton"
        assert np.abs(np.array(got) - np.array(expected)).max() <= 1e-5
        assert 0.0 <= (await refuse.submit(frames[0], session="a")).probability <= 1.0
        refuse.open_session("b")  # admitted again once a call succeeded
        assert refuse.stats()["failed"] >= 1
    finally:
        for s in (refuse, fallback):
            await s.close()
        if triton_server.proc is None:
            await asyncio.to_thread(triton_server.start)


def test_exported_repository(data_dir: Path, tmp_path: Path) -> None:
    """export-triton writes one versioned folder per model file; every config.pbtxt parses as
    Triton's ModelConfig and matches the model's signature (names, types, dims, batching,
    scalar reshape), with the TensorRT accelerator when asked."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from tidegate.tools.triton_export import model_files

    # Every default model but the LLMs (reading their 0.25-0.65 GB graphs adds nothing here).
    files = model_files(data_dir, ["silero-vad", "blazeface", "mtcnn", "whisper-tiny-en"])
    assert {triton_model_name(f) for f in files} >= {
        "silero-vad.silero_vad",
        "blazeface.blazeface",
        "whisper-tiny-en.encoder",
        "whisper-tiny-en.decoder",
    }
    options = ExportOptions(kind="gpu", tensorrt=True, fp16=True, max_batch_size=32)
    done = export_repository(files, tmp_path / "repo", options)
    types = {v: k for k, v in model_config_pb2.DataType.items()}
    _check_transcribe(done, tmp_path / "repo", model_config_pb2, text_format, types)
    for item in done:
        if item.name.endswith(".transcribe"):
            continue
        folder = tmp_path / "repo" / item.name
        assert (folder / "1" / "model.onnx").stat().st_size == item.source.stat().st_size
        config = text_format.Parse(
            (folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        assert config.name == item.name and config.backend == "onnxruntime"
        sig = onnx_signature(item.source)
        assert config.max_batch_size == (32 if item.batched else 0)
        assert config.HasField("dynamic_batching") == item.batched
        for declared, specs in ((config.input, sig.inputs), (config.output, sig.outputs)):
            assert [t.name for t in declared] == [s.name for s in specs]
            for t, s in zip(declared, specs, strict=True):
                assert types[t.data_type] == "TYPE_" + {
                    "float32": "FP32", "int64": "INT64", "float16": "FP16", "int32": "INT32",
                    "uint8": "UINT8", "bool": "BOOL", "float64": "FP64", "int8": "INT8",
                }[s.dtype]  # fmt: skip
                shape = s.shape[1:] if item.batched else s.shape
                if not shape:
                    assert list(t.dims) == [1] and t.HasField("reshape")
                    assert list(t.reshape.shape) == []
                else:
                    assert list(t.dims) == [d if isinstance(d, int) else -1 for d in shape]
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        accel = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accel[0].name == "tensorrt" and accel[0].parameters["precision_mode"] == "FP16"
    by_name = {d.name: d for d in done}
    assert not by_name["silero-vad.silero_vad"].batched  # state [2, B, 128] and scalar sr
    assert by_name["blazeface.blazeface"].batched


def _check_transcribe(done: Any, repo: Path, pb2: Any, text_format: Any, types: Any) -> None:
    """Whisper's python transcribe model: backend python, dynamic batching on the request
    axis (ragged rows allowed), the tensors of tidegate/engines/asr/greedy.py, and beside
    model.py the very greedy.py and features.py that the local engine (and the test server)
    run, with the model folder's files."""
    import ast

    from tidegate.engines.asr import greedy

    item = next(d for d in done if d.name == "whisper-tiny-en.transcribe")
    assert item.batched
    folder = repo / item.name
    config = text_format.Parse((folder / "config.pbtxt").read_text(), pb2.ModelConfig())
    assert config.backend == "python" and config.max_batch_size == 32
    assert config.HasField("dynamic_batching")
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    for declared, specs in ((config.input, greedy.TRANSCRIBE_INPUTS),
                            (config.output, greedy.TRANSCRIBE_OUTPUTS)):  # fmt: skip
        assert [t.name for t in declared] == [n for n, _, _ in specs]
        for t, (_, dtype, dims) in zip(declared, specs, strict=True):
            assert types[t.data_type] == {"float32": "TYPE_FP32", "int64": "TYPE_INT64",
                                          "float64": "TYPE_FP64"}[dtype]  # fmt: skip
            assert tuple(t.dims) == dims
    ragged = {t.name for t in config.input if t.allow_ragged_batch}
    assert ragged == {"audio", "prefix"}
    src = Path(greedy.__file__).parent
    version = folder / "1"
    assert (version / "greedy.py").read_bytes() == (src / "greedy.py").read_bytes()
    assert (version / "features.py").read_bytes() == (src / "features.py").read_bytes()
    model_py = (version / "model.py").read_text()
    assert model_py == (src / "triton_model.py").read_text()
    assert "class TritonPythonModel" in model_py
    ast.parse(model_py)
    for name in ("encoder.onnx", "decoder.onnx", "tokenizer.json", "config.json"):
        assert (version / name).is_file()


def test_exported_transcribe_model_in_tritonserver(
    data_dir: Path, assets: Path, tmp_path: Path
) -> None:
    """The exported repository's python transcribe model (its own model.py, greedy.py and
    features.py) loads in the tritonserver binary that pytriton bundles, run directly on the
    repository as a stock Triton, and answers as the local runtime does: the test clips alone,
    in one batch, and from two threads at once (the dynamic batcher may merge their ragged
    rows)."""
    from concurrent.futures import ThreadPoolExecutor

    from tidegate.tools.triton_export import model_files

    from ..triton_server import BundledTritonServer

    repo = tmp_path / "repo"
    export_repository(model_files(data_dir, ["whisper-tiny-en"]), repo, ExportOptions(kind="cpu"))
    server = BundledTritonServer(tmp_path, repo, ["whisper-tiny-en.transcribe"])
    server.start()
    try:
        rt = RuntimeOptions(runtime="triton", triton_url=server.url, triton_timeout_s=60.0)
        remote = _results(rt, data_dir, assets)
        local = _results(LOCAL, data_dir, assets)
        for mine, theirs in zip(local, remote, strict=True):
            for a, b in zip(mine, theirs, strict=True):
                _same_asr(a, b)
        engines = [
            build_engine(EngineSpec("asr", "whisper-tiny-en", runtime=rt), data_dir) for _ in "ab"
        ]
        for e in engines:
            e.load()
        try:
            reqs = _asr_requests(engines[0], assets)[:2]
            with ThreadPoolExecutor(2) as pool:  # one engine per thread, as schedulers run them
                outs = list(pool.map(lambda e, r: e.run_batch([r], [None])[0], engines, reqs))
        finally:
            for e in engines:
                e.close()
        # The dynamic batcher may merge the two; a merged batch decodes with its longest row's
        # audio context, so a row's context is its own or the longer one.
        ctx_max = max(r.audio_ctx for r in local[0][:2])
        for out, expected in zip(outs, local[0][:2], strict=True):
            assert isinstance(out, Ok)
            got = out.value
            assert (got.tokens, got.text, got.generated) == (
                expected.tokens,
                expected.text,
                expected.generated,
            )
            assert got.audio_ctx in (expected.audio_ctx, ctx_max)
    finally:
        server.stop()


def test_side_by_side_bench(triton_server: Any, data_dir: Path, capsys: Any) -> None:
    """The local-versus-triton bench reports latency of both, the added latency and the
    agreement per engine, VAD streams on both runtimes and the unary/stream round trips."""
    import json

    from tidegate.bench.micro import triton as triton_bench

    argv = ["--triton-url", triton_server.url, "--data-dir", str(data_dir), "--json"]
    argv += ["--engines", "vad", "--vad-frames", "20", "--streams", "2"]
    assert triton_bench.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    vad = report["engines"]["vad"]
    assert vad["requests"] == 20 and vad["agreeing"] == 20
    assert {"p50", "p99"} <= set(vad["added_ms"]) and vad["triton_ms"]["p50"] > 0
    assert set(report["vad_streams"]) == {"local", "triton"}
    assert report["grpc_unary_vs_stream"]["calls"] == 20


def test_export_triton_command(data_dir: Path, tmp_path: Path, capsys: Any) -> None:
    """`tidegate models export-triton DIR NAMES` writes the named models' folders; an unknown
    model is a clear error with exit status 1."""
    from tidegate.cli import main

    out = tmp_path / "repo"
    argv = ["models", "--data-dir", str(data_dir), "export-triton", str(out), "silero-vad"]
    assert main([*argv, "--kind", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["silero-vad.silero_vad"]
    assert "KIND_CPU" in (out / "silero-vad.silero_vad" / "config.pbtxt").read_text()
    assert main([*argv[:-1], "no-such-model"]) == 1
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
