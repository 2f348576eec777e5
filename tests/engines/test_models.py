"""Model registry and preparation: once, checksummed, verified, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tidegate.engines import models
from tidegate.engines.engine import Ok, TensorEngine
from tidegate.engines.errors import MissingPackageError, ModelError
from tidegate.engines.service import EngineSpec, build_engine
from tidegate.tools.cli import add_commands
from tidegate.tools.prepare import prepare

from .conftest import affine_model


def test_prepared_models_verify(data_dir: Path) -> None:
    """Every default model is prepared with a manifest whose checksums hold."""
    for name, spec in models.DEFAULT_MODELS.items():
        assert models.verify(data_dir, name) == []
        manifest = models.read_manifest(data_dir, name)
        assert manifest is not None and manifest["licence"] == spec.licence
        assert set(manifest["files"]) == set(spec.files)


def test_prepare_is_once_and_verify_catches_corruption(data_dir: Path, tmp_path: Path) -> None:
    """A second prepare only checks; a corrupted file fails verify until prepared again."""
    shutil.copytree(
        models.model_dir(data_dir, "silero-vad"), models.model_dir(tmp_path, "silero-vad")
    )
    lines: list[str] = []
    prepare(tmp_path, "silero-vad", progress=lines.append)
    assert lines == [f"silero-vad: already prepared in {models.model_dir(tmp_path, 'silero-vad')}"]
    onnx_file = models.model_dir(tmp_path, "silero-vad") / "silero_vad.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-1] + b"\0")
    assert any("SHA-256" in p for p in models.verify(tmp_path, "silero-vad"))
    prepare(tmp_path, "silero-vad", force=True)
    assert models.verify(tmp_path, "silero-vad") == []


def test_a_model_converted_another_way_is_prepared_again(data_dir: Path, tmp_path: Path) -> None:
    """A converted model records its recipe in the manifest; one prepared with another recipe
    (here: before recipes were recorded) is stale, and preparing converts it again."""
    name = "whisper-tiny-en"
    folder = models.model_dir(tmp_path, name)
    shutil.copytree(models.model_dir(data_dir, name), folder)
    manifest = json.loads((folder / models.MANIFEST).read_text())
    assert manifest["conversion"] == models.DEFAULT_MODELS[name].conversion
    del manifest["conversion"]
    (folder / models.MANIFEST).write_text(json.dumps(manifest))
    problems = models.verify(tmp_path, name, deep=False)
    assert len(problems) == 1 and "before recipes were recorded" in problems[0]
    assert "prepare it again" in problems[0]
    with pytest.raises(ModelError, match="prepare it again"):
        models.model_path(tmp_path, name)
    lines: list[str] = []
    prepare(tmp_path, name, download=False, progress=lines.append)
    assert any("precision int8, decoder output_projection" in line for line in lines)
    assert models.verify(tmp_path, name) == []


def test_whisper_recipes_name_the_graphs_the_converter_builds() -> None:
    from tidegate.tools.convert_whisper import GRAPH_VERSION

    assert models.WHISPER_GRAPH == GRAPH_VERSION
    for name, spec in models.DEFAULT_MODELS.items():
        if name.startswith("whisper-"):
            assert spec.conversion["graph"] == GRAPH_VERSION, name


def test_whisper_base_decoder_is_int8_throughout(data_dir: Path) -> None:
    """Whisper base is converted with every MatMul int8 (its recipe), the decoder's too;
    tiny.en's decoder keeps float32 layers and an int8 output projection."""
    import onnx

    def weights(name: str, graph: str) -> dict[str, int]:
        """The graph's MatMuls with a constant weight, by op type."""
        model = onnx.load(str(models.model_dir(data_dir, name) / graph))
        consts = {t.name for t in model.graph.initializer}
        found: dict[str, int] = {}
        for node in model.graph.node:
            if node.op_type in ("MatMul", "MatMulInteger") and node.input[1] in consts:
                found[node.op_type] = found.get(node.op_type, 0) + 1
        return found

    base = weights("whisper-base", "decoder.onnx")
    assert "MatMul" not in base and base["MatMulInteger"] > 6 * 4  # 6 layers, >= 4 each
    recorded = json.loads(
        (models.model_dir(data_dir, "whisper-base") / "conversion.json").read_text()
    )
    assert recorded["int8_matmuls"] == {"encoder.onnx": "all", "decoder.onnx": "all"}
    tiny = weights("whisper-tiny-en", "decoder.onnx")
    assert tiny["MatMulInteger"] == 1 and tiny["MatMul"] > 4 * 4


