"""The audio lane: inbound audio -> VAD -> streaming ASR -> events.

The ``transcribe`` mode is this lane alone; the ``assistant`` composes it with turn-taking
(:mod:`tidegate.pipelines.turns`), which it tells of speech and finals through its
:class:`SpeechListener` port.

Audio arrives as WS-only ``input.audio`` chunks (any rate, s16le or f32le, mixed to mono and
resampled to 16 kHz) or over WebRTC (already 16 kHz mono float32). Both go through an
:class:`~tidegate.media.AudioInbox`: the inbound audio lane of DESIGN.md's flow table —
bounded at ``audio_buffer_s``; the consumer catches up by taking everything queued at once;
when full, silence goes first and speech only with a ``flow.lag`` event. An ``input.audio``
chunk's upload credit returns once the lane has consumed (or dropped) its audio and its time
has come on the wall clock, so a client that waits for credit streams at real time.

``input.audio`` is live audio, paced against the wall clock (:mod:`tidegate.media.pace`): a
chunk that would put the stream more than ``audio_max_ahead_s`` ahead of real time is refused
with ``rate_limited`` and ``retry_after_ms`` (nothing is queued or resampled for it); the
check costs no decoding. Mixing and resampling run on the engines' bounded media worker pool,
never on the event loop (a chunk already 16 kHz mono is only cast, inline); a chunk that finds
the pool full is refused with ``overloaded``.

Two owned tasks per session: the *VAD loop* reads the lane, runs each 32 ms frame through
the shared VAD scheduler (batched across sessions), emits ``vad.speech_started`` and
``vad.speech_stopped`` (and tells the listener sooner of a sound's onset: above the VAD's
threshold for ``interrupt_pause_after_s``, before ``vad_min_speech_s`` makes it speech, and
whether it ended short: a reply pauses on it), and grows the current
:class:`~tidegate.engines.asr.streaming.Segment`;
the *ASR loop* decodes through the shared ASR scheduler (batched across sessions): the
final of every closed segment first (in order), else a partial of the open segment when one
is due. Finals wait in a bounded queue (``asr_max_pending_finals``): when full, the VAD loop
waits, the lane fills, and its policy applies. Every segment ends with one ``asr.final``: a
segment without words (a cough, a scrap, the audio a clear dropped) with ``text`` empty, one
whose decode failed with ``error`` (after the ``error`` message naming its stretch), so a
client can close every caption, and a Realtime item every segment's speech opened.

A final starts before the VAD's end of speech: the VAD ends speech once it has been quiet for
``vad_min_silence_s`` (and names the end where the quiet began), so when a frame goes quiet
the lane submits the segment's final as far as that end, as an *early final* (urgent, like a
final). If the quiet lasts and the segment closes there, with the same request (audio,
committed prefix, language, prompt), the early result is the final: the ASR ran during the
VAD's wait (~0.1 s sooner after every turn). If speech resumes first, the early final is
withdrawn (its ``cancel`` event) and counted (``early_finals_dropped``); at most one per
segment is in flight. ``asr_early_final`` turns it off.

*Joined decodes* (``asr_join_max_gap_s``; modes with turn-taking only): a pause inside a
sentence ("I'd like to book a table for ... four people tonight") ends a segment, and each
segment decoded alone loses what the other says: the first comes out completed ("a table for
it."), the second without its start ("4 people to hide"). So the final of a segment that
begins within ``join_max_gap_s`` of the previous one's end is decoded twice, together in one
batch: alone (its ``asr.final``, as always) and *joined*, over the audio of the segments
before it in that stretch of talk (at most ``join_max_s``, the oldest dropping out), the
silences between them kept, as one utterance. The listener gets the joined text with the
segments' ids (:class:`Joined`); turn-taking replaces those segments' finals in the turn with
it, so the reply answers the sentence as it was said, while the captions keep their per-
segment finals. The joined decode is optional work, like a partial: none starts while the
ASR queue holds ``asr_partial_max_queue_items``; an early final brings its joined decode
along (the same segments and audio: it is kept), and a failed or unsure one (the gate) just
leaves the segments' own finals. A segment too short or too unsure to read alone (the gate
calls its own decode no speech, though it wrote words and its no-speech probability is low:
"a loaf of bread" after "I need to buy some milk and ..." came out "Atlofund Red" at an
average log-probability of -1.7) gets no ``asr.final`` words of its own, but its joined
decode, when the gate calls that speech, still gives the turn its words (counted
``empty_finals_joined``): the pause had ended a segment the sentence needed.

A final never waits behind a stale partial of its own session: when a segment closes while
its partial is queued or running, the partial is withdrawn (its request's ``cancel`` event:
the scheduler's worker skips it, or the decoder drops it at its next step) and the final is
submitted at once; and no partial starts in the short quiet that may end the segment
(``asr_partial_hold_s``).

Echo cancellation (:mod:`tidegate.pipelines.echo`) runs on what the VAD loop reads, before
the VAD: ``audio.echo_cancellation`` ``on``, or ``auto`` in a mode whose session speaks
(``speaks``: the assistant; its reply lane feeds the reference) for WS-only audio and for a
WebRTC client whose offer said it has no echo cancellation of its own. The reply's
own-voice judge (:mod:`tidegate.pipelines.own_voice`) is told the microphone before it: what
the canceller leaves of an echo is too little to tell by sound.

Manual turns (the Realtime dialect's ``input_audio_buffer.commit`` / ``.clear``, the commands
of :mod:`tidegate.protocol.realtime.commands`): a *commit* waits until the audio received so
far has been through the VAD (at most ``audio_buffer_s`` plus ``SETTLE_MARGIN_S``), closes the
open segment there (speech that goes on opens the next one), waits for every final still due,
and then tells the listener (turn-taking ends the turn: ``turn.end`` reason ``commit``) or,
in a mode without one (``transcribe``), sends ``turn.end`` itself. The commit is answered
once its finals are out, so it holds the session's next message for that long (about one ASR
final). A *clear* does the same settling, then drops the open segment and the finals still
due: no transcript and no turn come of the audio before it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from tidegate.engines.asr.request import AsrCancelledError, AsrRequest, AsrResult
from tidegate.engines.asr.streaming import Segment, StreamingSettings
from tidegate.engines.asr.turn_language import TurnLanguage
from tidegate.engines.errors import DeadlineError, EngineError
from tidegate.engines.errors import OverloadedError as EngineOverloadedError
from tidegate.engines.runtime import Array
from tidegate.engines.scheduler import Scheduler
from tidegate.engines.vad import FRAME_SAMPLES, VadResult
from tidegate.engines.workers import WorkerPool
from tidegate.media import AudioChunk, AudioInbox, MediaPeer
from tidegate.media.pace import RealTimePace
from tidegate.media.resample import StreamResampler
from tidegate.protocol.errors import ErrorCode
from tidegate.protocol.messages import (
    FINAL_ERRORS,
    AsrFinal,
    AsrPartial,
    Error,
    FlowLag,
    InputAudio,
    Timing,
    TurnEnd,
    VadSpeechStarted,
    VadSpeechStopped,
)
from tidegate.protocol.realtime.commands import ClearInputAudio, CommitInputAudio

from .config import AudioConfig
from .echo import EchoPath, Played
from .errors import InvalidConfigError, OverloadedError, RateLimitedError, UnsupportedError
from .own_voice import OwnVoice
from .port import Handler, SessionPort
from .records import TranscriptSegment

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16_000
#: audio kept beyond the pre-roll before the newest frame: the VAD confirms speech
#: min_speech_s (0.25 s) after it began, and a segment starts pre_roll_s before that
PRE_ROLL_SLACK_S = 1.0
#: the user's recent audio kept for the listener at each pause (what turn detection scores)
RECENT_S = 8.0
#: ... ending this long after the VAD's end of speech (which already holds speech_pad_s): the
#: silence a turn model hears after the last word (Smart Turn's scores drift up with more)
PAUSE_TAIL_S = 0.05
AUDIO_RETRY_AFTER_MS = 100.0  # input.audio refused because the media workers are full
#: a commit or clear waits at most the inbound buffer's length plus this for the VAD to take
#: the audio received before it (then it is refused with ``timeout``)
SETTLE_MARGIN_S = 2.0
#: a chunk held back from the echo canceller (AudioLane._clean) is cleaned with the next one
#: only if that one arrived within this of its end (a stream without media time)
HELD_GAP_S = 0.1


@dataclass(slots=True)
class _Feed:
    """One VAD loop's state between its chunks: the part-frame left for the VAD, and the
    chunks held back from the echo canceller until they complete a frame
    (:meth:`AudioLane._clean`)."""

    inbox: AudioInbox
    rest: np.ndarray[Any, np.dtype[np.float32]] = field(
        default_factory=lambda: np.zeros(0, np.float32)
    )
    held: list[AudioChunk] = field(default_factory=list)


def _follows(last: AudioChunk, chunk: AudioChunk, *, media: bool) -> bool:
    """Whether ``chunk`` goes on where ``last`` ended: by their media time when the stream
    has one, else by their arrival (no more than ``HELD_GAP_S`` later than ``last`` lasts)."""
    if media:
        return abs(last.media_ms + last.duration_ms - chunk.media_ms) <= 1.0
    return chunk.arrival_s - last.arrival_s <= last.duration_ms / 1000 + HELD_GAP_S


def now_ms() -> float:
    return time.time() * 1000.0


def audio_frames(msg: InputAudio) -> int:
    """The frames (samples per channel) of an ``input.audio`` chunk; refused unless whole."""
    frame = (2 if msg.format == "s16le" else 4) * msg.channels
    if len(msg.pcm) % frame:
        raise InvalidConfigError(
            f"input.audio.pcm: {len(msg.pcm)} bytes is not a whole number of "
            f"{msg.channels}-channel {msg.format} frames"
        )
    return len(msg.pcm) // frame


def to_mono(msg: InputAudio) -> np.ndarray[Any, np.dtype[np.float32]]:
    """An ``input.audio`` chunk's samples as mono float32 at its own rate. f32le samples must
    be finite and are clipped to [-1, 1] (full scale)."""
    audio_frames(msg)
    dtype = np.dtype("<i2") if msg.format == "s16le" else np.dtype("<f4")
    x = np.frombuffer(msg.pcm, dtype=dtype).reshape(-1, msg.channels).astype(np.float32)
    if msg.format == "s16le":
        x /= 32768.0
    else:
        if not np.isfinite(x).all():
            raise InvalidConfigError("input.audio.pcm: samples must be finite")
        np.clip(x, -1.0, 1.0, out=x)
    mono = x.mean(axis=1) if msg.channels > 1 else x[:, 0]
    return np.ascontiguousarray(mono, dtype=np.float32)


class InputResampler:
    """A session's ``input.audio`` as one 16 kHz mono stream (blocking: a worker thread; one
    chunk at a time, as the control channel hands them over).

    Chunks at another rate go through one :class:`~tidegate.media.resample.StreamResampler`
    for as long as the rate stays, so a chunk's edges are filtered with its neighbours'
    samples (resampling each chunk alone put a seam every chunk, and a VAD hears seams: a
    question sent at 24 kHz ended one 32 ms frame later than the same question at 16 kHz).
    Each output needs ``half_taps`` input samples after it, so the last ~1 ms of a stream comes
    out with the next chunk; a change of rate (or 16 kHz again) flushes the old stream in front
    of the new chunk. :meth:`decode` returns the samples and the media time of the first
    (``ts`` moved back by what the stream still held, so echo alignment stays exact)."""

    def __init__(self) -> None:
        self._stream: StreamResampler | None = None

    @property
    def idle(self) -> bool:
        """No stream open (16 kHz so far): a 16 kHz mono chunk is only a cast."""
        return self._stream is None

    def decode(self, msg: InputAudio) -> tuple[np.ndarray[Any, np.dtype[np.float32]], float | None]:
        mono = to_mono(msg)
        stream = self._stream
        held = np.zeros(0, np.float32)  # an old stream's tail (the rate changed)
        if stream is not None and stream.in_hz != msg.sample_rate:
            held = stream.flush()
            self._stream = stream = None
        lead_s = len(held) / SAMPLE_RATE_HZ  # the output's first sample before the chunk's
        if msg.sample_rate == SAMPLE_RATE_HZ:
            out = mono
        else:
            if stream is None:
                self._stream = stream = StreamResampler(
                    msg.sample_rate, SAMPLE_RATE_HZ, dtype=np.float32
                )
            # outputs still owed for earlier chunks come first
            lead_s += stream.samples_in / msg.sample_rate - stream.samples_out / SAMPLE_RATE_HZ
            out = stream.process(mono)
        if len(held):
            out = np.concatenate([held, out])
        return out, None if msg.ts is None else msg.ts - lead_s * 1000.0


def to_mono_16k(msg: InputAudio) -> np.ndarray[Any, np.dtype[np.float32]]:
    """One ``input.audio`` chunk alone as 16 kHz mono float32 (a whole stream: flushed), of
    ``ceil(frames * 16000 / rate)`` samples."""
    if msg.sample_rate == SAMPLE_RATE_HZ:
        return to_mono(msg)
    stream = StreamResampler(msg.sample_rate, SAMPLE_RATE_HZ, dtype=np.float32)
    return np.concatenate([stream.process(to_mono(msg)), stream.flush()])


@dataclass(frozen=True, slots=True)
class Joined:
    """A segment's final decoded together with the segments before it in the same stretch of
    talk (module doc, "Joined decodes"): their ids in order (this one last) and the text."""

    ids: tuple[str, ...]
    text: str


@dataclass(frozen=True, slots=True)
class _Said:
    """A segment whose final had words: part of the next segment's joined decode."""

    id: str
    audio: Array
    start_sample: int
    end_sample: int


