"""ONNX Runtime: the TensorRT, CUDA or CPU execution provider, chosen by configuration and
by what this onnxruntime build offers, with TensorRT's engine cache in a folder of ours."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EngineClosedError, ModelError, RuntimeUnavailableError
from ..signature import Signature, ort_dtype, spec_from_shape
from .base import Array, RuntimeOptions

log = logging.getLogger(__name__)

_EP_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_SHORT = {v: k for k, v in _EP_NAMES.items()}


def available_providers() -> tuple[str, ...]:
    """The providers (short names) this onnxruntime build offers."""
    import onnxruntime as ort

    return tuple(_SHORT[p] for p in ort.get_available_providers() if p in _SHORT)


@functools.cache
def int8_is_exact() -> bool:
    """Whether ONNX Runtime's int8 MatMul kernels are exact on this CPU (:func:`int8_exact_on`
    of /proc/cpuinfo; elsewhere taken as exact)."""
    try:
        return int8_exact_on(Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace"))
    except OSError:
        return True


def int8_exact_on(cpuinfo: str) -> bool:
    """False on an x86 CPU with AVX2 but no VNNI (``avx512_vnni``, ``avx_vnni``): there, as
    ONNX Runtime's quantization docs warn, its u8 x s8 kernels sum pairs of products in
    int16 (``vpmaddubsw``) and saturate unless the weights were quantized to 7 bits. Our
    own int8 graphs are (``reduce_range``); Smart Turn's QDQ graph is not, and ordered its
    sentences measurably worse on such a CPU (docs/engines.md)."""
    flags = next(
        (
            line.split(":", 1)[1].split()
            for line in cpuinfo.splitlines()
            if line.startswith("flags")
        ),
        None,
    )
    if flags is None or "avx2" not in flags:
        return True
    return "avx512_vnni" in flags or "avx_vnni" in flags


def choose_providers(options: RuntimeOptions) -> list[tuple[str, dict[str, Any]]]:
    """ONNX Runtime's provider list for ``options``: preferred ones that are available, in
    order, each with its options. CPU always ends the list as the fallback for nodes the
    others do not take."""
    available = available_providers()
    wanted = options.preference()
    if options.require_first and wanted[0] not in available:
        raise RuntimeUnavailableError(
            f"execution provider {wanted[0]!r} is not available in this onnxruntime "
            f"(it offers {list(available)}); install the gpu extra: pip install 'tidegate[gpu]'"
        )
    chosen: list[tuple[str, dict[str, Any]]] = []
    for short in wanted:
        if short not in available:
            log.info("execution provider %s is not available; skipping it", short)
            continue
        chosen.append((_EP_NAMES[short], _provider_options(short, options)))
    if not any(name == _EP_NAMES["cpu"] for name, _ in chosen):
        if "cpu" not in wanted and not chosen:
            raise RuntimeUnavailableError(
                f"none of the execution providers {list(wanted)} is available "
                f"(this onnxruntime offers {list(available)})"
            )
        chosen.append((_EP_NAMES["cpu"], {}))
    return chosen


def _provider_options(short: str, options: RuntimeOptions) -> dict[str, Any]:
    if short == "cuda":
        return {"device_id": options.device_id, "use_tf32": int(options.cuda_tf32)}
    if short == "tensorrt":
        out: dict[str, Any] = {
            "device_id": options.device_id,
            "trt_fp16_enable": options.trt_fp16,
            "trt_max_workspace_size": options.trt_workspace_bytes,
        }
        if options.trt_cache_dir is not None:
            options.trt_cache_dir.mkdir(parents=True, exist_ok=True)
            out["trt_engine_cache_enable"] = True
            out["trt_engine_cache_path"] = str(options.trt_cache_dir)
            out["trt_timing_cache_enable"] = True
            out["trt_timing_cache_path"] = str(options.trt_cache_dir)
        return out
    return {}


class OnnxModel:
    """One ONNX model in one ``InferenceSession``."""

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeUnavailableError(
                "onnxruntime is not installed: pip install onnxruntime"
            ) from None
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning threads burn CPU waiting for work; a server shares its cores.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        providers = choose_providers(options)
        if providers[0][0] == _EP_NAMES["cpu"] and not int8_is_exact():
            # A quantized (QDQ) graph's int8 kernels saturate on x86 CPUs without VNNI
            # (u8 x s8 pairs summed in int16): run its MatMuls on the dequantized weights.
            # A GPU provider's session keeps its own int8 kernels.
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        try:
            self._session: Any = ort.InferenceSession(
                str(path),
                so,
                providers=[name for name, _ in providers],
                provider_options=[opts for _, opts in providers],
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load {path}: {e}") from None
        active = self._session.get_providers()
        self._provider = _SHORT.get(active[0], active[0]) if active else "cpu"
        if options.require_first and self._provider != options.preference()[0]:
            raise RuntimeUnavailableError(
                f"{path.name}: asked for {options.preference()[0]}, onnxruntime gave {active}"
            )
        self._signature = Signature(
            tuple(
                spec_from_shape(i.name, ort_dtype(i.type), i.shape)
                for i in self._session.get_inputs()
            ),
            tuple(
                spec_from_shape(o.name, ort_dtype(o.type), o.shape)
                for o in self._session.get_outputs()
            ),
        )
        self._output_names = [o.name for o in self._signature.outputs]
        self._device_id = options.device_id
        self.path = path

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def provider(self) -> str:
        return self._provider

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """The outputs, as host arrays. An input may be a :meth:`resident` copy (an
        ``OrtValue``): it is bound where it lives instead of being copied again."""
        session = self._session
        if session is None:
            raise EngineClosedError(f"{self.path.name}: the model is closed")
        if not any(type(v).__name__ == "OrtValue" for v in feeds.values()):
            outputs = session.run(self._output_names, dict(feeds))
            return dict(zip(self._output_names, outputs, strict=True))
        binding = session.io_binding()
        for name, value in feeds.items():
            if type(value).__name__ == "OrtValue":
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self._output_names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return dict(zip(self._output_names, binding.copy_outputs_to_cpu(), strict=True))

    def resident(self, array: Array) -> Any:
        """``array`` where this model runs, for inputs fed unchanged to many calls (Whisper's
        cross-attention keys and values, at every decoder step): on the GPU providers an
        ``OrtValue`` copied to the device once; on the CPU the array itself."""
        if self._provider == "cpu":
            return array
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(
            np.ascontiguousarray(array), "cuda", self._device_id
        )

    def close(self) -> None:
        # InferenceSession has no close(); dropping the reference frees it.
        self._session = None
