"""A reply spoken while it is being written: text goes in as the LLM streams it, 20 ms PCM
frames (int16, 48 kHz mono) come out as soon as the first chunk is synthesized.

Chunking (:class:`TextChunker`): text is cut at sentence ends; the first chunk of a reply is
cut early, after ``first_chunk_words`` words or at its first clause mark, so that the first
audio does not wait for (and is not as long to synthesize as) a whole sentence. The chunks
after it may be cut early too, after twice as many words as the one before (2, 4, 8 words from
2) until that passes ``early_max_words``, then at sentences only: a short first chunk
plays out before a whole sentence after it can be written and synthesized (at 4 sessions on
2 CPUs, a 2-word first chunk followed by its sentence left ~1 s of silence in one reply of
four; docs/assistant.md). A sentence still open at ``clause_cut_chars`` is cut at its last
clause mark (a reply that never ends a sentence, a list of "1 day, 2 days, ..." as the small
local model writes, would otherwise wait for ``max_chunk_chars`` and then take longer to
synthesize than the audio ahead of it lasts: gaps of 1.4-2.3 s were measured). A chunk never
exceeds ``max_chunk_chars`` (cut at a space).

Buffers: chunks waiting for synthesis are bounded (``max_pending_chunks``, policy
``coalesce``: a new chunk merges into the newest waiting one); synthesized audio waiting to be
framed is bounded (``max_audio_chunks``, policy ``block``: synthesis waits for the consumer,
so it never runs further ahead than that). ``interrupt()`` (barge-in) drops both at once and
cancels the synthesis task; ``end()`` flushes the text that has no sentence end yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from ..errors import RequestError
from ..runtime import Array
from .piper import OUTPUT_RATE_HZ

FRAME_MS = 20
FRAME_SAMPLES = OUTPUT_RATE_HZ * FRAME_MS // 1000
SENTENCE_END_RE = re.compile(r"[.!?]+[\"')\]]*(?=\s)|\n+")
CLAUSE_END_RE = re.compile(r"[,;:]+(?=\s)")


@dataclass(frozen=True, slots=True)
class ChunkPolicy:
    """Where text is cut into synthesis chunks."""

    first_chunk_words: int = 3  # 0: the first chunk is a whole sentence too
    early_max_words: int = 8  # later chunks are cut early while their word limit is <= this
    clause_cut_chars: int = 100  # an open sentence this long is cut at its last clause mark
    max_chunk_chars: int = 240

    def __post_init__(self) -> None:
        if (
            self.first_chunk_words < 0
            or self.early_max_words < 0
            or self.max_chunk_chars < 16
            or not 0 < self.clause_cut_chars <= self.max_chunk_chars
        ):
            raise ValueError(
                "first_chunk_words >= 0, early_max_words >= 0, max_chunk_chars >= 16 and "
                "0 < clause_cut_chars <= max_chunk_chars"
            )


class TextChunker:
    """Streamed text -> chunks worth synthesizing on their own."""

    def __init__(self, policy: ChunkPolicy | None = None) -> None:
        self.policy = policy or ChunkPolicy()
        self._buf = ""
        self._limit = self.policy.first_chunk_words  # words after which to cut (0: sentences)

    def push(self, text: str) -> list[str]:
        self._buf += text
        out: list[str] = []
        while True:
            cut = self._cut()
            if cut is None:
                return out
            chunk, self._buf = self._buf[:cut].strip(), self._buf[cut:]
            if chunk:
                out.append(chunk)
                self._limit *= 2
                if self._limit > self.policy.early_max_words:
                    self._limit = 0

    def _cut(self) -> int | None:
        buf, p = self._buf, self.policy
        m = SENTENCE_END_RE.search(buf)
        if self._limit:
            c = CLAUSE_END_RE.search(buf)
            words = list(re.finditer(r"\S+(?=\s)", buf))
            ends = [x.end() for x in (m, c) if x is not None]
            if len(words) >= self._limit:
                ends.append(words[self._limit - 1].end())
            if ends:
                return min(ends)
        if m is not None:
            return m.end()
        if len(buf) >= p.clause_cut_chars:
            marks = list(CLAUSE_END_RE.finditer(buf[: p.max_chunk_chars + 1]))
            if marks:
                return marks[-1].end()
        if len(buf) > p.max_chunk_chars:
            space = buf.rfind(" ", 0, p.max_chunk_chars)
            return space if space > 0 else p.max_chunk_chars
        return None

    def flush(self) -> list[str]:
        chunk, self._buf = self._buf.strip(), ""
        return [chunk] if chunk else []


Synthesize = Callable[[str], Awaitable[Array]]


class TtsStream:
    """One reply's speech. ``push`` text, ``end()`` when the text is complete, iterate
    ``frames()`` for 20 ms int16 frames; ``interrupt()`` stops everything at once."""

    def __init__(
        self,
        synthesize: Synthesize,
        *,
        policy: ChunkPolicy | None = None,
        max_pending_chunks: int = 16,
        max_audio_chunks: int = 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_pending_chunks < 1 or max_audio_chunks < 1:
            raise ValueError("max_pending_chunks and max_audio_chunks must be at least 1")
        self._synthesize = synthesize
        self._chunker = TextChunker(policy)
        self._pending: deque[tuple[str, float]] = deque()
        self.max_pending_chunks = max_pending_chunks
        self._audio: asyncio.Queue[Array | None] = asyncio.Queue(max_audio_chunks)
        self._text_ready = asyncio.Event()
        self._ended = False
        self.interrupted = False
        self._task: asyncio.Task[None] | None = None
        self._clock = clock
        self.coalesced = 0  # chunks merged because max_pending_chunks were waiting
        self.first_audio_at: float | None = None
        self.chunk_times: list[tuple[str, float, float]] = []  # text, queued at, audio at

    def push(self, text: str) -> None:
        if self._ended or self.interrupted:
            return
        for chunk in self._chunker.push(text):
            self._queue_chunk(chunk)

    def end(self) -> None:
        """The text is complete: speak what is left."""
        if self._ended or self.interrupted:
            return
        for chunk in self._chunker.flush():
            self._queue_chunk(chunk)
        self._ended = True
        self._text_ready.set()

    def _queue_chunk(self, chunk: str) -> None:
        now = self._clock()
        if len(self._pending) >= self.max_pending_chunks:
            text, queued = self._pending.pop()
            self._pending.append((f"{text} {chunk}", queued))
            self.coalesced += 1
        else:
            self._pending.append((chunk, now))
        self._text_ready.set()

    def interrupt(self) -> None:
        """Barge-in: drop pending text and audio and cancel synthesis now."""
        self.interrupted = True
        self._pending.clear()
        while not self._audio.empty():
            self._audio.get_nowait()
        if self._task is not None:
            self._task.cancel()
        self._text_ready.set()
        with contextlib.suppress(asyncio.QueueFull):
            self._audio.put_nowait(None)

    async def close(self) -> None:
        self.interrupt()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _produce(self) -> None:
        try:
            while not self.interrupted:
                if not self._pending:
                    if self._ended:
                        break
                    self._text_ready.clear()
                    await self._text_ready.wait()
                    continue
                chunk, queued = self._pending.popleft()
                try:
                    audio = await self._synthesize(chunk)
                except RequestError:  # e.g. a chunk of bare punctuation: nothing to say
                    continue
                if self.interrupted:
                    return
                self.chunk_times.append((chunk, queued, self._clock()))
                await self._audio.put(audio)
        finally:
            if not self.interrupted:
                await self._audio.put(None)

    async def frames(self) -> AsyncIterator[Array]:
        """20 ms frames of int16 samples at 48 kHz (the last one zero-padded)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._produce(), name="tts-produce")
        try:
            while True:
                audio = await self._audio.get()
                if audio is None or self.interrupted:
                    break
                for start in range(0, audio.size, FRAME_SAMPLES):
                    frame = audio[start : start + FRAME_SAMPLES]
                    if frame.size < FRAME_SAMPLES:
                        frame = np.pad(frame, (0, FRAME_SAMPLES - frame.size))
                    if self.first_audio_at is None:
                        self.first_audio_at = self._clock()
                    yield frame
                    if self.interrupted:
                        return
            task = self._task
            if task is not None and task.done() and not task.cancelled():
                exc = task.exception()
                if exc is not None:
                    raise exc
        finally:
            if self._task is not None and not self._task.done():
                self._task.cancel()
