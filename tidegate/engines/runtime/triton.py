"""NVIDIA Triton Inference Server over gRPC: the same shape as :mod:`.onnx`, for a GPU pool
that serves the prepared models apart from the session nodes. Needs the ``triton`` extra
(``tritonclient[grpc]``), imported here only.

A model file ``DATA/models/FOLDER/STEM.onnx`` is the Triton model ``FOLDER.STEM`` (the names
``tidegate models export-triton`` writes). tidegate's scheduler forms the batches, and
streaming state (Silero's recurrent state, Whisper's prefix, the LLM's KV cache) travels in
each request, so one Triton call answers one batch and any Triton instance can answer it
(docs/triton.md says why this beat sequence batching here).

Failures: each call has a client deadline (``triton_timeout_s``); a call that finds the
server unreachable makes a new channel and tries once more within that deadline. What then
happens is ``triton_policy``: ``refuse`` fails the call (:class:`TritonUnavailableError` or
:class:`TritonDeadlineError`); an unreachable server is marked down for ``triton_retry_s``,
during which :func:`unavailable` tells admission control and the scheduler to refuse new
sessions; ``fallback`` answers from the
local model file on ONNX Runtime instead and tries Triton again after ``triton_retry_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tidegate.protocol.errors import ErrorCode

from ..errors import (
    DeadlineError,
    EngineClosedError,
    InferenceError,
    ModelError,
    RuntimeUnavailableError,
)
from ..signature import Signature, TensorSpec
from .base import Array, ModelRunner, RuntimeOptions

log = logging.getLogger(__name__)

POLICIES = ("refuse", "fallback")

# Triton's data types: config enum names (TYPE_FP32) and wire names (FP32), to numpy.
_DTYPES = {
    "FP32": "float32",
    "FP16": "float16",
    "FP64": "float64",
    "INT64": "int64",
    "INT32": "int32",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}
_WIRE = {v: k for k, v in _DTYPES.items()}


def triton_model_name(path: Path) -> str:
    """The Triton model serving the file ``path``: ``FOLDER.STEM``."""
    return f"{path.parent.name}.{path.stem}"


class TritonUnavailableError(InferenceError):
    """The Triton server cannot be reached (or the model is not loaded there)."""

    code = ErrorCode.OVERLOADED
    batch_wide = True


class TritonDeadlineError(DeadlineError):
    """Triton did not answer within ``triton_timeout_s``."""

    batch_wide = True


@dataclass
class _Health:
    """What this process knows about one Triton URL (shared by its models)."""

    down_reason: str = ""
    down_until: float = 0.0  # monotonic

    def mark_down(self, reason: str, retry_s: float) -> None:
        self.down_reason = reason
        self.down_until = time.monotonic() + retry_s

    def mark_up(self) -> None:
        self.down_reason = ""
        self.down_until = 0.0

    def down(self) -> str:
        return self.down_reason if time.monotonic() < self.down_until else ""


_HEALTH: dict[str, _Health] = {}
_HEALTH_LOCK = threading.Lock()


def _health(url: str) -> _Health:
    with _HEALTH_LOCK:
        return _HEALTH.setdefault(url, _Health())


def unavailable(options: RuntimeOptions) -> str:
    """Why a new session should be refused now ('' when it should not): a Triton runtime
    under the ``refuse`` policy whose server failed within the last ``triton_retry_s``.
    Reads cached state only (never blocks)."""
    if options.runtime != "triton" or options.triton_policy != "refuse":
        return ""
    reason = _health(options.triton_url).down()
    return f"the Triton server at {options.triton_url} is unavailable ({reason})" if reason else ""


class TritonModel:
    """One model on a Triton server, called with tidegate's batches."""

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        try:
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import InferenceServerException
        except ImportError:
            raise RuntimeUnavailableError(
                "the triton runtime needs tritonclient: pip install 'tidegate[triton]'"
            ) from None
        self._grpc: Any = grpcclient
        self._exc: Any = InferenceServerException
        self.path = path
        self.name = triton_model_name(path)
        self.options = options
        self.url = options.triton_url
        self._health = _health(self.url)
        self._client: Any = None
        self._closed = False
        self._scalars: set[str] = set()
        try:
            self._signature = self._fetch_signature()
        except TritonUnavailableError:
            self._health.mark_down("unreachable at load", options.triton_retry_s)
            raise
        self._health.mark_up()

    # -- connection ---------------------------------------------------------------------------
    def _connect(self) -> Any:
        if self._client is None:
            backoff_ms = max(100, int(self.options.triton_retry_s * 1000))
            self._client = self._grpc.InferenceServerClient(
                self.url,
                channel_args=[
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", backoff_ms),
                    ("grpc.max_send_message_length", self.options.triton_max_message_bytes),
                    ("grpc.max_receive_message_length", self.options.triton_max_message_bytes),
                ],
            )
        return self._client

    def _reconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # a broken channel may fail to close; it is dropped anyway
                log.debug("closing a Triton channel failed", exc_info=True)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A client call with the deadline, one reconnect on UNAVAILABLE, errors mapped."""
        deadline = time.monotonic() + self.options.triton_timeout_s
        for attempt in (0, 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                return getattr(self._connect(), method)(*args, client_timeout=remaining, **kwargs)
            except self._exc as e:
                status = str(getattr(e, "status", lambda: "")() or "")
                if "DEADLINE_EXCEEDED" in status:
                    raise TritonDeadlineError(
                        f"triton: {self.name} did not answer within "
                        f"{self.options.triton_timeout_s:g} s (triton_timeout_s)"
                    ) from None
                if "UNAVAILABLE" in status:
                    self._reconnect()
                    if attempt == 0:
                        continue
                    raise TritonUnavailableError(
                        f"triton: the server at {self.url} is unavailable: {e.message()}"
                    ) from None
                if "NOT_FOUND" in status or "not found" in str(e).lower():
                    raise TritonUnavailableError(
                        f"triton: model {self.name!r} is not loaded at {self.url}: {e.message()}"
                    ) from None
                raise InferenceError(f"triton: {self.name} failed: {e.message()}") from None
        raise TritonDeadlineError(
            f"triton: {self.name} did not answer within {self.options.triton_timeout_s:g} s "
            "(triton_timeout_s)"
        )

    # -- signature ----------------------------------------------------------------------------
    def _fetch_signature(self) -> Signature:
        config = self._call("get_model_config", self.name).config
        batched = config.max_batch_size > 0
        local: set[str] | None = None  # read from the local file only when needed

        def spec(t: Any, kind: str) -> TensorSpec:
            dtype = _DTYPES.get(self._grpc.model_config_pb2.DataType.Name(t.data_type)[5:])
            if dtype is None:
                raise ModelError(f"triton: {self.name} {kind} {t.name} has an unsupported type")
            dims: list[int | str] = [
                int(d) if d >= 0 else f"{t.name}_{i}" for i, d in enumerate(t.dims)
            ]
            nonlocal local
            scalar = kind == "input" and not batched and list(t.dims) == [1]
            if scalar and t.HasField("reshape"):
                scalar = not t.reshape.shape
            elif scalar:
                local = _local_scalars(self.path) if local is None else local
                scalar = t.name in local
            if scalar:
                self._scalars.add(t.name)
                dims = []
            if batched:
                dims = ["batch", *dims]
            return TensorSpec(t.name, dtype, tuple(dims))

        return Signature(
            tuple(spec(t, "input") for t in config.input),
            tuple(spec(t, "output") for t in config.output),
        )

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def provider(self) -> str:
        return "triton"

    # -- running ------------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        if self._closed:
            raise EngineClosedError(f"{self.name}: the model is closed")
        inputs = []
        for spec in self._signature.inputs:
            arr = np.ascontiguousarray(feeds[spec.name], dtype=spec.dtype)
            if spec.name in self._scalars:
                arr = arr.reshape(1)
            item = self._grpc.InferInput(spec.name, list(arr.shape), _WIRE[spec.dtype])
            item.set_data_from_numpy(arr)
            inputs.append(item)
        outputs = [self._grpc.InferRequestedOutput(s.name) for s in self._signature.outputs]
        try:
            result = self._call("infer", self.name, inputs, outputs=outputs)
        except TritonUnavailableError as e:
            # A slow model is not a server that is down: a deadline miss fails its calls,
            # and admission control sees the queue's wait grow.
            self._health.mark_down(str(e), self.options.triton_retry_s)
            raise
        self._health.mark_up()
        return {s.name: result.as_numpy(s.name) for s in self._signature.outputs}

    def close(self) -> None:
        self._closed = True
        self._reconnect()


class FallbackModel:
    """Triton first; the local model file on ONNX Runtime (or what ``local`` opens) while
    Triton is down or slow (``triton_policy = fallback``). Triton is tried again
    ``triton_retry_s`` after a failure."""

    def __init__(
        self,
        path: Path,
        options: RuntimeOptions,
        local: Callable[[], ModelRunner] | None = None,
    ) -> None:
        self.path = path
        self.options = options
        self._local_factory = local
        self._health = _health(options.triton_url)
        self._remote: TritonModel | None = None
        self._local: ModelRunner | None = None
        self._retry_at = 0.0
        self.fallbacks = 0
        try:
            self._remote = TritonModel(path, options)
        except (TritonUnavailableError, TritonDeadlineError) as e:
            log.warning("%s: %s; running it locally (triton_policy=fallback)", path.name, e)
            self._retry_at = time.monotonic() + options.triton_retry_s
            self._open_local()

    def _open_local(self) -> ModelRunner:
        if self._local is None and self._local_factory is not None:
            self._local = self._local_factory()
        elif self._local is None:
            from dataclasses import replace

            from .onnx import OnnxModel

            self._local = OnnxModel(self.path, replace(self.options, runtime="onnx"))
        return self._local

    @property
    def signature(self) -> Signature:
        if self._remote is not None:
            return self._remote.signature
        return self._open_local().signature

    @property
    def provider(self) -> str:
        if self._remote is not None and time.monotonic() >= self._retry_at:
            return "triton"
        return f"{self._open_local().provider} (triton fallback)"

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        if time.monotonic() >= self._retry_at:
            try:
                if self._remote is None:
                    self._remote = TritonModel(self.path, self.options)
                return self._remote.run(feeds)
            except (TritonUnavailableError, TritonDeadlineError) as e:
                log.warning(
                    "%s: %s; answering locally for %g s",
                    self.path.name,
                    e,
                    self.options.triton_retry_s,
                )
                self._retry_at = time.monotonic() + self.options.triton_retry_s
        self.fallbacks += 1
        return self._open_local().run(feeds)

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()
        if self._local is not None:
            self._local.close()
            self._local = None


def open_triton(
    path: Path, options: RuntimeOptions, local: Callable[[], ModelRunner] | None = None
) -> ModelRunner:
    """The model ``path`` names on Triton, under ``options.triton_policy``. ``local`` opens
    what the ``fallback`` policy runs instead (default: the file ``path`` on ONNX Runtime)."""
    if options.triton_policy == "fallback":
        return FallbackModel(path, options, local)
    return TritonModel(path, options)


def _local_scalars(path: Path) -> set[str]:
    """Names of the rank-0 inputs of the local model file (Triton declares them ``[1]``);
    empty when the file is not here."""
    if not path.is_file():
        return set()
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # an unreadable local copy only loses the scalar hint
        return set()
    init = {i.name for i in graph.initializer}
    return {
        i.name
        for i in graph.input
        if i.name not in init
        and not i.type.tensor_type.shape.dim
        and i.type.tensor_type.HasField("shape")
    }
