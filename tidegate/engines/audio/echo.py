"""Per-session acoustic echo cancellation with WebRTC's audio processing module (AEC3).

The server knows what it played and when: :meth:`EchoCanceller.add_far` takes the session's
output audio stamped with the sample (16 kHz session clock) at which it was played, and
:meth:`EchoCanceller.process_near` takes microphone audio stamped with the sample at which it
was captured, on the same clock. For each 10 ms microphone block captured at sample ``c``
the canceller feeds AEC3 the reference played at ``c - delay + lead``: ``delay`` is the
speaker -> microphone delay the timestamps do not show (device buffers, the air), estimated
from the audio itself (:mod:`.delay`: envelope cross-correlation over ``delay_window_s``,
re-estimated every ``delay_update_s``, a new value taken once two estimates agree and it
moved by at least ``realign_min_s``), and
``lead`` keeps the reference slightly ahead of its echo, which AEC3 needs and whose residue
its own fine delay tracking absorbs. Slow drift between the clocks shows up as a slowly
changing estimate.

Buffers: the reference is a ring of ``reference_buffer_s`` (policy ``drop_oldest``: reference
older than that can no longer be needed and is overwritten; reference that is needed but not
there — played too long ago, or not yet received — is fed as silence and counted). The
microphone history for estimation is a ring of ``delay_window_s``.

Threading: one instance per session, thread-confined — its calls must not overlap (run them
from one worker, or serialise them); an overlapping call raises :class:`RuntimeError` rather
than corrupting AEC3's state. It does CPU work (about a percent of a core per session) and
never belongs on an event loop.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..errors import RequestError
from ..runtime import Array
from .delay import ENVELOPE_MS, estimate_delay

SAMPLE_RATE_HZ = 16_000
BLOCK_MS = 10


class _Ring:
    """The latest ``capacity`` samples of a signal, addressed by absolute sample index;
    anything not written (a gap, or older than the ring) reads as zeros."""

    __slots__ = ("buf", "capacity", "head", "written_from")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buf = np.zeros(capacity, np.float32)
        self.head: int | None = None  # one past the newest sample written
        self.written_from = 0  # first sample ever written (older reads are silence)

    def write(self, x: Array, at: int) -> int:
        """Write ``x`` starting at absolute sample ``at``; returns the samples dropped for
        being older than the ring holds."""
        if self.head is None:
            self.head = at
            self.written_from = at
        dropped = 0
        if at + len(x) <= self.head - self.capacity:
            return len(x)
        if at < self.head - self.capacity:
            cut = self.head - self.capacity - at
            x, at, dropped = x[cut:], at + cut, cut
        if at > self.head:  # a gap: silence in between
            self._zero(self.head, min(at, self.head + self.capacity))
            self.head = at
        self._put(x[-self.capacity :], at + max(0, len(x) - self.capacity))
        self.head = max(self.head, at + len(x))
        return dropped

    def truncate(self, at: int) -> int:
        """Forget what was written from absolute sample ``at`` on (it reads as missing, and
        may be written again); returns how many samples were forgotten."""
        if self.head is None or at >= self.head:
            return 0
        old = self.head
        at = max(at, old - self.capacity)
        self._zero(at, old)
        self.head = at
        # the slots just zeroed held, before, the samples a ring older: never read those
        self.written_from = max(self.written_from, old - self.capacity)
        return old - at

    def _zero(self, start: int, stop: int) -> None:
        self._put(np.zeros(stop - start, np.float32), start)

    def _put(self, x: Array, at: int) -> None:
        i = at % self.capacity
        first = min(len(x), self.capacity - i)
        self.buf[i : i + first] = x[:first]
        self.buf[: len(x) - first] = x[first:]

    def read(self, start: int, n: int) -> tuple[Array, int]:
        """``n`` samples from absolute ``start`` and how many of them were not there."""
        out = np.zeros(n, np.float32)
        if self.head is None:
            return out, n
        lo = max(start, self.head - self.capacity, self.written_from)
        hi = min(start + n, self.head)
        if hi <= lo:
            return out, n
        i = lo % self.capacity
        m = hi - lo
        first = min(m, self.capacity - i)
        out[lo - start : lo - start + first] = self.buf[i : i + first]
        out[lo - start + first : hi - start] = self.buf[: m - first]
        return out, n - m


class EchoCanceller:
    """One session's echo canceller (and optional noise suppressor): 16 kHz mono, 10 ms
    blocks. Keyword settings (units in their names):

    - ``reference_buffer_s``: far-end audio kept (must cover ``max_delay_s`` plus
      ``delay_window_s``);
    - ``min_delay_s`` / ``max_delay_s``: the speaker -> microphone delays searched;
    - ``initial_delay_s``: the delay assumed until the first estimate;
    - ``delay_window_s`` / ``delay_update_s``: audio each estimate looks at, and how often
      one is made; ``min_correlation``: the peak an estimate needs;
    - ``reference_lead_s``: how far the reference is fed ahead of its estimated echo;
    - ``realign_min_s``: the smallest change of the estimate that moves the reference (and
      restarts AEC3's adaptation; smaller shifts are left to AEC3's own delay tracking);
    - ``noise_suppression`` / ``noise_suppression_level`` (0-3: 6, 12, 18, 21 dB).
    """

    def __init__(
        self,
        *,
        sample_rate_hz: int = SAMPLE_RATE_HZ,
        reference_buffer_s: float = 3.0,
        min_delay_s: float = 0.0,
        max_delay_s: float = 0.5,
        initial_delay_s: float = 0.1,
        delay_window_s: float = 1.5,
        delay_update_s: float = 0.5,
        min_correlation: float = 0.3,
        reference_lead_s: float = 0.02,
        realign_min_s: float = 0.03,
        noise_suppression: bool = False,
        noise_suppression_level: int = 1,
    ) -> None:
        if sample_rate_hz != SAMPLE_RATE_HZ:
            raise ValueError(f"sample_rate_hz must be {SAMPLE_RATE_HZ}, got {sample_rate_hz}")
        if not 0.0 <= min_delay_s < max_delay_s:
            raise ValueError("need 0 <= min_delay_s < max_delay_s")
        if not min_delay_s <= initial_delay_s <= max_delay_s:
            raise ValueError("initial_delay_s must lie in [min_delay_s, max_delay_s]")
        if delay_window_s < 0.25 or delay_update_s <= 0:
            raise ValueError("delay_window_s must be at least 0.25 and delay_update_s positive")
        if reference_buffer_s < max_delay_s + delay_window_s + 0.1:
            raise ValueError(
                "reference_buffer_s must cover max_delay_s + delay_window_s (+ 0.1 s margin)"
            )
        if realign_min_s < 2 * ENVELOPE_MS / 1000:
            raise ValueError(f"realign_min_s must be at least {2 * ENVELOPE_MS / 1000}")
        if not 0.0 <= reference_lead_s <= 0.05:
            raise ValueError("reference_lead_s must be in [0, 0.05]")
        if noise_suppression_level not in (0, 1, 2, 3):
            raise ValueError("noise_suppression_level must be 0, 1, 2 or 3")
        import pywebrtc_audio  # a compiled extension: loaded with the first canceller

        sr = sample_rate_hz
        self.sample_rate_hz = sr
        self.block = sr * BLOCK_MS // 1000
        self.min_delay_s, self.max_delay_s = min_delay_s, max_delay_s
        self.delay_window_s, self.delay_update_s = delay_window_s, delay_update_s
        self.min_correlation = min_correlation
        self._lead = round(reference_lead_s * sr)
        self._realign = round(realign_min_s * sr)
        self._apm_args: dict[str, Any] = {
            "sample_rate": sr,
            "echo_cancellation": True,
            "high_pass_filter": True,
            "noise_suppression": noise_suppression,
            "ns_level": noise_suppression_level,
            "stream_delay_ms": round(reference_lead_s * 1000),
        }
        self._apm = pywebrtc_audio.AudioProcessor(**self._apm_args)
        self._far = _Ring(round(reference_buffer_s * sr))
        self._mic = _Ring(round(delay_window_s * sr))
        self._initial_delay = round(initial_delay_s * sr)
        self._delay = self._initial_delay
        self._candidate: int | None = None
        self._next_estimate: int | None = None
        self._busy = threading.Lock()
        self.counters: dict[str, int] = {
            "blocks": 0,
            "reference_missing_blocks": 0,
            "reference_dropped_samples": 0,
            "reference_retracted_samples": 0,
            "estimates": 0,
            "delay_changes": 0,
        }

    # -- the far end --------------------------------------------------------------------------
    def add_far(self, frames: Array, played_at_sample: int) -> None:
        """Audio the session played (16 kHz mono, float32 in [-1, 1] or int16), its first
        sample played at ``played_at_sample`` on the session's 16 kHz clock."""
        with self._confined():
            x = _as_float(frames, "far")
            self.counters["reference_dropped_samples"] += self._far.write(x, played_at_sample)

    def retract_far(self, from_sample: int) -> None:
        """The reference from ``from_sample`` on will not play after all (it was taken back):
        forget it, so that AEC3 does not expect an echo that never comes."""
        with self._confined():
            self.counters["reference_retracted_samples"] += self._far.truncate(from_sample)

    # -- the near end -------------------------------------------------------------------------
    def process_near(self, frames: Array, captured_at_sample: int) -> Array:
        """Microphone audio (whole 10 ms blocks, float32 or int16), its first sample captured
        at ``captured_at_sample``; returns it with the echo removed, in the same dtype."""
        with self._confined():
            x = _as_float(frames, "near")
            if len(x) % self.block:
                raise RequestError(
                    f"near: {len(x)} samples, expected whole {BLOCK_MS} ms blocks "
                    f"({self.block} samples at {self.sample_rate_hz} Hz)"
                )
            self._mic.write(x, captured_at_sample)
            # The delay is re-estimated between calls (a call is a frame or two of 10 ms).
            self._maybe_estimate(captured_at_sample)
            start = captured_at_sample - self._delay + self._lead
            ref, missing = self._far.read(start, len(x))
            mic16, ref16 = _to_int16(x), _to_int16(ref)
            out = np.empty(len(x), np.int16)
            b = self.block
            for i in range(0, len(x), b):
                out[i : i + b] = self._apm.process(mic16[i : i + b], ref16[i : i + b])
            self.counters["blocks"] += len(x) // b
            if missing:
                self.counters["reference_missing_blocks"] += -(-missing // b)
            if np.asarray(frames).dtype == np.int16:
                return out
            return out.astype(np.float32) / 32768.0

    @property
    def delay_s(self) -> float:
        """The speaker -> microphone delay in use."""
        return self._delay / self.sample_rate_hz

    @property
    def speech_probability(self) -> float:
        """WebRTC's speech probability of the last block processed."""
        return float(self._apm.speech_probability)

    def reset(self) -> None:
        """Forget the reference, the delay estimate and AEC3's adaptation."""
        with self._confined():
            self._apm = type(self._apm)(**self._apm_args)
            self._far = _Ring(self._far.capacity)
            self._mic = _Ring(self._mic.capacity)
            self._delay, self._candidate, self._next_estimate = self._initial_delay, None, None

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "delay_ms": round(self.delay_s * 1000, 1)}

    # -- internals ----------------------------------------------------------------------------
    def _confined(self) -> _Confined:
        return _Confined(self._busy)

    def _maybe_estimate(self, at: int) -> None:
        sr = self.sample_rate_hz
        if self._next_estimate is None:
            assert self._mic.head is not None
            self._next_estimate = self._mic.written_from + round(self.delay_window_s * sr)
        if at < self._next_estimate:
            return
        self._next_estimate = at + round(self.delay_update_s * sr)
        window = self._mic.capacity
        max_lag = round(self.max_delay_s * sr)
        mic, _ = self._mic.read(at - window, window)
        ref, _ = self._far.read(at - window - max_lag, window + max_lag)
        found = estimate_delay(
            ref,
            mic,
            sample_rate_hz=sr,
            min_delay_s=self.min_delay_s,
            max_delay_s=self.max_delay_s,
            min_correlation=self.min_correlation,
        )
        if found is None:
            return
        self.counters["estimates"] += 1
        tolerance = 2 * sr * ENVELOPE_MS // 1000
        d = found.delay_samples
        if self._candidate is not None and abs(d - self._candidate) <= tolerance:
            if abs(d - self._delay) >= self._realign:
                # AEC3 tracks small shifts itself; a large one would leave its filter
                # adapted to the wrong alignment for seconds: start it afresh.
                self._delay = d
                self.counters["delay_changes"] += 1
                self._apm = type(self._apm)(**self._apm_args)
            self._candidate = None
        else:
            self._candidate = d


class _Confined:
    """Holds the canceller for one call; an overlapping call is a caller's bug."""

    __slots__ = ("_lock",)

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("EchoCanceller is thread-confined: calls must not overlap")

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _as_float(frames: Array, what: str) -> Array:
    x = np.asarray(frames)
    if x.ndim != 1:
        raise RequestError(f"{what}: audio of shape {list(x.shape)}, expected [samples]")
    if x.dtype == np.int16:
        return x.astype(np.float32) / 32768.0
    if x.dtype != np.float32:
        raise RequestError(f"{what}: audio dtype {x.dtype}, expected float32 or int16")
    if not np.isfinite(x).all():
        raise RequestError(f"{what}: audio contains NaN or infinity")
    return x


def _to_int16(x: Array) -> Array:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
