"""The TTS engine on the real Piper voice: intelligible audio (transcribed back by the ASR
engine), one long-lived phonemizer process, streamed chunks, barge-in; and the chunker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support import scaled
from tidegate.engines import models
from tidegate.engines.asr.request import AsrRequest
from tidegate.engines.asr.whisper_onnx import WhisperOnnx
from tidegate.engines.engine import Failed, Ok
from tidegate.engines.scheduler import BatchPolicy, Scheduler
from tidegate.engines.tts import FRAME_SAMPLES, ChunkPolicy, PiperVoice, TextChunker, TtsStream
from tidegate.engines.tts.piper import resample

from ..asr_audio import wer

SENTENCES = (
    "The capital of France is Paris.",
    "Please turn off the lights in the kitchen before you leave.",
    "We will meet again tomorrow morning at nine.",
)

REPLY = "The capital of France is Paris. It is a big city. And"
LONG_REPLY = "Hello there, my friend. This reply keeps going"


@pytest.fixture(scope="module")
def voice(data_dir: Path) -> Iterator[PiperVoice]:
    engine = PiperVoice(models.model_dir(data_dir, "piper-joe") / "en_US-joe-medium.onnx")
    engine.warmup()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def asr(data_dir: Path) -> WhisperOnnx:
    engine = WhisperOnnx(models.model_dir(data_dir, "whisper-tiny-en"))
    engine.load()
    return engine


def _to_16k(audio: np.ndarray) -> np.ndarray:
    return resample(audio.astype(np.float32) / 32768, 48_000, 16_000).astype(np.float32) / 32768


def test_speech_is_intelligible(voice: PiperVoice, asr: WhisperOnnx) -> None:
    """Known sentences, synthesized at 48 kHz and transcribed back by Whisper: WER <= 0.2
    over the passage (one sentence's WER swings on a single merged word: "France is" ->
    "Francis")."""
    outcomes = voice.run_batch(list(SENTENCES), [None] * len(SENTENCES))
    audios = [o.value for o in outcomes if isinstance(o, Ok)]
    assert len(audios) == len(SENTENCES)
    for audio in audios:
        assert audio.dtype == np.int16 and audio.size > 48_000 * 0.8
    passage = np.concatenate(audios)
    result = asr.run_batch([AsrRequest(_to_16k(passage))], [None])[0]
    assert isinstance(result, Ok)
    assert wer(" ".join(SENTENCES), result.value.text) <= 0.2, result.value.text


def test_one_phonemizer_process_for_many_sentences(voice: PiperVoice) -> None:
    """espeak-ng runs as one long-lived process, not one per sentence."""
    pid = voice.phonemizer.pid
    for text in ("One.", "Two, three.", "Four?"):
        assert isinstance(voice.run_batch([text], [None])[0], Ok)
    assert voice.phonemizer.pid == pid and voice.phonemizer.started == 1


def test_bad_text_fails_alone(voice: PiperVoice) -> None:
    """Empty or non-string text fails its own request; the others are answered."""
    out = voice.run_batch(["", "Hello.", 5], [None] * 3)  # type: ignore[list-item]
    assert isinstance(out[0], Failed) and isinstance(out[1], Ok) and isinstance(out[2], Failed)


def test_chunker_cuts_the_first_chunk_early() -> None:
    """The first chunk is cut after a few words or a clause mark; later ones at sentences."""
    c = TextChunker(ChunkPolicy(first_chunk_words=3))
    got = []
    for piece in [
        "The",
        "capital",
        "of",
        "France",
        "is",
        "Paris.",
        "It",
        "is",
        "a",
        "big",
        "city.",
        "And",
    ]:
        got += c.push(piece + " ")
    got += c.flush()
    assert got == ["The capital of", "France is Paris.", "It is a big city.", "And"]
    whole = TextChunker(ChunkPolicy(first_chunk_words=0))
    assert whole.push("Hi there, you. Next") == ["Hi there, you."]


def test_chunks_after_a_short_first_one_grow_until_sentences() -> None:
    """After a first chunk of 2 words the next may be cut after 4, then 8 words (or a mark),
    then at sentence ends only: the audio ahead grows faster than the text it waits for."""
    c = TextChunker(ChunkPolicy(first_chunk_words=2, early_max_words=8))
    text = (
        "The city of Paris has a long and storied history and many famous places to see "
        "for a visitor who comes in the spring or in the autumn of the year. It is big, "
        "and it is old. Come."
    )
    got = [x for word in text.split() for x in c.push(word + " ")] + c.flush()
    assert got == [
        "The city",
        "of Paris has a",
        "long and storied history and many famous places",
        "to see for a visitor who comes in the spring or in the autumn of the year.",
        "It is big, and it is old.",
        "Come.",
    ]


def test_an_open_sentence_is_cut_at_its_last_clause_mark_past_clause_cut_chars() -> None:
    """A sentence that does not end (a runaway list) is cut at its last clause mark once it
    holds ``clause_cut_chars``, so its chunks stay short enough to synthesize while the audio
    ahead plays; with no clause mark it waits for ``max_chunk_chars`` and is cut at a space."""
    policy = ChunkPolicy(first_chunk_words=0, clause_cut_chars=40, max_chunk_chars=80)
    c = TextChunker(policy)
    got = [x for n in range(1, 13) for x in c.push(f"{n} day{'s' if n > 1 else ''}, ")]
    # cut as soon as the buffer holds 40 characters, so past it by at most the last piece
    assert got == [
        "1 day, 2 days, 3 days, 4 days, 5 days, 6 days,",
        "7 days, 8 days, 9 days, 10 days, 11 days,",
    ]
    assert c.flush() == ["12 days,"]
    # a short sentence with a clause mark is not cut at it
    assert TextChunker(policy).push("Yes, it is. And") == ["Yes, it is."]
    # no clause mark: the hard limit, at a space
    words = TextChunker(policy).push("word " * 20)
    assert words == [("word " * 16).strip()] and len(words[0]) <= 80
    with pytest.raises(ValueError, match="clause_cut_chars"):
        ChunkPolicy(clause_cut_chars=300, max_chunk_chars=240)


async def test_stream_speaks_before_the_text_ends(voice: PiperVoice) -> None:
    """Audio frames (20 ms at 48 kHz) start while text is still arriving, and barge-in
    stops the stream at once."""
    scheduler: Scheduler[str, np.ndarray] = Scheduler(voice, BatchPolicy(max_batch_items=1))
    await scheduler.start()
    try:
        stream = TtsStream(scheduler.submit)
        frames: list[np.ndarray] = []
        reader_task = asyncio.get_running_loop().create_task(_read(stream, frames))
        for word in LONG_REPLY.split(" "):
            stream.push(word + " ")
            await asyncio.sleep(0.05)
        for _ in range(200):
            if frames:
                break
            await asyncio.sleep(0.02)
        assert frames, "no audio before the end of the text"
        assert all(f.shape == (FRAME_SAMPLES,) and f.dtype == np.int16 for f in frames)
        stream.interrupt()
        await asyncio.wait_for(reader_task, scaled(2))
        assert stream.interrupted
        n = len(frames)
        await asyncio.sleep(0.1)
        assert len(frames) == n
        await stream.close()
    finally:
        await scheduler.close()


async def _read(stream: TtsStream, frames: list[np.ndarray]) -> None:
    async for frame in stream.frames():
        frames.append(frame)
        await asyncio.sleep(0)  # a real consumer paces at 20 ms; this one only yields


async def test_stream_end_flushes_the_tail(voice: PiperVoice) -> None:
    """end() speaks text that has no sentence end, and the frames then stop."""
    scheduler: Scheduler[str, np.ndarray] = Scheduler(voice, BatchPolicy(max_batch_items=1))
    await scheduler.start()
    try:
        stream = TtsStream(scheduler.submit, policy=ChunkPolicy(first_chunk_words=0))
        stream.push("Good morning")
        stream.end()
        frames = [f async for f in stream.frames()]
        assert len(frames) * 0.02 > 0.4
        assert [c for c, _, _ in stream.chunk_times] == ["Good morning"]
    finally:
        await scheduler.close()
