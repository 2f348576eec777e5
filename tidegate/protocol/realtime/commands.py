"""Requests of the Realtime dialect that tidegate's own client messages cannot carry.

The translator emits these beside tidegate client messages (in order, in one stream). The
transport shell hands each to the session runtime; a runtime that does not serve one answers
with tidegate's ``error`` (code ``unsupported``, ``ref`` = the command's ``id``), which the
translator turns into the client's ``error`` with the ``event_id`` that asked. Nothing is
dropped in silence.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


@dataclasses.dataclass(frozen=True, slots=True)
class Command:
    """A request of the dialect for the session runtime; the runtime's lanes take it like a
    tidegate client message (their dispatch tables are keyed by type)."""

    TYPE: ClassVar[str] = "command"  # the client event behind it, for refusals
    id: str  # echoed as `ref` by the runtime's replies and errors


@dataclasses.dataclass(frozen=True, slots=True)
class CommitInputAudio(Command):
    """``input_audio_buffer.commit``: end the user's turn at the audio sent so far (manual
    turns, ``turn_detection: null``; with server VAD, a forced end of turn)."""

    TYPE: ClassVar[str] = "input_audio_buffer.commit"


@dataclasses.dataclass(frozen=True, slots=True)
class ClearInputAudio(Command):
    """``input_audio_buffer.clear``: drop the audio sent since the last commit."""

    TYPE: ClassVar[str] = "input_audio_buffer.clear"


@dataclasses.dataclass(frozen=True, slots=True)
class CreateResponse(Command):
    """``response.create`` with per-response overrides (``options``: instructions,
    output_modalities, max_output_tokens, tools, tool_choice, voice, output_format,
    metadata); ``text`` is the user's pending text, as in tidegate's ``response.create``."""

    TYPE: ClassVar[str] = "response.create"
    text: str | None
    options: dict[str, Any]
