"""``tidegate models export-triton DIR``: a Triton Inference Server model repository from the
prepared models, for a stock Triton on a GPU node (onnxruntime backend).

Every ONNX file ``DATA/models/FOLDER/STEM.onnx`` becomes the model ``FOLDER.STEM`` (the name the
``triton`` runtime calls): ``DIR/FOLDER.STEM/config.pbtxt`` and ``DIR/FOLDER.STEM/1/model.onnx``
(a hard link to the prepared file where the file system allows, else a copy).

Batching: a model whose every input and output has a symbolic first axis (the batch) and no
scalar input gets ``max_batch_size`` and ``dynamic_batching`` (Triton may merge the batches of
several session nodes). A model whose state is batched on another axis (Silero's
``state [2, B, 128]``, Whisper's KV cache ``[L, B, ...]``) or that takes a scalar (Silero's
``sr``) gets ``max_batch_size: 0`` and full shapes: the node's scheduler forms its batch, and
the recurrent state travels in each request (so no ``sequence_batching``; docs/triton.md).
A scalar input is declared ``dims: [1]`` with ``reshape { shape: [] }``.

A converted Whisper folder also gets ``FOLDER.transcribe``, a python-backend model that runs a
segment's whole decode on the server (encoder and greedy decoder, :mod:`.asr.greedy`), with
dynamic batching on the request axis: the ``triton`` runtime's ASR makes one call per partial
or final instead of one per token (the per-step KV and cross-attention tensors never travel).

``kind`` ``gpu`` puts instances on the GPUs; ``tensorrt`` adds ONNX Runtime's TensorRT
execution accelerator (optionally FP16), whose engines Triton builds at first load.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import tidegate.engines.asr as asr_package
from tidegate.engines import models
from tidegate.engines.asr.greedy import transcribe_signature
from tidegate.engines.errors import ModelError
from tidegate.engines.signature import Signature, TensorSpec

_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "float64": "TYPE_FP64",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "int8": "TYPE_INT8",
    "uint8": "TYPE_UINT8",
    "bool": "TYPE_BOOL",
}
_ONNX_TYPES = {1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 3: "int8",
               2: "uint8", 9: "bool"}  # fmt: skip

KINDS = ("gpu", "cpu")


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """How the repository is written (each a ``export-triton`` option)."""

    kind: str = "gpu"
    instances: int = 1
    max_batch_size: int = 64
    queue_delay_us: int = 500
    tensorrt: bool = False
    fp16: bool = False
    copy: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.instances < 1 or self.max_batch_size < 1 or self.queue_delay_us < 0:
            raise ValueError("instances >= 1, max_batch_size >= 1, queue_delay_us >= 0")
        if self.tensorrt and self.kind != "gpu":
            raise ValueError("the TensorRT accelerator needs kind gpu")


@dataclass(frozen=True, slots=True)
class Exported:
    """One model written to the repository."""

    name: str
    source: Path
    signature: Signature
    batched: bool


def onnx_signature(path: Path) -> Signature:
    """Inputs and outputs of an ONNX file, read with the onnx package (no session)."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # onnx raises DecodeError and others
        raise ModelError(f"cannot read {path}: {e}") from None
    init = {i.name for i in graph.initializer}

    def spec(v: onnx.ValueInfoProto) -> TensorSpec:
        t = v.type.tensor_type
        dtype = _ONNX_TYPES.get(t.elem_type)
        if dtype is None:
            raise ModelError(f"{path.name}: {v.name} has an unsupported element type")
        dims: list[int | str] = [
            int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or f"{v.name}_{i}")
            for i, d in enumerate(t.shape.dim)
        ]
        return TensorSpec(v.name, dtype, tuple(dims))

    return Signature(
        tuple(spec(v) for v in graph.input if v.name not in init),
        tuple(spec(v) for v in graph.output),
    )


def batchable(sig: Signature) -> bool:
    """Whether Triton's batching axis (the first) is the batch of every tensor."""
    tensors = (*sig.inputs, *sig.outputs)
    return all(len(t.shape) >= 1 and isinstance(t.shape[0], str) for t in tensors)


def _dims(shape: Sequence[int | str]) -> str:
    return "[ " + ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape) + " ]"


def config_text(name: str, sig: Signature, options: ExportOptions) -> str:
    """The ``config.pbtxt`` of one model."""
    batched = batchable(sig) and options.max_batch_size > 0
    lines = [
        f'name: "{name}"',
        'backend: "onnxruntime"',
        f"max_batch_size: {options.max_batch_size if batched else 0}",
    ]
    for kind, specs in (("input", sig.inputs), ("output", sig.outputs)):
        lines.append(f"{kind} [")
        items = []
        for t in specs:
            shape = t.shape[1:] if batched else t.shape
            body = [f'    name: "{t.name}"', f"    data_type: {_TYPES[t.dtype]}"]
            if not shape:
                body += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
            else:
                body.append(f"    dims: {_dims(shape)}")
            items.append("  {\n" + "\n".join(body) + "\n  }")
        lines.append(",\n".join(items))
        lines.append("]")
    kind = "KIND_GPU" if options.kind == "gpu" else "KIND_CPU"
    lines.append(f"instance_group [ {{ count: {options.instances}, kind: {kind} }} ]")
    if batched:
        lines.append(
            f"dynamic_batching {{ max_queue_delay_microseconds: {options.queue_delay_us} }}"
        )
    else:
        lines.append(
            "# Batched by the session node's scheduler; recurrent state travels in each "
            "request (no sequence_batching)."
        )
    if options.tensorrt:
        params = [("precision_mode", "FP16" if options.fp16 else "FP32")]
        params.append(("max_workspace_size_bytes", str(1 << 30)))
        params.append(("trt_engine_cache_enable", "1"))
        params.append(("trt_engine_cache_path", f"/tmp/triton-trt-cache/{name}"))
        accel = "\n".join(f'        parameters {{ key: "{k}" value: "{v}" }}' for k, v in params)
        lines.append(
            "optimization { execution_accelerators {\n"
            "  gpu_execution_accelerator: [ {\n"
            '        name: "tensorrt"\n' + accel + "\n  } ]\n} }"
        )
    return "\n".join(lines) + "\n"


