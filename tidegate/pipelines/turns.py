"""Turn-taking: when the user's turn ends, and what a turn starts.

The user's turn ends once the VAD has reported the end of speech, no new speech has started,
and the turn's policy says so (session config ``turn.policy``, default the setting
``turn_policy``):

- ``silence``: ``end_of_turn_s`` (``assistant_end_of_turn_s``) after the end of speech;
- ``semantic``: at each pause the VAD reports, the turn engine (Smart Turn v3.2, batched
  across sessions on its scheduler) scores the user's turn so far: its audio from
  ``TURN_PRE_SPEECH_S`` before its first speech to the pause, earlier pauses of the same
  turn included, the last 8 s at most (as the model was trained: one turn, zero-padded in
  front, not the conversation before it).
  Complete (probability >= ``turn_threshold``): the turn ends now. Incomplete: it waits for
  more speech, up to ``max_wait_s`` (``turn_max_wait_s``) after the pause, then ends. A
  server without the turn engine, or a score that fails (overloaded, late), falls back to
  the silence policy for that pause.
- ``manual``: no turn ends by itself; the client commits (the audio lane's
  ``input_audio_buffer.commit`` command, :mod:`tidegate.pipelines.audio`). Speech does not
  interrupt a reply under this policy (there is no turn detection to say it is a turn).

A session's ``turn`` config may also set ``end_of_turn_s`` and ``max_wait_s`` (overriding
the settings for it), ``respond: false`` (a turn's end keeps the user's words in the history
for the next ``response.create`` instead of replying) and ``interrupt: false`` (speech over a
reply does not cut it). A commit, whatever the policy, ends the turn at once with reason
``commit`` and never starts a reply: its words wait for ``response.create`` (as the Realtime
API does); a clear drops the words heard since the last turn.

Each end is told to the client as ``turn.end`` {reason: semantic | timeout | silence | commit,
probability, audio_ms} at the decision: it does not wait for the ASR final of the turn's last
segment (except over a reply, below). The reply does: once the finals of every segment of the
turn are out, they are joined into the user message the reply lane answers. A final that
comes with a joined decode (:mod:`tidegate.pipelines.audio`, "Joined decodes": the segment
decoded together with the segments before it in the same stretch of talk) replaces those
segments' finals in the turn with the joined text, when they are the turn's last ones (not
when one of them was absorbed by an interruption or belongs to an earlier turn): the reply
answers the sentence as said across its pauses, not its pieces decoded apart. Speech that starts
before they are all out continues the turn (its text joins, and a later ``turn.end`` ends it
again); a turn whose finals hold no words (a cough) is answered by nothing. ``input.text`` is
a typed turn: it ends at once. Speech that starts while a reply is in progress is a possible
interruption: the reply lane pauses the reply and judges it from what the ASR hears
(:mod:`tidegate.pipelines.interrupt`); a final it absorbs (a backchannel over the reply, or
fewer words than ``interrupt.min_words``) is not part of the user's turn, so while it judges,
``turn.end`` waits for the turn's finals (a backchannel ends no turn).

A silent user (``turn.idle_timeout_s``, setting ``turn_idle_timeout_s``; 0: off): once a reply
has played out (the reply lane's ``on_done``), the user's silence is timed; a start of speech
stops the timer, and speech that comes to no words restarts it from its end. If the user says
and types nothing for that long, and no reply is under way, the assistant takes the turn:
``turn.end`` {reason: idle}, then (unless ``respond`` is false) a reply to ``IDLE_PROMPT``.
At most ``idle_max_prompts`` such turns in a row without the user speaking words or typing;
not under the manual policy.

It hears the audio lane through the :class:`~tidegate.pipelines.audio.SpeechListener` port,
and asks the vision lane (when the mode has one) for the freshest sight at each turn's end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tidegate.engines.errors import EngineError
from tidegate.engines.runtime import Array
from tidegate.engines.scheduler import Scheduler
from tidegate.media import MediaPeer
from tidegate.protocol.messages import InputText, TurnEnd

from .audio import SAMPLE_RATE_HZ, Joined, now_ms
from .config import TurnConfig
from .port import Handler, SessionPort

log = logging.getLogger(__name__)

#: audio scored before the turn's first speech (as Smart Turn's own pipeline keeps)
TURN_PRE_SPEECH_S = 0.5
#: what the audio at a pause holds after the VAD's end of speech (audio.PAUSE_TAIL_S), and more
PAUSE_TAIL_S = 0.1
#: the user message an idle turn answers (the LLM sees the silence as the user's turn)
IDLE_PROMPT = "(The user has said nothing for {seconds:g} seconds since your last reply.)"


class Replier(Protocol):
    """The reply lane, as turn-taking sees it."""

    def answer(
        self,
        text: str,
        ref: str | None,
        received_ms: float,
        *,
        spoken: bool,
        segments: tuple[str, ...] = (),
    ) -> None:
        """Reply to ``text``: a typed turn, or a spoken one whose words came from the audio
        lane's ``segments`` (their ids, in order; joined decodes may have replaced their
        captions' words)."""
        ...

    def speculate(self, text: str, received_ms: float, *, wait_s: float) -> None:
        """The turn will end with ``text`` in ``wait_s`` unless the user speaks again."""
        ...

    def speech_started(self) -> None: ...

    def speech_onset(self) -> None: ...

    def speech_onset_lost(self) -> None: ...

    def speech_stopped(self) -> None: ...

    def heard(self, text: str, *, final: bool) -> bool: ...

    def judging(self) -> bool:
        """Speech over a reply is being judged (it may be a backchannel, not a turn)."""
        ...

    def replying(self) -> bool:
        """A reply is in progress."""
        ...

    def hear(self, text: str, segments: tuple[str, ...] = ()) -> None:
        """The user said ``text`` (from ``segments``); the reply waits for
        ``response.create``."""
        ...


