"""The reply lane: LLM -> TTS -> audio out, with barge-in.

A reply starts when turn-taking (:mod:`tidegate.pipelines.turns`) hands it a user message
(:meth:`ReplyLane.answer`), or on ``response.create``. What the lane does (docs/assistant.md):

- **Replies.** A reply streams from the shared :class:`~tidegate.engines.llm.LlmBatcher` (the
  session's conversation KV cache is reused across turns) as ``response.text.delta``; its text
  goes into a :class:`~tidegate.engines.tts.TtsStream` as it arrives, and the speech goes onto
  the outbound WebRTC track (resampled 48 -> 16 kHz per synthesized chunk, in a thread) when
  the session has one, else out as ``output.audio`` (48 kHz s16le, 20 ms per message).
  Audio is paced by the clock at most ``assistant_audio_lead_s`` ahead of its playout, so that
  a cut flushes little and we know what the user has heard. ``response.done`` (completed) comes
  once the last audio has played out.
- **Speculative start.** When turn-taking knows the turn's text but waits a little longer
  before it ends the turn (the silence policy's wait, the semantic policy's timeout), it calls
  :meth:`ReplyLane.speculate`: the reply starts at once, *held* — the LLM streams, the first
  chunk is synthesized, but nothing reaches the client, the history or the records. When the
  turn ends (:meth:`ReplyLane.answer`) with exactly the messages the held reply was started on
  (same text, same history, same sight), the held reply is adopted: what it buffered goes out
  and its audio plays from there. Otherwise (the final differs, more speech, a typed input,
  ``response.create``, speech) it is discarded without a trace but the counters
  (``speculations``, ``speculation_hits``, ``speculation_discarded``). Only a turn whose end
  is at most ``assistant_speculate_max_wait_s`` away is speculated on (0: never), so that a
  discarded guess wastes little; a session with tools is never speculated on.
- **Interruptions.** Speech over a reply (turn-taking calls :meth:`ReplyLane.speech_started`)
  pauses its audio at once: the frames not yet played are taken back (the WebRTC track's
  queue is flushed; a WS-only client is told by ``response.paused`` to drop them) and the
  reply waits while the ASR decides (:mod:`tidegate.pipelines.interrupt`, fed by
  :meth:`ReplyLane.speech_stopped` and :meth:`ReplyLane.heard`): words cut it (a barge-in),
  no words or only a backchannel resume it from where it paused (``response.resumed``; the
  frames taken back are sent again, with the same ``ts``). ``interrupt_confirm_s`` 0 cuts at
  once, as :meth:`ReplyLane.barge_in` always does.
- **Barge-in.** A cut stops the reply at once: the generation is cancelled (it stops within
  one decode step), pending text and audio are dropped (``TtsStream.interrupt``,
  ``AudioOutTrack.flush``), and ``response.done`` says ``cancelled`` with ``text`` = the reply
  as far as its audio had played (whole chunks, and of the chunk playing at the cut, the
  words whose share of its characters fits in the share of its frames played; frames taken
  back at a pause were not played). That spoken part, not the whole reply, goes into the
  history.

Per session (its config) and per response (the Realtime dialect's ``response.create`` with
options, the :class:`~tidegate.protocol.realtime.commands.CreateResponse` command):
``instructions`` replace the system prompt, ``output_modalities`` ``["text"]`` writes without
speaking (no speech is synthesized), ``max_output_tokens`` lowers the reply's token budget
(``assistant_max_reply_tokens`` is the most), ``voice`` names the server's voice. Every
``response.done`` carries ``usage``: the tokens of its LLM rounds (prompt, cached, generated).

Bounds: the history keeps ``assistant_max_history_messages``; text chunks waiting for
synthesis are bounded (``assistant_max_pending_chunks``, coalesce); synthesized audio waits in
the TtsStream's queue (2 chunks, block); sent-but-unplayed audio is bounded by the lead.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from tidegate.engines.errors import DeadlineError, EngineError, OverloadedError, RequestError
from tidegate.engines.llm import Generation, LlmEngine, SamplingParams
from tidegate.engines.llm.tools import (
    ToolCall,
    ToolCallDelta,
    ToolCallError,
    validate_tool_choice,
    validate_tools,
)
from tidegate.engines.runtime import Array
from tidegate.engines.runtime.openai import ProviderError
from tidegate.engines.scheduler import Scheduler
from tidegate.engines.tts import FRAME_SAMPLES as TTS_FRAME_SAMPLES
from tidegate.engines.tts import ChunkPolicy, TtsStream
from tidegate.engines.tts.bank import VoiceBank
from tidegate.engines.tts.piper import OUTPUT_RATE_HZ
from tidegate.engines.tts.stream import FRAME_MS
from tidegate.media import AudioOutTrack, MediaPeer
from tidegate.protocol.messages import (
    MAX_TEXT_CHARS,
    MAX_TURN_SEGMENTS,
    FunctionCallOutput,
    OutputAudio,
    ResponseAudioStarted,
    ResponseCancel,
    ResponseCreate,
    ResponseCreated,
    ResponseDone,
    ResponseFunctionCallDelta,
    ResponseFunctionCallDone,
    ResponsePaused,
    ResponseResumed,
    ResponseTextDelta,
    Timing,
    Usage,
)
from tidegate.protocol.realtime.commands import CreateResponse

from .audio import SAMPLE_RATE_HZ, now_ms
from .config import ReplyConfig
from .echo import EchoSink
from .errors import InvalidConfigError, NotFoundError, UnsupportedError
from .errors import OverloadedError as RefusedOverloaded
from .interrupt import Interruption, Verdict, WordRule, echoed
from .language import TurnLanguage, reply_hint
from .media import SessionMedia
from .own_voice import ECHO_TAIL_S, HOLD_CHECK_S, HOLD_JUDGE_S, OWN_VOICE_LEAD_S, OwnVoice
from .port import Handler, SessionPort
from .records import Response as ResponseRecord

log = logging.getLogger(__name__)

FRAME_S = FRAME_MS / 1000
OUT_FRAME_SAMPLES = SAMPLE_RATE_HZ * FRAME_MS // 1000  # one 20 ms frame at 16 kHz
WORD_RE = re.compile(r"\S+")
#: frames sent this long ago (plus the client's playout delay) are kept where a pause looks
#: for those the client has not played
INFLIGHT_KEEP_S = 0.2
#: a reply's first chunk starts this little before its first sample above LEAD_SILENCE_DBFS:
#: Piper begins every chunk with 40-60 ms of near silence, which the user would wait through
LEAD_KEEP_MS = 10
LEAD_SILENCE_DBFS = -50.0
#: a chunk cut mid-sentence (the first chunk's words; one at max_chunk_chars) keeps this much of
#: its trailing silence, and the chunk after it starts like a first one: Piper ends every chunk
#: with 130-250 ms of silence and starts it with ~50, a pause in the middle of a phrase ("The
#: city ... of Paris") where a sentence or clause end keeps its own
SEAM_KEEP_MS = 30
MAX_INSTRUCTIONS_CHARS = 16_384  # as a session's (sessions/config.py)
DEFAULT_VOICE = "default"  # the server's TTS voice, whatever its model
#: ``response.create`` options the reply lane serves; the dialect keeps the rest (formats,
#: metadata) to itself
RESPONSE_OPTIONS = frozenset(
    {
        "instructions",
        "output_modalities",
        "max_output_tokens",
        "voice",
        "tools",
        "tool_choice",
        "conversation",
        "input",
    }
)
#: the roles an out-of-band response's ``input`` messages may have
INPUT_ROLES = ("user", "assistant", "system", "tool")


@dataclass(frozen=True, slots=True)
class ReplyOptions:
    """What one reply does, from the session's config and the response's own options."""

    instructions: str | None = None  # None: the session's, else the configured prompt
    speaks: bool = True  # output_modalities ["audio"]; ["text"]: no speech
    max_tokens: int | None = None  # None: the session's, else assistant_max_reply_tokens
    #: the response's own tools and tool_choice (Chat Completions form); None: the session's
    tools: tuple[dict[str, Any], ...] | None = None
    tool_choice: Any = None
    #: out of band (``conversation: "none"``): beside the conversation, in text, its words
    #: kept out of the history; over ``input`` (LLM messages) when given, else the history
    out_of_band: bool = False
    input: tuple[dict[str, Any], ...] | None = None


def new_response_id() -> str:
    return "r_" + secrets.token_urlsafe(9)


class Sight(Protocol):
    """What the camera sees, for the LLM (the vision lane)."""

    def context(self, max_age_s: float) -> str | None: ...


def trim_leading_silence(audio: Array, rate_hz: int = OUTPUT_RATE_HZ) -> Array:
    """int16 speech without its leading silence (all but ``LEAD_KEEP_MS`` before the first
    sample above ``LEAD_SILENCE_DBFS``); all-quiet audio is returned as it is."""
    level = 32768 * 10 ** (LEAD_SILENCE_DBFS / 20)
    loud = np.abs(audio) > level
    first = int(np.argmax(loud))
    if not loud[first]:
        return audio
    return audio[max(0, first - rate_hz * LEAD_KEEP_MS // 1000) :]


def trim_trailing_silence(audio: Array, rate_hz: int = OUTPUT_RATE_HZ) -> Array:
    """int16 speech without its trailing silence (all but ``SEAM_KEEP_MS`` after the last
    sample above ``LEAD_SILENCE_DBFS``); all-quiet audio is returned as it is."""
    level = 32768 * 10 ** (LEAD_SILENCE_DBFS / 20)
    loud = np.abs(audio[::-1]) > level
    last = int(np.argmax(loud))
    if not loud[last]:
        return audio
    return audio[: len(audio) - last + rate_hz * SEAM_KEEP_MS // 1000]


def mid_sentence(text: str) -> bool:
    """Whether speech of ``text`` stops mid-phrase: it ends in a word, not a mark."""
    return text.rstrip()[-1:].isalnum()


def to_track_rate(audio: Array) -> np.ndarray[Any, np.dtype[np.float32]]:
    """int16 speech at 48 kHz -> float32 at 16 kHz (libswresample; call it in a thread)."""
    import av

    pcm = np.ascontiguousarray(audio, np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate = OUTPUT_RATE_HZ
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE_HZ)
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


@dataclass(slots=True)
class SpokenChunk:
    """One synthesized piece of a reply: where its text lies in the reply, how many 20 ms
    frames it lasts, its 16 kHz audio (for the WebRTC track) and when each of its frames
    began to play (``time.monotonic()``)."""

    start: int
    end: int
    frames: int
    track_pcm: np.ndarray[Any, np.dtype[np.float32]] | None
    frame_starts: list[float] = field(default_factory=list)

    def heard_end(self, text: str, at: float, *, begun: bool = False) -> int:
        """Where in ``text`` the speech of this chunk had got to at ``at``: the words whose
        share of the chunk's characters fits in the share of its frames played (speech runs
        about evenly over the characters); with ``begun``, the word in progress too."""
        played = bisect.bisect_right(self.frame_starts, at)
        if played >= self.frames:
            return self.end
        budget = self.start + (self.end - self.start) * played / max(1, self.frames)
        end = self.start
        for m in WORD_RE.finditer(text, self.start, self.end):
            if m.end() > budget:
                if begun and played and m.start() < budget:
                    end = m.end()
                break
            end = m.end()
        return end


@dataclass(slots=True)
class OutFrame:
    """One 20 ms frame of a reply's speech: its chunk, its index in the chunk, its 48 kHz
    samples, and when its playout starts (monotonic; 0 until sent)."""

    chunk: SpokenChunk
    j: int
    pcm: Array
    start: float = 0.0


def _playing() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass(frozen=True, slots=True)
class SpokenTurn:
    """The user's spoken turn a reply answers: its words (joined decodes where they replaced
    the captions) and the ids of the speech segments they came from, in order."""

    text: str
    segments: tuple[str, ...]


def _created(reply: Reply) -> ResponseCreated:
    """``reply``'s ``response.created``, naming the spoken turn it answers (not a turn too
    long to name)."""
    turn = reply.turn
    if (
        turn is not None
        and 0 < len(turn.segments) <= MAX_TURN_SEGMENTS
        and len(turn.text) <= MAX_TEXT_CHARS
    ):
        return ResponseCreated(
            response_id=reply.id, ref=reply.ref, input_text=turn.text, segment_ids=turn.segments
        )
    return ResponseCreated(response_id=reply.id, ref=reply.ref)


@dataclass(slots=True)
class Reply:
    """One response in progress."""

    id: str
    ref: str | None
    received_ms: float  # when its input arrived (the turn's last audio, or the text)
    from_speech: bool = False  # answers a spoken turn (its first audio is voice-to-voice)
    #: the spoken turn it answers: its words and the segments they came from (none: typed)
    turn: SpokenTurn | None = None
    text: str = ""
    chunks: list[SpokenChunk] = field(default_factory=list)
    located: int = 0  # where the next chunk's text is looked for in ``text``
    play_end: float = 0.0  # monotonic time the audio sent so far finishes playing
    frames_sent: int = 0
    gen: Generation | None = None
    tts: TtsStream | None = None
    task: asyncio.Task[Any] | None = None
    speaker: asyncio.Task[Any] | None = None
    started_ms: float | None = None
    finished: bool = False
    #: a speculative reply not adopted yet: it emits nothing, its speaker waits for release
    held: bool = False
    out_of_band: bool = False  # beside the conversation (ReplyOptions.out_of_band)
    messages: list[dict[str, Any]] = field(default_factory=list)  # what the LLM was given
    held_events: list[Any] = field(default_factory=list)  # what it would have emitted
    release: asyncio.Event = field(default_factory=asyncio.Event)
    round_start: int = 0  # where the text of the latest LLM round starts in ``text``
    calls_made: int = 0
    pending: dict[str, asyncio.Future[str]] = field(default_factory=dict)  # call_id -> output
    calls: list[dict[str, str]] = field(default_factory=list)  # answered calls, for the record
    voiced: bool = False  # its first frame was sent (voice-to-voice observed)
    playing: asyncio.Event = field(default_factory=_playing)  # cleared while paused
    backlog: deque[OutFrame] = field(default_factory=deque)  # to send (taken back ones first)
    inflight: deque[OutFrame] = field(default_factory=deque)  # sent, maybe not played yet
    paused_at: float = 0.0
    options: ReplyOptions = field(default_factory=ReplyOptions)
    # tokens of the LLM rounds that ended, and of the one running (``gen``)
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0

    def usage(self) -> Usage | None:
        """The tokens the reply's LLM rounds took so far (None: no round ran)."""
        gen = self.gen
        if gen is None and not self.input_tokens:
            return None
        return Usage(
            input_tokens=self.input_tokens + (gen.prompt_tokens if gen else 0),
            cached_tokens=self.cached_tokens + (gen.cached_tokens if gen else 0),
            output_tokens=self.output_tokens + (gen.completion_tokens if gen else 0),
        )

    def round_done(self) -> None:
        """The running LLM round ended: its tokens join the reply's."""
        gen, self.gen = self.gen, None
        if gen is not None:
            self.input_tokens += gen.prompt_tokens
            self.cached_tokens += gen.cached_tokens
            self.output_tokens += gen.completion_tokens

    language: str | None = None  # the language it answers in (the user's turn's)
    voice: str | None = None  # the voice that speaks it
    speech: Scheduler[Any, Any] | None = None  # that voice's TTS engine
    text_only: str | None = None  # why it is not spoken (no voice for its language)

    def locate(self, chunk: str) -> tuple[int, int]:
        """Where ``chunk`` lies in ``text`` (the chunker strips and may merge chunks, so its
        words are found one after the other)."""
        start = pos = self.located
        for i, word in enumerate(chunk.split()):
            at = self.text.find(word, pos)
            if at < 0:
                break
            if i == 0:
                start = at
            pos = at + len(word)
        self.located = pos
        return start, pos

    def spoken(self, at: float, *, begun: bool = False) -> str:
        """The reply as far as its speech had played at ``at`` (whole words; with ``begun``,
        the word then in progress too); a reply in text only, as far as its text went."""
        if self.text_only is not None:
            return self.text
        end = 0
        for c in self.chunks:
            heard = c.heard_end(self.text, at, begun=begun)
            if heard > c.start:
                end = heard
            if heard < c.end:
                break
        return self.text[:end]