TRANSCRIBE_FILES = ("encoder.onnx", "decoder.onnx", "tokenizer.json", "config.json")


def transcribe_config_text(name: str, options: ExportOptions) -> str:
    """The ``config.pbtxt`` of Whisper's python transcribe model: dynamic batching on the
    request axis (rows of different lengths batch together: ``allow_ragged_batch``), and the
    instances on the GPUs (ONNX Runtime's CUDA provider inside) or the CPUs."""
    sig = transcribe_signature()
    lines = [
        f'name: "{name}"',
        'backend: "python"',
        f"max_batch_size: {options.max_batch_size}",
    ]
    for kind, specs in (("input", sig.inputs), ("output", sig.outputs)):
        items = []
        for t in specs:
            body = [
                f'    name: "{t.name}"',
                f"    data_type: {_TYPES[t.dtype]}",
                f"    dims: {_dims(t.shape[1:])}",
            ]
            if kind == "input" and any(isinstance(d, str) for d in t.shape[1:]):
                body.append("    allow_ragged_batch: true")
            items.append("  {\n" + "\n".join(body) + "\n  }")
        lines += [f"{kind} [", ",\n".join(items), "]"]
    kind = "KIND_GPU" if options.kind == "gpu" else "KIND_CPU"
    lines.append(f"instance_group [ {{ count: {options.instances}, kind: {kind} }} ]")
    lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {options.queue_delay_us} }}")
    lines.append('parameters { key: "intra_op_threads" value: { string_value: "1" } }')
    return "\n".join(lines) + "\n"


def export_transcribe(folder: Path, out: Path, options: ExportOptions) -> Exported:
    """Whisper's whole-segment decode as the python model ``FOLDER.transcribe``: model.py
    (:mod:`.asr.triton_model`) with :mod:`.asr.greedy` and :mod:`.asr.features` beside it,
    and the model folder's ONNX files, tokenizer and config."""
    name = f"{folder.name}.transcribe"
    target = out / name
    (target / "1").mkdir(parents=True, exist_ok=True)
    (target / "config.pbtxt").write_text(transcribe_config_text(name, options))
    # model.py imports Triton's module: copied from the engine package, not imported
    source = Path(asr_package.__file__).parent
    for src, filename in (("triton_model.py", "model.py"), ("greedy.py", "greedy.py"),
                          ("features.py", "features.py")):  # fmt: skip
        shutil.copyfile(source / src, target / "1" / filename)
    for filename in TRANSCRIBE_FILES:
        _place(folder / filename, target / "1" / filename, options.copy)
    return Exported(name, folder, transcribe_signature(), True)


def whisper_folders(files: Sequence[Path]) -> list[Path]:
    """The folders among ``files``' that hold a converted Whisper (encoder, decoder,
    tokenizer, config): each gets a transcribe model."""
    folders = sorted({f.parent for f in files})
    return [d for d in folders if all((d / n).is_file() for n in TRANSCRIBE_FILES)]


def _place(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    if not copy:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another file system: copy
    shutil.copy2(src, dst)


def model_files(
    data_dir: Path,
    names: Sequence[str] = (),
    custom: Mapping[str, models.CustomModel] | None = None,
) -> list[Path]:
    """The ONNX files of ``names`` (default: every prepared default model and every custom
    one), less those only local runtimes run (``ModelSpec.local_only``); :class:`ModelError`
    for a model that is unknown or not prepared."""
    custom = dict(custom or {})
    if not names:
        names = [
            n for n in models.DEFAULT_MODELS if not models.verify(data_dir, n, deep=False)
        ] + list(custom)
    files: list[Path] = []
    for name in names:
        if name in custom:
            files.append(custom[name].path)
        elif name in models.DEFAULT_MODELS:
            problems = models.verify(data_dir, name, deep=False)
            if problems:
                raise ModelError(f"{name} is not prepared ({problems[0]}): tidegate models prepare")
            skip = set(models.DEFAULT_MODELS[name].local_only)
            files += sorted(
                f for f in models.model_dir(data_dir, name).glob("*.onnx") if f.name not in skip
            )
        else:
            raise ModelError(f"unknown model {name!r}")
    return files


def export_repository(
    files: Sequence[Path],
    out: Path,
    options: ExportOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Exported]:
    """Write the repository for ``files`` into ``out`` (created; models there are replaced)."""
    from tidegate.engines.runtime.triton import triton_model_name

    options = options or ExportOptions()
    out.mkdir(parents=True, exist_ok=True)
    done: list[Exported] = []
    for path in files:
        name = triton_model_name(path)
        sig = onnx_signature(path)
        folder = out / name
        (folder / "config.pbtxt").parent.mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(config_text(name, sig, options))
        _place(path, folder / "1" / "model.onnx", options.copy)
        done.append(Exported(name, path, sig, batchable(sig)))
        if progress is not None:
            progress(f"{name}: {'dynamic batching' if batchable(sig) else 'max_batch_size 0'}")
    for folder in whisper_folders(files):
        done.append(export_transcribe(folder, out, options))
        if progress is not None:
            progress(f"{done[-1].name}: python backend, whole decode, dynamic batching")
    return done
