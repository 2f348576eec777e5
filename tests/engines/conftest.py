"""Fixtures of the engine tests: the prepared models and test assets (fetched into the
ignored .cache/ by `make setup`, or here on first use), and tiny ONNX models built with
onnx.helper."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.support import prepare_models
from tidegate.engines import models
from tidegate.engines.runtime import gpu_present

if TYPE_CHECKING:
    from .triton_server import TritonServer

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
ASSETS = CACHE / "assets"
DATA = CACHE / "data"
ASSET_FILES = ("beckett.wav", "astronaut.png", "coffee.png", "camera.png")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The data folder with every default model prepared (fetching what is missing)."""
    return prepare_models(*models.DEFAULT_MODELS, assets=ASSET_FILES)


@pytest.fixture(scope="session")
def assets(data_dir: Path) -> Path:
    return ASSETS


@pytest.fixture
def require_gpu() -> None:
    if not gpu_present():
        pytest.skip("no NVIDIA GPU on this machine")


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: Iterable[onnx.TensorProto] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    return m


def affine_model(path: Path) -> Path:
    """y = x @ W + b for x float32 [batch, 4]; also s = sum(x) [batch, 1]."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
    ]
    return save(
        _model(
            nodes,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
            [
                helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
                helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch", 1]),
            ],
            [w, b, axes],
        ),
        path,
    )


def recurrent_model(path: Path) -> Path:
    """Silero's signature in miniature: input [batch, 8], state [2, batch, 4], sr scalar ->
    output [batch, 1] = sigmoid(sum(input) + sum(state)), stateN = tanh(state + mean(input))."""
    ax1 = numpy_helper.from_array(np.array([1], dtype=np.int64), "ax1")
    ax02 = numpy_helper.from_array(np.array([0, 2], dtype=np.int64), "ax02")
    nodes = [
        helper.make_node("ReduceSum", ["input", "ax1"], ["si"], keepdims=1),  # [B,1]
        helper.make_node("ReduceSum", ["state", "ax02"], ["ss"], keepdims=0),  # [B]
        helper.make_node("Unsqueeze", ["ss", "ax1"], ["ss1"]),  # [B,1]
        helper.make_node("Add", ["si", "ss1"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["output"]),
        helper.make_node("ReduceMean", ["input", "ax1"], ["mi"], keepdims=1),  # [B,1]
        helper.make_node("Add", ["state", "mi"], ["st"]),  # [2,B,4] + [B,1]
        helper.make_node("Tanh", ["st"], ["stateN"]),
    ]
    return save(
        _model(
            nodes,
            [
                helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8]),
                helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
                helper.make_tensor_value_info("sr", TensorProto.INT64, []),
            ],
            [
                helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
                helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 4]),
            ],
            [ax1, ax02],
        ),
        path,
    )


def gather_model(path: Path) -> Path:
    """out = table[idx] for idx int64 [batch, 1]: an index out of range fails at run time,
    inside ONNX Runtime (a real model failure, for the isolation tests)."""
    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    nodes = [helper.make_node("Gather", ["table", "idx"], ["out"], axis=0)]
    return save(
        _model(
            nodes,
            [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", 1])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 1, 4])],
            [table],
        ),
        path,
    )


TinyFactory = Callable[[Path], Path]


@pytest.fixture(scope="session")
def triton_server(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """A real Triton server (pytriton's, on 127.0.0.1) serving the tiny models, Silero VAD,
    BlazeFace and Whisper's whole decode (the python transcribe model) under the names the
    triton runtime derives from their paths, plus ``slow.tiny.affine`` (answers after 1 s).
    Tests that stop it start it again."""
    import shutil

    from .triton_server import TritonServer

    work = tmp_path_factory.mktemp("pytriton")
    tiny, slow = work / "tiny", work / "slow"
    tiny.mkdir()
    slow.mkdir()
    affine_model(tiny / "affine.onnx")
    recurrent_model(tiny / "rec.onnx")
    shutil.copy(tiny / "affine.onnx", slow / "tiny.affine.onnx")
    m = data_dir / "models"
    files = [
        tiny / "affine.onnx",
        tiny / "rec.onnx",
        m / "silero-vad" / "silero_vad.onnx",
        m / "blazeface" / "blazeface.onnx",
    ]
    args = [a for f in files for a in ("--model", str(f))] + ["--slow", "tiny.affine=1.0"]
    args += ["--whisper", str(m / "whisper-tiny-en")]  # whisper-tiny-en.transcribe
    server = TritonServer(work, args)
    server.start()
    server.tiny, server.slow = tiny, slow  # type: ignore[attr-defined]
    yield server
    server.stop()
