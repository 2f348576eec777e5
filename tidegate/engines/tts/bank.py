"""The voices a server speaks with, by language: the TTS engine it runs (a Piper voice) and,
started the first time a reply needs one, the espeak-ng voices of the registry
(:mod:`.voices`) for the other languages. The reply lane asks :meth:`VoiceBank.pick` for the
voice of a reply's language (a session may name its own per language) and
:meth:`VoiceBank.scheduler` for the engine that speaks it.

Bounds: at most one engine per registry row (:data:`.voices.VOICES`), each behind its own
:class:`~tidegate.engines.scheduler.Scheduler` with the TTS engine's batch policy (its queue
bound and refusal). An espeak-ng voice costs no model memory (one short ``espeak-ng`` process
per request), so they are kept until the server closes. Owned by the engine service, which
closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ..errors import EngineError
from ..scheduler import BatchPolicy, Scheduler
from .espeak_voice import EspeakVoice
from .voices import VOICES, Voice, voice_for

#: a session's ``voices`` value that asks for no voice in a language (text-only replies)
NO_VOICE = "none"


class VoiceBank:
    """See the module docstring. ``default`` is the running TTS engine's scheduler and
    ``default_model`` its model (``piper-joe``); ``espeak`` overrides the check that espeak-ng
    is installed (None: look for it)."""

    def __init__(
        self,
        default: Scheduler[str, Any] | None,
        default_model: str | None,
        *,
        policy: BatchPolicy | None = None,
        espeak: bool | None = None,
    ) -> None:
        self.default = default
        self.default_model = default_model
        self.policy = policy or BatchPolicy()
        self._espeak = espeak
        self.prepared = frozenset({default_model} if default_model and default else ())
        self._started: dict[str, Scheduler[str, Any]] = {}
        self._starting: dict[str, asyncio.Task[Scheduler[str, Any]]] = {}
        self._closed = False

    def names(self, language: str) -> list[str]:
        """The voices a session may name for ``language`` (the registry's rows this server
        can speak), best first."""
        out = []
        for v in VOICES:
            if v.language != language.strip().lower():
                continue
            if v.kind == "piper" and v.name not in self.prepared:
                continue
            out.append(v.name)
        return out

    def pick(self, language: str | None, chosen: Mapping[str, str] | None = None) -> Voice | None:
        """The voice for a reply in ``language``: the session's choice for it (``chosen``,
        its ``voices`` config; ``none``: no voice), else the registry's best; None: no voice
        (reply in text only). An unknown ``language`` (None) gets the default voice."""
        if language is None:
            if self.default is None or self.default_model is None:
                return None
            row = next((v for v in VOICES if v.name == self.default_model), None)
            return row or Voice("", "piper", self.default_model)
        code = language.strip().lower()
        name = (chosen or {}).get(code)
        if name == NO_VOICE:
            return None
        if name is not None:
            row = next((v for v in VOICES if v.language == code and v.name == name), None)
            if row is not None and (row.kind == "espeak-ng" or row.name in self.prepared):
                return row
        return voice_for(code, prepared=self.prepared, espeak=self._espeak)

    async def scheduler(self, voice: Voice) -> Scheduler[str, Any]:
        """The running engine that speaks ``voice`` (an espeak-ng voice starts on first use;
        concurrent callers share the start)."""
        if voice.kind == "piper":
            if self.default is None or voice.name != self.default_model:
                raise EngineError(f"tts: voice {voice.name!r} is not running")
            return self.default
        if self._closed:
            raise EngineError("tts: the voices are closed")
        running = self._started.get(voice.name)
        if running is not None:
            return running
        task = self._starting.get(voice.name)
        if task is None:
            task = asyncio.ensure_future(self._start(voice.name))
            self._starting[voice.name] = task  # owned: close() cancels and awaits it
        return await asyncio.shield(task)

    async def _start(self, name: str) -> Scheduler[str, Any]:
        scheduler: Scheduler[str, Any] = Scheduler(EspeakVoice(name), self.policy)
        try:
            await scheduler.start()
        except BaseException:
            self._starting.pop(name, None)
            await scheduler.close()
            raise
        self._started[name] = scheduler
        self._starting.pop(name, None)
        return scheduler

    def stats(self) -> dict[str, Any]:
        return {name: s.stats() for name, s in self._started.items()}

    async def close(self) -> None:
        self._closed = True
        starting = list(self._starting.values())
        for task in starting:
            task.cancel()
        await asyncio.gather(*starting, return_exceptions=True)  # nothing of theirs runs
        self._starting.clear()
        for scheduler in self._started.values():
            await scheduler.close()
        self._started.clear()