@dataclass(slots=True)
class _JoinedTask:
    """A joined decode in flight: the segments' ids, its audio's length, its cancel event."""

    ids: tuple[str, ...]
    samples: int
    cancel: threading.Event
    task: asyncio.Task[tuple[AsrResult | None, Timing, EngineError | None]]


@dataclass(slots=True)
class EarlyFinal:
    """A segment's final submitted while the VAD waits out its quiet (module doc): the
    segment's first ``end`` samples, the request and the task that decodes it."""

    seg: Segment
    end: int
    request: AsrRequest
    cancel: threading.Event
    task: asyncio.Task[tuple[AsrResult | None, Timing, EngineError | None]]
    joined: _JoinedTask | None = None  # its joined decode (module doc)

    def same_request(self, final: AsrRequest) -> bool:
        """Whether ``final``, the closed segment's request, asks what this one asked."""
        a, b = self.request, final
        same = (
            len(a.audio) == len(b.audio)
            and a.prefix == b.prefix
            and a.language == b.language
            and a.prompt == b.prompt
        )
        if a.language_audio is None or b.language_audio is None:
            return same and a.language_audio is b.language_audio
        return same and np.array_equal(a.language_audio, b.language_audio)


class SpeechListener(Protocol):
    """Who hears of the lane's speech (turn-taking); called on the event loop."""

    def on_speech_started(self, audio_ms: float) -> None:
        """The VAD reported the start of speech (``audio_ms``: its media time)."""
        ...

    def on_speech_onset(self) -> None:
        """A sound above the VAD's threshold has lasted ``interrupt_pause_after_s`` but not
        yet ``vad_min_speech_s`` (its start of speech, if it comes, follows)."""
        ...

    def on_speech_onset_lost(self) -> None:
        """The sound of the last :meth:`on_speech_onset` ended without becoming speech."""
        ...

    def on_speech_stopped(self, recent: Array, audio_ms: float) -> None:
        """The VAD reported the end of speech (its final follows): ``recent`` is the last
        ``RECENT_S`` (at most) of the session's audio, up to ``PAUSE_TAIL_S`` after the end of
        speech, ``audio_ms`` that end's media time."""
        ...

    def on_partial(self, text: str) -> None:
        """A partial decode of the open segment: ``text`` is its whole hypothesis (not only
        the committed part ``asr.partial`` carries), empty when the ASR did not take it for
        speech."""
        ...

    def on_final(
        self,
        text: str,
        received: float,
        finals_pending: int,
        *,
        segment_id: str = "",
        joined: Joined | None = None,
    ) -> None:
        """A segment's final transcript was emitted (``received``: its audio's arrival, ms;
        ``finals_pending``: finals of ended segments still to come after this one); ``text``
        is empty for a segment the ASR heard no words in (nothing was emitted for it).
        ``joined``: the segment decoded together with the segments before it (module doc,
        "Joined decodes"), when there were some and the decode was taken."""
        ...

    def on_commit(self, ref: str | None, audio_ms: float) -> None:
        """The client committed its audio (every final of it is out): end the turn there."""
        ...

    def turn_segments(self) -> tuple[str, ...]:
        """The ids of the segments whose finals the user's turn now holds, in order (empty
        once it was answered): the segments a joined decode may join (module doc)."""
        ...

    def on_clear(self) -> None:
        """The client cleared its audio: the words heard since the last turn are dropped."""
        ...


