"""Declared signatures: the tensors a model takes and gives, with dtypes and shapes.

A dimension is an ``int`` (fixed) or a ``str`` (symbolic, e.g. ``"batch"``). A signature is
checked against the model file when the model loads (:meth:`Signature.check_model`), and a
request's arrays are checked against it before they join a batch (:meth:`TensorSpec.check`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ModelError, RequestError

Dim = int | str

# ONNX Runtime's type strings ("tensor(float)") to numpy dtype names.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One named tensor: dtype (a numpy dtype name) and shape (ints fixed, strs symbolic)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def check(self, value: Any, *, batched: bool = False) -> np.ndarray[Any, Any]:
        """The value as an array of this spec (without the batch axis unless ``batched``);
        :class:`RequestError` naming what was wrong and what was expected otherwise."""
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError) as e:
            raise RequestError(f"{self.name}: not an array ({e})") from None
        if arr.dtype != np.dtype(self.dtype):
            if arr.dtype.kind in "fiub" and np.can_cast(arr.dtype, self.dtype, "same_kind"):
                arr = arr.astype(self.dtype)
            else:
                raise RequestError(f"{self.name}: dtype {arr.dtype}, expected {self.dtype}")
        shape = self.shape if batched else self.shape[1:]
        if arr.ndim != len(shape) or any(
            isinstance(d, int) and d != n for d, n in zip(shape, arr.shape, strict=True)
        ):
            raise RequestError(
                f"{self.name}: shape {list(arr.shape)}, expected {[d for d in shape]}"
            )
        return arr

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        try:
            shape = tuple(d if isinstance(d, str) else int(d) for d in data["shape"])
            np.dtype(str(data["dtype"]))
            return cls(str(data["name"]), str(data["dtype"]), shape)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"bad tensor spec {dict(data)!r}: {e}") from None


@dataclass(frozen=True, slots=True)
class Signature:
    """Inputs and outputs of a model, in order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    doc: str = field(default="", compare=False)

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": [s.as_dict() for s in self.inputs],
            "outputs": [s.as_dict() for s in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Signature:
        try:
            inputs = tuple(TensorSpec.from_dict(d) for d in data["inputs"])
            outputs = tuple(TensorSpec.from_dict(d) for d in data["outputs"])
        except (KeyError, TypeError) as e:
            raise ModelError(f"a signature needs 'inputs' and 'outputs' lists: {e}") from None
        return cls(inputs, outputs)

    def check_model(self, actual: Signature, *, model: str) -> None:
        """Raise :class:`ModelError` when the model file's own signature (``actual``) does
        not match this declared one. Symbolic dimensions match anything; a fixed declared
        dimension must be fixed to the same size (or symbolic) in the file."""
        for kind, declared, found in (
            ("input", self.inputs, actual.inputs),
            ("output", self.outputs, actual.outputs),
        ):
            names = [s.name for s in found]
            for spec in declared:
                if spec.name not in names:
                    raise ModelError(f"{model}: no {kind} named {spec.name!r} (it has {names})")
                other = found[names.index(spec.name)]
                if other.dtype != spec.dtype:
                    raise ModelError(
                        f"{model}: {kind} {spec.name!r} is {other.dtype}, declared {spec.dtype}"
                    )
                if other.shape and len(other.shape) != len(spec.shape):
                    raise ModelError(
                        f"{model}: {kind} {spec.name!r} has shape {list(other.shape)}, "
                        f"declared {list(spec.shape)}"
                    )
                for d, o in zip(spec.shape, other.shape, strict=False):
                    if isinstance(d, int) and isinstance(o, int) and d != o:
                        raise ModelError(
                            f"{model}: {kind} {spec.name!r} has shape {list(other.shape)}, "
                            f"declared {list(spec.shape)}"
                        )


def ort_dtype(type_str: str) -> str:
    """Numpy dtype name of an ONNX Runtime type string."""
    try:
        return _ORT_TYPES[type_str]
    except KeyError:
        raise ModelError(f"unsupported tensor type {type_str}") from None


def spec_from_shape(name: str, dtype: str, shape: Sequence[Any]) -> TensorSpec:
    """A spec from a runtime's shape (ints, strings, or None for unnamed dynamic dims)."""
    dims: list[Dim] = []
    for i, d in enumerate(shape):
        if isinstance(d, int) and d >= 0:
            dims.append(d)
        else:
            dims.append(d if isinstance(d, str) and d else f"{name}_{i}")
    return TensorSpec(name, dtype, tuple(dims))
