"""The reply's own voice, told by sound: whether what the microphone heard over a reply is
that reply coming back from a speaker (an echo the canceller left, or had no canceller to
meet), by comparing the sound of the two.

Both sides are cut into 20 ms frames and reduced to their spectral envelope: the log energy
in ``BANDS`` bands between 100 Hz and 4 kHz (where speech is). The reply lane tells
:meth:`OwnVoice.played` every frame it plays, with the monotonic time its playout starts
(what the echo canceller is told, :mod:`.echo`); the audio lane tells :meth:`OwnVoice.heard`
the microphone audio it reads, stamped with its arrival: as captured, *before* the server's
canceller. The canceller decides what the VAD and the ASR hear, but what it leaves of an echo
is too little, and too changed by its suppressor, to tell by sound (through it the reply's
echo scored 0.46-0.77 and mostly too little to judge, where the same microphone before it
scored 0.67-0.96: docs/ears.md); before it, the microphone holds the whole echo, and a user's
voice over it still does not correlate (at most 0.53). An echo is the
played envelope, later by the speaker-to-microphone delay plus the uplink, and scaled per
band by the room and the devices: so :meth:`OwnVoice.likeness` correlates the heard envelope
of a stretch of time with the played one at every lag from ``-early_s`` to ``max_lag_s``
(each band's mean removed, which takes the scaling out), and returns the best correlation.
The reply's own voice correlates near 1; a user's voice over it, near 0 (docs/assistant.md
has the figures and the threshold, the setting ``interrupt_echo_likeness``).

Nothing is computed while no reply has played within ``keep_s``: a session that is not
being spoken to pays nothing. Frames a pause took back (:meth:`OwnVoice.unplayed`) are kept
until they are told again: a client may have played them (one that plays ``output.audio`` as
it arrives), and those that did not play match nothing. Memory: two bounded rings of about
``keep_s`` of frames (16 floats each).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from tidegate.engines.runtime import Array

FRAME_S = 0.02
LAG_STEP_S = 0.01
BANDS = 16
LOW_HZ, HIGH_HZ = 100.0, 4000.0
FLOOR = 1e-9  # energy per band (full scale 1.0) below which a band is silence
#: heard stamps err late, never early, by more than this (docs: echo.py); a frame may also
#: play before the time the reply lane tells (a WS-only client that plays ``output.audio`` as
#: it arrives, up to ``assistant_audio_lead_s`` early): ``OwnVoice(early_s=...)`` adds it
MAX_EARLY_S = 0.06
#: heard audio that arrives this much later than the stream's timeline says is after a gap;
#: this much earlier, the timeline had been anchored late (:meth:`OwnVoice.heard`)
REANCHOR_S = 1.0
REANCHOR_EARLY_S = 0.2
#: the least heard frames above the noise floor a likeness is computed on (shorter: None)
MIN_FRAMES = 10
#: the longest stretch judged (the start of a sound tells; what came seconds later is other)
MAX_SPAN_S = 3.0
#: frames this far above the quietest of the stretch count as sound (the rest is its floor)
ACTIVE_DB = 12.0
#: what :meth:`OwnVoice.likeness` must reach for a sound to be the reply's own voice (the
#: default of the setting ``interrupt_echo_likeness``)
OWN_VOICE_LIKENESS = 0.65
#: how long before the pause the sound it paused for is judged from (the pause comes
#: ``interrupt_pause_after_s``, 0.15 s, into a sound; the ASR's pre-roll is 0.2 s before it)
OWN_VOICE_LEAD_S = 0.35
#: a sound that begins this soon after a reply's speech ended may be its echo's tail (the
#: speaker-to-microphone delay and the room: what the lags cover), judged by its sound
ECHO_TAIL_S = 1.5
#: how long after the reply's own voice was told by its sound later sounds are held (the
#: default of the setting ``interrupt_echo_hold_s``)
ECHO_HOLD_S = 60.0
#: a sound held over a reply (pipelines/interrupt.py, "its own voice, held") is judged on its
#: last HOLD_SPAN_S every HOLD_CHECK_S; one that has not given enough sound to judge
#: HOLD_JUDGE_S into the hold pauses the reply (a user's onset waits at most that long)
HOLD_SPAN_S = 0.8
HOLD_CHECK_S = 0.05
HOLD_JUDGE_S = 0.2
#: ... against the quietest frame heard lately (:meth:`OwnVoice.floor`), frames this far above
#: it counting as sound (a stretch of sound may have no quiet frame of its own); once judged
#: the reply's own, it stays so while its likeness is at most HOLD_MARGIN under the threshold
HOLD_ACTIVE_DB = 6.0
HOLD_MARGIN = 0.1


def _edges(n: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Band edges in Hz, evenly spaced on the mel scale."""
    mel = np.linspace(2595 * np.log10(1 + LOW_HZ / 700), 2595 * np.log10(1 + HIGH_HZ / 700), n + 1)
    return np.asarray(700 * (10 ** (mel / 2595) - 1))


