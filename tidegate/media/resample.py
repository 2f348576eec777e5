"""A streaming rational resampler with exact length accounting (numpy, polyphase windowed sinc).

``StreamResampler(in_hz, out_hz)`` converts a stream of 16-bit mono chunks. Output sample ``k``
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
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

Int16Array = npt.NDArray[np.int16]

HALF_TAPS = 16
KAISER_BETA = 8.0


class StreamResampler:
    """Resample one mono 16-bit stream from ``in_hz`` to ``out_hz`` (see the module docstring)."""

    def __init__(self, in_hz: int, out_hz: int, *, half_taps: int = HALF_TAPS) -> None:
        if in_hz <= 0 or out_hz <= 0 or half_taps <= 0:
            raise ValueError("rates and half_taps must be positive")
        g = math.gcd(in_hz, out_hz)
        self.in_hz = in_hz
        self.out_hz = out_hz
        self.up = out_hz // g  # L
        self.down = in_hz // g  # M
        # The filter spans half_taps zero crossings of the low-pass either side: in input
        # samples, more when downsampling (its cutoff is lower).
        half_taps = math.ceil(half_taps * max(1.0, self.down / self.up))
        self.half_taps = half_taps
        self._bank = _filter_bank(self.up, self.down, half_taps)  # (L, 2W)
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

    def process(self, samples: Int16Array | bytes) -> Int16Array:
        """Feed a chunk; returns the outputs it completes."""
        if self._flushed:
            raise ValueError("the stream was flushed")
        if isinstance(samples, bytes | bytearray | memoryview):
            samples = np.frombuffer(samples, dtype="<i2")
        x = np.asarray(samples, dtype=np.float64)
        self._buf = np.concatenate((self._buf, x))
        self._n_in += len(x)
        return self._emit(self.ready_samples(self._n_in))

    def flush(self) -> Int16Array:
        """End the stream: the outputs still owed, computed with silence after the end."""
        if self._flushed:
            return np.zeros(0, dtype=np.int16)
        self._buf = np.concatenate((self._buf, np.zeros(self.half_taps + 1)))
        out = self._emit(self.total_samples(self._n_in))
        self._flushed = True
        return out

    def _emit(self, upto: int) -> Int16Array:
        k0 = self._k
        if upto <= k0:
            return np.zeros(0, dtype=np.int16)
        W = self.half_taps
        L, M = self.up, self.down
        n = upto - k0
        # Row j of the view holds inputs base+j .. base+j+2W-1 (no copy). Outputs L apart share
        # their phase and sit M inputs apart: one matrix-vector product per phase.
        windows = sliding_window_view(self._buf, 2 * W)
        y = np.empty(n, dtype=np.float64)
        for offset in range(min(L, n)):
            k = k0 + offset
            count = len(range(offset, n, L))
            start = (k * M) // L - W + 1 - self._base
            rows = windows[start : start + M * (count - 1) + 1 : M]
            y[offset::L] = rows @ self._bank[(k * M) % L]
        self._k = upto
        # Drop what no later output needs: the next one starts at floor(upto*M/L) - W + 1.
        keep_from = (upto * self.down) // self.up - W + 1
        cut = keep_from - self._base
        if cut > 0:
            self._buf = self._buf[cut:]
            self._base = keep_from
        out: Int16Array = np.clip(np.rint(y), -32768, 32767).astype(np.int16)
        return out


def _filter_bank(up: int, down: int, half_taps: int) -> npt.NDArray[np.float64]:
    """Taps for each of the ``up`` phases: row p weighs inputs i0-W+1 .. i0+W for an output at
    input position i0 + p/up."""
    cutoff = min(1.0, up / down)  # relative to the input's Nyquist frequency
    j = np.arange(-half_taps + 1, half_taps + 1, dtype=np.float64)[None, :]
    frac = (np.arange(up, dtype=np.float64) / up)[:, None]
    t = j - frac  # distance of each tap from the output position, in input samples
    window = np.kaiser(2 * half_taps + 1, KAISER_BETA)
    # Sample the (continuous) Kaiser window at t, centred, over +-half_taps.
    w = np.interp(t, np.arange(-half_taps, half_taps + 1, dtype=np.float64), window)
    h = cutoff * np.sinc(cutoff * t) * w
    # Unity gain at DC for every phase.
    bank: npt.NDArray[np.float64] = h / h.sum(axis=1, keepdims=True)
    return bank
