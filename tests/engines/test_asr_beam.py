"""Whisper's beam search (:func:`tidegate.engines.asr.greedy.batch_decode` with ``beams``),
checked on a small language model whose answers are known, then on the real tiny.en.

The small model is a decoder with the real one's interface (tokens, KV cache in, logits and
the grown cache out) that reads each row's history back from its own cache only: a beam
whose cache rows were not moved with it would see another beam's history and answer for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from tidegate.engines import models
from tidegate.engines.asr.greedy import (
    Decoded,
    DecodeOptions,
    Resident,
    Vocabulary,
    batch_decode,
)
from tidegate.engines.asr.request import AsrRequest, AsrResult
from tidegate.engines.asr.whisper_onnx import WhisperOnnx
from tidegate.engines.engine import Ok
from tidegate.engines.errors import EngineError

from .asr_audio import espeak, wer

A, B, C, D, X = 0, 1, 2, 3, 4  # words
EOT, SOT, NO_TS, NO_SPEECH, SOT_PREV = 5, 6, 7, 8, 9
V = 10
VOCAB = Vocabulary(
    eot=EOT,
    sot=SOT,
    no_timestamps=NO_TS,
    no_speech=NO_SPEECH,
    suppress=np.array([SOT, NO_TS, NO_SPEECH, SOT_PREV]),
    suppress_begin=np.array([EOT]),
    sot_prev=SOT_PREV,
)

# After the prompt (SOT NO_TS), what the toy model says next, by the words so far. Greedy
# takes A (0.5) and then finds nothing sure; the best sentence is B C (0.4, 0.95, 0.95).
TABLE: dict[tuple[int, ...], dict[int, float]] = {
    (): {A: 0.5, B: 0.4, D: 0.1},
    (A,): {A: 0.19, B: 0.19, C: 0.19, D: 0.19, X: 0.19, EOT: 0.05},
    (B,): {C: 0.95, EOT: 0.05},
    (B, C): {EOT: 0.95, D: 0.05},
    (D,): {EOT: 1.0},
}
SURE_END = {EOT: 0.9, X: 0.1}  # any other history: end


def toy_decoder(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The real decoder's contract: ``present_k`` is ``past_k`` with the fed tokens
    appended on the time axis. The history is written into the cache (as its token ids) and
    read back from it, never from anywhere else."""
    tokens = feeds["tokens"]
    past = feeds["past_k"]
    n, w = tokens.shape
    L, _, H, _, dh = past.shape
    assert feeds["cross_k_0"].shape[0] == n and past.shape[1] == n, "cache and batch disagree"
    new = np.zeros((L, n, H, w, dh), dtype=np.float32)
    new[..., 0] = tokens[None, :, None, :]
    present = np.concatenate([past, new], axis=3)
    logits = np.full((n, w, V), -30.0, dtype=np.float32)
    for r in range(n):
        history = [int(t) for t in present[0, r, 0, :, 0]]
        for j in range(w):
            seen = history[: past.shape[3] + j + 1]
            if SOT not in seen:
                continue
            words = tuple(seen[seen.index(SOT) + 2 :])  # after SOT NO_TS
            for t, p in TABLE.get(words, SURE_END).items():
                logits[r, j, t] = math.log(p)
    return {"logits": logits, "present_k": present, "present_v": present.copy()}


def decode(
    prefixes: Sequence[Sequence[int]],
    beams: Sequence[int],
    budgets: Sequence[int] | None = None,
    prompts: Sequence[Sequence[int]] | None = None,
    resident: Resident | None = None,
) -> list[Decoded | None]:
    n = len(prefixes)
    cross = np.zeros((1, n, 1, 2, 3), dtype=np.float32)  # L, batch, heads, dh, ctx
    return batch_decode(
        toy_decoder,
        cross,
        cross,
        prefixes,
        budgets or [10] * n,
        [4] * n,
        VOCAB,
        prompts=prompts,
        beams=beams,
        resident=resident,
    )


def test_greedy_takes_the_likeliest_token_and_beams_the_likeliest_sentence() -> None:
    (greedy,) = decode([[]], [1])
    assert greedy is not None and greedy.tokens[0] == A
    (beam,) = decode([[]], [3])
    assert beam is not None and beam.tokens == [B, C], beam
    expected = math.log(0.4) + math.log(0.95) + math.log(0.95)  # EOT's included
    assert beam.logprob == pytest.approx(expected, abs=1e-5)
    assert beam.generated == 2
    assert beam.logprob / beam.generated > greedy.logprob / greedy.generated


@pytest.mark.parametrize("gpu_layout", [False, True])
def test_rows_of_one_batch_keep_their_own_search(gpu_layout: bool) -> None:
    """Greedy rows, beam rows, forced prefixes and context prompts in one batch: each row
    decodes as it would alone (the slots' caches and cross tensors follow their rows),
    whether ended rows leave the batch at once (the CPU) or keep idle slots (a GPU: a
    ``resident`` is given)."""

    rows = [
        ([], 1, []),
        ([], 4, []),
        ([B], 2, []),  # forced B: C, then the end
        ([A], 3, [X, X, X]),  # a prompt: the row's forced tokens outlast the others'
        ([], 2, [D]),
    ]
    alone = [decode([p], [b], prompts=[q])[0] for p, b, q in rows]
    together = decode(
        [p for p, _, _ in rows],
        [b for _, b, _ in rows],
        prompts=[q for *_, q in rows],
        resident=(lambda a: a) if gpu_layout else None,
    )
    for a, t in zip(alone, together, strict=True):
        assert a is not None and t is not None
        assert (t.tokens, t.generated) == (a.tokens, a.generated)
        assert t.logprob == pytest.approx(a.logprob, abs=1e-5)
    assert together[1] is not None and together[2] is not None
    assert together[1].tokens == [B, C] and together[2].tokens == [B, C]


