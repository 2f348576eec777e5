"""TensorRT directly, for prebuilt engine files (``.engine``/``.plan``): the same shape as
:mod:`.onnx`. Needs the ``gpu`` extra (``tensorrt`` and ``cuda-python``), imported here only.

Buffers live on the device and are reused while the shapes stay the same; one CUDA stream
per model; ``run`` copies inputs in, enqueues the engine, copies outputs out and waits.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EngineClosedError, InferenceError, ModelError, RuntimeUnavailableError
from ..signature import Signature, spec_from_shape
from .base import Array, RuntimeOptions


def _check(result: Any) -> Any:
    """cuda-python returns ``(error, *values)``; raise on an error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise InferenceError(f"CUDA call failed: {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class TensorRTModel:
    """A deserialized TensorRT engine with one execution context."""

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        try:
            import tensorrt as trt
            from cuda.bindings import runtime as cudart
        except ImportError as e:
            raise RuntimeUnavailableError(
                f"the tensorrt runtime needs the gpu extra ({e.name} is missing): "
                "pip install 'tidegate[gpu]'"
            ) from None
        if not path.is_file():
            raise ModelError(f"engine file {path} does not exist")
        self._trt = trt
        self._cudart = cudart
        _check(cudart.cudaSetDevice(options.device_id))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ModelError(f"{path}: not a TensorRT engine for this TensorRT and GPU")
        self._engine = engine
        self._context = engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        inputs, outputs = [], []
        self._dtypes: dict[str, np.dtype[Any]] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            self._dtypes[name] = dtype
            spec = spec_from_shape(name, dtype.name, list(engine.get_tensor_shape(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                inputs.append(spec)
            else:
                outputs.append(spec)
        self._signature = Signature(tuple(inputs), tuple(outputs))
        self._closed = False
        self.path = path

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def provider(self) -> str:
        return "tensorrt"

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                _check(self._cudart.cudaFree(ptr))
            ptr = int(_check(self._cudart.cudaMalloc(max(nbytes, 1))))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        if self._closed:
            raise EngineClosedError(f"{self.path.name}: the engine is closed")
        cudart, ctx = self._cudart, self._context
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        keep = []
        for spec in self._signature.inputs:
            arr = np.ascontiguousarray(feeds[spec.name], dtype=self._dtypes[spec.name])
            keep.append(arr)
            if not ctx.set_input_shape(spec.name, arr.shape):
                raise InferenceError(f"{spec.name}: shape {list(arr.shape)} is outside the profile")
            ptr = self._buffer(spec.name, arr.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, self._stream))
            ctx.set_tensor_address(spec.name, ptr)
        results: dict[str, Array] = {}
        for spec in self._signature.outputs:
            shape = tuple(ctx.get_tensor_shape(spec.name))
            out = np.empty(shape, dtype=self._dtypes[spec.name])
            results[spec.name] = out
            ctx.set_tensor_address(spec.name, self._buffer(spec.name, out.nbytes))
        if not ctx.execute_async_v3(self._stream):
            raise InferenceError(f"{self.path.name}: TensorRT failed to enqueue the batch")
        for spec in self._signature.outputs:
            out = results[spec.name]
            ptr = self._buffers[spec.name][0]
            _check(cudart.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, d2h, self._stream))
        _check(cudart.cudaStreamSynchronize(self._stream))
        del keep
        return results

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ptr, _ in self._buffers.values():
            self._cudart.cudaFree(ptr)
        self._buffers.clear()
        self._cudart.cudaStreamDestroy(self._stream)
        del self._context, self._engine


def build_engine(onnx_path: Path, engine_path: Path, *, max_batch: int, fp16: bool = False) -> Path:
    """Build a TensorRT engine file from an ONNX model whose first axis is the batch, with
    one optimisation profile covering batches 1..``max_batch``. Other dims must be fixed."""
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeUnavailableError(
            "building a TensorRT engine needs tensorrt: pip install 'tidegate[gpu]'"
        ) from None
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        rest = dims[1:]
        if any(d < 0 for d in rest):
            raise ModelError(f"{onnx_path}: input {tensor.name} has a dynamic non-batch dim")
        profile.set_shape(
            tensor.name, [1, *rest], [max(1, max_batch // 2), *rest], [max_batch, *rest]
        )
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"TensorRT could not build an engine from {onnx_path}")
    engine_path.write_bytes(bytes(plan))
    return engine_path
