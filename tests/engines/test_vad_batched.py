"""The batched Silero VAD graph (tools/convert_silero.py) against the shipped model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tidegate.engines import models
from tidegate.engines.engine import Ok
from tidegate.engines.vad import FRAME_SAMPLES, SileroVad, VadState, frames
from tidegate.tools import convert_silero
from tidegate.tools.prepare import prepare

from .asr_audio import read_wav

SHIPPED = "silero_vad.onnx"
BATCHED = "silero_vad_batched.onnx"


def _folder(data_dir: Path) -> Path:
    return models.model_dir(data_dir, "silero-vad")


def _noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    return np.stack([level * rng.standard_normal(n) for level in (0.003, 0.05, 0.5)]).astype(
        np.float32
    )


def _run(path: Path, streams: list[np.ndarray], batch: int) -> np.ndarray:
    """Probabilities [streams, frames] of ``streams`` run ``batch`` sessions at a time."""
    engine = SileroVad(path)
    engine.load()
    states: list[VadState] = [engine.new_state() for _ in streams]
    chunks = [frames(s)[0] for s in streams]
    out = np.zeros((len(streams), min(len(c) for c in chunks)), np.float32)
    for t in range(out.shape[1]):
        for first in range(0, len(streams), batch):
            group = range(first, min(first + batch, len(streams)))
            results = engine.run_batch([chunks[i][t] for i in group], [states[i] for i in group])
            for i, r in zip(group, results, strict=True):
                assert isinstance(r, Ok)
                states[i], out[i, t] = r.state, r.value.probability
    engine.close()
    return out


def test_equals_the_shipped_model_on_speech_and_noise(data_dir: Path, assets: Path) -> None:
    """Frame by frame from the same state, the batched graph gives the shipped model's
    probability within 1e-5 and its new state within 1e-4 (relative), on recorded speech and
    on noise at three levels; run freely over the clip, the probabilities stay within 1e-5."""
    folder = _folder(data_dir)
    speech = read_wav(assets / "beckett.wav")
    for streams in (speech[None], _noise(4.0, seed=1)):
        prob, state = convert_silero.compare(folder / SHIPPED, folder / BATCHED, streams)
        assert prob <= convert_silero.TOLERANCE, prob
        assert state <= convert_silero.STATE_TOLERANCE, state
    shipped = _run(folder / SHIPPED, [speech], 1)
    batched = _run(folder / BATCHED, [speech], 1)
    assert np.abs(shipped - batched).max() <= 1e-5
    assert (shipped > 0.5).any() and (shipped < 0.1).any()  # the clip has speech and pauses


def test_batches_of_1_8_64_keep_each_session_apart(data_dir: Path, assets: Path) -> None:
    """64 sessions (the clip from different offsets, some with noise) run at batch 1, 8 and
    64 give each session the same probabilities (bit for bit), and the shipped model's at
    batch 1 within 1e-5: no session's state leaks into another's."""
    folder = _folder(data_dir)
    speech = read_wav(assets / "beckett.wav")
    rng = np.random.default_rng(7)
    n = 40 * FRAME_SAMPLES
    streams = []
    for i in range(64):
        start = int(rng.integers(0, len(speech) - n))
        clip = speech[start : start + n] + (i % 3) * 0.01 * rng.standard_normal(n)
        streams.append(clip.astype(np.float32))
    by_batch = {b: _run(folder / BATCHED, streams, b) for b in (1, 8, 64)}
    assert np.array_equal(by_batch[1], by_batch[8])
    assert np.array_equal(by_batch[1], by_batch[64])
    shipped = _run(folder / SHIPPED, streams, 1)
    assert np.abs(shipped - by_batch[64]).max() <= 1e-5
    assert len({round(float(p), 3) for p in by_batch[64][:, -1]}) > 10  # sessions differ


def test_the_converter_is_deterministic(data_dir: Path, tmp_path: Path) -> None:
    """Converting twice gives the same bytes, and the prepared file's: no names, timestamps
    or orderings that vary between runs."""
    src = _folder(data_dir) / SHIPPED
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    convert_silero.convert(src, a)
    convert_silero.convert(src, b)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() == (_folder(data_dir) / BATCHED).read_bytes()
    graph = onnx.load(str(a)).graph
    assert [i.name for i in graph.input] == ["input", "state"]  # 16 kHz only: no sr
    assert not any(node.op_type in ("If", "Conv") for node in graph.node)


def test_compare_catches_a_changed_graph(data_dir: Path, tmp_path: Path) -> None:
    """The check prepare relies on sees a graph whose decoder bias moved by 0.01."""
    folder = _folder(data_dir)
    model = onnx.load(str(folder / BATCHED))
    for init in model.graph.initializer:
        if init.name == "decoder.bias":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 0.01, init.name))
    changed = tmp_path / "changed.onnx"
    onnx.save(model, str(changed))
    prob, _ = convert_silero.compare(folder / SHIPPED, changed, _noise(0.5, seed=2))
    assert prob > convert_silero.TOLERANCE


def test_prepare_writes_and_verifies_it(data_dir: Path, tmp_path: Path) -> None:
    """prepare writes the batched graph next to the shipped file and records its checksum;
    a folder prepared before it existed fails verify and is prepared again."""
    lines: list[str] = []
    prepare(tmp_path, "silero-vad", progress=lines.append)
    folder = _folder(tmp_path)
    manifest = models.read_manifest(tmp_path, "silero-vad")
    assert manifest is not None and set(manifest["files"]) == {SHIPPED, BATCHED}
    assert models.verify(tmp_path, "silero-vad") == []
    assert any("checked against the shipped model" in line for line in lines)

    # As an older tidegate prepared it: the shipped file alone.
    (folder / BATCHED).unlink()
    del manifest["files"][BATCHED]
    (folder / models.MANIFEST).write_text(json.dumps(manifest))
    assert any(BATCHED in p for p in models.verify(tmp_path, "silero-vad", deep=False))
    lines.clear()
    prepare(tmp_path, "silero-vad", progress=lines.append)
    assert not any("already prepared" in line for line in lines)
    assert models.verify(tmp_path, "silero-vad") == []
