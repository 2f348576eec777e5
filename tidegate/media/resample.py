"""A streaming rational resampler with exact length accounting (numpy, polyphase windowed sinc).

``StreamResampler(in_hz, out_hz)`` converts a stream of 16-bit mono chunks (``dtype=np.float32``:
float samples in [-1, 1], the output clipped to full scale as the input was). Output sample ``k``
is the band-limited value at input position ``k * in_hz / out_hz`` (exact rational arithmetic,
so nothing drifts however long the stream). Each output needs ``half_taps`` inputs either side,
so it comes out once those have arrived; ``flush()`` pads the end with silence and returns the
rest. Hence, after ``n`` input samples in any chunking:

- :meth:`process` has returned exactly :func:`ready_samples` ``(n)`` outputs (the same count and
  the same samples whatever the chunk sizes), and
- after :meth:`flush`, exactly ``ceil(n * out_hz / in_hz)`` outputs in all.

The filter spans ``half_taps`` zero crossings of its low-pass either side (in input samples,
``half_taps * in/out`` when downsampling): the delay is that many input samples (0.3 ms at
48 -> 24 kHz, 2 ms at 48 -> 8 kHz). Downsampling low-passes at
the output's Nyquist frequency (a Kaiser-windowed sinc), upsampling at the input's. Costs
O(outputs * 2 * half_taps) as one matrix-vector product per phase: about 40 us for a 20 ms
frame at 48 -> 24 or 8 kHz; run it off the event loop for large chunks.

The per-phase filter bank has ``up`` rows (``out_hz / gcd``): a few for the usual rates, but
16,000 for 191,999 -> 16,000 Hz, which a client may send. Banks are shared by every stream of
the same ratio (a small cache); a ratio whose bank would exceed ``MAX_BANK_TAPS`` computes each
output's taps as it goes instead (the same filter, a little more arithmetic per sample), so
no choice of rate costs a stream more than a chunk's worth of memory.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]

HALF_TAPS = 16
KAISER_BETA = 8.0
MAX_BANK_TAPS = 1 << 16  # phases x taps of a precomputed bank (512 KiB); beyond it, on the fly


class StreamResampler:
    """Resample one mono 16-bit stream from ``in_hz`` to ``out_hz`` (see the module docstring)."""

    def __init__(
        self,
        in_hz: int,
        out_hz: int,
        *,
        half_taps: int = HALF_TAPS,
        dtype: type[np.int16] | type[np.float32] = np.int16,
    ) -> None:
        if in_hz <= 0 or out_hz <= 0 or half_taps <= 0:
            raise ValueError("rates and half_taps must be positive")
        if dtype not in (np.int16, np.float32):
            raise ValueError("dtype must be np.int16 or np.float32")
        self.dtype = dtype
        g = math.gcd(in_hz, out_hz)
        self.in_hz = in_hz
        self.out_hz = out_hz
        self.up = out_hz // g  # L
        self.down = in_hz // g  # M
        # The filter spans half_taps zero crossings of the low-pass either side: in input
        # samples, more when downsampling (its cutoff is lower).
        half_taps = math.ceil(half_taps * max(1.0, self.down / self.up))
        self.half_taps = half_taps
        # (L, 2W), or None: each output's taps computed as it goes (see the module docstring)
        self._bank = (
            _filter_bank(self.up, self.down, half_taps)
            if self.up * 2 * half_taps <= MAX_BANK_TAPS
            else None
        )
        # The input seen so far that outputs may still need, starting at absolute index _base
        # (negative at first: the silence before the stream).
        self._buf = np.zeros(half_taps, dtype=np.float64)
        self._base = -half_taps
        self._n_in = 0  # input samples received
        self._k = 0  # next output index
        self._flushed = False

    @property
    def samples_in(self) -> int:
        return self._n_in

    @property
    def samples_out(self) -> int:
        return self._k

    def ready_samples(self, n_in: int) -> int:
        """How many outputs :meth:`process` has returned after ``n_in`` inputs."""
        # Output k needs input floor(k*M/L) + W <= n_in - 1.
        last = n_in - 1 - self.half_taps
        if last < 0:
            return 0
        return (last * self.up) // self.down + 1

    def total_samples(self, n_in: int) -> int:
        """How many outputs a stream of ``n_in`` inputs gives in all, once flushed."""
        return -((-n_in * self.up) // self.down)

    def process(self, samples: npt.NDArray[Any] | bytes) -> npt.NDArray[Any]:
        """Feed a chunk (samples, or their bytes: s16le, f32le for a float stream); returns the
        outputs it completes, of the stream's dtype."""
        if self._flushed:
            raise ValueError("the stream was flushed")
        if isinstance(samples, bytes | bytearray | memoryview):
            samples = np.frombuffer(samples, dtype="<i2" if self.dtype is np.int16 else "<f4")
        x = np.asarray(samples, dtype=np.float64)
        self._buf = np.concatenate((self._buf, x))
        self._n_in += len(x)
        return self._emit(self.ready_samples(self._n_in))

    def flush(self) -> npt.NDArray[Any]:
        """End the stream: the outputs still owed, computed with silence after the end."""
        if self._flushed:
            return np.zeros(0, dtype=self.dtype)
        self._buf = np.concatenate((self._buf, np.zeros(self.half_taps + 1)))
        out = self._emit(self.total_samples(self._n_in))
        self._flushed = True
        return out

    def _emit(self, upto: int) -> npt.NDArray[Any]:
        k0 = self._k
        if upto <= k0:
            return np.zeros(0, dtype=self.dtype)
        W = self.half_taps
        L, M = self.up, self.down
        n = upto - k0
        # Row j of the view holds inputs base+j .. base+j+2W-1 (no copy). Outputs L apart share
        # their phase and sit M inputs apart: one matrix-vector product per phase.
        windows = sliding_window_view(self._buf, 2 * W)
        if self._bank is None:  # each output's own taps
            k = np.arange(k0, upto, dtype=np.int64)
            rows = windows[(k * M) // L - W + 1 - self._base]
            y = np.einsum("ij,ij->i", rows, _taps(L, M, W, (k * M) % L))
        else:
            y = np.empty(n, dtype=np.float64)
            for offset in range(min(L, n)):
                kk = k0 + offset
                count = len(range(offset, n, L))
                start = (kk * M) // L - W + 1 - self._base
                picked = windows[start : start + M * (count - 1) + 1 : M]
                y[offset::L] = picked @ self._bank[(kk * M) % L]
        self._k = upto
        # Drop what no later output needs: the next one starts at floor(upto*M/L) - W + 1.
        keep_from = (upto * self.down) // self.up - W + 1
        cut = keep_from - self._base
        if cut > 0:
            self._buf = self._buf[cut:]
            self._base = keep_from
        if self.dtype is np.float32:
            floats: Float32Array = np.clip(y, -1.0, 1.0).astype(np.float32)
            return floats
        out: Int16Array = np.clip(np.rint(y), -32768, 32767).astype(np.int16)
        return out


@functools.lru_cache(maxsize=16)
def _filter_bank(up: int, down: int, half_taps: int) -> npt.NDArray[np.float64]:
    """Taps for each of the ``up`` phases: row p weighs inputs i0-W+1 .. i0+W for an output at
    input position i0 + p/up (shared by the streams of one ratio: read only)."""
    bank = _taps(up, down, half_taps, np.arange(up))
    bank.flags.writeable = False
    return bank


def _taps(
    up: int, down: int, half_taps: int, phases: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]:
    """The taps of outputs at the given phases (input position i0 + phase/up), one row each."""
    cutoff = min(1.0, up / down)  # relative to the input's Nyquist frequency
    j = np.arange(-half_taps + 1, half_taps + 1, dtype=np.float64)[None, :]
    frac = (phases.astype(np.float64) / up)[:, None]
    t = j - frac  # distance of each tap from the output position, in input samples
    window = np.kaiser(2 * half_taps + 1, KAISER_BETA)
    # Sample the (continuous) Kaiser window at t, centred, over +-half_taps.
    w = np.interp(t, np.arange(-half_taps, half_taps + 1, dtype=np.float64), window)
    h = cutoff * np.sinc(cutoff * t) * w
    # Unity gain at DC for every phase.
    taps: npt.NDArray[np.float64] = h / h.sum(axis=1, keepdims=True)
    return taps
