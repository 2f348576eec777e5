"""The engine abstraction: a declared signature, a lifecycle (load, warm up, run, close), and
a batch call that answers every request with its own outcome.

``run_batch`` never lets one request sink its batch: a request that fails validation gets a
:class:`Failed` outcome and the rest run; when the batched model call itself raises, the
requests are retried one by one so that only the culprit fails. Stateful engines (streaming
models) take one state per request and give back the next one with each :class:`Ok`.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from .errors import EngineError, InferenceError, RequestError
from .runtime import Array, ModelRunner, RuntimeOptions, open_model
from .signature import Signature

log = logging.getLogger(__name__)

ReqT = TypeVar("ReqT")
ResT = TypeVar("ResT")
StateT = TypeVar("StateT")
PrepT = TypeVar("PrepT")


@dataclass(frozen=True, slots=True)
class Ok(Generic[ResT]):
    """A request's result, and (for stateful engines) the session's next state."""

    value: ResT
    state: Any = None


@dataclass(frozen=True, slots=True)
class Failed:
    """A request that failed; the others in its batch are unaffected."""

    error: EngineError


Outcome = Ok[ResT] | Failed


class Engine(abc.ABC, Generic[ReqT, ResT, PrepT]):
    """Base of every engine. Subclasses implement ``_load``, ``prepare`` and ``infer``.

    ``prepare`` turns one request into model-ready data (validation, preprocessing) and
    raises :class:`RequestError` for bad input. ``infer`` runs a list of prepared requests
    (with their states) as one batch and returns one outcome per request.
    """

    #: A short name used in metrics and errors ("vad", "vision").
    name: str = "engine"
    #: True when requests carry per-session state between calls.
    stateful: bool = False

    def __init__(self) -> None:
        self._loaded = False

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def signature(self) -> Signature:
        """Request-level signature: the first axis of every tensor is the batch."""

    def load(self) -> None:
        if not self._loaded:
            self._load()
            self._loaded = True

    @abc.abstractmethod
    def _load(self) -> None: ...

    def warmup(self) -> None:
        """Run one real batch so the first request does not pay for lazy initialisation."""
        self.load()
        request = self.example_request()
        state = self.new_state() if self.stateful else None
        outcome = self.run_batch([request], [state])[0]
        if isinstance(outcome, Failed):
            raise outcome.error

    @abc.abstractmethod
    def example_request(self) -> ReqT:
        """A valid request (used to warm up and by the conformance suite)."""

    def new_state(self) -> Any:
        """The state of a new session (stateful engines only)."""
        return None

    def close(self) -> None:
        """Free the model; ``load`` may be called again afterwards."""
        self._close()
        self._loaded = False

    @abc.abstractmethod
    def _close(self) -> None: ...

    # -- running ------------------------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self, request: ReqT) -> PrepT: ...

    @abc.abstractmethod
    def infer(self, items: Sequence[PrepT], states: Sequence[Any]) -> list[Outcome[ResT]]: ...

    def run_batch(self, requests: Sequence[ReqT], states: Sequence[Any]) -> list[Outcome[ResT]]:
        """One outcome per request, in order; never raises for a request's sake."""
        outcomes: list[Outcome[ResT] | None] = [None] * len(requests)
        index: list[int] = []
        prepared: list[PrepT] = []
        for i, request in enumerate(requests):
            try:
                prepared.append(self.prepare(request))
                index.append(i)
            except EngineError as e:
                outcomes[i] = Failed(e)
            except Exception as e:
                log.exception("%s: preparing a request failed", self.name)
                outcomes[i] = Failed(InferenceError(f"{self.name}: preprocessing failed: {e}"))
        if prepared:
            sub_states = [states[i] for i in index]
            try:
                results = self.infer(prepared, sub_states)
            except Exception as e:
                if len(prepared) == 1 or getattr(e, "batch_wide", False):
                    # One request, or a failure of the runtime itself (a Triton server down
                    # or past its deadline): running them one by one would not help.
                    results = [self._failure(e)] * len(prepared)
                else:
                    # Isolate the culprit: run each request alone.
                    results = []
                    for item, state in zip(prepared, sub_states, strict=True):
                        try:
                            results.extend(self.infer([item], [state]))
                        except Exception as e1:
                            results.append(self._failure(e1))
            for i, outcome in zip(index, results, strict=True):
                outcomes[i] = outcome
        return [o if o is not None else Failed(InferenceError("no outcome")) for o in outcomes]

    def _failure(self, e: Exception) -> Failed:
        if isinstance(e, EngineError):
            return Failed(e)
        log.warning("%s: a request failed to run: %s", self.name, e)
        return Failed(InferenceError(f"{self.name}: the model failed on this request"))


@dataclass(frozen=True, slots=True)
class StateBinding:
    """A recurrent state tensor: fed as ``input``, given back as ``output``; ``batch_axis``
    is where the sessions stack (Silero's state is [2, batch, 128]: axis 1)."""

    input: str
    output: str
    batch_axis: int = 0