class ToolTimeoutError(Exception):
    """A reply's tool calls went unanswered (or were too many): the reply fails."""


def _reason(e: Exception) -> str:
    """Why a reply failed, for ``response.done``: the message of what the client, the model
    or a provider did; a plain sentence for our own faults (details stay in the log)."""
    if isinstance(
        e, ToolTimeoutError | ToolCallError | ProviderError | OverloadedError | DeadlineError
    ):
        return str(e)[:1024]
    return "the reply could not be generated (internal error; see the server log)"


class ReplyLane:
    """See the module docstring."""

    name = "reply"

    def __init__(
        self,
        session: SessionPort,
        config: ReplyConfig,
        llm: LlmEngine,
        tts: Scheduler[Any, Any],
        *,
        voice: str,
        media: SessionMedia,
        sight: Sight | None = None,
        voices: VoiceBank | None = None,
        language: TurnLanguage | None = None,
        on_done: Callable[[float], None] | None = None,
    ) -> None:
        self.session = session
        self.config = config
        self.llm = llm
        self.tts = tts
        self.voice = voice
        self.media = media
        self.sight = sight
        #: the voices by language (engines/tts/bank.py; None: ``tts`` speaks every reply)
        self.voices = voices
        #: the user's turn's language (engines/asr/turn_language.py; None: not known)
        self.language = language
        #: told of every frame played, ahead of time, with when it is due (the assistant mode
        #: sets it when echo is cancelled; pipelines/echo.py)
        self.echo: EchoSink | None = None
        #: what tells the reply's own voice by sound (pipelines/own_voice.py; the assistant mode
        #: sets it): speech over the reply that sounds like it does not cut it
        self.own_voice: OwnVoice | None = None
        #: told when a reply ends, with when its audio has played out (monotonic s; turn-taking
        #: times the user's silence from there: ``turn.idle_timeout_s``)
        self.on_done = on_done
        self.history: list[dict[str, Any]] = []
        self.reply: Reply | None = None
        self.speculative: Reply | None = None  # held, until the turn ends (module doc)
        #: out-of-band responses in progress, by id (``assistant_max_out_of_band_replies``)
        self.out_of_band: dict[str, Reply] = {}
        self._heard: SpokenTurn | None = None  # a committed turn waiting for response.create
        self._params = SamplingParams(max_tokens=config.max_reply_tokens)
        self._words = WordRule(config.interrupt_backchannel_phrases)
        #: the user's speech over the reply being judged (None: none)
        self.interruption: Interruption | None = None
        self._confirm_timer: asyncio.TimerHandle | None = None
        #: when the reply's own voice was last told by its sound (None: never in this session)
        self._own_sound_at: float | None = None
        self._hold_timer: asyncio.TimerHandle | None = None  # the held sound's next judgement
        #: when the speech of the last reply that spoke ended (None: none yet): its echo may
        #: still come back after it (the speaker-to-microphone delay, the room)
        self._ended_at: float | None = None
        #: when a sound began after that reply ended (None: none since the last final)
        self._tail_from: float | None = None
        self.counters = {
            "responses": 0,
            "completed": 0,
            "cancelled": 0,
            "failed": 0,
            "barge_ins": 0,  # speech started over a reply (it paused, or was cut at once)
            "onset_pauses": 0,  # ... of which paused at its onset, before the start of speech
            "interruptions_cut": 0,  # ... and was words: the reply was cut
            "interruptions_resumed": 0,  # ... and was not: the reply resumed
            "backchannels": 0,  # finals absorbed (not the user's turn): backchannels, few words
            "echo_words": 0,  # finals absorbed as the reply's own words coming back
            "echo_sounds": 0,  # ... of which told by their sound (their words were not near)
            # sounds over a reply judged by their sound before pausing it (the session's echo
            # was told by its sound lately): the reply played on ...
            "echo_holds": 0,
            "echo_holds_lost": 0,  # ... until the sound no longer sounded like it: paused
            # finals after a reply ended that sounded like its speech (its echo's tail): not
            # the user's turn (also counted in echo_words and echo_sounds)
            "echo_after_reply": 0,
            "audio_frames": 0,
            "resent_frames": 0,  # frames taken back at a pause and sent again
            # a reply's speech ran dry mid-reply (its next audio was not ready when the audio
            # sent so far had played out: a silence the user hears; not a pause or a resume)
            "audio_gaps": 0,
            "audio_gap_ms": 0,
            "tool_calls": 0,
            "speculations": 0,
            "speculation_hits": 0,
            "speculation_discarded": 0,
            "out_of_band": 0,  # responses beside the conversation (conversation none)
        }

    def handlers(self) -> Mapping[type[Any], Handler]:
        return {
            ResponseCreate: self._create,
            CreateResponse: self._create_with_options,
            ResponseCancel: self._cancel,
            FunctionCallOutput: self._call_output,
        }

    def start_media(self, peer: MediaPeer) -> None:
        """The outbound track is read from the media lane when a reply speaks."""

    def replying(self) -> bool:
        """A reply is in progress (not a held guess)."""
        return self.reply is not None

    # -- input ------------------------------------------------------------------------------
    def answer(
        self,
        text: str,
        ref: str | None,
        received_ms: float,
        *,
        spoken: bool,
        segments: tuple[str, ...] = (),
    ) -> None:
        """The user said ``text`` (a turn, or ``input.text``; a spoken one from the audio
        lane's ``segments``): reply to it (adopting the held reply when it was started on
        exactly these messages)."""
        self._user_says(text)
        self._heard = None
        turn = SpokenTurn(text, segments) if spoken else None
        language = self.language.for_reply(spoken=spoken) if self.language is not None else None
        held, self.speculative = self.speculative, None
        if held is not None:
            same = held.language == language
            if same and not held.finished and held.messages == self.messages(language=language):
                held.turn = turn  # the turn as it ended (named when adopted: _adopt)
                self._adopt(held, ref, received_ms)
                return
            self._discard(held)
        self._start_reply(ref, received_ms, spoken=spoken, language=language, turn=turn)

    def speculate(self, text: str, received_ms: float, *, wait_s: float) -> None:
        """Turn-taking expects the turn to end with ``text`` in ``wait_s``: start its reply
        now, held (module doc). A guess already running for the same text goes on."""
        language = self._turn_language()
        held = self.speculative
        if held is not None and held.messages == self._messages_with(text, language):
            return
        self._discard_speculation()
        limit = self.config.speculate_max_wait_s
        if limit <= 0 or wait_s > limit or self.session.config.get("tools"):
            return
        options = self._session_options()
        if not options.speaks:  # a text reply cannot be held back by its speech: not guessed
            return
        reply = Reply(new_response_id(), None, received_ms, from_speech=True, held=True)
        reply.options = options
        reply.language = language
        reply.messages = self._messages_with(text, language)
        self.speculative = reply
        self.counters["speculations"] += 1
        reply.task = self.session.spawn(self._respond(reply), "reply-speculative")

    def _adopt(self, reply: Reply, ref: str | None, received_ms: float) -> None:
        """The turn ended as guessed: the held reply becomes the reply; what it buffered goes
        out now (its text deltas as one) and its speech may play."""
        if self.reply is not None:
            self._cut(self.reply)
        self._end_interruption()
        reply.ref, reply.received_ms, reply.held = ref, received_ms, False
        self.reply = reply
        self.counters["responses"] += 1
        self.counters["speculation_hits"] += 1
        text = "".join(e.delta for e in reply.held_events if isinstance(e, ResponseTextDelta))
        for event in reply.held_events:
            if isinstance(event, ResponseCreated):
                self.session.emit(_created(reply))
        if text:
            self.session.emit(
                ResponseTextDelta(response_id=reply.id, delta=text, timing=self._timing(reply))
            )
        reply.held_events.clear()
        reply.release.set()

    def _discard(self, reply: Reply) -> None:
        """Drop a held reply: stop its work; nothing of it was ever seen."""
        self.counters["speculation_discarded"] += 1
        reply.finished = True
        self._stop(reply)
        if reply.task is not None:
            reply.task.cancel()

    def _discard_speculation(self) -> None:
        held, self.speculative = self.speculative, None
        if held is not None:
            self._discard(held)

    def _emit(self, reply: Reply, msg: Any) -> None:
        """Emit for ``reply``; a held reply keeps it until it is adopted."""
        if reply.held:
            reply.held_events.append(msg)
        else:
            self.session.emit(msg)

    def barge_in(self) -> None:
        """Cut the reply in progress at once, if any (a barge-in without waiting for words),
        and drop a held one (the turn goes on)."""
        self._discard_speculation()
        reply = self.reply
        if reply is not None:
            self.counters["barge_ins"] += 1
            self.counters["interruptions_cut"] += 1
            self._cut(reply)

    # -- interruptions (pipelines/interrupt.py) ---------------------------------------------
    def _interrupt_config(self) -> tuple[float, int, str]:
        """This session's (confirm_s, min_words, backchannels): its config's ``interrupt``
        section, else the settings."""
        c = self.config
        mine = self.session.config.get("interrupt", {})
        return (
            float(mine.get("confirm_s", c.interrupt_confirm_s)),
            int(mine.get("min_words", c.interrupt_min_words)),
            str(mine.get("backchannels", c.interrupt_backchannels)),
        )

    def speech_started(self) -> None:
        """The VAD heard the user start speaking (turn-taking): pause the reply in progress
        and judge the speech (or, with ``confirm_s`` 0, cut the reply at once)."""
        self._discard_speculation()  # a held reply: the turn goes on
        now = time.monotonic()
        it = self.interruption
        reply = self.reply
        self._sound_after_reply(now)
        if reply is not None and self._interrupt_config()[0] <= 0:
            self.barge_in()
            return
        if it is None:
            if reply is None:
                return
            it = self.interruption = self._interruption(reply, now)
        live = reply is not None and reply.id == it.response_id
        verdict = it.on_speech_started(now, live=live, hold=self._holds(now))
        self._sounded(it, verdict, now)

    def speech_onset(self) -> None:
        """A sound began over the reply and has lasted ``interrupt_pause_after_s``, before
        the VAD's start of speech (which waits for ``vad_min_speech_s``): pause the reply now
        (or hold it: :meth:`_holds`). Nothing is cut before the start of speech, so with
        ``confirm_s`` 0 this waits for it."""
        reply = self.reply
        now = time.monotonic()
        self._sound_after_reply(now)
        if reply is None or self._interrupt_config()[0] <= 0:
            return
        it = self.interruption
        if it is None:
            it = self.interruption = self._interruption(reply, now)
        verdict = it.on_onset(now, live=reply.id == it.response_id, hold=self._holds(now))
        if verdict is Verdict.PAUSE:
            self.counters["onset_pauses"] += 1
        self._sounded(it, verdict, now)

    def _interruption(self, reply: Reply, now: float) -> Interruption:
        """A new interruption of ``reply``, not paused yet (its first sound says)."""
        c = self.config
        return Interruption(
            reply.id,
            now,
            self._interrupt_config()[0],
            c.interrupt_max_pause_s,
            hold_s=c.interrupt_onset_hold_s,
            paused=False,
            finals_due=0,
            pauses=0,
        )

    def _sounded(self, it: Interruption, verdict: Verdict, now: float) -> None:
        """Carry out what a sound over the reply decided: pause it, or judge it held."""
        reply = self.reply
        if verdict is Verdict.PAUSE and reply is not None:
            self.counters["barge_ins"] += 1
            self._pause(reply, now)
            self._arm_confirm(it)
        elif it.held and self._hold_timer is None:
            self.counters["echo_holds"] += 1
            it.sounded_own = False
            self._judge_hold(it)

    def _sound_after_reply(self, now: float) -> None:
        """A sound began: with no reply in progress, within ``ECHO_TAIL_S`` of the end of the
        last one's speech, it may be that speech's echo (judged at its final: :meth:`heard`)."""
        ended = self._ended_at
        if self.reply is None and ended is not None and self._tail_from is None:
            if now - ended <= ECHO_TAIL_S:
                self._tail_from = now

    def _echo_after_reply(self, text: str, now: float) -> bool:
        """Whether the sound :meth:`_sound_after_reply` saw, now final (``text``), sounds like
        the last reply's speech (its sound only: right after a reply a user often says its
        last words back, "Coffee." to "... tea or coffee?", and the words rule would take
        them)."""
        since, self._tail_from = self._tail_from, None
        if not text or since is None or self.own_voice is None or self.reply is not None:
            return False
        likeness = self.own_voice.likeness(since - OWN_VOICE_LEAD_S, now)
        return likeness is not None and likeness >= self.config.interrupt_echo_likeness

    # -- the reply's own voice held (pipelines/interrupt.py, "its own voice, held") ---------
    def _holds(self, now: float) -> bool:
        """Whether a sound starting over the reply now is judged by its sound before it
        pauses the reply: the reply's own voice was told by its sound in this session within
        ``interrupt_echo_hold_s`` (its speaker is loud enough in its microphone to be told),
        and no canceller cleans its microphone. Where one does, a sound that reaches the VAD
        is mostly the user's, and held, a question pauses the reply later than its onset
        would (190 ms into it at the median, up to 0.9 s, against the onset's 0.15 s:
        docs/ears.md); the rare echo the canceller lets through pauses the reply, and its
        verdict resumes it."""
        at = self._own_sound_at
        window = self.config.interrupt_echo_hold_s
        own = self.own_voice
        return own is not None and not own.cancelled and at is not None and now - at <= window

    def _judge_hold(self, it: Interruption) -> None:
        """Judge the held sound's last ``HOLD_SPAN_S``: the reply plays on while it sounds
        like what the reply played, and is paused when it does not, or when too little of it
        to tell has come ``HOLD_JUDGE_S`` into the hold; again every ``HOLD_CHECK_S``."""
        self._hold_timer = None
        if it is not self.interruption or not it.held or self.own_voice is None:
            return
        now = time.monotonic()
        reply = self.reply
        live = reply is not None and reply.id == it.response_id
        likeness = None
        held_from = it.paused_at
        if live:
            own, likeness = self.own_voice.judge_hold(
                held_from, now, self.config.interrupt_echo_likeness, judged=it.sounded_own
            )
            if own:
                it.sounded_own = True
                self._own_sound_at = now
            if own or (own is None and (it.sounded_own or now < held_from + HOLD_JUDGE_S)):
                loop = asyncio.get_running_loop()
                self._hold_timer = loop.call_later(HOLD_CHECK_S, self._judge_hold, it)
                return
        if it.hold_lost(now, live=live) is Verdict.PAUSE and reply is not None:
            log.debug(
                "session %s: held sound over reply %s is not its own voice (likeness %s, %.0f "
                "ms into the hold)",
                self.session.id,
                reply.id,
                None if likeness is None else round(likeness, 2),
                (now - held_from) * 1000,
            )
            self.counters["echo_holds_lost"] += 1
            self._sounded(it, Verdict.PAUSE, now)

    def speech_onset_lost(self) -> None:
        """The sound :meth:`speech_onset` paused for ended before it was speech: no final
        will judge it, so a reply paused for it alone plays on (``no_words``) after
        ``interrupt_onset_hold_s`` of quiet (more sound first keeps it paused)."""
        it = self.interruption
        if it is not None:
            self._apply(it, it.on_onset_lost(time.monotonic()))
            if it is self.interruption and it.paused:
                self._arm_confirm(it)

    def speech_stopped(self) -> None:
        """The VAD heard the user stop speaking: a paused reply waits for the final (at most
        ``confirm_s`` from now)."""
        it = self.interruption
        if it is not None:
            self._apply(it, it.on_speech_stopped(time.monotonic()))
            if it is self.interruption and it.paused:
                self._arm_confirm(it)

    def judging(self) -> bool:
        """Speech over a reply is being judged (turn-taking then waits for its words before
        it ends the turn: a backchannel ends none)."""
        return self.interruption is not None

    def heard(self, text: str, *, final: bool) -> bool:
        """What the ASR heard of the user's speech (a partial hypothesis, or a segment's final;
        finals are told in order, empty ones too): words enough cut a reply it interrupted.
        False when the text was absorbed by an interruption that was not one (a backchannel,
        fewer words than ``min_words``, the reply's own voice), or is the echo of the reply
        that just ended (:meth:`_echo_after_reply`): it is not the user's turn."""
        it = self.interruption
        now = time.monotonic()
        if it is None:
            if final and self._echo_after_reply(text, now):
                # the end of the reply that just ended, come back: not the user's turn
                self._own_sound_at = now
                self.counters["echo_words"] += 1
                self.counters["echo_sounds"] += 1
                self.counters["echo_after_reply"] += 1
                return False
            return True
        _, min_words, backchannels = self._interrupt_config()
        words = bool(text) and self._words.interrupts(
            text, min_words=min_words, backchannels=backchannels
        )
        echo = words and self._own_words(it, text, now, final=final)
        if echo:
            words, it.echo = False, True
            if not final:
                it.echo_heard = text
        self._apply(it, it.on_final(text, words, now) if final else it.on_partial(words, now))
        if final and it is self.interruption and it.paused:  # its deadline may have moved
            self._arm_confirm(it)
        if final and text and not words:
            self.counters["echo_words" if echo else "backchannels"] += 1
            return False
        return True

    def _own_words(self, it: Interruption, text: str, now: float, *, final: bool) -> bool:
        """Whether ``text``, heard over the reply ``it`` paused, is (a final) or may be (a
        partial) that reply's own voice coming back: near a stretch of what the reply played
        in the last ``interrupt_echo_window_s`` before the pause (:func:`.interrupt.echoed`),
        or sounding like what it played (:class:`.own_voice.OwnVoice`: the words of an echo
        are often misheard; its sound is what it is)."""
        if it.sounded_own and not it.paused:  # held, judged its own and never paused since
            if final:
                self.counters["echo_sounds"] += 1
            return True
        window = self.config.interrupt_echo_window_s
        reply = self.reply
        if reply is None or reply.id != it.response_id:
            return False
        words = False
        if window > 0:
            # the word in progress at the pause came back too: the ASR completes it ("influ..."
            # is heard "influence"), and without it a one-second echo is a word off at 0.35
            played = reply.spoken(now, begun=True)
            before = reply.spoken(it.paused_at - window)
            recent = played[len(before) :] if played.startswith(before) else played
            words = echoed(text, recent, partial=not final)
        if self.own_voice is None or (words and not final):
            return words
        # from the sound's start (the pause came interrupt_pause_after_s into it; the VAD's
        # pre-roll before) to now; judged at a final even when the words said, to learn
        # whether this session's echo is loud enough to be told by its sound (_holds)
        likeness = self.own_voice.likeness(it.paused_at - OWN_VOICE_LEAD_S, now)
        sound = likeness is not None and likeness >= self.config.interrupt_echo_likeness
        log.debug(
            "session %s: %r over reply %s: words %s, likeness %s",
            self.session.id,
            text[:80],
            reply.id,
            "near" if words else "not near",
            None if likeness is None else round(likeness, 2),
        )
        if sound:
            self._own_sound_at = now
            if not words and final:
                self.counters["echo_sounds"] += 1
        return words or sound

    def _arm_confirm(self, it: Interruption) -> None:
        """(Re)arm the timer for the interruption's deadline."""
        if self._confirm_timer is not None:
            self._confirm_timer.cancel()
        loop = asyncio.get_running_loop()
        delay_s = max(0.0, it.deadline - time.monotonic())
        self._confirm_timer = loop.call_later(delay_s, self._confirm_due, it)

    def _confirm_due(self, it: Interruption) -> None:
        self._confirm_timer = None
        if it is self.interruption:
            self._apply(it, it.on_confirm_timeout(time.monotonic()))
            if it is self.interruption and it.paused:  # the deadline moved: check again then
                self._arm_confirm(it)

    def _apply(self, it: Interruption, verdict: Verdict) -> None:
        """Carry out what the interruption decided; forget it once it is over."""
        reply = self.reply
        live = reply if reply is not None and reply.id == it.response_id else None
        if verdict is Verdict.CUT:
            self._end_interruption()
            if live is not None:
                log.debug("session %s: reply %s cut by words", self.session.id, live.id)
                self.counters["interruptions_cut"] += 1
                self._cut(live)
            return
        if verdict is Verdict.RESUME:
            it.resumed()
            if self._confirm_timer is not None:
                self._confirm_timer.cancel()
                self._confirm_timer = None
            if live is not None:
                self._resume(live, it)
        if it.closed:
            self._end_interruption()

    def _end_interruption(self) -> None:
        self.interruption = None
        if self._confirm_timer is not None:
            self._confirm_timer.cancel()
            self._confirm_timer = None
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None

    def _pause(self, reply: Reply, now: float) -> None:
        """Hold the reply's audio now: frames not yet played go back to the front of its
        backlog (those the WebRTC track had not sent, and those it sent less than the
        client's ``playout_delay_ms`` ago, which that client silences at ``response.paused``;
        for ``output.audio``, those whose playout had not started), so the spoken part stops
        here."""
        reply.playing.clear()
        reply.paused_at = now
        track = self._track()
        if track is not None:
            unplayed = round(track.flush() / FRAME_MS)  # what it had not sent is not played
            delay = self.media.client_playout_delay_s
            if delay is not None:  # nor what it sent that the client has not played yet
                unplayed += track.sent_since(now - delay)
            take = min(unplayed, len(reply.inflight))
        else:
            take = sum(1 for f in reply.inflight if f.start > now)
        for _ in range(take):
            f = reply.inflight.pop()
            f.chunk.frame_starts.pop()
            reply.frames_sent -= 1
            reply.backlog.appendleft(f)
        if take and self.echo is not None:  # the canceller must not expect their echo
            self.echo.unplayed(reply.backlog[0].start)
        reply.play_end = reply.inflight[-1].start + FRAME_S if reply.inflight else now
        log.debug(
            "session %s: reply %s paused at %d ms (%d frames taken back)",
            self.session.id,
            reply.id,
            reply.frames_sent * FRAME_MS,
            take,
        )
        self.session.emit(
            ResponsePaused(response_id=reply.id, played_ms=float(reply.frames_sent * FRAME_MS))
        )

    def _resume(self, reply: Reply, it: Interruption) -> None:
        """Play on from where the reply paused (the frames taken back first)."""
        self.counters["interruptions_resumed"] += 1
        heard = " ".join(it.absorbed) or (it.echo_heard if it.echo else "")
        if it.echo:
            reason = "echo"
        elif not heard:
            reason = "no_words"
        elif self._words.heard(heard).words == 0:
            reason = "backchannel"
        else:
            reason = "few_words"
        self.session.emit(
            ResponseResumed(
                response_id=reply.id,
                played_ms=float(reply.frames_sent * FRAME_MS),
                paused_ms=max(0.0, (time.monotonic() - reply.paused_at) * 1000.0),
                reason=reason,
                heard=heard[:1024],
            )
        )
        log.debug("session %s: reply %s resumed (%s: %r)", self.session.id, reply.id, reason, heard)
        it.absorbed.clear()
        reply.play_end = max(reply.play_end, time.monotonic())  # the pause is no gap
        reply.playing.set()

    def hear(self, text: str, segments: tuple[str, ...] = ()) -> None:
        """The user said ``text`` (a committed turn, from ``segments``): it waits for
        ``response.create``, whose reply answers that turn when it gives no text of its own."""
        self._discard_speculation()  # no reply comes of this turn by itself
        self._user_says(text)
        self._heard = SpokenTurn(text, segments)

    async def _create(self, msg: ResponseCreate) -> None:
        self._answer_create(msg.text, msg.id, self._session_options())

    async def _create_with_options(self, msg: CreateResponse) -> None:
        self._answer_create(msg.text, msg.id, self._response_options(msg.options))

    def _answer_create(self, text: str | None, ref: str | None, options: ReplyOptions) -> None:
        if options.out_of_band:
            self._start_out_of_band(ref, options)
            return
        heard, self._heard = self._heard, None  # a heard turn is answered once, or not at all
        if text is not None:
            self._user_says(text)
            heard = None
        elif not self.history or self.history[-1]["role"] != "user":
            raise InvalidConfigError(
                "response.create: there is no user message to answer; give 'text'"
            )
        elif heard is not None and self.history[-1]["content"] != heard.text:
            heard = None  # the last user message is not that turn's (a typed one since)
        language = self.language.for_reply(spoken=False) if self.language is not None else None
        self._start_reply(ref, now_ms(), options=options, language=language, turn=heard)

    def _session_options(self) -> ReplyOptions:
        """The reply options the session's config gives (sessions/config.py checked them)."""
        c = self.session.config
        tokens = c.get("max_output_tokens", "inf")
        return ReplyOptions(
            instructions=c.get("instructions") or None,
            speaks=c.get("output_modalities", ["audio"]) == ["audio"],
            max_tokens=None if tokens == "inf" else int(tokens),
        )

    def _response_options(self, options: dict[str, Any]) -> ReplyOptions:
        """The session's reply options with one response's own (checked here: they come
        with the request, not through the config check)."""
        unknown = sorted(set(options) - RESPONSE_OPTIONS)
        if unknown:
            raise UnsupportedError(
                f"response.create: per-response {unknown[0]!r} is not served (set it for the "
                f"session instead); per response: {sorted(RESPONSE_OPTIONS)}"
            )
        base = self._session_options()
        instructions = options.get("instructions", base.instructions)
        if instructions is not None and (
            not isinstance(instructions, str) or len(instructions) > MAX_INSTRUCTIONS_CHARS
        ):
            raise InvalidConfigError(
                f"response.create instructions: expected a string of at most "
                f"{MAX_INSTRUCTIONS_CHARS} characters"
            )
        speaks = base.speaks
        if "output_modalities" in options:
            modalities = list(options["output_modalities"])
            if modalities not in (["audio"], ["text"]):
                raise InvalidConfigError(
                    f"response.create output_modalities: expected ['audio'] or ['text'], got "
                    f"{modalities!r}"
                )
            speaks = modalities == ["audio"]
        max_tokens = base.max_tokens
        if "max_output_tokens" in options:
            value = options["max_output_tokens"]
            if value != "inf" and (type(value) is not int or value < 1):
                raise InvalidConfigError(
                    f"response.create max_output_tokens: expected a positive integer or 'inf', "
                    f"got {value!r}"
                )
            max_tokens = None if value == "inf" else value
        voice = options.get("voice", DEFAULT_VOICE)
        if voice not in (DEFAULT_VOICE, self.voice):
            raise UnsupportedError(
                f"response.create voice: {voice!r} is not a voice of this server; it speaks "
                f"with {[DEFAULT_VOICE, self.voice]}"
            )
        tools, choice = self._response_tools(options)
        out_of_band, given = self._out_of_band_input(options)
        if out_of_band:
            speaks = False  # beside the conversation, nothing is said aloud (docs/realtime.md)
        return ReplyOptions(
            instructions or None, speaks, max_tokens, tools, choice, out_of_band, given
        )

    def _out_of_band_input(
        self, options: dict[str, Any]
    ) -> tuple[bool, tuple[dict[str, Any], ...] | None]:
        """``conversation: "none"`` and its ``input``: LLM messages (``role`` user,
        assistant, system or tool; ``content`` text; an assistant's ``tool_calls``), at most
        ``assistant_max_history_messages`` of them."""
        conversation = options.get("conversation")
        if conversation not in (None, "none"):
            raise InvalidConfigError(
                f"response.create conversation: expected 'none' (out of band), got {conversation!r}"
            )
        raw = options.get("input")
        if raw is None:
            return conversation == "none", None
        if conversation != "none":
            raise InvalidConfigError("response.create input: only with conversation 'none'")
        limit = self.config.max_history_messages
        if not isinstance(raw, list) or len(raw) > limit:
            raise InvalidConfigError(
                f"response.create input: expected a list of at most {limit} messages "
                "(assistant_max_history_messages)"
            )
        for i, m in enumerate(raw):
            content = m.get("content") if isinstance(m, dict) else None
            ok = (
                isinstance(m, dict)
                and m.get("role") in INPUT_ROLES
                and (content is None or isinstance(content, str))
                and len(content or "") <= 4 * MAX_TEXT_CHARS
            )
            if not ok:
                raise InvalidConfigError(
                    f"response.create input[{i}]: expected a message with a role in "
                    f"{list(INPUT_ROLES)} and text content"
                )
        return True, tuple(raw)

    def _response_tools(
        self, options: dict[str, Any]
    ) -> tuple[tuple[dict[str, Any], ...] | None, Any]:
        """A response's own ``tools`` (they replace the session's for it) and ``tool_choice``
        (naming its tools, or the session's when it gives none), checked as a session's."""
        if "tools" not in options and "tool_choice" not in options:
            return None, None
        c = self.config
        try:
            if "tools" in options:
                tools = validate_tools(
                    options["tools"], max_items=c.max_tools_items, max_bytes=c.max_tools_bytes
                )
            else:
                tools = tuple(self.session.config.get("tools") or ())
            choice = validate_tool_choice(options.get("tool_choice"), tools)
        except RequestError as e:
            raise InvalidConfigError(f"response.create {e}") from None
        if tools and not self.llm.supports_tools:
            raise UnsupportedError(
                "response.create tools: this server's LLM calls no tools (a provider that "
                "does: llm_runtime providers)"
            )
        return tools, choice

    async def _cancel(self, msg: ResponseCancel) -> None:
        reply = self.reply
        if msg.response_id in self.out_of_band:
            reply = self.out_of_band[msg.response_id]
        if reply is None or (msg.response_id not in (None, reply.id)):
            which = f"response {msg.response_id!r}" if msg.response_id else "response"
            raise NotFoundError(f"no {which} in progress")
        self._cut(reply)

    async def _call_output(self, msg: FunctionCallOutput) -> None:
        reply = self.reply
        waiting = reply.pending.get(msg.call_id) if reply is not None else None
        if waiting is None or waiting.done():
            raise NotFoundError(f"no tool call {msg.call_id!r} is waiting for its output")
        waiting.set_result(msg.output)

    def _user_says(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})
        self._trim_history()

    def _trim_history(self) -> None:
        self.history[:] = self._trimmed(self.history)

    def _trimmed(self, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        excess = len(history) - self.config.max_history_messages
        if excess > 0:
            history = history[excess:]
            # a tool result or call cut off from its turn would be refused by the LLM
            while history and history[0]["role"] == "tool":
                history = history[1:]
        return history

    def _messages_with(self, text: str, language: str | None = None) -> list[dict[str, Any]]:
        """What the LLM would be given if the user said ``text`` now (in ``language``)."""
        history = self._trimmed([*self.history, {"role": "user", "content": text}])
        return self.messages(history, language=language)

    def _turn_language(self) -> str | None:
        """The language of the turn in progress as far as it is known (a held reply's)."""
        heard = self.language.current() if self.language is not None else None
        return heard.code if heard is not None else None

    # -- replies ----------------------------------------------------------------------------
    def _start_reply(
        self,
        ref: str | None,
        received_ms: float,
        *,
        spoken: bool = False,
        options: ReplyOptions | None = None,
        language: str | None = None,
        turn: SpokenTurn | None = None,
    ) -> None:
        self._discard_speculation()  # whatever was guessed, this is what was asked
        if self.reply is not None:
            self._cut(self.reply)  # a new request supersedes the reply in progress
        self._end_interruption()
        reply = Reply(new_response_id(), ref, received_ms, from_speech=spoken, turn=turn)
        reply.options = options if options is not None else self._session_options()
        reply.language = language
        self.reply = reply
        self.counters["responses"] += 1
        reply.task = self.session.spawn(self._respond(reply), "reply")

    def _start_out_of_band(self, ref: str | None, options: ReplyOptions) -> None:
        """A response beside the conversation: the reply in progress goes on, nothing is
        said aloud, and its words stay out of the history (at most
        ``assistant_max_out_of_band_replies`` at once)."""
        limit = self.config.max_out_of_band_replies
        if len(self.out_of_band) >= limit:
            raise RefusedOverloaded(
                f"response.create: {limit} out-of-band responses are in progress already "
                "(assistant_max_out_of_band_replies)"
            )
        reply = Reply(new_response_id(), ref, now_ms(), out_of_band=True)
        reply.options = options
        history = list(options.input) if options.input is not None else None
        reply.messages = self.messages(history, instructions=options.instructions)
        self.out_of_band[reply.id] = reply
        self.counters["out_of_band"] += 1
        reply.task = self.session.spawn(self._respond(reply), "reply-out-of-band")

    async def _respond(self, reply: Reply) -> None:
        s = self.session
        self._emit(reply, _created(reply))
        messages = (
            list(reply.messages)
            if reply.held or reply.out_of_band
            else self.messages(instructions=reply.options.instructions, language=reply.language)
        )
        try:
            reply.started_ms = now_ms()
            tts: TtsStream | None = None
            # a text-only reply synthesizes nothing; a language without a voice is text only
            if reply.options.speaks and await self._pick_voice(reply):
                tts = TtsStream(
                    lambda chunk: self._synthesize(reply, chunk),
                    policy=ChunkPolicy(first_chunk_words=self.config.first_chunk_words),
                    max_pending_chunks=self.config.max_pending_chunks,
                )
                reply.tts = tts
                reply.speaker = s.spawn(self._speak(reply, tts), "reply-audio")
            while True:  # one LLM round, then another after each round of tool calls
                reply.round_start = len(reply.text)
                gen = await self._generate(
                    messages,
                    first_round=reply.calls_made == 0,
                    max_tokens=reply.options.max_tokens,
                    options=reply.options,
                )
                reply.gen = gen
                async for item in gen.events():
                    if isinstance(item, ToolCallDelta):
                        self._emit(
                            reply,
                            ResponseFunctionCallDelta(
                                response_id=reply.id,
                                call_id=item.call_id,
                                name=item.name,
                                arguments=item.arguments,
                            ),
                        )
                        continue
                    reply.text += item
                    self._emit(
                        reply,
                        ResponseTextDelta(
                            response_id=reply.id, delta=item, timing=self._timing(reply)
                        ),
                    )
                    if tts is not None:
                        tts.push(item)
                reply.round_done()
                if not gen.tool_calls:
                    break
                if reply.out_of_band:  # its calls are told, not answered: its one round ends
                    self._send_calls(reply, gen.tool_calls)
                    reply.calls.extend(
                        {"call_id": c.call_id, "name": c.name, "arguments": c.arguments}
                        for c in gen.tool_calls
                    )
                    break
                messages += await self._call_tools(reply, gen.tool_calls)
            if tts is not None and reply.speaker is not None:
                tts.end()
                await reply.speaker
        except asyncio.CancelledError:
            if reply.finished:  # cut: response.done has gone out already
                return
            self._stop(reply)
            raise
        except (EngineError, ToolTimeoutError) as e:
            log.warning("session %s: reply %s failed: %s", s.id, reply.id, e)
            self._stop(reply)
            self._finish(reply, "failed", reply.spoken(time.monotonic()), _reason(e))
            return
        self._finish(reply, "completed", reply.text)

    async def _generate(
        self,
        messages: list[dict[str, Any]],
        *,
        first_round: bool,
        max_tokens: int | None = None,
        options: ReplyOptions | None = None,
    ) -> Generation:
        """The next LLM round. The session's ``tool_choice`` holds for the reply's first
        round only; later rounds, which have the calls' outputs, send none (the provider's
        default, ``auto``): a forced call would otherwise be forced again every round. A
        response's own ``tools`` / ``tool_choice`` (``options``) replace the session's.
        ``max_tokens`` lowers the reply's budget (never above ``assistant_max_reply_tokens``)."""
        s = self.session
        params = self._params
        if max_tokens is not None and max_tokens < params.max_tokens:
            params = SamplingParams(max_tokens=max_tokens)
        tools: list[dict[str, Any]] | None = s.config.get("tools")
        choice = s.config.get("tool_choice")
        if options is not None and options.tools is not None:  # the response's own
            tools, choice = list(options.tools), options.tool_choice
        if tools:
            return self.llm.generate(
                messages,
                params,
                session=s.id,
                tools=tools,
                tool_choice=choice if first_round or choice == "none" else None,
            )
        if s.caches is not None:  # a greedy reply given before comes back at once
            return await s.caches.generate(self.llm, messages, params, session=s.id)
        return await self.llm.submit(messages, params, session=s.id)

    def _send_calls(self, reply: Reply, calls: tuple[ToolCall, ...]) -> None:
        """Each call to the client (``response.function_call.done``)."""
        for call in calls:
            self.counters["tool_calls"] += 1
            self.session.emit(
                ResponseFunctionCallDone(
                    response_id=reply.id,
                    call_id=call.call_id,
                    name=call.name,
                    arguments=call.arguments,
                )
            )

    async def _call_tools(self, reply: Reply, calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
        """Send each call to the client (``response.function_call.done``), wait for every
        ``function_call.output`` (at most ``assistant_tool_timeout_s``); the messages that
        carry the calls and their outputs to the next round (also kept in the history)."""
        limit = self.config.max_tool_calls_items
        reply.calls_made += len(calls)
        if reply.calls_made > limit:
            raise ToolTimeoutError(
                f"the model made more than {limit} tool calls in one reply "
                "(assistant_max_tool_calls_items)"
            )
        loop = asyncio.get_running_loop()
        for call in calls:
            reply.pending[call.call_id] = loop.create_future()
        self._send_calls(reply, calls)
        timeout_s = self.config.tool_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                outputs = [await reply.pending[c.call_id] for c in calls]
        except TimeoutError:
            waits = [
                reply.pending[c.call_id] for c in calls
            ]  # the timeout cancelled the one awaited
            late = [
                c.call_id
                for c, w in zip(calls, waits, strict=True)
                if w.cancelled() or not w.done()
            ]
            raise ToolTimeoutError(
                f"no function_call.output for {', '.join(late)} within {timeout_s:g} s "
                "(assistant_tool_timeout_s)"
            ) from None
        finally:
            for c in calls:
                reply.pending.pop(c.call_id, None)
        said = reply.text[reply.round_start :]
        added: list[dict[str, Any]] = [
            {
                "role": "assistant",
                "content": said,  # "" rather than null: some servers (llama-cpp-python) refuse null
                "tool_calls": [c.as_message() for c in calls],
            },
            *(
                {"role": "tool", "tool_call_id": c.call_id, "content": out}
                for c, out in zip(calls, outputs, strict=True)
            ),
        ]
        reply.calls.extend(
            {"call_id": c.call_id, "name": c.name, "arguments": c.arguments, "output": out}
            for c, out in zip(calls, outputs, strict=True)
        )
        self.history.extend(added)
        reply.round_start = len(reply.text)
        return added

    async def _pick_voice(self, reply: Reply) -> bool:
        """Choose the reply's voice for its language (the session's ``voices``, else the
        registry's); False when there is none: the reply is text only, and says why."""
        if self.voices is None:
            reply.voice, reply.speech = self.voice, self.tts
            return True
        voice = self.voices.pick(reply.language, self.session.config.get("voices"))
        if voice is None:
            reply.text_only = f"no voice for language {reply.language!r}: the reply is text only"
            return False
        reply.voice, reply.speech = voice.name, await self.voices.scheduler(voice)
        return True

    def messages(
        self,
        history: list[dict[str, Any]] | None = None,
        *,
        instructions: str | None = None,
        language: str | None = None,
    ) -> list[dict[str, Any]]:
        """What the LLM is given: the system prompt (or the reply's, else the session's
        instructions), the history (``history``, else the lane's) and, just before the last
        user message, what the camera sees and the language to answer in when it is not
        English (the prompt's); neither is kept in the history."""
        c = self.config
        # The session's ``instructions`` (session.create / session.update) replace the
        # configured system prompt, from the next reply on; a response's own replace both.
        prompt = instructions or self.session.config.get("instructions") or c.system_prompt
        history = self.history if history is None else history
        out = [{"role": "system", "content": prompt}, *history]
        sight = self.sight.context(c.vision_max_age_s) if self.sight is not None else None
        if sight is not None and out[-1]["role"] == "user":
            out.insert(len(out) - 1, {"role": "system", "content": sight})
        if language is not None and language != "en" and out[-1]["role"] == "user":
            out.insert(len(out) - 1, {"role": "system", "content": reply_hint(language)})
        return out

    async def _synthesize(self, reply: Reply, chunk: str) -> Array:
        """TtsStream's synthesis: one chunk's audio, noted with where its text ends. A
        reply's first chunk is urgent (the user waits on it; the engine runs it ahead of
        other replies' later chunks, engines/scheduler.py)."""
        caches = self.session.caches
        speech = reply.speech or self.tts
        voice = reply.voice or self.voice
        urgent = not reply.chunks
        if caches is not None:  # text spoken before: its audio at once
            audio: Array = await caches.synthesize(speech, chunk, voice=voice, urgent=urgent)
        else:
            audio = await speech.submit(chunk, urgent=urgent)
        # the first sound of the reply: no silence to wait through before it; and no pause
        # where a chunk was cut mid-phrase (SEAM_KEEP_MS)
        if urgent or mid_sentence(reply.text[: reply.chunks[-1].end]):
            audio = trim_leading_silence(audio)
        if mid_sentence(chunk):
            audio = trim_trailing_silence(audio)
        track = self._track()
        pcm = await asyncio.to_thread(to_track_rate, audio) if track is not None else None
        frames = -(-int(audio.size) // TTS_FRAME_SAMPLES)
        reply.chunks.append(SpokenChunk(*reply.locate(chunk), frames, pcm))
        return audio

    def _track(self) -> AudioOutTrack | None:
        peer = self.media.peer
        return peer.audio_out if peer is not None else None

    async def _speak(self, reply: Reply, tts: TtsStream) -> None:
        """Send the reply's frames, paced at most ``assistant_audio_lead_s`` ahead of playout
        and held while the reply is paused; return once the last one has played."""
        index, left, j = -1, 0, 0
        async for frame in tts.frames():
            if reply.held:  # a speculative reply speaks once adopted (module doc)
                await reply.release.wait()
            while left == 0:
                index += 1
                left, j = reply.chunks[index].frames, 0
            reply.backlog.append(OutFrame(reply.chunks[index], j, frame))
            left -= 1
            j += 1
            await self._send_backlog(reply)
            if reply.finished:
                return
        while True:
            await self._send_backlog(reply)
            if reply.finished:
                return
            await asyncio.sleep(max(0.0, reply.play_end - time.monotonic()))
            if not reply.backlog:  # nothing was taken back by a pause meanwhile
                return

    async def _send_backlog(self, reply: Reply) -> None:
        lead_s = self.config.audio_lead_s
        while reply.backlog and not reply.finished:
            if not reply.playing.is_set():
                await reply.playing.wait()
                continue
            now = time.monotonic()
            ahead = max(now, reply.play_end) - now
            if ahead > lead_s:
                await asyncio.sleep(ahead - lead_s)
                continue  # paused or cut meanwhile?
            self._send(reply, reply.backlog.popleft(), now)

    def _send(self, reply: Reply, out: OutFrame, now: float) -> None:
        """One frame out (the WebRTC track, else ``output.audio``), its playout time noted."""
        starts = max(now, reply.play_end)
        stages = self.session.stage_times
        chunk = out.chunk
        if not reply.voiced:
            reply.voiced = True
            self._emit(reply, ResponseAudioStarted(response_id=reply.id))
            if reply.from_speech and stages is not None:
                stages.voice_to_voice.observe(max(0.0, now_ms() - reply.received_ms))
        elif now - reply.play_end > FRAME_S:  # the speech ran dry (a frame's slack: timers)
            self.counters["audio_gaps"] += 1
            self.counters["audio_gap_ms"] += round((now - reply.play_end) * 1000)
        if out.start:
            self.counters["resent_frames"] += 1
        out.start = starts
        chunk.frame_starts.append(starts)
        reply.play_end = starts + FRAME_S
        track = self._track()
        if track is not None and chunk.track_pcm is not None:
            j = out.j
            part = chunk.track_pcm[j * OUT_FRAME_SAMPLES : (j + 1) * OUT_FRAME_SAMPLES]
            if len(part) < OUT_FRAME_SAMPLES:
                part = np.pad(part, (0, OUT_FRAME_SAMPLES - len(part)))
            if self.echo is not None:  # exactly what the track sends, when it is due
                self.echo.played(part, SAMPLE_RATE_HZ, starts)
            track.write(part)
        else:
            if self.echo is not None:  # WS-only: the frame plays when it is due
                self.echo.played(out.pcm, OUTPUT_RATE_HZ, starts)
            self.session.emit(
                OutputAudio(
                    pcm=out.pcm.astype("<i2").tobytes(),
                    format="s16le",
                    sample_rate=OUTPUT_RATE_HZ,
                    channels=1,
                    ts=reply.frames_sent * FRAME_MS,
                    response_id=reply.id,
                )
            )
        reply.frames_sent += 1
        self.counters["audio_frames"] += 1
        # what a pause may take back: frames whose playout has not started (and a little
        # more, for a track whose clock runs behind ours)
        keep = INFLIGHT_KEEP_S + (self.media.client_playout_delay_s or 0.0)
        while reply.inflight and reply.inflight[0].start < now - keep:
            reply.inflight.popleft()
        reply.inflight.append(out)

    def _timing(self, reply: Reply) -> Timing:
        return Timing(
            received=reply.received_ms, engine_start=reply.started_ms, engine_end=now_ms()
        )

    def _stop(self, reply: Reply) -> None:
        """Stop generating and speaking now (within one decode step and one audio frame)."""
        if reply.gen is not None:
            reply.gen.cancel()
        if reply.tts is not None:
            reply.tts.interrupt()
        track = self._track()
        if track is not None and reply.frames_sent:
            track.flush()
        if reply.speaker is not None:
            reply.speaker.cancel()

    def _cut(self, reply: Reply) -> None:
        """Barge-in or cancel: stop, then say what the user heard (up to the pause, if it
        was paused: the frames after it were taken back)."""
        if self.interruption is not None and self.interruption.response_id == reply.id:
            self._end_interruption()
        at = time.monotonic()
        self._stop(reply)
        self._finish(reply, "cancelled", reply.spoken(at))
        if reply.task is not None:
            reply.task.cancel()

    def _finish(self, reply: Reply, status: str, spoken: str, reason: str | None = None) -> None:
        if reply.finished:
            return
        reply.finished = True
        if reply.held:  # a guess that failed: as if never made (the turn starts afresh)
            return
        if self.reply is reply:
            self.reply = None
        self.out_of_band.pop(reply.id, None)
        played = max(time.monotonic(), reply.play_end)
        if reply.frames_sent:  # it spoke: its echo may come back after it
            self._ended_at = played
            self._tail_from = None
        for waiting in reply.pending.values():
            waiting.cancel()
        self.counters[status] += 1
        text = reply.text if status == "completed" else spoken
        self.session.emit(
            ResponseDone(
                response_id=reply.id,
                status=status,
                text=text,
                timing=self._timing(reply),
                ref=reply.ref,
                reason=reason,
                usage=reply.usage(),
                language=reply.language,
                voice=reply.voice if reply.text_only is None else None,
                text_only=reply.text_only,
            )
        )
        self.session.record(
            ResponseRecord(
                response_id=reply.id,
                text=reply.text,
                status=status,
                spoken_text=spoken,
                ref=reply.ref,
                tool_calls=list(reply.calls),
            )
        )
        # what was heard of the last round (earlier rounds are in the history with their
        # tool calls already)
        if reply.out_of_band:  # beside the conversation: not in its history, not its turn
            return
        heard = spoken[reply.round_start :] if len(spoken) > reply.round_start else ""
        if heard:
            self.history.append({"role": "assistant", "content": heard})
            self._trim_history()
        if self.on_done is not None:
            self.on_done(played)

    # -- the rest ---------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            **self.counters,
            "history_messages": len(self.history),
            "reply": None if self.reply is None else self.reply.id,
        }

    async def close(self) -> None:
        self._end_interruption()
        self._discard_speculation()
        for other in list(self.out_of_band.values()):
            other.finished = True
            self._stop(other)
            if other.task is not None:
                other.task.cancel()
        self.out_of_band.clear()
        reply = self.reply
        if reply is not None:
            reply.finished = True
            self._stop(reply)
            if reply.tts is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await reply.tts.close()
        self.llm.close_session(self.session.id)
