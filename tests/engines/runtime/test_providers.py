"""Execution-provider choice: preferred providers that exist, in order, CPU as the fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidegate.engines.errors import RuntimeUnavailableError
from tidegate.engines.runtime import RuntimeOptions
from tidegate.engines.runtime.onnx import _provider_options, available_providers, choose_providers


def test_cpu_is_always_there() -> None:
    """Every onnxruntime build offers the CPU provider."""
    assert "cpu" in available_providers()


def test_auto_takes_the_best_available_and_ends_with_cpu() -> None:
    """auto = tensorrt, cuda, cpu, skipping what this build lacks; CPU always closes the list."""
    chosen = [name for name, _ in choose_providers(RuntimeOptions())]
    expected = [
        {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider"}[p]
        for p in ("tensorrt", "cuda")
        if p in available_providers()
    ]
    assert chosen == [*expected, "CPUExecutionProvider"]


def test_cuda_preference_falls_back_or_is_required() -> None:
    """A CUDA preference uses CUDA where this build has it; elsewhere it falls back to CPU,
    unless require_first says no."""
    options = RuntimeOptions(providers=("cuda", "cpu"))
    if "cuda" in available_providers():
        assert [n for n, _ in choose_providers(options)] == [
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ]
        return
    assert choose_providers(options) == [("CPUExecutionProvider", {})]
    with pytest.raises(RuntimeUnavailableError, match=r"tidegate\[gpu\]"):
        choose_providers(RuntimeOptions(providers=("cuda",), require_first=True))


def test_provider_options(tmp_path: Path) -> None:
    """CUDA runs with TF32 off unless asked; TensorRT caches engines in the given folder."""
    assert _provider_options("cuda", RuntimeOptions()) == {"device_id": 0, "use_tf32": 0}
    assert _provider_options("cuda", RuntimeOptions(cuda_tf32=True))["use_tf32"] == 1
    trt = _provider_options("tensorrt", RuntimeOptions(trt_cache_dir=tmp_path / "trt"))
    assert trt["trt_engine_cache_enable"] is True
    assert trt["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert (tmp_path / "trt").is_dir()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"runtime": "tflite"}, "runtime must be one of"),
        ({"providers": ("tpu",)}, "provider must be auto or one of"),
        ({"intra_op_threads": -1}, "cannot be negative"),
    ],
)
def test_bad_options_are_named(kwargs: dict[str, object], words: str) -> None:
    """Nonsense runtime options are refused with a message naming them."""
    with pytest.raises(ValueError, match=words):
        RuntimeOptions(**kwargs)  # type: ignore[arg-type]


def test_int8_exactness_is_read_from_the_cpu_flags() -> None:
    """QDQ graphs run on dequantized weights on x86 CPUs whose int8 kernels saturate (AVX2
    without VNNI); everywhere else on ONNX Runtime's int8 kernels."""
    from tidegate.engines.runtime.onnx import int8_exact_on

    assert not int8_exact_on("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n")
    assert int8_exact_on("flags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert int8_exact_on("flags\t\t: fpu avx2 avx_vnni\n")
    assert int8_exact_on("Features\t: fp asimd asimddp\n")  # arm64: no flags line