def test_blazeface_conversion_from_the_wheel(data_dir: Path, tmp_path: Path) -> None:
    """BlazeFace is extracted from the cached mediapipe wheel and converted with a dynamic
    batch axis, without downloading; the progress names each step."""
    lines: list[str] = []
    prepare(
        tmp_path,
        "blazeface",
        wheel_dir=data_dir.parent / "wheels",
        download=False,
        progress=lines.append,
    )
    assert any("tflite2onnx" in line for line in lines)
    engine = TensorEngine(models.model_dir(tmp_path, "blazeface") / "blazeface.onnx")
    engine.load()
    assert engine.signature.input("input").shape[0] == "batch"
    out = engine.run_batch([{"input": np.zeros((3, 128, 128), np.float32)}] * 3, [None] * 3)
    assert all(o.value["regressors"].shape == (896, 16) for o in out)  # type: ignore[union-attr]


def test_missing_wheel_names_the_package(tmp_path: Path) -> None:
    """Offline, without the wheel in the cache, preparation names the missing package and
    how to get it."""
    with pytest.raises(MissingPackageError) as info:
        prepare(tmp_path, "blazeface", wheel_dir=tmp_path / "empty", download=False)
    assert info.value.package == "mediapipe"
    assert "pip download --no-deps mediapipe==0.10.21" in str(info.value)
    assert not models.model_dir(tmp_path, "blazeface").exists()


def test_unknown_model_is_refused(tmp_path: Path) -> None:
    """An unknown model name is refused with the list of known ones."""
    with pytest.raises(ModelError, match="silero-vad"):
        prepare(tmp_path, "whisper-huge")


def test_custom_model_is_configuration(tmp_path: Path) -> None:
    """A custom model is a file path and a signature in TOML; it runs as an engine, and a
    signature that does not match the file is refused with a clear error."""
    path = affine_model(tmp_path / "affine.onnx")
    toml = tmp_path / "models.toml"
    toml.write_text(
        f'[models.affine]\npath = "affine.onnx"\nsha256 = "{models.sha256_file(path)}"\n'
        'inputs = [{name = "x", dtype = "float32", shape = ["batch", 4]}]\n'
        'outputs = [{name = "y", dtype = "float32", shape = ["batch", 3]}]\n'
        '[models.wrong]\npath = "affine.onnx"\n'
        'inputs = [{name = "x", dtype = "float32", shape = ["batch", 5]}]\n'
        "outputs = []\n"
    )
    custom = models.load_custom_models(toml)
    assert models.verify_custom(custom["affine"]) == []
    engine = build_engine(EngineSpec("affine", "affine"), tmp_path, custom)
    assert isinstance(engine, TensorEngine)
    engine.load()
    out = engine.run_batch([{"x": np.ones(4, np.float32)}], [None])[0]
    assert isinstance(out, Ok) and out.value["y"].shape == (3,)
    wrong = build_engine(EngineSpec("wrong", "wrong"), tmp_path, custom)
    with pytest.raises(ModelError, match=r"has shape \['batch', 4\], declared \['batch', 5\]"):
        wrong.load()
    path.write_bytes(path.read_bytes() + b"x")
    assert "SHA-256" in models.verify_custom(custom["affine"])[0]


def test_cli_list_and_verify(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tidegate models list` shows each model's state and licence; `verify` exits 1 on a
    problem and 0 when all is well."""
    import argparse

    def run(*argv: str, data: Path) -> int:
        parser = argparse.ArgumentParser()
        add_commands(parser.add_subparsers(dest="command"), data_dir=data)
        args = parser.parse_args(["models", *argv])
        return int(args.func(args))

    assert run("list", data=data_dir) == 0
    listing = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
    assert rows["silero-vad"][1:3] == ["ready", "MIT"]
    assert rows["blazeface"][2] == "Apache-2.0"
    assert run("verify", data=data_dir) == 0
    assert run("verify", "silero-vad", data=tmp_path) == 1
    assert "not prepared" in capsys.readouterr().err
    stale = models.model_dir(tmp_path, "mtcnn")
    shutil.copytree(models.model_dir(data_dir, "mtcnn"), stale)
    manifest = json.loads((stale / models.MANIFEST).read_text())
    (stale / models.MANIFEST).write_text(json.dumps({**manifest, "version": "0.0.0"}))
    assert run("list", data=tmp_path) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["mtcnn"][1] == "stale" and rows["silero-vad"][1] == "missing"
    manifest = json.loads((models.model_dir(data_dir, "mtcnn") / "manifest.json").read_text())
    assert manifest["sources"] == models.DEFAULT_MODELS["mtcnn"].sources
