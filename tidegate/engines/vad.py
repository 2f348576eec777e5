"""Voice activity detection: Silero VAD (ONNX) for every session in one call.

Each request is one 32 ms frame (512 samples at 16 kHz) of one session. Silero also needs
the last 64 samples of the session's previous frame and its recurrent state ([2, 128]);
both live in the session's :class:`VadState`, so a batch stacks them into the model's
``input`` [B, 576] and ``state`` [2, B, 128] and splits ``stateN`` back. The model is the
shipped file (with its ``sr`` input: what Triton serves) or the batched graph prepared from
it (tidegate/tools/convert_silero.py: no ``sr``, the same answers, less CPU). When a batch
holds the same sessions in the same order as the one before (the steady state of many
streams), their stacked state and contexts are taken as the last batch left them instead
of being stacked again. A per-session
hysteresis (:class:`VadTracker`) turns probabilities into speech start/end events with
sample timestamps: start when the probability reaches ``threshold`` and speech lasts
``min_speech_s``; end when it stays below ``threshold - 0.15`` for ``min_silence_s``;
segments are widened by ``speech_pad_s`` on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .engine import Engine, Failed, Ok, Outcome
from .errors import EngineError, RequestError
from .runtime import Array, ModelRunner, RuntimeOptions, open_model
from .signature import Signature, TensorSpec

SAMPLE_RATE_HZ = 16_000
FRAME_SAMPLES = 512  # 32 ms
CONTEXT_SAMPLES = 64
STATE_SHAPE = (2, 128)
FRAME_MS = FRAME_SAMPLES * 1000 / SAMPLE_RATE_HZ

SILERO_SIGNATURE = Signature(
    inputs=(
        TensorSpec("input", "float32", ("batch", "samples")),
        TensorSpec("state", "float32", (2, "batch", 128)),
        TensorSpec("sr", "int64", ()),
    ),
    outputs=(
        TensorSpec("output", "float32", ("batch", 1)),
        TensorSpec("stateN", "float32", (2, "batch", 128)),
    ),
)
#: the batched graph prepared from the shipped model: the 16 kHz branch only, no ``sr``
SILERO_BATCHED_SIGNATURE = replace(SILERO_SIGNATURE, inputs=SILERO_SIGNATURE.inputs[:2])


@dataclass(frozen=True, slots=True)
class VadSettings:
    """Start/stop hysteresis of the speech detector."""

    threshold: float = 0.5
    min_speech_s: float = 0.25
    min_silence_s: float = 0.1
    speech_pad_s: float = 0.03

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if min(self.min_speech_s, self.min_silence_s, self.speech_pad_s) < 0:
            raise ValueError("VAD durations cannot be negative")

    @property
    def neg_threshold(self) -> float:
        return max(self.threshold - 0.15, 0.01)


@dataclass(frozen=True, slots=True)
class VadEvent:
    """Speech started or ended at ``sample`` (16 kHz samples since the session began)."""

    kind: str  # "start" | "end"
    sample: int

    @property
    def ms(self) -> float:
        return self.sample * 1000 / SAMPLE_RATE_HZ


@dataclass(slots=True)
class VadTracker:
    """Per-session hysteresis over frame probabilities (pure: no model, no clock)."""

    settings: VadSettings
    triggered: bool = False  # above threshold, not yet ended
    confirmed: bool = False  # start event emitted
    speech_start: int = 0
    temp_end: int | None = None

    def update(self, probability: float, frame_start: int, frame_end: int) -> list[VadEvent]:
        s = self.settings
        events: list[VadEvent] = []
        pad = round(s.speech_pad_s * SAMPLE_RATE_HZ)
        if probability >= s.threshold:
            self.temp_end = None
            if not self.triggered:
                self.triggered = True
                self.speech_start = frame_start
        elif self.triggered and probability < s.neg_threshold:
            if self.temp_end is None:
                self.temp_end = frame_start
            if frame_end - self.temp_end >= s.min_silence_s * SAMPLE_RATE_HZ:
                if self.confirmed:
                    events.append(VadEvent("end", self.temp_end + pad))
                self.triggered = self.confirmed = False
                self.temp_end = None
        if (
            self.triggered
            and not self.confirmed
            and self.temp_end is None
            and frame_end - self.speech_start >= s.min_speech_s * SAMPLE_RATE_HZ
        ):
            self.confirmed = True
            events.append(VadEvent("start", max(0, self.speech_start - pad)))
        return events

    def onset(self) -> int | None:
        """Above the threshold but not yet confirmed as speech (nor ended): the sample the
        sound began at (None otherwise)."""
        return self.speech_start if self.triggered and not self.confirmed else None

    def end_if_silent(self) -> int | None:
        """In confirmed speech gone quiet: the sample the end event will name if the quiet
        lasts (None otherwise)."""
        if not self.confirmed or self.temp_end is None:
            return None
        return self.temp_end + round(self.settings.speech_pad_s * SAMPLE_RATE_HZ)


@dataclass(slots=True)
class VadState:
    """One session's state: Silero's recurrent state, the previous frame's tail, the
    hysteresis and the number of samples seen."""

    rnn: Array
    context: Array
    tracker: VadTracker
    samples: int = 0


@dataclass(frozen=True, slots=True)
class VadResult:
    """The answer for one frame: speech probability, whether the session is in speech, and
    any start/end events this frame decided."""

    probability: float
    speech: bool
    events: tuple[VadEvent, ...] = field(default=())
    frame_end_sample: int = 0
    #: in speech that has gone quiet: the sample its end event will name if the quiet lasts
    #: ``min_silence_s`` (None otherwise), so that work for the end can start before it comes
    end_if_silent: int | None = None
    #: a sound above ``threshold`` not yet ``min_speech_s`` long (nor ended): the sample it
    #: began at (None otherwise), so that a reply can pause before its start event comes
    onset_sample: int | None = None


@dataclass(frozen=True, slots=True)
class _LastBatch:
    """What the last batch left: its sessions' new states, in order, and the arrays their
    ``rnn`` and ``context`` are views of (never written to after)."""

    states: list[VadState]
    rnn: Array  # [2, B, 128]
    context: Array  # [B, 64]


class SileroVad(Engine[Array, VadResult, Array]):
    """Silero VAD over ONNX Runtime (or TensorRT), batched across sessions."""

    name = "vad"
    stateful = True

    def __init__(
        self,
        path: Path,
        *,
        runtime: RuntimeOptions | None = None,
        settings: VadSettings | None = None,
    ) -> None:
        super().__init__()
        self.path = path
        self.runtime_options = runtime or RuntimeOptions()
        self.settings = settings or VadSettings()
        self._model: ModelRunner | None = None
        self._sr: Array | None = None  # the shipped model's ``sr`` input (None: batched graph)
        self._input = np.empty((0, CONTEXT_SAMPLES + FRAME_SAMPLES), dtype=np.float32)
        self._last: _LastBatch | None = None

    @property
    def signature(self) -> Signature:
        return Signature(
            inputs=(TensorSpec("audio", "float32", ("batch", FRAME_SAMPLES)),),
            outputs=(TensorSpec("probability", "float32", ("batch",)),),
            doc="one 32 ms frame of 16 kHz mono audio in [-1, 1] per session",
        )

    def _load(self) -> None:
        self._model = open_model(self.path, self.runtime_options)
        names = {t.name for t in self._model.signature.inputs}
        signature = SILERO_SIGNATURE if "sr" in names else SILERO_BATCHED_SIGNATURE
        signature.check_model(self._model.signature, model=self.path.name)
        self._sr = np.array(SAMPLE_RATE_HZ, dtype=np.int64) if "sr" in names else None
        self._last = None

    @property
    def provider(self) -> str:
        return self._model.provider if self._model is not None else "unloaded"

    def example_request(self) -> Array:
        return np.zeros(FRAME_SAMPLES, dtype=np.float32)

    def new_state(self) -> VadState:
        return VadState(
            rnn=np.zeros(STATE_SHAPE, dtype=np.float32),
            context=np.zeros(CONTEXT_SAMPLES, dtype=np.float32),
            tracker=VadTracker(self.settings),
        )

    def prepare(self, request: Array) -> Array:
        frame = np.asarray(request)
        if frame.dtype == np.int16:
            frame = frame.astype(np.float32) / 32768.0
        elif frame.dtype != np.float32:
            raise RequestError(f"vad: audio dtype {frame.dtype}, expected float32 or int16")
        if frame.shape != (FRAME_SAMPLES,):
            raise RequestError(
                f"vad: a frame of shape {list(frame.shape)}, expected [{FRAME_SAMPLES}] "
                f"({FRAME_MS:g} ms at {SAMPLE_RATE_HZ} Hz)"
            )
        return frame  # finiteness is checked for the whole batch in infer()

    def _input_rows(self, n: int) -> Array:
        """The model's ``input`` for n sessions: rows of a buffer kept between calls (no
        state ever holds a view of it; ``infer`` runs on one worker thread at a time)."""
        if self._input.shape[0] < n:
            rows = max(n, 2 * self._input.shape[0])
            self._input = np.empty((rows, CONTEXT_SAMPLES + FRAME_SAMPLES), dtype=np.float32)
        return self._input[:n]

    def infer(self, items: Sequence[Array], states: Sequence[Any]) -> list[Outcome[VadResult]]:
        if self._model is None:
            raise EngineError("vad: not loaded")
        n = len(items)
        x = self._input_rows(n)
        audio = x[:, CONTEXT_SAMPLES:]
        np.stack(items, out=audio)
        # One pass over the batch; a sum that is not finite (NaN, infinity, or finite values
        # so large that it overflows) sends it to the exact per-frame check.
        if not np.isfinite(audio.sum()):
            finite: Array = np.asarray(np.isfinite(audio).all(axis=1))
            if not finite.all():
                return self._without_bad_frames(items, states, finite)
        last = self._last
        if (
            last is not None
            and len(last.states) == n
            and all(a is b for a, b in zip(states, last.states, strict=True))
        ):
            x[:, :CONTEXT_SAMPLES] = last.context
            rnn = last.rnn
        else:
            np.stack([s.context for s in states], out=x[:, :CONTEXT_SAMPLES])
            rnn = np.stack([s.rnn for s in states], axis=1)
        feeds = {"input": x, "state": rnn}
        if self._sr is not None:
            feeds["sr"] = self._sr
        out = self._model.run(feeds)
        probs = out["output"].reshape(n).tolist()
        # Each session keeps views of its slices (no copies: the arrays are small and never
        # written to again); the contexts are copied out of the reused input buffer.
        state_n = out["stateN"]
        contexts = x[:, -CONTEXT_SAMPLES:].copy()
        results: list[Outcome[VadResult]] = []
        new_states: list[VadState] = []
        # The per-session views, made in one call each rather than one index per session.
        rnns = list(state_n.transpose(1, 0, 2))
        for state, p, rnn, context in zip(states, probs, rnns, contexts, strict=True):
            end = state.samples + FRAME_SAMPLES
            old = state.tracker
            tracker = VadTracker(
                old.settings, old.triggered, old.confirmed, old.speech_start, old.temp_end
            )
            events = tracker.update(p, state.samples, end)
            new_state = VadState(rnn, context, tracker, end)
            new_states.append(new_state)
            result = VadResult(
                p,
                tracker.confirmed,
                tuple(events) if events else (),
                end,
                tracker.end_if_silent(),
                tracker.onset(),
            )
            results.append(Ok(result, new_state))
        self._last = _LastBatch(new_states, state_n, contexts)
        return results

    def _without_bad_frames(
        self, items: Sequence[Array], states: Sequence[Any], finite: Array
    ) -> list[Outcome[VadResult]]:
        good = [i for i in range(len(items)) if finite[i]]
        ran = iter(self.infer([items[i] for i in good], [states[i] for i in good]) if good else [])
        bad = Failed(RequestError("vad: audio contains NaN or infinity"))
        return [next(ran) if finite[i] else bad for i in range(len(items))]

    def _close(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None
        self._last = None


def frames(audio: Array) -> tuple[Array, Array]:
    """Split 16 kHz mono audio into whole 512-sample frames and the remainder."""
    audio = np.asarray(audio)
    n = len(audio) // FRAME_SAMPLES
    return audio[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES), audio[n * FRAME_SAMPLES :]
