"""Turn-taking: when the user's turn ends, and what a turn starts.

The user's turn ends when the VAD has reported the end of speech, the ASR final of every
segment is out, and ``assistant_end_of_turn_s`` have passed since the end of speech with no
new speech. The turn's finals, joined, become the user message the reply lane answers.
``input.text`` is a typed turn: it ends at once. Speech that starts while a reply is in
progress is a barge-in: the reply lane cuts it.

It hears the audio lane through the :class:`~tidegate.pipelines.audio.SpeechListener` port,
and asks the vision lane (when the mode has one) for the freshest sight at each turn's end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Protocol

from tidegate.media import MediaPeer
from tidegate.protocol.messages import InputText

from .audio import now_ms
from .config import TurnConfig
from .port import Handler, SessionPort


class Replier(Protocol):
    """The reply lane, as turn-taking sees it."""

    def answer(self, text: str, ref: str | None, received_ms: float, *, spoken: bool) -> None: ...

    def barge_in(self) -> None: ...


class Looker(Protocol):
    """The vision lane, as turn-taking sees it."""

    async def at_turn_end(self) -> None: ...


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
    ) -> None:
        self.session = session
        self.config = config
        self.reply = reply
        self.vision = vision
        self.turns = 0
        self._speaking = False  # between the VAD's start and end of speech
        self._turn: list[str] = []
        self._turn_received = 0.0
        self._stopped_at = 0.0
        self._turn_timer: asyncio.Task[Any] | None = None

    def handlers(self) -> Mapping[type[Any], Handler]:
        return {InputText: self._text}

    def start_media(self, peer: MediaPeer) -> None:
        """Nothing: turns hear the audio lane, not the media."""

    async def _text(self, msg: InputText) -> None:
        if self.vision is not None:
            await self.vision.at_turn_end()  # a typed turn ends here
        self.reply.answer(msg.text, msg.id, now_ms(), spoken=False)

    # -- SpeechListener (the audio lane) ----------------------------------------------------
    def on_speech_started(self) -> None:
        self._speaking = True
        if self._turn_timer is not None:
            self._turn_timer.cancel()  # the turn goes on
            self._turn_timer = None
        self.reply.barge_in()

    def on_speech_stopped(self) -> None:
        self._speaking = False
        self._stopped_at = time.monotonic()

    def on_final(self, text: str, received: float, finals_pending: int) -> None:
        self._turn.append(text)
        self._turn_received = received
        if not self._speaking and finals_pending == 0:  # no speech or final pending
            if self._turn_timer is not None:
                self._turn_timer.cancel()
            wait_s = self._stopped_at + self.config.end_of_turn_s
            self._turn_timer = self.session.spawn(
                self._end_turn(max(0.0, wait_s - time.monotonic())), "turn-end"
            )

    async def _end_turn(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        self._turn_timer = None
        if self._speaking or not self._turn:
            return
        text = " ".join(self._turn)
        self._turn.clear()
        if self.vision is not None:
            await self.vision.at_turn_end()  # the freshest sight, for the client and the LLM
            if self._speaking:  # the user spoke again meanwhile: the turn goes on
                self._turn.insert(0, text)
                return
        self.turns += 1
        self.reply.answer(text, None, self._turn_received, spoken=True)

    def stats(self) -> dict[str, Any]:
        return {"turns": self.turns}

    async def close(self) -> None:
        if self._turn_timer is not None:
            self._turn_timer.cancel()
            self._turn_timer = None