class Looker(Protocol):
    """The vision lane, as turn-taking sees it."""

    async def at_turn_end(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Decision:
    """How the turn ends after a pause: ``reason`` for ``turn.end``, when (monotonic s)."""

    reason: str
    probability: float | None
    at: float
    audio_ms: float


class TurnTaking:
    """See the module docstring."""

    name = "turns"

    def __init__(
        self,
        session: SessionPort,
        config: TurnConfig,
        reply: Replier,
        *,
        vision: Looker | None = None,
        turn: Scheduler[Array, Any] | None = None,
    ) -> None:
        self.session = session
        self.config = config
        self.reply = reply
        self.vision = vision
        self.turn = turn  # the turn engine's scheduler; None: the silence policy only
        self.turns = 0
        self.counters: dict[str, int] = {
            "turn_ends_semantic": 0,
            "turn_ends_timeout": 0,
            "turn_ends_silence": 0,
            "turn_ends_commit": 0,
            "turn_ends_idle": 0,  # the user stayed silent after a reply (turn.idle_timeout_s)
            "turn_scores": 0,
            "turn_scores_incomplete": 0,
            "turn_score_errors": 0,
            "turn_ends_continued": 0,  # speech came after turn.end, before the turn's finals
            "turn_ends_without_words": 0,  # the finals of an ended turn held no words
            "turn_texts_joined": 0,  # finals replaced by their joined decode (module doc)
        }
        self._speaking = False  # between the VAD's start and end of speech
        self._finals_due = False  # a segment ended whose final is not out yet
        #: the turn's words so far: per final (or joined decode), its segments' ids and text
        self._turn: list[tuple[tuple[str, ...], str]] = []
        self._turn_received = 0.0
        self._pause = 0  # counts pauses: a score for an older one is stale
        self._decision: Decision | None = None
        self._ended = False  # turn.end was sent: the reply waits for the turn's finals
        self._held: Decision | None = None  # decided while an interruption is judged
        self._turn_start_ms: float | None = None  # the turn's first speech (media time)
        #: seconds of audio the last score covered (at most 8)
        self.last_scored_s: float | None = None
        self._turn_timer: asyncio.Task[Any] | None = None
        self._score_task: asyncio.Task[Any] | None = None
        #: the assistant has the floor back after its reply and the user has not taken a turn
        #: since: the idle timer runs while the user is silent (module doc)
        self._idle_waiting = False
        self._idle_timer: asyncio.Task[Any] | None = None
        self._idle_prompts = 0  # idle turns since the user last spoke or typed

    def _turn_config(self, key: str, default: Any) -> Any:
        return self.session.config.get("turn", {}).get(key, default)

    @property
    def policy(self) -> str:
        """This session's turn policy now (its config's ``turn.policy``, else the default);
        ``semantic`` is ``silence`` when no turn engine runs."""
        policy = str(self._turn_config("policy", self.config.policy))
        return "silence" if policy == "semantic" and self.turn is None else policy

    def handlers(self) -> Mapping[type[Any], Handler]:
        return {InputText: self._text}

    def start_media(self, peer: MediaPeer) -> None:
        """Nothing: turns hear the audio lane, not the media."""

    async def _text(self, msg: InputText) -> None:
        self._user_took_turn()
        if self.vision is not None:
            await self.vision.at_turn_end()  # a typed turn ends here
        self.reply.answer(msg.text, msg.id, now_ms(), spoken=False)

    # -- SpeechListener (the audio lane) ----------------------------------------------------
    def on_speech_started(self, audio_ms: float) -> None:
        if self._turn_start_ms is None:
            self._turn_start_ms = audio_ms  # a new turn
        self._speaking = True
        self._cancel_idle()  # re-armed if what was said holds no words
        self._pause += 1  # a score still coming is for a pause that is over
        self._decision = None
        if self._turn_timer is not None:
            self._turn_timer.cancel()  # the turn goes on
            self._turn_timer = None
        if self._ended:  # ended before its finals were out: it goes on (another turn.end)
            self._ended = False
            self.counters["turn_ends_continued"] += 1
        self._held = None
        if self.policy != "manual" and self._turn_config("interrupt", True):
            self.reply.speech_started()  # over a reply: an interruption (the reply lane judges)

    def on_speech_onset(self) -> None:
        if self.policy != "manual" and self._turn_config("interrupt", True):
            self.reply.speech_onset()  # a sound over a reply: pause it while the VAD decides

    def on_speech_onset_lost(self) -> None:
        self.reply.speech_onset_lost()

    def on_speech_stopped(self, recent: Array, audio_ms: float) -> None:
        self._speaking = False
        self.reply.speech_stopped()
        self._finals_due = True
        stopped = time.monotonic()
        policy = self.policy
        if policy == "manual":
            self._decision = None  # the client commits
        elif policy == "semantic":
            assert self.turn is not None
            self._decision = None  # until the score
            audio = self._turn_audio(recent, audio_ms)
            self._score_task = self.session.spawn(
                self._score(self.turn, audio, self._pause, stopped, audio_ms), "turn-score"
            )
        else:
            self._decision = self._silence(stopped, audio_ms)
            self._arm()

    def on_partial(self, text: str) -> None:
        self.reply.heard(text, final=False)

    def on_final(
        self,
        text: str,
        received: float,
        finals_pending: int,
        *,
        segment_id: str = "",
        joined: Joined | None = None,
    ) -> None:
        if not self.reply.heard(text, final=True):
            text, joined = "", None  # absorbed by an interruption that was not one
        if text or joined is not None:  # no words alone may still be words joined
            if self._take(segment_id, text, joined):
                self._turn_received = received
        if not self._speaking and finals_pending == 0:  # no speech or final pending
            self._finals_due = False
            held, self._held = self._held, None
            if self._ended:
                self._answer()
            elif not self._turn:
                self._turn_start_ms = None  # what was heard had no words: no turn
                self._arm_idle(time.monotonic())  # the silence goes on
            elif held is not None:  # decided over a reply: its words are in, the turn ends
                self._turn_timer = self.session.spawn(self._end_turn(0.0, held), "turn-end")
            else:
                self._speculate()  # the turn's end is pending: its text is known now

    def _take(self, segment_id: str, text: str, joined: Joined | None) -> bool:
        """A final's words join the turn: as the joined decode of it and the segments before
        it when those are the turn's last entries (module doc), else as they are (a final
        without words of its own: nothing); whether the turn took any."""
        entry: tuple[tuple[str, ...], str] = ((segment_id,), text)
        if joined is not None and joined.ids[-1:] == (segment_id,):
            before, k = joined.ids[:-1], 0
            ids: tuple[str, ...] = ()
            while len(ids) < len(before) and k < len(self._turn):
                k += 1
                ids = self._turn[-k][0] + ids
            if before and ids == before:
                del self._turn[-k:]
                entry = (joined.ids, joined.text)
                self.counters["turn_texts_joined"] += 1
        if not entry[1]:
            return False
        self._turn.append(entry)
        return True

    def turn_segments(self) -> tuple[str, ...]:
        return tuple(i for ids, _ in self._turn for i in ids)

    @property
    def _words(self) -> str:
        return " ".join(text for _, text in self._turn)

    def _turn_audio(self, recent: Array, audio_ms: float) -> Array:
        """The end of ``recent`` that is this turn's (see the module docstring)."""
        if self._turn_start_ms is None:
            return recent
        keep_s = (audio_ms - self._turn_start_ms) / 1000 + TURN_PRE_SPEECH_S + PAUSE_TAIL_S
        keep = int(keep_s * SAMPLE_RATE_HZ)
        return recent[-keep:] if 0 < keep < len(recent) else recent

    def on_commit(self, ref: str | None, audio_ms: float) -> None:
        """The client committed its audio: the turn ends now; its words wait for
        ``response.create``."""
        if self._turn_timer is not None:
            self._turn_timer.cancel()
            self._turn_timer = None
        self._pause += 1  # a score still coming is for a turn that is over
        self._decision = None
        self._finals_due = False  # the audio lane has put every final out
        self._ended, self._held, self._turn_start_ms = False, None, None
        text, segments = self._words, self.turn_segments()
        self._turn.clear()
        self.turns += 1
        self.counters["turn_ends_commit"] += 1
        self._user_took_turn()
        self.session.emit(TurnEnd(reason="commit", audio_ms=audio_ms, ref=ref))
        if text:
            self.reply.hear(text, segments)

    def on_clear(self) -> None:
        """The client cleared its audio: the words heard since the last turn are dropped."""
        if self._turn_timer is not None:
            self._turn_timer.cancel()
            self._turn_timer = None
        self._pause += 1
        self._decision = None
        self._turn.clear()
        self._ended, self._held, self._turn_start_ms = False, None, None

    def _silence(self, stopped: float, audio_ms: float) -> Decision:
        wait_s = self._turn_config("end_of_turn_s", self.config.end_of_turn_s)
        return Decision("silence", None, stopped + wait_s, audio_ms)

    async def _score(
        self, turn: Scheduler[Array, Any], recent: Array, pause: int, stopped: float, ms: float
    ) -> None:
        """Score the pause; decide how the turn ends unless speech started meanwhile."""
        try:
            result = await turn.submit(recent)
        except EngineError as e:  # overloaded, late, failed: this pause goes by silence
            self.counters["turn_score_errors"] += 1
            log.warning("session %s: turn detection failed: %s", self.session.id, e)
            result = None
        if pause != self._pause:
            return  # the user spoke again: a new pause will be scored
        self.counters["turn_scores"] += 1 if result is not None else 0
        if result is not None:
            self.last_scored_s = result.scored_s
        if result is None:
            self._decision = self._silence(stopped, ms)
        elif result.complete:
            self._decision = Decision("semantic", result.probability, time.monotonic(), ms)
        else:
            self.counters["turn_scores_incomplete"] += 1
            wait_s = self._turn_config("max_wait_s", self.config.max_wait_s)
            self._decision = Decision("timeout", result.probability, stopped + wait_s, ms)
        self._arm()

    def _arm(self) -> None:
        """(Re)start the timer that ends the turn at its decision."""
        decision = self._decision
        if self._speaking or decision is None:
            return
        if not self._finals_due and not self._turn:
            return  # every final of the turn is out and holds no words: nothing to end
        if self._turn_timer is not None:
            self._turn_timer.cancel()
        delay_s = max(0.0, decision.at - time.monotonic())
        self._turn_timer = self.session.spawn(self._end_turn(delay_s, decision), "turn-end")
        self._speculate()

    def _speculate(self) -> None:
        """The turn's text is known (its finals are out) and its end is still pending: its
        reply may start now, held (reply.py)."""
        decision = self._decision
        if decision is None or self._turn_timer is None or self._speaking:
            return
        if self._finals_due or not self._turn:
            return  # the text is not known yet (on_final speculates when it is)
        wait_s = decision.at - time.monotonic()
        if wait_s > 0 and self._turn_config("respond", True):
            self.reply.speculate(self._words, self._turn_received, wait_s=wait_s)

    async def _end_turn(self, delay_s: float, decision: Decision) -> None:
        """Send ``turn.end`` at the decision; the reply follows once the finals are out."""
        await asyncio.sleep(delay_s)
        self._turn_timer = None
        if self._speaking or (not self._finals_due and not self._turn):
            return
        if self._finals_due and self.reply.judging():
            self._held = decision  # speech over a reply: turn.end waits for its words
            return
        self._decision = None
        self.counters[f"turn_ends_{decision.reason}"] += 1
        p = decision.probability
        self.session.emit(
            TurnEnd(
                reason=decision.reason,
                probability=None if p is None else min(1.0, max(0.0, p)),
                audio_ms=decision.audio_ms,
            )
        )
        if self.vision is not None:
            await self.vision.at_turn_end()  # the freshest sight, for the client and the LLM
            if self._speaking:  # the user spoke again meanwhile: the turn goes on
                self.counters["turn_ends_continued"] += 1
                return
        self._ended = True
        if not self._finals_due:
            self._answer()

    def _answer(self) -> None:
        """The ended turn's finals are all out: its words become the reply's question."""
        self._ended = False
        self._turn_start_ms = None  # the next speech starts a new turn
        if not self._turn:
            self.counters["turn_ends_without_words"] += 1
            self._arm_idle(time.monotonic())  # the silence goes on
            return
        text, segments = self._words, self.turn_segments()
        self._turn.clear()
        self.turns += 1
        self._user_took_turn()
        if self._turn_config("respond", True):
            self.reply.answer(text, None, self._turn_received, spoken=True, segments=segments)
        else:
            self.reply.hear(text, segments)

    def stats(self) -> dict[str, Any]:
        return {"turns": self.turns, **self.counters}

    # -- the user's silence after a reply (turn.idle_timeout_s) --------------------------------
    def reply_ended(self, played: float) -> None:
        """The reply lane's reply ended, its audio played out at ``played`` (monotonic s):
        the user's silence is timed from there."""
        self._idle_waiting = True
        self._arm_idle(played)

    def _idle_timeout_s(self) -> float:
        if self.policy == "manual":
            return 0.0  # no turn detection: the client decides when a turn is
        return float(self._turn_config("idle_timeout_s", self.config.idle_timeout_s))

    def _arm_idle(self, since: float) -> None:
        timeout_s = self._idle_timeout_s()
        if not self._idle_waiting or timeout_s <= 0:
            return
        if self._idle_prompts >= self.config.idle_max_prompts:
            return  # it has asked enough: it waits in silence for the user
        self._cancel_idle()
        delay_s = max(0.0, since + timeout_s - time.monotonic())
        self._idle_timer = self.session.spawn(self._idle(delay_s, timeout_s), "turn-idle")

    def _cancel_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _user_took_turn(self) -> None:
        """The user spoke words or typed: the silence is broken, the prompts count anew."""
        self._idle_waiting = False
        self._idle_prompts = 0
        self._cancel_idle()

    async def _idle(self, delay_s: float, timeout_s: float) -> None:
        """The user stayed silent ``timeout_s`` after the reply: the assistant's turn."""
        await asyncio.sleep(delay_s)
        self._idle_timer = None
        busy = self._speaking or self._finals_due or self._turn or self._ended
        if busy or self._turn_timer is not None or self.reply.replying():
            return  # a turn or a reply is under way; its end times the silence again
        self._idle_waiting = False
        self._idle_prompts += 1
        self.counters["turn_ends_idle"] += 1
        self.session.emit(TurnEnd(reason="idle"))
        if self._turn_config("respond", True):
            self.reply.answer(IDLE_PROMPT.format(seconds=timeout_s), None, now_ms(), spoken=False)

    async def close(self) -> None:
        for task in (self._turn_timer, self._score_task, self._idle_timer):
            if task is not None:
                task.cancel()
        self._turn_timer = None
        self._score_task = None
        self._idle_timer = None