class Envelope:
    """20 ms frames at a sample rate -> log band energies (``BANDS`` per frame)."""

    def __init__(self, rate_hz: int) -> None:
        self.rate_hz = rate_hz
        self.n = round(rate_hz * FRAME_S)
        freqs = np.fft.rfftfreq(self.n, 1 / rate_hz)
        band = np.digitize(freqs, _edges(BANDS)) - 1
        self._sum = np.zeros((len(freqs), BANDS), np.float32)  # bins -> bands
        for i, b in enumerate(band):
            if 0 <= b < BANDS:
                self._sum[i, b] = 1.0
        self._window = np.hanning(self.n).astype(np.float32)

    def __call__(self, frames: np.ndarray[Any, np.dtype[np.float32]]) -> Array:
        """``frames`` (k x n, float in [-1, 1]) -> (k x BANDS) log10 energies."""
        spectrum = np.fft.rfft(frames * self._window, axis=1)
        power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32) / self.n
        return np.log10(power @ self._sum + FLOOR).astype(np.float32)


class OwnVoice:
    """See the module docstring. One per session; on the event loop (each call is a few
    tens of microseconds of numpy)."""

    def __init__(
        self, *, keep_s: float = 6.0, max_lag_s: float = 1.5, early_s: float = MAX_EARLY_S
    ) -> None:
        self.keep_s = keep_s
        self.max_lag_s = max_lag_s
        self.early_s = early_s
        self._envelopes: dict[int, Envelope] = {}
        self._played: deque[tuple[float, Array]] = deque(maxlen=round(keep_s / FRAME_S))
        # heard goes on keep_s after the last frame played: the MAX_SPAN_S from just before
        # a pause stay in until then
        self._heard: deque[tuple[float, Array]] = deque(maxlen=round((keep_s + 1) / FRAME_S))
        self._rest = np.zeros(0, np.float32)  # heard samples short of a frame
        self._rest_at = 0.0  # the stamp of its first sample
        self._next_at: float | None = None  # the stamp the next heard sample will have
        #: whether the server's canceller cleans this microphone (after this judge hears it):
        #: then what pauses a reply is what the canceller let through, and the reply lane
        #: does not hold its sounds (the hold is for sessions with no canceller)
        self.cancelled = False
        self.counters = {"played_frames": 0, "heard_frames": 0, "likenesses": 0}

    def _envelope(self, rate_hz: int) -> Envelope:
        env = self._envelopes.get(rate_hz)
        if env is None:
            env = self._envelopes[rate_hz] = Envelope(rate_hz)
        return env

    # -- the reply lane's side (an EchoSink) --------------------------------------------------
    def played(self, pcm: Array, rate_hz: int, at: float) -> None:
        """A 20 ms frame of the session's speech whose playout starts at monotonic ``at``."""
        x = np.asarray(pcm)
        f = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x.astype(np.float32)
        env = self._envelope(rate_hz)
        if len(f) != env.n:
            f = np.resize(np.pad(f, (0, max(0, env.n - len(f)))), env.n)
        while self._played and self._played[-1][0] >= at:  # taken back, now told again
            self._played.pop()
        self._played.append((at, env(f[None, :])[0]))
        self.counters["played_frames"] += 1

    def unplayed(self, since: float) -> None:
        """The frames told from monotonic ``since`` on will not play (a pause took them back):
        kept all the same. A client that plays ``output.audio`` as it arrives, and not as
        ``response.paused`` says, has played them already, and their echo is the reply's own
        voice; the reference of frames that never played matches nothing (frames told again
        when the reply resumes replace them, :meth:`played`)."""

    # -- the audio lane's side ----------------------------------------------------------------
    def heard(
        self, pcm: np.ndarray[Any, np.dtype[np.float32]], at: float, *, cancelled: bool = False
    ) -> None:
        """Microphone audio (16 kHz float32, before any canceller; ``cancelled``: the server's
        canceller cleans it next) whose first sample was captured at about monotonic ``at``
        (its arrival less its length: late by the uplink, which the lags cover).

        The stamps are the stream's own timeline, not each piece's arrival: audio that comes
        in a burst (a busy loop, a WebSocket that stalled) arrived late, and stamped by its
        arrival its frames would bunch up and no longer line up with what was played. So a
        piece is stamped where the one before it ended (the first piece's arrival anchors
        the timeline, as the echo path's does), unless its arrival says it started
        ``REANCHOR_EARLY_S`` earlier (the anchor was late, or the client's clock runs fast)
        or ``REANCHOR_S`` later (a gap in the stream): then a new timeline starts there."""
        self.cancelled = cancelled
        if not self._played or at - self._played[-1][0] > self.keep_s:
            self._rest = np.zeros(0, np.float32)  # no reply lately: nothing to compare with
            self._next_at = None
            return
        expected = self._next_at
        if expected is None or not -REANCHOR_EARLY_S <= at - expected <= REANCHOR_S:
            self._rest = np.zeros(0, np.float32)  # not contiguous with what came before
            start = at
        else:
            start = expected
        self._next_at = start + len(pcm) / 16_000
        self._rest_at = start - len(self._rest) / 16_000
        x = np.concatenate([self._rest, pcm]) if len(self._rest) else pcm
        env = self._envelope(16_000)
        k = len(x) // env.n
        if k:
            bands = env(x[: k * env.n].reshape(k, env.n))
            for i in range(k):
                self._heard.append((self._rest_at + i * FRAME_S, bands[i]))
            self.counters["heard_frames"] += k
        self._rest = x[k * env.n :]
        self._rest_at += k * FRAME_S

    # -- the judgement --------------------------------------------------------------------
    def floor(self) -> float | None:
        """The loudness (log10 of the loudest band's energy) of the quietest frame heard in
        the last ``keep_s`` or so: the microphone's floor, the pauses between sentences."""
        if not self._heard:
            return None
        return float(np.stack([b for _, b in self._heard]).max(axis=1).min())

    def judge_hold(
        self, held_from: float, now: float, threshold: float, *, judged: bool
    ) -> tuple[bool | None, float | None]:
        """The judgement of a sound held over a reply since monotonic ``held_from``
        (pipelines/interrupt.py, "its own voice, held"): its last ``HOLD_SPAN_S`` against the
        quietest frame heard lately. (True, likeness) while it sounds like what the reply
        played (at or above ``threshold``; once ``judged`` so, down to ``HOLD_MARGIN`` under
        it), (False, likeness) when it does not, (None, None) when too little of it rose
        above the floor to tell."""
        since = max(held_from - OWN_VOICE_LEAD_S, now - HOLD_SPAN_S)
        likeness = self.likeness(since, now, floor=self.floor(), active_db=HOLD_ACTIVE_DB)
        if likeness is None:
            return None, None
        return likeness >= threshold - (HOLD_MARGIN if judged else 0.0), likeness

    def likeness(
        self,
        since: float,
        until: float,
        *,
        floor: float | None = None,
        active_db: float = ACTIVE_DB,
    ) -> float | None:
        """How much what was heard from monotonic ``since`` to ``until`` sounds like what was
        played: the best correlation of their envelopes over the lags (module doc), or None
        when fewer than ``MIN_FRAMES`` frames of it rose ``active_db`` above its floor (too
        little to tell) or nothing was played before it. The floor is the stretch's quietest
        frame, or ``floor`` if lower (:meth:`floor`: for a stretch of sound that may have no
        quiet frame). At most ``MAX_SPAN_S`` from ``since`` are judged."""
        until = min(until, since + MAX_SPAN_S)
        heard = [(t, b) for t, b in self._heard if since <= t < until]
        if len(heard) < MIN_FRAMES or len(self._played) < 2:
            return None
        times = np.array([t for t, _ in heard])
        h = np.stack([b for _, b in heard])
        loudness = h.max(axis=1)
        quiet = loudness.min() if floor is None else min(floor, float(loudness.min()))
        active = loudness > quiet + active_db / 10
        if int(active.sum()) < MIN_FRAMES:
            return None
        self.counters["likenesses"] += 1
        p_times = np.array([t for t, _ in self._played])
        p = np.stack([b for _, b in self._played])
        silence = np.full(BANDS, np.log10(FLOOR), np.float32)
        h = h[active] - h[active].mean(axis=0)
        lags = np.arange(-self.early_s, self.max_lag_s + 1e-9, LAG_STEP_S)
        want = times[active][None, :] - lags[:, None]  # lags x frames: the played moment
        i = np.clip(np.searchsorted(p_times, want), 1, len(p_times) - 1)
        i -= np.abs(p_times[i - 1] - want) < np.abs(p_times[i] - want)
        near = np.abs(p_times[i] - want) < FRAME_S  # else nothing was played then: silence
        r = np.where(near[..., None], p[i], silence)  # lags x frames x bands
        r -= r.mean(axis=1, keepdims=True)
        num = np.einsum("lfb,fb->l", r, h)
        den = np.sqrt(np.einsum("lfb,lfb->l", r, r) * float((h * h).sum()))
        scores = np.where(den > 0, num / np.maximum(den, 1e-30), -1.0)
        return float(scores.max())