class TensorEngine(Engine[Mapping[str, Any], dict[str, Array], dict[str, Array]]):
    """Any ONNX (or TensorRT) model as an engine: a request maps input names to arrays
    without the batch axis; the result maps output names to arrays without it.

    ``constants`` are fed as given to every batch (e.g. a sample rate scalar). ``states``
    make it stateful: those inputs come from the session's state, and their outputs go back
    to it. Requests whose arrays differ in a symbolic dimension run in separate sub-batches.
    ``declared`` is checked against the model file's own signature when it loads.
    """

    def __init__(
        self,
        path: Path,
        *,
        name: str = "model",
        runtime: RuntimeOptions | None = None,
        declared: Signature | None = None,
        constants: Mapping[str, Array] | None = None,
        states: Sequence[StateBinding] = (),
        state_shapes: Mapping[str, tuple[int, ...]] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.path = path
        self.runtime_options = runtime or RuntimeOptions()
        self.declared = declared
        self.constants = dict(constants or {})
        self.states = tuple(states)
        self.state_shapes = dict(state_shapes or {})
        self.stateful = bool(self.states)
        self._model: ModelRunner | None = None
        self._signature: Signature | None = None
        self._state_dtypes: dict[str, str] = {}

    def _load(self) -> None:
        self._model = open_model(self.path, self.runtime_options)
        actual = self._model.signature
        if self.declared is not None:
            self.declared.check_model(actual, model=self.path.name)
        skip = set(self.constants) | {b.input for b in self.states}
        skip_out = {b.output for b in self.states}
        self._signature = Signature(
            tuple(s for s in actual.inputs if s.name not in skip),
            tuple(s for s in actual.outputs if s.name not in skip_out),
        )
        for b in self.states:
            self._state_dtypes[b.input] = actual.input(b.input).dtype
            if b.input not in self.state_shapes:
                spec = actual.input(b.input)
                shape = [d for i, d in enumerate(spec.shape) if i != b.batch_axis]
                if not all(isinstance(d, int) for d in shape):
                    raise EngineError(f"{self.name}: state {b.input} needs a fixed shape")
                self.state_shapes[b.input] = tuple(int(d) for d in shape)

    @property
    def model(self) -> ModelRunner:
        if self._model is None:
            raise EngineError(f"{self.name}: not loaded")
        return self._model

    @property
    def signature(self) -> Signature:
        if self._signature is None:
            self.load()
        assert self._signature is not None
        return self._signature

    @property
    def provider(self) -> str:
        return self.model.provider

    def example_request(self) -> dict[str, Array]:
        out: dict[str, Array] = {}
        for spec in self.signature.inputs:
            shape = [d if isinstance(d, int) else 1 for d in spec.shape[1:]]
            out[spec.name] = np.zeros(shape, dtype=spec.dtype)
        return out

    def new_state(self) -> dict[str, Array]:
        if not self._state_dtypes and self.states:
            raise EngineError(f"{self.name}: not loaded")
        return {
            b.input: np.zeros(self.state_shapes[b.input], dtype=self._state_dtypes[b.input])
            for b in self.states
        }

    def prepare(self, request: Mapping[str, Any]) -> dict[str, Array]:
        if not isinstance(request, Mapping):
            raise RequestError(f"{self.name}: a request maps input names to arrays")
        names = [s.name for s in self.signature.inputs]
        unknown = set(request) - set(names)
        if unknown:
            raise RequestError(f"{self.name}: unknown inputs {sorted(unknown)}; expected {names}")
        out: dict[str, Array] = {}
        for spec in self.signature.inputs:
            if spec.name not in request:
                raise RequestError(f"{self.name}: missing input {spec.name!r}")
            out[spec.name] = spec.check(request[spec.name])
        return out

    def infer(
        self, items: Sequence[dict[str, Array]], states: Sequence[Any]
    ) -> list[Outcome[dict[str, Array]]]:
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, item in enumerate(items):
            key = tuple(item[s.name].shape for s in self.signature.inputs)
            groups.setdefault(key, []).append(i)
        outcomes: list[Outcome[dict[str, Array]] | None] = [None] * len(items)
        for members in groups.values():
            for i, o in zip(members, self._infer_group(items, states, members), strict=True):
                outcomes[i] = o
        return [o for o in outcomes if o is not None]

    def _infer_group(
        self, items: Sequence[dict[str, Array]], states: Sequence[Any], members: list[int]
    ) -> list[Outcome[dict[str, Array]]]:
        feeds: dict[str, Array] = dict(self.constants)
        for spec in self.signature.inputs:
            feeds[spec.name] = np.stack([items[i][spec.name] for i in members])
        for b in self.states:
            feeds[b.input] = np.stack([states[i][b.input] for i in members], axis=b.batch_axis)
        out = self.model.run(feeds)
        n = len(members)
        for name, arr in out.items():
            axis = next((b.batch_axis for b in self.states if b.output == name), 0)
            if arr.ndim <= axis or arr.shape[axis] != n:
                raise InferenceError(f"{self.name}: output {name} lost the batch axis")
        results: list[Outcome[dict[str, Array]]] = []
        for k in range(n):
            value = {s.name: out[s.name][k].copy() for s in self.signature.outputs}
            state = (
                {b.input: np.take(out[b.output], k, axis=b.batch_axis).copy() for b in self.states}
                if self.states
                else None
            )
            results.append(Ok(value, state))
        return results

    def _close(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None