class AudioLane:
    """See the module docstring."""

    name = "audio"

    def __init__(
        self,
        session: SessionPort,
        config: AudioConfig,
        vad: Scheduler[Any, VadResult],
        asr: Scheduler[Any, AsrResult],
        workers: WorkerPool,
        *,
        listener: SpeechListener | None = None,
        speaks: bool = False,
        own_voice: OwnVoice | None = None,
        language: TurnLanguage | None = None,
    ) -> None:
        self.session = session
        s = config
        self.vad = vad
        self.asr = asr
        self.workers = workers  # resampling, off the loop (bounded: engines/workers.py)
        self._resampler = InputResampler()  # input.audio as one 16 kHz stream
        self.listener = listener
        tokenizer = getattr(self.asr.engine, "tokenizer", None)
        if tokenizer is None:
            raise UnsupportedError("the ASR engine has no tokenizer loaded")
        self._decode = tokenizer.decode
        self._encode = tokenizer.encode
        self.settings: StreamingSettings = config.streaming
        #: the turn's language (engines/asr/turn_language.py), shared with the reply lane when the
        #: mode replies; with no turn-taking each segment is a turn
        self.language = language or TurnLanguage(
            lambda: session.config.get("language"), per_segment=listener is None
        )
        self.inbox = AudioInbox(
            max_s=s.audio_buffer_s,
            silence_dbfs=s.audio_silence_dbfs,
            lag_report_ms=s.audio_lag_report_ms,
            on_lag=self._lag,
        )
        audio = session.config.get("audio", {})
        self.echo_mode: str = audio.get("echo_cancellation", s.echo_cancellation)
        #: the echo path (pipelines/echo.py), fed by the reply lane; None when off
        self.echo: EchoPath | None = None
        if self.echo_mode == "on" or (self.echo_mode == "auto" and speaks):
            self.echo = EchoPath(
                workers,
                noise_suppression=audio.get("noise_suppression", s.noise_suppression),
                max_delay_s=s.echo_max_delay_s,
                realign_min_s=s.echo_realign_min_s,
                max_pending_frames=s.echo_max_pending_frames,
            )
        self._echo_on = self.echo is not None  # auto: until a WebRTC client says it cancels
        #: the reply's own voice told by sound (pipelines/own_voice.py): told what the
        #: microphone hears, in a mode that speaks and judges it
        self.own_voice = own_voice
        self._ws_ts = False  # the client stamps its input.audio (ts): the echo path's clock
        self.vad.open_session(session.id)
        self._feed_lock = asyncio.Lock()
        # (lane ms when consumed, bytes, monotonic s when due): see _return_consumed
        self._credit: deque[tuple[float, int, float]] = deque()
        self._credit_timer: asyncio.TimerHandle | None = None
        self.pace = RealTimePace(s.audio_max_ahead_s)
        self._samples = 0  # samples run through the VAD
        self._pre_roll: deque[np.ndarray[Any, np.dtype[np.float32]]] = deque()
        self._pre_roll_samples = 0
        self._pre_roll_max = (config.streaming.pre_roll_s + PRE_ROLL_SLACK_S) * SAMPLE_RATE_HZ
        self._recent: deque[np.ndarray[Any, np.dtype[np.float32]]] = deque()
        self._recent_samples = 0
        self._segment: Segment | None = None
        self._segment_end = 0  # session sample where the last segment ended
        #: a sound this long (in samples) before its start of speech is told to the listener
        self._pause_after = round(config.interrupt_pause_after_s * SAMPLE_RATE_HZ)
        self._onset_told = False
        self._context: deque[int] = deque(maxlen=max(1, config.streaming.prompt_tokens))
        #: the segments since the last long pause whose finals had words (joined decodes):
        #: at most join_max_s of their audio (the oldest dropped; ~1 MB at 15 s), cleared by a
        #: longer pause, a final without words, a commit or a clear
        self._said: deque[_Said] = deque()
        self._finals: deque[tuple[Segment, float]] = deque()
        self._finals_space = asyncio.Condition()
        self._max_finals = s.asr_max_pending_finals
        self._wake = asyncio.Event()
        self._partial_cancel: tuple[Segment, threading.Event] | None = None  # in flight
        #: the open segment's early final, and those of closed segments whose finals are due
        self._early: EarlyFinal | None = None
        self._early_closed: dict[str, EarlyFinal] = {}
        self._last_audio_ms = 0.0  # server time the newest audio arrived
        # commits and clears: the VAD loop's progress on the inbox, and dropped segments
        self._vad_busy = False
        self._vad_idle = asyncio.Event()
        self._discarded: set[str] = set()  # segment ids whose finals a clear dropped
        self.counters: dict[str, int] = {
            "segments": 0,
            "onsets": 0,  # sounds told to the listener before their start of speech
            "partials": 0,
            "partials_cancelled": 0,
            "finals": 0,
            "empty_finals": 0,
            "empty_finals_joined": 0,  # no words alone, words joined (module doc)
            "asr_errors": 0,
            "vad_errors": 0,
            "cuts": 0,
            "commits": 0,
            "clears": 0,
            "prompt_echoes": 0,
            "joined_finals": 0,  # a final's joined decode given to the listener (module doc)
            "joins_skipped": 0,  # ... not started: the ASR queue was full
            "early_finals": 0,  # finals whose decode started in the VAD's wait (module doc)
            "early_finals_dropped": 0,  # ... withdrawn: speech went on, or the end differed
        }
        session.spawn(self._vad_loop(self.inbox), "vad")
        session.spawn(self._asr_loop(), "asr")

    # -- input ------------------------------------------------------------------------------
    @property
    def reference(self) -> Played | None:
        """Who is told what the session plays (the reply lane's ``echo``): the echo path and
        the own-voice judge, those that are on."""
        sinks = [x for x in (self.echo, self.own_voice) if x is not None]
        return Played(sinks) if sinks else None

    def handlers(self) -> Mapping[type[Any], Handler]:
        return {
            InputAudio: self._audio,
            CommitInputAudio: self._commit,
            ClearInputAudio: self._clear,
        }

    async def _commit(self, msg: CommitInputAudio) -> None:
        """The audio received so far ends a turn (see the module docstring)."""
        await self._settle("input_audio_buffer.commit")
        seg = self._cut_open()
        if seg is not None:
            await self._close_segment(seg, self._last_audio_ms)
        async with self._finals_space:  # every final of the committed audio is out
            await self._finals_space.wait_for(lambda: not self._finals)
        self.counters["commits"] += 1
        self._said.clear()  # the turn ends here: the next speech joins nothing before it
        audio_ms = self._samples * 1000 / SAMPLE_RATE_HZ
        if self.listener is not None:
            self.listener.on_commit(msg.id, audio_ms)
        else:
            self.session.emit(TurnEnd(reason="commit", audio_ms=audio_ms, ref=msg.id))

    async def _clear(self, msg: ClearInputAudio) -> None:
        """The audio received so far makes no transcript and no turn."""
        await self._settle("input_audio_buffer.clear")
        # the finals still due are not decoded: each ends without words (at most
        # asr_max_pending_finals + 1 ids, each forgotten when its turn in the ASR loop comes)
        self._discarded.update(s.id for s, _ in self._finals)
        seg = self._cut_open()
        if seg is not None:  # the open one too: queued only for its final without words
            self._discarded.add(seg.id)
            await self._close_segment(seg, self._last_audio_ms)
        self._said.clear()  # cleared words join nothing
        self.counters["clears"] += 1
        if self.listener is not None:
            self.listener.on_clear()

    async def _settle(self, what: str) -> None:
        """Wait until the VAD has taken the audio received so far."""
        limit_s = self.inbox.max_ms / 1000 + SETTLE_MARGIN_S
        try:
            async with asyncio.timeout(limit_s):
                while self.inbox.stats.queued_ms > 0 or self._vad_busy:
                    self._vad_idle.clear()
                    await self._vad_idle.wait()
        except TimeoutError:
            raise OverloadedError(
                f"{what}: the audio before it was not taken within {limit_s:g} s",
                retry_after_ms=AUDIO_RETRY_AFTER_MS,
            ) from None

    def _cut_open(self) -> Segment | None:
        """Close the open segment here; speech that goes on continues in a new one."""
        seg = self._segment
        if seg is None:
            return None
        self._segment = Segment(
            "seg_" + secrets.token_urlsafe(6), self._samples, self._decode, language=seg.language
        )
        self.counters["segments"] += 1
        return seg

    async def _audio(self, msg: InputAudio) -> None:
        """Pace, resample (off the loop), queue; refusals give the credit back (the
        dispatcher does it)."""
        duration_s = audio_frames(msg) / msg.sample_rate
        now = time.monotonic()
        over_s = self.pace.check(duration_s, now)
        if over_s > 0:
            raise RateLimitedError(
                f"input.audio: {self.pace.ahead_s(now) + duration_s:.2f} s ahead of real time "
                f"with this chunk; at most {self.pace.max_ahead_s:g} s (audio_max_ahead_s): "
                "send audio at real time",
                retry_after_ms=over_s * 1000.0,
            )
        try:
            if msg.sample_rate == SAMPLE_RATE_HZ and msg.channels == 1 and self._resampler.idle:
                pcm, ts = self._resampler.decode(msg)  # a cast and a check: < a thread hop
            else:
                pcm, ts = await self.workers.run(self._resampler.decode, msg)
        except EngineError as e:  # the pool is full (or closing): refused, credit back
            raise OverloadedError(
                f"input.audio: not taken, the server is busy ({e})",
                retry_after_ms=AUDIO_RETRY_AFTER_MS,
            ) from None
        due = self.pace.commit(duration_s, now) if self.pace.max_ahead_s > 0 else 0.0
        self._ws_ts = self._ws_ts or msg.ts is not None
        if self.echo is not None and msg.playout_delay_ms is not None:
            self.echo.playout_delay_s = msg.playout_delay_ms / 1000.0
        self._last_audio_ms = now_ms()
        self.inbox.push(pcm, ts if ts is not None else 0.0)
        self._credit.append((self.inbox.stats.received_ms, len(msg.pcm), due))
        self._return_consumed()

    def _return_consumed(self) -> None:
        """Credit back for the chunks the lane has consumed (or dropped) and whose audio's
        time has come (the pace: a client waiting for credit streams at real time)."""
        st = self.inbox.stats
        handled = st.received_ms - st.queued_ms + 1e-6
        now = time.monotonic()
        while self._credit and self._credit[0][0] <= handled:
            due = self._credit[0][2]
            if due > now:
                if self._credit_timer is None and not self.inbox.closed:
                    loop = asyncio.get_running_loop()
                    self._credit_timer = loop.call_later(due - now, self._credit_due)
                return
            self.session.return_credit(self._credit.popleft()[1])

    def _credit_due(self) -> None:
        self._credit_timer = None
        self._return_consumed()

    def _lag(self, lag_ms: float, dropped_ms: float) -> None:
        self.session.emit(FlowLag(lane="audio", lag_ms=lag_ms, dropped_ms=dropped_ms))

    def start_media(self, peer: MediaPeer) -> None:
        if self.echo_mode == "auto":  # on only for a client that says it cancels no echo
            self._echo_on = self.echo is not None and peer.client_echo_cancellation is False
        if peer.audio_in is not None:
            self.session.spawn(self._vad_loop(peer.audio_in), "rtc-vad")

    # -- the VAD loop -----------------------------------------------------------------------
    async def _vad_loop(self, inbox: AudioInbox) -> None:
        feed = _Feed(inbox)
        mine = inbox is self.inbox  # the WS inbox: commits and clears wait for it
        while (chunk := await inbox.read(max_ms=inbox.max_ms)) is not None:
            if not mine:
                await self._vad_chunk(feed, chunk)
                continue
            self._vad_busy = True
            try:
                await self._vad_chunk(feed, chunk)
            finally:
                self._vad_busy = False
                self._vad_idle.set()

    async def _vad_chunk(self, feed: _Feed, chunk: AudioChunk) -> None:
        """One chunk through the VAD, after the part-frame the chunks before left."""
        inbox = feed.inbox
        if inbox is self.inbox:
            self._return_consumed()
        else:
            self._last_audio_ms = now_ms()
        pcm = chunk.pcm
        echo = self.echo if self._echo_on else None
        if self.own_voice is not None:  # the microphone as captured: before the canceller
            first = len(pcm) if chunk.first_samples is None else chunk.first_samples
            at = chunk.arrival_s - first / SAMPLE_RATE_HZ
            self.own_voice.heard(pcm, at, cancelled=echo is not None)
        if echo is not None:  # off the loop: the media workers
            cleaned = await self._clean(echo, feed, chunk)
            if cleaned is None:
                return
            pcm = cleaned
        elif feed.held:  # the canceller was turned off with audio held back for it
            pcm = np.concatenate([*(c.pcm for c in feed.held), pcm])
            feed.held.clear()
        rest = feed.rest
        audio = np.concatenate([rest, pcm]) if len(rest) else pcm
        n = len(audio) // FRAME_SAMPLES
        async with self._feed_lock:
            for i in range(n):
                await self._frame(audio[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
        feed.rest = audio[n * FRAME_SAMPLES :]

    async def _clean(
        self, echo: EchoPath, feed: _Feed, chunk: AudioChunk
    ) -> np.ndarray[Any, np.dtype[np.float32]] | None:
        """``chunk`` (after those held back before it) through the echo canceller, or None
        while the cleaned audio would not complete a VAD frame: then it is held back for the
        next chunk. One call per VAD frame (32 ms) instead of one per chunk (20 ms over
        WebRTC): each call, on a media worker, finds its caches cold and pays for it more
        than for its blocks (docs/ears.md), and the VAD could not have run sooner. Held back
        at most a frame's samples; a chunk that does not follow on from those held (a gap
        in its media time, or in its arrival) has them cleaned first, alone."""
        media = feed.inbox is not self.inbox or self._ws_ts
        held = feed.held
        if held and not _follows(held[-1], chunk, media=media):
            before = await self._clean_now(echo, held, media=media)
            after = await self._clean_now(echo, [chunk], media=media)
            return np.concatenate([before, after])
        held.append(chunk)
        pending = sum(len(c.pcm) for c in held)
        if len(feed.rest) + echo.out_samples(pending) < FRAME_SAMPLES:
            return None
        return await self._clean_now(echo, held, media=media)

    async def _clean_now(
        self, echo: EchoPath, held: list[AudioChunk], *, media: bool
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The chunks ``held`` through the canceller as one piece (they follow on from each
        other), dated by the first; ``held`` is emptied."""
        first = held[0]
        if len(held) == 1:
            pcm, first_samples = first.pcm, first.first_samples
        else:
            pcm = np.concatenate([c.pcm for c in held])
            first_samples = len(first.pcm) if first.first_samples is None else first.first_samples
        held.clear()
        at_ms = first.media_ms if media else None
        return await echo.clean(pcm, first.arrival_s, at_ms, first_samples)

    async def _frame(self, frame: np.ndarray[Any, np.dtype[np.float32]]) -> None:
        received = self._last_audio_ms
        start = now_ms()
        try:
            r = await self.vad.submit(frame, session=self.session.id)
        except EngineError as e:
            self.counters["vad_errors"] += 1
            log.warning("session %s: VAD failed: %s", self.session.id, e)
            r = VadResult(0.0, self._segment is not None, (), self._samples + FRAME_SAMPLES)
        end = now_ms()
        timing = Timing(received=received, engine_start=start, engine_end=end)
        self._samples += FRAME_SAMPLES
        seg = self._segment
        if seg is not None:
            seg.append(frame, [r.probability])
        self._pre_roll.append(frame)
        self._pre_roll_samples += FRAME_SAMPLES
        while self._pre_roll_samples - FRAME_SAMPLES >= self._pre_roll_max:
            self._pre_roll_samples -= len(self._pre_roll.popleft())
        if self.listener is not None:
            self._recent.append(frame)
            self._recent_samples += FRAME_SAMPLES
            while self._recent_samples - FRAME_SAMPLES >= RECENT_S * SAMPLE_RATE_HZ:
                self._recent_samples -= len(self._recent.popleft())
        for ev in r.events:
            if ev.kind == "start" and self._segment is None:
                self.session.emit(VadSpeechStarted(audio_ms=ev.ms, timing=timing))
                if self.listener is not None:
                    self.listener.on_speech_started(ev.ms)
                self._open_segment(ev.sample, r.probability)
            elif ev.kind == "end" and self._segment is not None:
                self.session.emit(VadSpeechStopped(audio_ms=ev.ms, timing=timing))
                if self.listener is not None:
                    # up to PAUSE_TAIL_S after the VAD's end of speech, not to this frame
                    # (which comes min_silence_s and the model's decay later)
                    recent = np.concatenate(list(self._recent))
                    after = self._samples - ev.sample - int(PAUSE_TAIL_S * SAMPLE_RATE_HZ)
                    if 0 < after < len(recent):
                        recent = recent[:-after]
                    recent = recent[-int(RECENT_S * SAMPLE_RATE_HZ) :]
                    self.listener.on_speech_stopped(recent, ev.ms)
                seg = self._segment
                self._segment = None
                seg.truncate(max(0, ev.sample - seg.start_sample))
                self._segment_end = seg.end_sample
                early, self._early = self._early, None
                if early is not None:  # its final decides whether it is the one
                    self._early_closed[seg.id] = early
                await self._close_segment(seg, received)
        self._onset(r)
        self._early_final(r.end_if_silent)
        if self._segment is not None and self._partial_due(self._segment):
            self._wake.set()

    def _onset(self, r: VadResult) -> None:
        """Tell the listener of a sound that has lasted ``interrupt_pause_after_s`` before the
        VAD confirms it as speech, and of one that ended short (module doc)."""
        if self.listener is None:
            return
        if r.onset_sample is not None:
            if not self._onset_told and self._samples - r.onset_sample >= self._pause_after:
                self._onset_told = True
                self.counters["onsets"] += 1
                self.listener.on_speech_onset()
        elif self._onset_told:
            self._onset_told = False
            if not r.speech:  # ended short: no start of speech came
                self.listener.on_speech_onset_lost()

    def _early_final(self, ending: int | None) -> None:
        """Start the open segment's final where the VAD would end it (``ending``: its quiet
        has begun), or withdraw one whose quiet ended (module doc)."""
        seg, early = self._segment, self._early
        if early is not None and (early.seg is not seg or ending != seg.start_sample + early.end):
            self._drop_early(early)
            self._early = early = None
        if not self.settings.early_final or seg is None or ending is None or early is not None:
            return
        end = ending - seg.start_sample
        if not 0 < end <= seg.samples:
            return
        cancel = threading.Event()
        request = self.language.request(seg, end, cancel)
        task = self.session.spawn(self._submit(request), "asr-early-final")
        joined = self._start_joined(seg, end) if not self._asr_full() else None
        self._early = EarlyFinal(seg, end, request, cancel, task, joined)

    def _drop_early(self, early: EarlyFinal) -> None:
        early.cancel.set()
        if early.joined is not None:
            early.joined.cancel.set()
        self.counters["early_finals_dropped"] += 1

    def _partial_due(self, seg: Segment) -> bool:
        """A partial of ``seg`` is due (the adaptive rate: the ASR engine's queue depth)."""
        return seg.due(self.settings, self.asr.queue_load().depth)

    def _open_segment(self, start_sample: int, probability: float) -> None:
        """A segment from ``pre_roll_s`` before the VAD's start of speech (never before
        the previous segment's end: no word twice), with the session's previous text as its
        context."""
        audio = np.concatenate(list(self._pre_roll))
        first = self._samples - len(audio)
        pre_roll = round(self.settings.pre_roll_s * SAMPLE_RATE_HZ)
        if start_sample - self._segment_end > self.settings.prompt_max_gap_s * SAMPLE_RATE_HZ:
            self._context.clear()  # a new stretch of talk: no previous-text context
        start_sample = max(start_sample - pre_roll, first, self._segment_end, 0)
        heard = self.language.for_segment()  # the turn's language, once known
        seg = Segment(
            "seg_" + secrets.token_urlsafe(6),
            start_sample,
            self._decode,
            prompt=self.context,
            language=heard.code if heard is not None else self.language.asked,
            language_probability=heard.probability if heard is not None else None,
        )
        skip = start_sample - first
        frames = (len(audio) - skip + FRAME_SAMPLES - 1) // FRAME_SAMPLES
        seg.append(audio[skip:], [probability] * frames)
        self._segment = seg
        self.counters["segments"] += 1

    # -- joined decodes (module doc) -------------------------------------------------------
    def _asr_full(self) -> bool:
        """The ASR queue is as full as stops partials: optional work waits."""
        return self.asr.queue_load().depth >= self.settings.partial_max_queue_items

    def _joined_request(
        self, seg: Segment, end: int | None = None
    ) -> tuple[tuple[str, ...], AsrRequest] | None:
        """``seg`` (its first ``end`` samples) with the segments said before it in the same
        stretch of talk, the silences between them kept: their ids and the request; None
        when there are none (a long pause, no listener, joined decodes off)."""
        s = self.settings
        said = self._said
        if self.listener is None or s.join_max_gap_s <= 0 or not said:
            return None
        if seg.start_sample - said[-1].end_sample > s.join_max_gap_s * SAMPLE_RATE_HZ:
            return None
        turn = self.listener.turn_segments()  # only what the turn still holds joins
        samples = seg.samples if end is None else end
        parts, ids = [seg.audio(samples)], [seg.id]
        start, total = seg.start_sample, samples
        for k, before in enumerate(reversed(said), 1):
            if len(turn) < k or turn[-k] != before.id:
                break  # answered, absorbed by an interruption, or an earlier turn's
            gap = max(0, start - before.end_sample)
            if total + gap + len(before.audio) > s.join_max_s * SAMPLE_RATE_HZ:
                break  # the oldest drop out
            parts += [np.zeros(gap, dtype=np.float32), before.audio]
            ids.append(before.id)
            start, total = before.start_sample, total + gap + len(before.audio)
        if len(ids) == 1:
            return None
        audio = np.concatenate(parts[::-1])
        # in the segment's language: the turn's once locked, else what it asks (auto: detected
        # on the joined audio)
        return tuple(reversed(ids)), AsrRequest(audio, language=seg.language, final=True)

    def _start_joined(self, seg: Segment, end: int | None = None) -> _JoinedTask | None:
        wanted = self._joined_request(seg, end)
        if wanted is None:
            return None
        ids, request = wanted
        cancel = threading.Event()
        task = self.session.spawn(self._submit(replace(request, cancel=cancel)), "asr-joined")
        return _JoinedTask(ids, len(request.audio), cancel, task)

    def _joined_for_final(self, seg: Segment, early: EarlyFinal | None) -> _JoinedTask | None:
        """``seg``'s joined decode, started with its final: its early final's when that one
        joined the same segments over the same audio, else a new one (unless the ASR queue
        is full)."""
        brought = early.joined if early is not None else None
        if early is not None:
            early.joined = None  # this final owns it now
        wanted = self._joined_request(seg)
        if brought is not None:
            if (
                wanted is not None
                and wanted[0] == brought.ids
                and len(wanted[1].audio) == brought.samples
            ):
                return brought
            brought.cancel.set()
        if wanted is None:
            return None
        if self._asr_full():
            self.counters["joins_skipped"] += 1
            return None
        return self._start_joined(seg)

    async def _joined_unsure(
        self, joined: _JoinedTask | None, alone: AsrResult | None
    ) -> Joined | None:
        """The joined decode of a segment whose decode alone the gate did not call speech,
        when that decode still wrote words and did not take them for silence (no-speech
        probability under the gate's, no repetition loop): an unsure reading of real speech,
        not a cough or a breath. Else none (the joined decode is withdrawn)."""
        if joined is None:
            return None
        gate = self.settings.gate
        if (
            alone is None
            or not alone.text.strip()
            or alone.no_speech_prob > gate.no_speech_threshold
            or alone.compression_ratio > gate.compression_ratio_threshold
        ):
            joined.cancel.set()
            return None
        return await self._joined_text(joined)

    async def _joined_text(self, joined: _JoinedTask | None) -> Joined | None:
        if joined is None:
            return None
        result, _, error = await joined.task
        if error is not None or result is None or not self.settings.gate.is_speech(result):
            return None
        text = result.text.strip()
        return Joined(joined.ids, text) if text else None

    def _remember(self, seg: Segment) -> None:
        """``seg``'s final had words: the next segment of this stretch of talk joins it."""
        s = self.settings
        if self.listener is None or s.join_max_gap_s <= 0:
            return
        said = self._said
        if said and seg.start_sample - said[-1].end_sample > s.join_max_gap_s * SAMPLE_RATE_HZ:
            said.clear()
        said.append(_Said(seg.id, seg.audio(), seg.start_sample, seg.end_sample))
        total = sum(len(x.audio) for x in said)
        while total > s.join_max_s * SAMPLE_RATE_HZ:
            total -= len(said.popleft().audio)

    async def _close_segment(self, seg: Segment, received: float) -> None:
        seg.closed = True
        inflight = self._partial_cancel
        if inflight is not None and inflight[0] is seg:
            inflight[1].set()  # its final supersedes it
        async with self._finals_space:
            await self._finals_space.wait_for(lambda: len(self._finals) < self._max_finals)
            self._finals.append((seg, received))
        self._wake.set()

    # -- the ASR loop -----------------------------------------------------------------------
    async def _asr_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._finals or (self._segment is not None and self._partial_due(self._segment)):
                if self._finals:
                    seg, received = self._finals[0]
                    await self._final(seg, received)
                    async with self._finals_space:
                        self._finals.popleft()
                        self._finals_space.notify_all()
                else:
                    assert self._segment is not None
                    await self._partial(self._segment)

    async def _run(
        self, seg: Segment, end: int | None, cancel: threading.Event | None = None
    ) -> tuple[AsrResult | None, Timing]:
        result, timing, error = await self._submit(
            self.language.request(seg, end, cancel), final=end is None
        )
        if isinstance(error, AsrCancelledError):
            self.counters["partials_cancelled"] += 1
        elif error is not None and end is None:  # a final: the words may be lost; say so
            self._lost_final(seg, error)
        return result, timing

    async def _submit(
        self, request: AsrRequest, *, final: bool = True
    ) -> tuple[AsrResult | None, Timing, EngineError | None]:
        """One ASR request (a final is urgent: it goes ahead of other sessions' partials):
        its result, or None and why (withdrawn: :class:`AsrCancelledError`; a failure is
        counted and logged)."""
        received = self._last_audio_ms
        start = now_ms()
        result: AsrResult | None = None
        error: EngineError | None = None
        try:
            result = await self.asr.submit(replace(request, final=final), urgent=final)
        except AsrCancelledError as e:
            error = e
        except EngineError as e:
            self.counters["asr_errors"] += 1
            log.warning("session %s: ASR failed: %s", self.session.id, e)
            error = e
        return result, Timing(received=received, engine_start=start, engine_end=now_ms()), error

    def _lost_final(self, seg: Segment, e: EngineError) -> None:
        """A segment's final failed: the turn keeps what was committed (possibly nothing), and
        the client is told which stretch of its speech went untranscribed and why, instead
        of a turn that silently never ends in a reply."""
        code = (
            ErrorCode.OVERLOADED
            if isinstance(e, EngineOverloadedError)
            else ErrorCode.TIMEOUT
            if isinstance(e, DeadlineError)
            else ErrorCode.INTERNAL
        )
        why = FINAL_ERRORS[code.value]
        start = seg.start_sample * 1000 / SAMPLE_RATE_HZ
        end = seg.end_sample * 1000 / SAMPLE_RATE_HZ
        kept = "; the words recognized so far are kept" if seg.committed_text else ""
        seg.failed = code.value  # named again on its final
        self.session.emit(
            Error(
                code=code.value,
                message=f"speech at {start:.0f}-{end:.0f} ms was not transcribed: {why}{kept}",
            )
        )

    async def _partial(self, seg: Segment) -> None:
        decoded = seg.samples
        cancel = threading.Event()
        self._partial_cancel = (seg, cancel)
        try:
            result, timing = await self._run(seg, decoded, cancel)
        finally:
            self._partial_cancel = None
        if result is not None and seg.echoes_prompt(result):
            self.counters["prompt_echoes"] += 1
            seg.prompt = ()  # this segment goes on without the context
            result = None
        if result is None:
            seg.decoded_until = decoded
            return
        shown = seg.tentative
        committed = seg.on_partial(result, decoded, self.settings)
        self.language.partial_done(seg)  # a language it locked is the turn's
        if committed or seg.tentative != shown:
            self.counters["partials"] += 1
            tentative = seg.tentative or None
            self.session.emit(
                self._event(AsrPartial, seg, seg.committed_text, timing, tentative=tentative)
            )
        if self.listener is not None and self._segment is seg:  # still the speech going on
            speech = self.settings.gate.is_speech(result)
            self.listener.on_partial(result.text.strip() if speech else "")
        cut = seg.cut_point(self.settings) if self._segment is seg else None
        if cut is not None:
            self.counters["cuts"] += 1
            rest = seg.split(cut, "seg_" + secrets.token_urlsafe(6))
            self._segment = rest
            self.counters["segments"] += 1
            await self._close_segment(seg, self._last_audio_ms)

    async def _final(self, seg: Segment, received: float) -> None:
        early = self._early_closed.pop(seg.id, None)
        if seg.id in self._discarded:  # a clear dropped it: no words came of it
            self._discarded.discard(seg.id)
            if early is not None:
                self._drop_early(early)
            self.session.emit(self._event(AsrFinal, seg, "", None))  # every segment ends
            if self.listener is not None:
                self.listener.on_final("", received, len(self._finals) - 1, segment_id=seg.id)
            return
        joined = self._joined_for_final(seg, early)  # decoded beside the final (module doc)
        result, timing = await self._early_result(seg, early)
        if result is not None and seg.echoes_prompt(result):
            self.counters["prompt_echoes"] += 1
            seg.prompt = ()  # decoded again without the context
            result, timing = await self._run(seg, None)
        timing = Timing(
            received=received, engine_start=timing.engine_start, engine_end=timing.engine_end
        )
        locked = seg.language_locked  # given, or detected with confidence by a partial
        text = seg.final_text(result, self.settings)
        language, probability = self.language.final_done(
            seg, result, lock_probability=self.settings.language_lock_probability, locked=locked
        )
        if not text:
            self.counters["empty_finals"] += 1
            # every segment ends with its final: one without words takes back its partials
            self.session.emit(self._event(AsrFinal, seg, "", timing, error=seg.failed))
            together = await self._joined_unsure(joined, result)
            if together is None:
                self._said.clear()  # no words: the stretch of talk is broken
            else:  # words only with the segments before it (module doc)
                self.counters["empty_finals_joined"] += 1
                self.counters["joined_finals"] += 1
                self._remember(seg)
            if self.listener is not None:
                self.listener.on_final(
                    "", received, len(self._finals) - 1, segment_id=seg.id, joined=together
                )
            return
        self.counters["finals"] += 1
        if self.settings.prompt_tokens:
            self._context.extend(self._encode(" " + text))
        event = self._event(
            AsrFinal,
            seg,
            text,
            timing,
            language=language,
            language_probability=probability,
            error=seg.failed,
        )
        self.session.emit(event)
        self.session.record(  # never waits: a bounded queue to the writer (store/writer.py)
            TranscriptSegment(
                segment_id=event.segment_id,
                text=text,
                audio_start_ms=event.audio_start_ms,
                audio_end_ms=event.audio_end_ms,
            )
        )
        together = await self._joined_text(joined)
        self._remember(seg)
        if self.listener is not None:  # this final is still queued: the others are pending
            if together is not None:
                self.counters["joined_finals"] += 1
            self.listener.on_final(
                text, received, len(self._finals) - 1, segment_id=seg.id, joined=together
            )

    async def _early_result(
        self, seg: Segment, early: EarlyFinal | None
    ) -> tuple[AsrResult | None, Timing]:
        """``seg``'s final: its early final's, when that asked for exactly what the final
        asks (module doc), else decoded now."""
        if early is not None:
            if early.end == seg.samples and early.same_request(self.language.request(seg)):
                result, timing, error = await early.task
                if error is None:
                    self.counters["early_finals"] += 1
                    return result, timing
            else:
                self._drop_early(early)
        return await self._run(seg, None)

    @staticmethod
    def _event(cls: Any, seg: Segment, text: str, timing: Timing | None, **extra: Any) -> Any:
        return cls(
            **extra,
            segment_id=seg.id,
            text=text,
            audio_start_ms=seg.start_sample * 1000 / SAMPLE_RATE_HZ,
            audio_end_ms=seg.end_sample * 1000 / SAMPLE_RATE_HZ,
            timing=timing,
        )

    # -- the rest ---------------------------------------------------------------------------
    @property
    def context(self) -> tuple[int, ...]:
        """The tokens the next segment gets as its prompt (the previous finals' newest)."""
        return tuple(self._context) if self.settings.prompt_tokens else ()

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "audio_in": self.inbox.stats.as_dict(),
            "pending_finals": len(self._finals),
            "pace": self.pace.stats(),
            "echo": None if self.echo is None or not self._echo_on else self.echo.stats(),
        }

    async def close(self) -> None:
        if self._credit_timer is not None:
            self._credit_timer.cancel()
            self._credit_timer = None
        self.inbox.close()
        self.vad.close_session(self.session.id)
