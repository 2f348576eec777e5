"""Runtimes: where a model file runs. ``onnx`` (ONNX Runtime with the TensorRT, CUDA or CPU
execution provider) and ``tensorrt`` (TensorRT directly, for prebuilt engine files) have the
same shape: :func:`open_model` gives a :class:`ModelRunner` with a signature, ``run`` and
``close``; so has ``triton`` (a Triton Inference Server over gRPC, for a separate GPU pool).
GPU packages and the Triton client are imported lazily, inside the module that needs them."""

from __future__ import annotations

from pathlib import Path

from ..errors import RuntimeUnavailableError
from .base import (
    PROVIDERS,
    RUNTIMES,
    TRITON_POLICIES,
    Array,
    ModelRunner,
    RuntimeOptions,
)

__all__ = [
    "PROVIDERS",
    "RUNTIMES",
    "TRITON_POLICIES",
    "Array",
    "ModelRunner",
    "RuntimeOptions",
    "gpu_present",
    "open_model",
    "runtime_unavailable",
]


def open_model(path: Path, options: RuntimeOptions | None = None) -> ModelRunner:
    """Load ``path`` on the runtime ``options`` names."""
    options = options or RuntimeOptions()
    if options.runtime == "onnx":
        from .onnx import OnnxModel

        return OnnxModel(path, options)
    if options.runtime == "tensorrt":
        from .tensorrt import TensorRTModel

        return TensorRTModel(path, options)
    if options.runtime == "triton":
        from .triton import open_triton

        return open_triton(path, options)
    raise RuntimeUnavailableError(f"unknown runtime {options.runtime!r}")


def runtime_unavailable(options: RuntimeOptions) -> str:
    """Why new sessions on a model of this runtime should be refused now ('' if they should
    not): only a Triton server that failed recently under the ``refuse`` policy. Never blocks."""
    if options.runtime != "triton":
        return ""
    from .triton import unavailable

    return unavailable(options)


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU (a device node, or ``nvidia-smi -L`` lists one)."""
    import shutil
    import subprocess

    if Path("/dev/nvidia0").exists():
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout
