"""The audio lane's echo path: the session's own speech removed from its microphone audio,
before VAD and ASR (WebRTC AEC3, :class:`tidegate.engines.audio.EchoCanceller`).

The server knows what it played and when (:meth:`EchoPath.played`: a frame and the monotonic
time its playout starts). The reply lane tells it of every frame of speech as it hands it on,
up to ``assistant_audio_lead_s`` before it is due, with the time it is due (its pacing fixes
it): over WebRTC the very 16 kHz samples it writes to the outbound track (which sends each in
its 20 ms slot, i.e. when due); WS-only the ``output.audio`` frame (``ts`` on the reply's
clock), and the client may add the delay between receiving and playing
(``input.audio.playout_delay_ms``), which moves the reference later. The reference goes
through a low-pass to 16 kHz (:class:`Decimator`; 16 kHz frames pass as they are).

Why not the track's sends: the canceller takes, with each microphone block, the reference of
the same moment (plus its lead), so the reference must be in before the microphone audio is
cleaned; a prompt lane cleans audio a few tens of ms after it was captured, while the track
sends each frame only when due. Fed from the sends, most blocks found their reference not yet
there (fed as silence, lost to AEC3): over WebRTC every reply was cut by its own echo
(`tidegate bench turns`, 40 ms / -6 dB: 2 of 2 cut, echo reduced 8 dB); fed as written, ahead of
time, none was (19 dB, the noise floor at -60 dBFS bounding it).

The microphone audio is stamped with its capture time on the same clock:

- with a media clock (WebRTC's RTP time; ``input.audio.ts`` when the client sends it): its
  media time, anchored so that the first piece of audio the lane read (the first packet or
  ``input.audio`` chunk, not a backlog read with it) was captured just before it arrived
  (its arrival less its own length);
- without one: the running count of samples the lane has read, anchored the same way, and
  re-anchored when the stream stays behind its arrival by more than ``REANCHOR_S`` for
  ``REANCHOR_AFTER_S`` (the client paused; a burst after a network stall catches up
  before). The lane's own lag does not move it.

Stamps err late, never early. The canceller feeds, with each microphone block, the reference
played at the block's stamp (plus its ``reference_lead_s``): a stamp later than the true
capture feeds a reference that leads its echo, which AEC3's own delay tracking finds (300 ms
late: no loss of ERLE, measured); a stamp earlier than the capture by more than the speaker ->
microphone delay plus that lead feeds a reference that comes after its echo, and nothing is
cancelled (ERLE 53 -> 2 dB at 40 ms of delay stamped 100 ms early). What the stamps do not show
(network, jitter buffer, device buffers, the air) only makes them later. The canceller's
envelope estimate only realigns for a change of ``realign_min_s`` or more (docs/ears.md; by
default never: it misjudged speech echo).

Threading: the canceller is thread-confined and CPU work, so every call to it runs on the
engine service's bounded media worker pool (:class:`tidegate.engines.workers.WorkerPool`), one
call at a time per session (the lane awaits each before the next): the frames played since the
last call are fed as reference first, then the microphone audio is cleaned. The frames played
wait in a bounded queue (``max_pending_frames``, policy ``drop_oldest``, counted) between
calls. When the pool refuses a call (full), that audio goes on uncleaned and is counted.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from tidegate.engines.audio import EchoCanceller
from tidegate.engines.errors import EngineError
from tidegate.engines.runtime import Array
from tidegate.engines.workers import WorkerPool

SAMPLE_RATE_HZ = 16_000
BLOCK_SAMPLES = 160  # the canceller's 10 ms block
REANCHOR_S = 0.2  # the microphone stream this far behind its arrival ...
REANCHOR_AFTER_S = 1.0  # ... for this long (a burst after a stall catches up before): re-anchored
ECHO_CANCELLATION = ("auto", "on", "off")


class EchoSink(Protocol):
    """Who hears what the session plays (the reply lane tells it: its ``echo``)."""

    def played(self, pcm: Array, rate_hz: int, at: float) -> None:
        """A frame of speech whose playout starts at monotonic ``at``."""
        ...

    def unplayed(self, since: float) -> None:
        """The frames told from monotonic ``since`` on were taken back by a pause: a client
        that plays as ``response.paused`` says will not play them (the echo path forgets
        them; the own-voice judge keeps them, for clients that do not)."""
        ...


class Played:
    """Tells each of its sinks what the session plays: the echo path, and the own-voice judge
    (pipelines/own_voice.py), those that are on."""

    def __init__(self, sinks: Sequence[EchoSink]) -> None:
        self.sinks = sinks

    def played(self, pcm: Array, rate_hz: int, at: float) -> None:
        for sink in self.sinks:
            sink.played(pcm, rate_hz, at)

    def unplayed(self, since: float) -> None:
        for sink in self.sinks:
            sink.unplayed(since)


class Decimator:
    """Speech at a multiple of 16 kHz (int16 or float32) to 16 kHz float32, frame by frame: a
    windowed-sinc low-pass below 7.2 kHz (its history carried from frame to frame), then every
    ``step``-th sample. The reference must match what the speaker played: aliasing a crude
    filter lets through is sound the echo does not have."""

    TAPS = 24  # half-length, at the input rate

    def __init__(self) -> None:
        self._rate = 0
        self._h = np.ones(1, np.float32)
        self._hist = np.zeros(0, np.float32)

    def __call__(self, pcm: Array, rate_hz: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        x = np.asarray(pcm)
        f = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
        if rate_hz == SAMPLE_RATE_HZ:
            return f
        step = rate_hz // SAMPLE_RATE_HZ
        if step * SAMPLE_RATE_HZ != rate_hz:
            raise ValueError(f"reference at {rate_hz} Hz: a multiple of 16 kHz is expected")
        if rate_hz != self._rate:
            taps = np.arange(-self.TAPS, self.TAPS + 1)
            cut = 0.45 / step
            h = 2 * cut * np.sinc(2 * cut * taps) * np.hamming(len(taps))
            self._h = (h / h.sum()).astype(np.float32)
            self._hist = np.zeros(2 * self.TAPS, np.float32)
            self._rate = rate_hz
        full = np.concatenate([self._hist, f])
        self._hist = full[-2 * self.TAPS :]
        y = np.convolve(full, self._h, mode="valid")  # len(f), delayed by TAPS samples
        out: np.ndarray[Any, np.dtype[np.float32]] = y[::step].astype(np.float32)
        return out


class EchoPath:
    """See the module docstring. ``origin`` is the monotonic time of sample 0."""

    def __init__(
        self,
        workers: WorkerPool,
        *,
        noise_suppression: bool = False,
        max_delay_s: float = 0.5,
        realign_min_s: float = 1.0,
        max_pending_frames: int = 500,
    ) -> None:
        self.workers = workers
        # The reference goes in at its play time (initial delay 0): ahead of its echo, never
        # after it, which AEC3 cannot cancel; AEC3's own delay tracking closes the gap at
        # once, while a realignment restarts its adaptation (a leak of ~0.75 s measured), so
        # only a larger estimated change (realign_min_s) moves the reference.
        self.canceller = EchoCanceller(
            max_delay_s=max_delay_s,
            initial_delay_s=0.0,
            realign_min_s=realign_min_s,
            reference_buffer_s=max(3.0, max_delay_s + 2.0),
            noise_suppression=noise_suppression,
        )
        self.origin = time.monotonic()
        self.playout_delay_s = 0.0
        self._far: deque[tuple[Array, int, float]] = deque()
        self._max_far = max_pending_frames
        self._near_next: int | None = None  # the capture sample of the next near sample
        self._behind_since: float | None = None  # since when the stream lags its arrival
        self._media_anchor: int | None = None  # capture sample of media time 0
        self._rest = np.zeros(0, np.float32)  # near samples short of a whole block
        self._retract: int | None = None  # the reference from this sample on: forget it
        self._decimate = Decimator()  # on the worker only
        self._lock = asyncio.Lock()  # one call at a time (the canceller is thread-confined)
        self.counters: dict[str, int] = {
            "far_frames": 0,
            "far_dropped_frames": 0,
            "far_retracted_frames": 0,  # told, then taken back by a pause before it fed
            "retractions": 0,
            "near_blocks": 0,
            "uncleaned_blocks": 0,
            "reanchors": 0,
        }
        #: thread CPU seconds spent in the canceller (on the workers), and the energy of the
        #: microphone audio before and after it (sums of squares, full scale 1.0): with no
        #: user speech, their ratio is the echo return loss enhancement (the bench's ERLE)
        self.cpu_s = 0.0
        self.energy_in = 0.0
        self.energy_out = 0.0

    def sample_at(self, t: float) -> int:
        return round((t - self.origin) * SAMPLE_RATE_HZ)

    # -- the far end (the reply lane, on the event loop) --------------------------------------
    def played(self, pcm: Array, rate_hz: int, at: float) -> None:
        """A frame of the session's speech whose playout starts at monotonic ``at``."""
        self._far.append((pcm, rate_hz, at + self.playout_delay_s))
        self.counters["far_frames"] += 1
        while len(self._far) > self._max_far:
            self._far.popleft()
            self.counters["far_dropped_frames"] += 1

    def unplayed(self, since: float) -> None:
        """The speech told from monotonic ``since`` on will not play (a pause took it back):
        its reference is forgotten, here and (at the next call) in the canceller. AEC3 fed a
        reference whose echo never comes suppresses what the microphone hears instead —
        the user's first words over a paused reply."""
        at = since + self.playout_delay_s
        while self._far and self._far[-1][2] >= at:
            self._far.pop()
            self.counters["far_retracted_frames"] += 1
        sample = self.sample_at(at)
        self._retract = sample if self._retract is None else min(self._retract, sample)

    # -- the near end (the audio lane) --------------------------------------------------------
    def out_samples(self, samples: int) -> int:
        """How much cleaned audio :meth:`clean` of ``samples`` more would return now (whole
        blocks: the part of a block it holds comes out with the next call)."""
        return (len(self._rest) + samples) // BLOCK_SAMPLES * BLOCK_SAMPLES

    async def clean(
        self,
        pcm: np.ndarray[Any, np.dtype[np.float32]],
        arrival_s: float,
        media_ms: float | None = None,
        first_samples: int | None = None,
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Microphone audio (16 kHz float32) whose first part (``first_samples`` long; None:
        all of it) arrived at ``arrival_s``, with the session's echo removed; whole 10 ms
        blocks come out (the rest waits for the next call), so the output may be up to 10 ms
        shorter or longer than the input."""
        async with self._lock:
            return await self._clean(pcm, arrival_s, media_ms, first_samples)

    async def _clean(
        self,
        pcm: np.ndarray[Any, np.dtype[np.float32]],
        arrival_s: float,
        media_ms: float | None,
        first_samples: int | None = None,
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        x = np.concatenate([self._rest, pcm]) if len(self._rest) else pcm
        n = len(x) // BLOCK_SAMPLES * BLOCK_SAMPLES
        self._rest = x[n:]
        if n == 0:
            return x[:0]
        # The latest this audio can have started: its first piece's arrival less that piece's
        # own length (not the read's: a read that also holds a backlog, because the loop
        # started late, would date the stream early, and a reference fed after its echo
        # cannot be cancelled; it was so over WebRTC, whose inbox fills once the peer connects).
        head = len(pcm) if first_samples is None else first_samples
        arrived = self.sample_at(arrival_s) - head
        if media_ms is not None:  # the client's media clock: gaps, drops and lag do not matter
            if self._media_anchor is None:
                self._media_anchor = arrived - round(media_ms * SAMPLE_RATE_HZ / 1000)
            self._near_next = self._media_anchor + round(media_ms * SAMPLE_RATE_HZ / 1000)
            self._near_next -= len(x) - len(pcm)
            arrived = self._near_next
        behind = self._near_next is not None and (
            arrived - self._near_next > REANCHOR_S * SAMPLE_RATE_HZ
        )
        if not behind:
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = arrival_s
        if self._near_next is None or (
            self._behind_since is not None and arrival_s - self._behind_since >= REANCHOR_AFTER_S
        ):
            if self._near_next is not None:
                self.counters["reanchors"] += 1
            self._near_next = arrived - (len(x) - len(pcm))
            self._behind_since = None
        at = self._near_next
        self._near_next += n
        far = list(self._far)
        self._far.clear()
        retract, self._retract = self._retract, None
        try:
            out: np.ndarray[Any, np.dtype[np.float32]] = await self.workers.run(
                self._run, far, x[:n], at, retract
            )
        except EngineError:  # the pool is full (or closing): this audio goes on uncleaned
            if retract is not None:  # for the next call, unless a later pause moved it
                self._retract = retract if self._retract is None else min(self._retract, retract)
            self._far.extendleft(reversed(far))  # the reference waits for the next call
            while len(self._far) > self._max_far:
                self._far.popleft()
                self.counters["far_dropped_frames"] += 1
            self.counters["uncleaned_blocks"] += n // BLOCK_SAMPLES
            return x[:n]
        self.counters["near_blocks"] += n // BLOCK_SAMPLES
        return out

    def _run(
        self, far: list[tuple[Array, int, float]], near: Array, at: int, retract: int | None
    ) -> Array:
        """On a worker thread: forget the reference a pause took back, feed the reference
        played since the last call, then clean."""
        cpu0 = time.thread_time()
        if retract is not None:
            self.canceller.retract_far(retract)
            self.counters["retractions"] += 1
        for pcm, rate_hz, played in far:
            self.canceller.add_far(self._decimate(pcm, rate_hz), self.sample_at(played))
        out = self.canceller.process_near(near, at)
        self.cpu_s += time.thread_time() - cpu0
        x, y = np.asarray(near, np.float64), np.asarray(out, np.float64)
        self.energy_in += float(x @ x)
        self.energy_out += float(y @ y)
        return out

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "cpu_s": round(self.cpu_s, 4),
            "energy_in": self.energy_in,
            "energy_out": self.energy_out,
            **{f"aec_{k}": v for k, v in self.canceller.stats().items()},
        }