def test_ended_rows_keep_idle_slots_on_a_gpu() -> None:
    """Greedy rows ending one by one, with a ``resident`` (a GPU): the batch keeps its
    layout (the cross tensors go to the device once) until fewer than a quarter of its
    slots are live."""
    uploads: list[int] = []

    def resident(a: np.ndarray) -> np.ndarray:
        uploads.append(a.shape[0])  # one layer's keys or values: [batch, heads, ...]
        return a

    prefixes = [[D], [B], [A], [D], [B], [A], [D], [B]]  # D ends first, then B C, then A ...
    out = decode(prefixes, [1] * 8, resident=resident)
    alone = decode(prefixes, [1] * 8)
    assert [d.tokens for d in out] == [d.tokens for d in alone]  # type: ignore[union-attr]
    assert uploads[:2] == [8, 8]  # k and v of the toy's one layer, once
    assert all(n < 2 for n in uploads[2:]), uploads  # only once under a quarter live


def test_the_budget_ends_every_beam() -> None:
    """A budget of one token ends every live beam after it, adding no EOT probability; the
    ranking then takes the likeliest single token."""
    (beam,) = decode([[]], [3], budgets=[1])
    assert beam is not None and beam.tokens == [A] and beam.generated == 1
    assert beam.logprob == pytest.approx(math.log(0.5), abs=1e-5)


def test_options_carry_the_beam_width_on_the_wire() -> None:
    o = DecodeOptions(beam_size=5)
    assert DecodeOptions.from_vector(o.vector()) == o
    old = o.vector()[:5]  # a client from before beam_size: greedy
    assert DecodeOptions.from_vector(old).beam_size == 1
    with pytest.raises(ValueError, match="beam_size"):
        DecodeOptions(beam_size=0)


@pytest.fixture(scope="module")
def beam_asr(data_dir: Path) -> WhisperOnnx:
    engine = WhisperOnnx(models.model_dir(data_dir, "whisper-tiny-en"), final_beam_size=4)
    engine.load()
    return engine


def test_finals_search_beams_and_partials_stay_greedy_in_one_batch(
    beam_asr: WhisperOnnx, tmp_path: Path
) -> None:
    """tiny.en, real speech: a final (beam search) and partials (greedy) of the same audio
    in one batch; each answers as it does alone, and the final is the sentence."""
    sentence = "Please open the window in the kitchen."
    audio = espeak(sentence, tmp_path)

    def one(*requests: AsrRequest) -> list[AsrResult]:
        out = beam_asr.run_batch(list(requests), [None] * len(requests))
        assert all(isinstance(o, Ok) for o in out), out
        return [o.value for o in out if isinstance(o, Ok)]

    (final_alone,) = one(AsrRequest(audio, final=True))
    (partial_alone,) = one(AsrRequest(audio[: len(audio) * 2 // 3]))
    final, partial = one(AsrRequest(audio, final=True), AsrRequest(audio[: len(audio) * 2 // 3]))
    assert wer(sentence, final.text) <= 0.15, final.text
    assert (final.tokens, partial.tokens) == (final_alone.tokens, partial_alone.tokens)
    # Scores move a little with the batch (the int8 projection quantizes its input per
    # tensor, the whole batch at once); the words do not.
    assert final.avg_logprob == pytest.approx(final_alone.avg_logprob, abs=0.05)


def test_a_beam_width_out_of_range_is_refused(data_dir: Path) -> None:
    with pytest.raises(EngineError, match="final_beam_size"):
        WhisperOnnx(models.model_dir(data_dir, "whisper-tiny-en"), final_beam_size=17)


def test_idle_slots_change_no_word_on_the_real_model(beam_asr: WhisperOnnx, assets: Path) -> None:
    """tiny.en, five stretches of the recorded clip that end at different steps, decoded
    with ended rows idle in the batch and with ended rows leaving it at once: the same
    hypotheses (the GPU's layout, run here on the CPU)."""
    from tidegate.bench.scenarios.asr import read_wav
    from tidegate.engines.asr.greedy import transcribe

    speech = read_wav(assets / "two_cities.wav")
    audios = [speech[k * 16_000 : k * 16_000 + 8_000 * (k + 1)] for k in range(5)]
    enc, dec, vocab = beam_asr._encoder, beam_asr._decoder, beam_asr.vocab
    assert enc is not None and dec is not None and vocab is not None
    options = [DecodeOptions()] * len(audios)
    prefixes: list[list[int]] = [[]] * len(audios)
    idle, _, _ = transcribe(
        enc.run, dec.run, audios, prefixes, options, vocab, resident=lambda a: a
    )
    leave, _, _ = transcribe(enc.run, dec.run, audios, prefixes, options, vocab)
    assert len({len(d.tokens) for d in leave if d}) > 2  # the rows did end at different steps
    assert [d.tokens for d in idle if d] == [d.tokens for d in leave if d]
