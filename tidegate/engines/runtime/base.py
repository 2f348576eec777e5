"""What every runtime shares: the array type, :class:`RuntimeOptions` and the
:class:`ModelRunner` shape (the runtime modules import this, never the package, so the package
can dispatch to them without a cycle)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..signature import Signature

Array = np.ndarray[Any, Any]

RUNTIMES = ("onnx", "tensorrt", "triton")
TRITON_POLICIES = ("refuse", "fallback")
PROVIDERS = ("tensorrt", "cuda", "cpu")


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """How a model runs. ``providers`` is an order of preference among ``tensorrt``, ``cuda``
    and ``cpu`` (``auto``: all three, best first); unavailable ones are skipped, and
    ``require_first`` makes the first one mandatory instead."""

    runtime: str = "onnx"
    providers: tuple[str, ...] = ("auto",)
    require_first: bool = False
    intra_op_threads: int = 1
    device_id: int = 0
    trt_cache_dir: Path | None = None
    trt_fp16: bool = False
    trt_workspace_bytes: int = 1 << 30
    #: TF32 matrix products on CUDA: faster, but a batch's answers then differ from single
    #: calls by ~1e-4 (seen on an H100), so off unless asked for.
    cuda_tf32: bool = False
    #: The Triton server (``host:port`` of its gRPC endpoint) of the ``triton`` runtime.
    triton_url: str = "127.0.0.1:8001"
    #: The client deadline of one Triton call (a batch), reconnection included.
    triton_timeout_s: float = 2.0
    #: When Triton is down or slow: ``refuse`` (fail the call, refuse new sessions) or
    #: ``fallback`` (run the local model file on ONNX Runtime meanwhile).
    triton_policy: str = "refuse"
    #: After a failed call: how long the server counts as down before it is tried again.
    triton_retry_s: float = 5.0
    #: gRPC message size limit both ways (Whisper's cross-attention tensors are large).
    triton_max_message_bytes: int = 256 << 20

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        for p in self.providers:
            if p != "auto" and p not in PROVIDERS:
                raise ValueError(f"provider must be auto or one of {PROVIDERS}, got {p!r}")
        if self.triton_policy not in TRITON_POLICIES:
            raise ValueError(
                f"triton_policy must be one of {TRITON_POLICIES}, got {self.triton_policy!r}"
            )
        if self.triton_timeout_s <= 0 or self.triton_retry_s < 0:
            raise ValueError("triton_timeout_s must be > 0 and triton_retry_s >= 0")
        if self.intra_op_threads < 0:
            raise ValueError("intra_op_threads cannot be negative (0: the runtime's default)")

    def preference(self) -> tuple[str, ...]:
        """The providers in order, ``auto`` expanded, duplicates removed."""
        out: list[str] = []
        for p in self.providers:
            for q in PROVIDERS if p == "auto" else (p,):
                if q not in out:
                    out.append(q)
        return tuple(out)


class ModelRunner(Protocol):
    """A model loaded on one runtime. ``run`` is called from one worker thread at a time."""

    @property
    def signature(self) -> Signature: ...

    @property
    def provider(self) -> str:
        """Where it actually runs: ``cpu``, ``cuda`` or ``tensorrt``."""
        ...

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]: ...

    def close(self) -> None: ...
