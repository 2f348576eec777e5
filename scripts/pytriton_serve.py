"""Serve ONNX models on the Triton Inference Server bundled in nvidia-pytriton (CPU, python
backend only), with ONNX Runtime inside: the real Triton that the tests and the bench talk to.

Runs in its own virtual environment (pytriton pins numpy<2; scripts/fetch_assets.py builds it
in .cache/pytriton-venv): ``.cache/pytriton-venv/bin/python scripts/pytriton_serve.py
--models-dir DATA/models --grpc-port N --http-port N --metrics-port N``. Each ``FOLDER/STEM.onnx``
is served as the model ``FOLDER.STEM`` (tidegate's triton runtime uses the same names), with
batching off: tidegate's scheduler forms the batches, so every tensor has its full shape (a
scalar input is declared ``[1]``, as in the exported repository's ``reshape``). ``--slow
NAME=SECONDS`` also serves a copy of a model as ``slow.NAME`` that sleeps first (deadline
tests). ``--whisper FOLDER`` serves Whisper's whole decode as ``FOLDER.transcribe`` (the python
model that export-triton writes, same code). Binds 127.0.0.1 only. Stop it with SIGTERM.
Prints ``ready`` when serving.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any


def _reexec_with_libpython() -> None:
    """The python backend must load this interpreter's libpython, not the system's (see
    shared MODELS.md): point LD_LIBRARY_PATH at its LIBDIR and start again."""
    libdir = str(sysconfig.get_config_var("LIBDIR") or "")
    paths = os.environ.get("LD_LIBRARY_PATH", "").split(":")
    if libdir and libdir not in paths:
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *[p for p in paths if p]])
        os.execv(sys.executable, [sys.executable, *sys.argv])


def _serve_model(triton: Any, name: str, path: Path, delay_s: float, threads: int) -> None:
    import numpy as np
    import onnxruntime as ort
    from pytriton.model_config import ModelConfig, Tensor

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    types = {
        "tensor(float)": np.float32,
        "tensor(float16)": np.float16,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(int8)": np.int8,
        "tensor(uint8)": np.uint8,
        "tensor(bool)": np.bool_,
    }

    def dims(shape: list[object]) -> tuple[int, ...]:
        out = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)
        return out or (1,)

    scalars = {i.name for i in session.get_inputs() if not i.shape}
    out_names = [o.name for o in session.get_outputs()]

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {k: (v.reshape(()) if k in scalars else v) for k, v in inputs.items()}
        return dict(zip(out_names, session.run(out_names, feeds), strict=True))

    def infer(requests: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        if delay_s:
            time.sleep(delay_s)
        return [run(dict(r.items())) for r in requests]

    triton.bind(
        model_name=name,
        infer_func=infer,
        inputs=[
            Tensor(name=i.name, dtype=types[i.type], shape=dims(i.shape))
            for i in session.get_inputs()
        ],
        outputs=[
            Tensor(name=o.name, dtype=types[o.type], shape=dims(o.shape))
            for o in session.get_outputs()
        ],
        config=ModelConfig(batching=False),
        strict=False,
    )


def _serve_transcribe(triton: Any, folder: Path, threads: int, max_batch: int) -> str:
    """Whisper's python transcribe model (``FOLDER.transcribe``), running the very code that
    ``tidegate models export-triton`` copies beside its model.py: tidegate/engines/asr/
    greedy.py (numpy only), imported here by path."""
    import numpy as np
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    asr = Path(__file__).resolve().parents[1] / "tidegate" / "engines" / "asr"
    if str(asr) not in sys.path:
        sys.path.append(str(asr))
    import greedy  # type: ignore[import-not-found]

    model = greedy.Transcriber.open_ort(folder, ["CPUExecutionProvider"], threads)

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        answers = model.infer([dict(r.items()) for r in requests])
        for a in answers:
            if isinstance(a, ValueError):
                raise a  # pytriton fails the batch with the message
        return answers

    def tensors(items: Any) -> list[Any]:
        return [Tensor(name=n, dtype=np.dtype(t).type, shape=dims) for n, t, dims in items]

    name = f"{folder.name}.transcribe"
    triton.bind(
        model_name=name,
        infer_func=infer,
        inputs=tensors(greedy.TRANSCRIBE_INPUTS),
        outputs=tensors(greedy.TRANSCRIBE_OUTPUTS),
        config=ModelConfig(
            max_batch_size=max_batch,
            batcher=DynamicBatcher(max_queue_delay_microseconds=500),
        ),
        strict=False,
    )
    return name


def _stub_dirs() -> list[Path]:
    """The /tmp folders of this server's python backend stubs (their command lines name the
    model file there and the shared-memory prefix that carries this process's id)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a.endswith(str(os.getpid())) and a.startswith("pytrtion") for a in args):
            found += [
                Path(a).parents[1]
                for a in args
                if a.startswith("/tmp/folder") and a.endswith("/model.py")
            ]
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", type=Path, action="append", default=[])
    ap.add_argument("--model", type=Path, action="append", default=[], help="one ONNX file")
    ap.add_argument("--only", default="", help="comma-separated model names to serve")
    ap.add_argument("--slow", action="append", default=[], help="NAME=SECONDS")
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per model")
    ap.add_argument(
        "--whisper",
        type=Path,
        action="append",
        default=[],
        help="a converted Whisper folder: serve FOLDER.transcribe (the whole decode)",
    )
    ap.add_argument("--max-batch", type=int, default=64, help="transcribe's max_batch_size")
    ap.add_argument("--workspace", type=Path, default=None)
    args = ap.parse_args()
    _reexec_with_libpython()
    logging.basicConfig(level=logging.WARNING)
    from pytriton.triton import Triton, TritonConfig

    files: dict[str, Path] = {}
    for folder in args.models_dir:
        for path in sorted(folder.glob("*/*.onnx")):
            files[f"{path.parent.name}.{path.stem}"] = path
    for path in args.model:
        files[f"{path.parent.name}.{path.stem}"] = path
    if args.only:
        wanted = set(args.only.split(","))
        missing = wanted - set(files)
        if missing:
            sys.exit(f"no model file for {sorted(missing)} (have {sorted(files)})")
        files = {k: v for k, v in files.items() if k in wanted}
    slow = {}
    for item in args.slow:
        name, _, seconds = item.partition("=")
        if name not in files:
            sys.exit(f"--slow {name}: no such model (have {sorted(files)})")
        slow[name] = float(seconds)
    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_address="127.0.0.1",
        http_port=args.http_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
        exit_on_error=True,
        exit_timeout_secs=3,
    )
    kwargs = {}
    if args.workspace is not None:
        kwargs["workspace"] = str(args.workspace)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with Triton(config=config, **kwargs) as triton:
        for name, path in files.items():
            _serve_model(triton, name, path, 0.0, args.threads)
        for name, seconds in slow.items():
            _serve_model(triton, f"slow.{name}", files[name], seconds, args.threads)
        for folder in args.whisper:
            _serve_transcribe(triton, folder, args.threads, args.max_batch)
        triton.run()
        stub_dirs = _stub_dirs()
        print("ready", flush=True)
        try:
            triton.serve()
        except KeyboardInterrupt:
            pass
    # Triton's python backend unpacks each model into /tmp/folderXXXXXX and leaves it there.
    for folder in stub_dirs:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
