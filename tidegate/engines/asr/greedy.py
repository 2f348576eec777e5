"""Whisper's batched decoding (greedy, or a beam search for the rows that ask for one: a
final), the one copy of it: the local engine
(:mod:`.whisper_onnx`) runs it with its own encoder and decoder, and the Triton model
``FOLDER.transcribe`` runs it on the server (``tidegate models export-triton`` copies this file
and :mod:`.features` beside that model's ``model.py``; scripts/pytriton_serve.py imports them).
So this module needs numpy and the standard library only (no tidegate import at run time).

A batch runs the encoder once for every request in it, on a shortened audio context: the
longest request's audio plus ``ctx_margin_s``, at least ``min_ctx_s``, rounded up to
``ctx_step_s`` (not Whisper's fixed 30 s: the cost follows the audio). The floor matters:
on a 1 s utterance with only 5 s of context, tiny.en repeats itself ("No matter. No matter.
No ..."); with 10 s it does not (docs/asr.md). Shorter requests are padded with silence to that
length, as Whisper itself pads to 30 s. The decoder then steps all requests together: one
call per token for the whole batch (forced prefix tokens common to every row go in one call),
finished rows leaving the batch. A hypothesis that starts repeating itself (a span of at
least ``loop_min_tokens`` twice in a row, or a shorter one :data:`SHORT_LOOP_COPIES` times:
tiny.en loops on short audio padded with silence, and on echo) ends there, without the copies.
A row whose options ask for ``beam_size`` > 1 is decoded by Whisper's beam search in the same
steps, its beams side by side in the decoder's batch (:func:`batch_decode`).

Languages: each row carries a language token (:data:`LANG_AUTO` to detect it, :data:`LANG_NONE`
on an English-only model, which has no language token). A multilingual row's prompt is
``<|startoftranscript|> <|xx|> <|transcribe|> <|notimestamps|>``; the logits after
``<|startoftranscript|>`` (the first decoder position, where Whisper also reads its no-speech
probability) give the language distribution: a softmax over the language tokens only, as
Whisper's ``detect_language``. When some row of the batch must detect its language, the first
decoder call feeds ``<|startoftranscript|>`` alone, the language is the argmax there, and the
rest of the prompt follows in one more call (KV cache kept): detection costs one decoder step
of one token, nothing else. Every multilingual row reports the probability of the language it
was decoded in (the detected one, or the one asked for).

The Triton model's tensors (:data:`TRANSCRIBE_INPUTS`, :data:`TRANSCRIBE_OUTPUTS`; the first
axis is the batch, padded rows with their lengths beside them): :class:`Transcriber` turns
the requests of one server-side batch into one :func:`transcribe` call.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if __package__:
    from .features import HOP_SAMPLES, SAMPLE_RATE_HZ, log_mel
else:  # copied beside a Triton model.py, or loaded by path (pytriton_serve.py)
    from features import HOP_SAMPLES, SAMPLE_RATE_HZ, log_mel  # type: ignore[no-redef]

if TYPE_CHECKING:
    from ..runtime import Array
    from ..signature import Signature

ENCODER_FRAMES_PER_S = 50
MAX_AUDIO_CTX = 1500
MAX_TEXT_CTX = 448
MAX_PREFIX = MAX_TEXT_CTX // 2
#: previous-text tokens kept as a context prompt (Whisper keeps up to 223; a short one keeps
#: a batch's rows close in length: see batch_decode)
MAX_PROMPT = 64
#: the widest beam search a request may ask for (Whisper's default is 5)
MAX_BEAM = 16
#: on a GPU, a decoder batch keeps the slots of ended rows until fewer than this share is
#: live (docs/asr.md: on an H200 the copies of the cross tensors were 92 % of a batch's
#: decoding; on the CPU idle rows cost their compute, and streaming's rows end far apart)
KEEP_DEAD_FRACTION = 0.25

Run = Callable[[Mapping[str, "Array"]], Mapping[str, "Array"]]
#: a runtime's copy of an array where the model runs (:meth:`OnnxModel.resident`)
Resident = Callable[["Array"], Any]

#: The Triton transcribe model's inputs: name, numpy dtype, dims after the batch axis.
TRANSCRIBE_INPUTS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("audio", "float32", (-1,)),  # 16 kHz mono, rows padded with zeros
    ("audio_len", "int64", (1,)),  # samples of each row
    ("prefix", "int64", (-1,)),  # forced tokens, rows padded (at least one column)
    ("prefix_len", "int64", (1,)),
    # ctx_margin_s, ctx_step_s, min_ctx_s, max_tokens_per_s, loop_min_tokens, beam_size
    ("options", "float32", (6,)),
    ("language", "int64", (1,)),  # language token, LANG_AUTO (-1) or LANG_NONE (0)
)
#: Its outputs: the hypothesis (prefix included, rows padded with -1) and its evidence.
TRANSCRIBE_OUTPUTS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("tokens", "int64", (-1,)),
    ("token_count", "int64", (1,)),
    ("logprob", "float64", (1,)),  # sum over the generated tokens (EOT included)
    ("generated", "int64", (1,)),
    ("no_speech_prob", "float64", (1,)),
    ("audio_ctx", "int64", (1,)),  # encoder frames the batch ran on
    ("timings_ms", "float64", (2,)),  # encode, decode
    ("language", "int64", (1,)),  # the language token decoded with (0: English-only model)
    ("language_prob", "float64", (1,)),
)

LANG_AUTO = -1  # a row's language token: detect it
LANG_NONE = 0  # an English-only model's rows: no language token in the prompt


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """How one request is decoded (the engine's settings; sent with each Triton request)."""

    ctx_margin_s: float = 5.0
    ctx_step_s: float = 1.0
    min_ctx_s: float = 10.0
    max_tokens_per_s: float = 8.0
    loop_min_tokens: int = 4
    #: 1: greedy; more: a beam search of that width (:func:`batch_decode`)
    beam_size: int = 1

    def __post_init__(self) -> None:
        if self.ctx_margin_s < 0 or self.ctx_step_s <= 0 or self.max_tokens_per_s <= 0:
            raise ValueError("ctx_margin_s >= 0, ctx_step_s > 0 and max_tokens_per_s > 0")
        if not 1 <= self.beam_size <= MAX_BEAM:
            raise ValueError(f"beam_size: 1 to {MAX_BEAM}, got {self.beam_size}")

    def vector(self) -> Array:
        return np.array(
            [
                self.ctx_margin_s,
                self.ctx_step_s,
                self.min_ctx_s,
                self.max_tokens_per_s,
                self.loop_min_tokens,
                self.beam_size,
            ],
            dtype=np.float32,
        )

    @classmethod
    def from_vector(cls, v: Array) -> DecodeOptions:
        a = [float(x) for x in np.asarray(v, dtype=np.float64).reshape(-1)]
        if len(a) == 5:  # a client from before beam_size: greedy
            a.append(1.0)
        if len(a) != 6:
            raise ValueError(f"options: 6 values expected, got {len(a)}")
        # float32 on the wire: round back to what the engine was configured with.
        r = [round(x, 6) for x in a]
        return cls(r[0], r[1], r[2], r[3], round(r[4]), round(r[5]))


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """The special tokens and the suppressed ones, from the model folder's files."""

    eot: int
    sot: int
    no_timestamps: int
    no_speech: int
    suppress: Array  # never generated: configured suppressions, every special but EOT
    suppress_begin: Array  # not as the first generated token
    language_ids: Array = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    transcribe: int = -1  # <|transcribe|> (multilingual models only)
    sot_prev: int = -1  # <|startofprev|>: a context prompt (previous text) follows it
    #: the languages detection chooses among (the deployment's ``asr_languages``); None: all
    detect_ids: Array | None = None

    def detect_among(self, language: int) -> Array:
        """The language tokens whose softmax gives ``language``'s probability: the detection
        set when it holds it, else every language."""
        ids = self.detect_ids
        if ids is None or (language != LANG_AUTO and not np.any(ids == language)):
            return self.language_ids
        return ids

    @property
    def multilingual(self) -> bool:
        return len(self.language_ids) > 0

    def takes(self, language: int) -> bool:
        """Whether a row may ask for ``language`` (a token of this model, or auto/none)."""
        if language in (LANG_AUTO, LANG_NONE):
            return language == LANG_AUTO or not self.multilingual
        return self.multilingual and bool(np.any(self.language_ids == language))

    def prompt(self, language: int) -> list[int]:
        """The forced start of a row decoded in ``language`` (a language token, or
        :data:`LANG_NONE` on an English-only model)."""
        if not self.multilingual:
            return [self.sot, self.no_timestamps]
        if language <= 0:
            raise ValueError("a multilingual model's row needs a language token")
        return [self.sot, language, self.transcribe, self.no_timestamps]

    @classmethod
    def from_folder(cls, folder: Path, vocab_size: int) -> Vocabulary:
        tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        ids = {t["content"]: int(t["id"]) for t in tok.get("added_tokens", [])}
        for name in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"):
            if name not in ids:
                raise ValueError(f"{folder / 'tokenizer.json'}: no token {name!r}")
        eot = ids["<|endoftext|>"]
        no_speech = ids.get("<|nospeech|>", ids.get("<|nocaptions|>"))
        if no_speech is None:
            raise ValueError(f"{folder / 'tokenizer.json'}: no <|nospeech|> or <|nocaptions|>")
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        banned = {int(i) for i in config.get("suppress_ids", []) if int(i) >= 0}
        banned |= set(range(eot + 1, vocab_size))
        begin = {int(i) for i in config.get("suppress_ids_begin", [eot])} | {eot}
        multilingual = vocab_size >= 51_865  # Whisper's rule (tiny.en: 51,864)
        langs = [int(i) for i in config.get("lang_ids", [])] if multilingual else []
        if multilingual and (not langs or "<|transcribe|>" not in ids):
            raise ValueError(f"{folder}: a multilingual model without lang_ids or <|transcribe|>")
        return cls(
            eot=eot,
            sot=ids["<|startoftranscript|>"],
            no_timestamps=ids["<|notimestamps|>"],
            no_speech=no_speech,
            suppress=np.array(sorted(banned), dtype=np.int64),
            suppress_begin=np.array(sorted(begin), dtype=np.int64),
            language_ids=np.array(langs, dtype=np.int64),
            transcribe=ids.get("<|transcribe|>", -1),
            sot_prev=ids.get("<|startofprev|>", -1),
        )


@dataclass(slots=True)
class Decoded:
    """One row's hypothesis: ``tokens`` (prefix included), the summed log-probability of the
    generated tokens, how many were generated, and the no-speech probability."""

    tokens: list[int]
    logprob: float
    generated: int
    no_speech: float
    language: int = LANG_NONE  # the language token it was decoded with
    language_prob: float = 1.0


def audio_context(
    samples: int, ctx_margin_s: float, ctx_step_s: float, min_ctx_s: float = 0.0
) -> int:
    """Encoder frames (20 ms) for ``samples`` of audio: the audio and a margin, at least
    ``min_ctx_s``, rounded up to ``ctx_step_s``, at most 30 s."""
    seconds = max(samples / SAMPLE_RATE_HZ + ctx_margin_s, min_ctx_s)
    steps = max(1, math.ceil(seconds / ctx_step_s - 1e-9))
    return min(MAX_AUDIO_CTX, round(steps * ctx_step_s * ENCODER_FRAMES_PER_S))


def encoder_input(audios: Sequence[Array], options: Sequence[DecodeOptions]) -> tuple[Array, int]:
    """The encoder's ``mel`` for a batch (on the longest context any row asks for) and that
    context in encoder frames."""
    ctx = max(
        audio_context(len(a), o.ctx_margin_s, o.ctx_step_s, o.min_ctx_s)
        for a, o in zip(audios, options, strict=True)
    )
    n = ctx * 2 * HOP_SAMPLES
    mel = np.stack([log_mel(a, n) for a in audios])  # each padded with silence to n
    return mel, ctx


def transcribe(
    encoder: Run,
    decoder: Run,
    audios: Sequence[Array],
    prefixes: Sequence[Sequence[int]],
    options: Sequence[DecodeOptions],
    vocab: Vocabulary,
    cancelled: Callable[[int], bool] | None = None,
    languages: Sequence[int] | None = None,
    prompts: Sequence[Sequence[int]] | None = None,
    resident: Resident | None = None,
) -> tuple[list[Decoded | None], int, dict[str, float]]:
    """Encode and decode a batch (greedy, or a beam search where a row's options ask): one
    hypothesis per row (None for a row whose ``cancelled(row)`` became true), the audio
    context, and the timings. ``languages``: a
    language token per row (:data:`LANG_AUTO` detects it; default: :data:`LANG_AUTO` on a
    multilingual model, :data:`LANG_NONE` on an English-only one). ``prompts``: per row, the
    tokens of the text that came before (Whisper's previous-text context; at most
    :data:`MAX_PROMPT` are kept, the newest). ``resident``: see :func:`batch_decode`."""
    prompts = [list(p)[-MAX_PROMPT:] if p else [] for p in (prompts or [()] * len(audios))]
    t0 = time.perf_counter()
    mel, ctx = encoder_input(audios, options)
    out = encoder({"mel": mel})
    t1 = time.perf_counter()
    budgets = [
        min(
            MAX_TEXT_CTX - 4 - len(p) - (len(c) + 1 if c else 0) - 1,
            int(len(a) / SAMPLE_RATE_HZ * o.max_tokens_per_s) + 8,
        )
        for a, p, c, o in zip(audios, prefixes, prompts, options, strict=True)
    ]
    decoded = batch_decode(
        decoder,
        out["cross_k"],
        out["cross_v"],
        prefixes,
        budgets,
        [o.loop_min_tokens for o in options],
        vocab,
        cancelled,
        languages,
        prompts,
        [o.beam_size for o in options],
        resident,
    )
    t2 = time.perf_counter()
    return decoded, ctx, {"encode": (t1 - t0) * 1000, "decode": (t2 - t1) * 1000}


def transcribe_by_context(
    encoder: Run,
    decoder: Run,
    audios: Sequence[Array],
    prefixes: Sequence[Sequence[int]],
    options: Sequence[DecodeOptions],
    vocab: Vocabulary,
    cancelled: Callable[[int], bool] | None = None,
    languages: Sequence[int] | None = None,
    prompts: Sequence[Sequence[int]] | None = None,
    resident: Resident | None = None,
) -> list[tuple[Decoded | None, int, dict[str, float]]]:
    """:func:`transcribe` with the rows grouped by their own audio context: each group is
    encoded and decoded on its own, so a short row never pays the encoder for the longest
    row of the batch. Per row: its hypothesis (None: cancelled), its audio context, the
    timings of its group (``groups``: how many there were)."""
    groups: dict[int, list[int]] = {}
    for row, (a, o) in enumerate(zip(audios, options, strict=True)):
        ctx = audio_context(len(a), o.ctx_margin_s, o.ctx_step_s, o.min_ctx_s)
        groups.setdefault(ctx, []).append(row)
    out: dict[int, tuple[Decoded | None, int, dict[str, float]]] = {}
    for group in groups.values():

        def gone(k: int, group: list[int] = group) -> bool:
            return cancelled is not None and cancelled(group[k])

        decoded, ctx, timings = transcribe(
            encoder,
            decoder,
            [audios[r] for r in group],
            [prefixes[r] for r in group],
            [options[r] for r in group],
            vocab,
            gone,
            None if languages is None else [languages[r] for r in group],
            None if prompts is None else [prompts[r] for r in group],
            resident,
        )
        timings = {**timings, "groups": len(groups)}
        for r, d in zip(group, decoded, strict=True):
            out[r] = (d, ctx, timings)
    return [out[r] for r in range(len(audios))]


def batch_decode(
    decoder: Run,
    cross_k: Array,
    cross_v: Array,
    prefixes: Sequence[Sequence[int]],
    budgets: Sequence[int],
    loop_min_tokens: Sequence[int],
    vocab: Vocabulary,
    cancelled: Callable[[int], bool] | None = None,
    languages: Sequence[int] | None = None,
    prompts: Sequence[Sequence[int]] | None = None,
    beams: Sequence[int] | None = None,
    resident: Resident | None = None,
) -> list[Decoded | None]:
    """Step the decoder (KV cache) over every row together until each ends: EOT, its token
    budget, or a repetition loop. Each row begins with its context ``prompts`` (previous text,
    after ``<|startofprev|>``; none in a batch that detects a language), its task prompt (in
    its language, detected first where it is :data:`LANG_AUTO`) and its forced ``prefixes``.

    Every row is at the same position at every step; a row's forced tokens (context, task
    prompt, prefix) are fed one per step while other rows generate, and in one call while
    every row still has some (so a batch of one feeds them all at once).

    ``beams``: per row, 1 (greedy: the most likely token at every step) or the beam width
    of a beam search (Whisper's: each step keeps the ``beams`` most likely continuations
    among the ``beams + 1`` best of every live one; a continuation that ends (EOT, its
    budget, a loop) is finished; the search ends with ``beams`` finished, and the one with
    the best log-probability per generated token wins). A beam row takes one decoder slot
    (batch row) while its forced tokens are fed and ``beams`` slots from its first
    generated token on: the cost of its decoder steps, not of the encoder.

    ``resident``: the decoder's way to keep an input where it runs (a GPU's memory), for the
    cross-attention keys and values, the same at every step: copied there once, and again
    only when the batch's rows change (on the CPU, None)."""
    n = len(prefixes)
    L, _, H, dh, _ = cross_k.shape
    default = LANG_AUTO if vocab.multilingual else LANG_NONE
    lang = [default] * n if languages is None else [int(x) for x in languages]
    if len(lang) != n:
        raise ValueError(f"{len(lang)} languages for {n} rows")
    for x in lang:
        if not vocab.takes(x):
            raise ValueError(f"language token {x} is not one of the model's")
    if not vocab.multilingual:
        lang = [LANG_NONE] * n
    width_of = [1] * n if beams is None else [max(1, int(b)) for b in beams]
    if len(width_of) != n:
        raise ValueError(f"{len(width_of)} beam widths for {n} rows")
    lang_prob = [1.0] * n
    detect = any(x == LANG_AUTO for x in lang)
    # Each row's forced tokens: context, task prompt, prefix; the hypothesis starts after
    # the task prompt (``start``), its <|startoftranscript|> is at ``sot_at``.
    lead: list[list[int]] = [[] for _ in range(n)]
    if prompts is not None and not detect and vocab.sot_prev >= 0:
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} rows")
        lead = [[vocab.sot_prev, *(int(t) for t in p)] if len(p) else [] for p in prompts]
    need: list[list[int]] = [
        [*lead[i], *([vocab.sot] if detect else vocab.prompt(lang[i])), *prefixes[i]]
        for i in range(n)
    ]
    sot_at = [len(lead[i]) for i in range(n)]
    start = [len(need[i]) - len(prefixes[i]) for i in range(n)]  # after the task prompt
    no_speech = [0.0] * n
    gone = [False] * n
    finished: list[list[_Beam]] = [[] for _ in range(n)]
    # The decoder's batch: a position per slot, a row's slots side by side. A live slot is
    # one hypothesis; its ``seq`` is every token fed so far and the ones to feed next
    # (``seq[fed:]``). On the CPU a row that ends leaves the batch at once: each row's
    # compute is the cost. On a GPU (``resident`` given) its slots stay, fed EOT and read by
    # nobody, until fewer than :data:`KEEP_DEAD_FRACTION` of the slots are live: there the
    # idle rows' compute is nearly free and moving the cross tensors to a smaller batch (and
    # to the device again) is not.
    # <|startoftranscript|> alone first where a language is detected (read after it)
    chunk = 1 if detect else min(len(need[i]) for i in range(n))
    slots: list[_Beam | None] = [_Beam(i, need[i][:chunk], 0.0, 0) for i in range(n)]
    slot_rows = list(range(n))
    cross_rows_k, cross_rows_v = cross_k, cross_v  # by row; cross_k/v follow the slots
    put: Resident = resident or (lambda a: a)
    cross_fed = cross_feeds(cross_k, cross_v, put)
    past_k = np.zeros((L, n, H, 0, dh), dtype=np.float32)
    past_v = np.zeros((L, n, H, 0, dh), dtype=np.float32)
    fed = 0  # tokens fed so far: the same for every slot
    while True:
        live_slots = [(s, b) for s, b in enumerate(slots) if b is not None]
        width = len(live_slots[0][1].seq) - fed
        feed = np.array(
            [b.seq[fed:] if b is not None else [vocab.eot] * width for b in slots],
            dtype=np.int64,
        )
        out = decoder(
            {
                "tokens": feed,
                "past_k": past_k,
                "past_v": past_v,
                **cross_fed,
            }
        )
        logits = out["logits"]
        past_k, past_v = out["present_k"], out["present_v"]
        for s, beam in live_slots:
            i = beam.row
            k = sot_at[i] - fed
            if 0 <= k < width:  # <|startoftranscript|> was fed in this call
                p0 = _log_softmax(logits[s, k])
                no_speech[i] = float(np.exp(p0[vocab.no_speech]))
                if vocab.multilingual:
                    ids = vocab.detect_among(lang[i])
                    pl = np.exp(_log_softmax(logits[s, k, ids]))
                    if lang[i] == LANG_AUTO:
                        lang[i] = int(ids[int(np.argmax(pl))])
                    if detect:  # the rest of every row's prompt, in its language now known
                        need[i] = [*vocab.prompt(lang[i]), *prefixes[i]]
                        start[i] = len(need[i]) - len(prefixes[i])
                    j = int(np.flatnonzero(ids == lang[i])[0])
                    lang_prob[i] = float(pl[j])
        fed += width
        last = logits[:, -1].astype(np.float64)
        last[:, vocab.suppress] = -np.inf
        lse = _logsumexp_rows(last)
        # Each row's slots give its next live hypotheses (``src``: the slot each continues).
        src: list[int] = []
        nxt: list[_Beam] = []
        for i, mine in _by_row(slots):
            if cancelled is not None and cancelled(i):
                gone[i] = True
                continue
            head = slots[mine[0]]
            assert head is not None
            if fed < len(need[i]):  # a forced token (the row has one slot)
                src.append(mine[0])
                nxt.append(head.extended(need[i][fed], 0.0, generated=False))
                continue
            beams_i = width_of[i]
            first = fed == start[i]  # nothing generated yet
            budget_left = head.generated < budgets[i]
            candidates: list[tuple[float, int, int]] = []  # score, slot, token
            for s in mine:
                lg, norm = last[s], lse[s]
                if first:
                    lg = lg.copy()
                    lg[vocab.suppress_begin] = -np.inf
                    norm = _logsumexp(lg)
                if not budget_left:
                    top = [vocab.eot]
                elif beams_i == 1:
                    top = [int(np.argmax(lg))]
                else:
                    top = _top(lg, beams_i + 1)
                held = slots[s]
                assert held is not None
                candidates += [(held.logprob + float(lg[t] - norm), s, t) for t in top]
            candidates.sort(key=lambda c: -c[0])
            live: list[_Beam] = []
            for score, s, tok in candidates:
                held = slots[s]
                assert held is not None
                if tok == vocab.eot:
                    if len(finished[i]) < beams_i:  # a budget's EOT adds no probability
                        finished[i].append(held.ended(score if budget_left else held.logprob))
                    continue
                grown = held.extended(tok, score - held.logprob, generated=True)
                drop = repeated_tail(grown.seq[start[i] :], loop_min_tokens[i], len(prefixes[i]))
                if drop:  # a loop: drop the copies and end the hypothesis
                    del grown.seq[len(grown.seq) - drop :]
                    if len(finished[i]) < beams_i:
                        finished[i].append(grown)
                    continue
                src.append(s)
                live.append(grown)
                if len(live) == beams_i:
                    break
            if len(finished[i]) >= beams_i or not live:  # the row is done
                del src[len(src) - len(live) :]
                finished[i] = finished[i] or live
            else:
                nxt += live
        if not nxt:
            break
        placed = None
        if resident is not None and len(nxt) >= KEEP_DEAD_FRACTION * len(slots):
            placed = _place(nxt, src, slot_rows)
        if placed is not None:  # the same rows at the same places: the dead ones idle
            slots, idx = placed
        else:
            slots, idx = list(nxt), src
            rows_now = [b.row for b in nxt]
            if rows_now != slot_rows:  # rows ended or widened: the cross tensors follow
                cross_k, cross_v = cross_rows_k[:, rows_now], cross_rows_v[:, rows_now]
                cross_fed = cross_feeds(cross_k, cross_v, put)
                slot_rows = rows_now
        if idx != list(range(len(idx))) or len(idx) != past_k.shape[1]:
            take = np.array(idx, dtype=np.int64)
            past_k, past_v = past_k[:, take], past_v[:, take]
        # Forced tokens still due on every slot (beyond the next one) go in one call.
        forced = min(len(need[b.row]) - len(b.seq) for b in slots if b is not None)
        if forced > 0:
            for b in slots:
                if b is not None:
                    b.seq += need[b.row][len(b.seq) : len(b.seq) + forced]
    return [
        None
        if gone[i]
        else _best(finished[i]).decoded(start[i], no_speech[i], lang[i], lang_prob[i])
        for i in range(n)
    ]


def cross_feeds(cross_k: Array, cross_v: Array, put: Resident | None = None) -> dict[str, Any]:
    """The decoder's cross-attention inputs, one per layer (``cross_k_0`` ..), from the
    encoder's stacked ``cross_k`` [L, B, H, dh, T] and ``cross_v`` [L, B, H, T, dh]: views,
    not copies (each layer is contiguous), each made resident by ``put`` where given."""
    put = put or (lambda a: a)
    feeds = {f"cross_k_{i}": put(cross_k[i]) for i in range(cross_k.shape[0])}
    feeds.update({f"cross_v_{i}": put(cross_v[i]) for i in range(cross_v.shape[0])})
    return feeds


@dataclass(slots=True)
class _Beam:
    """One hypothesis of a row: every token fed (context, prompt, prefix, generated), the
    summed log-probability of the generated ones (EOT included once it ends), how many."""

    row: int
    seq: list[int]
    logprob: float
    generated: int

    def extended(self, token: int, logprob: float, *, generated: bool) -> _Beam:
        return _Beam(
            self.row, [*self.seq, token], self.logprob + logprob, self.generated + generated
        )

    def ended(self, logprob: float) -> _Beam:
        """This hypothesis, ended by EOT: ``logprob`` is its sum with the EOT's."""
        return _Beam(self.row, self.seq, logprob, self.generated)

    def decoded(self, start: int, no_speech: float, language: int, prob: float) -> Decoded:
        return Decoded(self.seq[start:], self.logprob, self.generated, no_speech, language, prob)


def _best(beams: Sequence[_Beam]) -> _Beam:
    """Whisper's ranking: the best summed log-probability per generated token."""
    return max(beams, key=lambda b: b.logprob / max(b.generated, 1))


def _by_row(slots: Sequence[_Beam | None]) -> list[tuple[int, list[int]]]:
    """The live slots' rows in order, each with its slot indices."""
    out: dict[int, list[int]] = {}
    for s, beam in enumerate(slots):
        if beam is not None:
            out.setdefault(beam.row, []).append(s)
    return list(out.items())


def _place(
    beams: Sequence[_Beam], src: Sequence[int], slot_rows: Sequence[int]
) -> tuple[list[_Beam | None], list[int]] | None:
    """The next step's slots when the batch keeps its layout (``slot_rows``, the row of each
    position): each beam at a position of its row, the rest empty, and the position each
    one's cache comes from; None when a row has more beams than positions (a beam search
    widening)."""
    free: dict[int, list[int]] = {}
    for p, r in enumerate(slot_rows):
        free.setdefault(r, []).append(p)
    slots: list[_Beam | None] = [None] * len(slot_rows)
    idx = list(range(len(slot_rows)))
    for beam, s in zip(beams, src, strict=True):
        places = free.get(beam.row)
        if not places:
            return None
        p = places.pop(0)
        slots[p], idx[p] = beam, s
    return slots, idx


def _top(x: Array, k: int) -> list[int]:
    """The indices of the ``k`` largest values of ``x``, largest first."""
    k = min(k, len(x))
    part = np.argpartition(-x, k - 1)[:k]
    return [int(t) for t in part[np.argsort(-x[part], kind="stable")]]


#: copies in a row that make a span shorter than ``loop_min_tokens`` a loop: tiny.en on a
#: second of a reply's echo wrote "story history history history history" (a final; it was
#: taken for the user's words and cut the reply). Three copies stay speech ("no, no, no").
SHORT_LOOP_COPIES = 4


def repeated_tail(tokens: Sequence[int], min_len: int, keep: int = 0) -> int:
    """How many tokens to drop from the end of ``tokens``, where it ends in a loop
    (Whisper's repetition on short, padded or echoed audio), or 0: a span of at least
    ``min_len`` tokens twice in a row, or a shorter span :data:`SHORT_LOOP_COPIES` times; all
    copies but the first go. The copies dropped must lie after the first ``keep`` tokens (a
    forced prefix is never cut)."""
    if min_len <= 0:
        return 0
    n = len(tokens)
    room = n - keep  # the most tokens that may go
    for k in range(1, min(n // 2, room) + 1):  # per decoded token: cheap tests first
        copies = 2 if k >= min_len else SHORT_LOOP_COPIES
        drop = (copies - 1) * k
        if drop > room or n < copies * k or tokens[n - 1] != tokens[n - 1 - k]:
            continue
        tail = tokens[n - k :]
        if all(tokens[n - (c + 1) * k : n - c * k] == tail for c in range(1, copies)):
            return drop
    return 0


def _logsumexp_rows(x: Array) -> Array:
    """:func:`_logsumexp` of every row of ``x`` [rows, n] at once."""
    m = x.max(axis=1)
    return m + np.log(np.exp(x - m[:, None]).sum(axis=1))


def _logsumexp(x: Array) -> float:
    m = float(np.max(x))
    return m + math.log(float(np.sum(np.exp(x - m))))


def _log_softmax(x: Array) -> Array:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


# -- the transcribe model's tensors ------------------------------------------------------------


def pack_requests(
    audios: Sequence[Array],
    prefixes: Sequence[Sequence[int]],
    options: DecodeOptions | Sequence[DecodeOptions],
    languages: Sequence[int] | None = None,
) -> dict[str, Array]:
    """One transcribe request's tensors for a batch of rows (``options``: for every row, or
    one per row; ``languages``: a language token per row, as :func:`transcribe` takes them;
    default :data:`LANG_AUTO`)."""
    b = len(audios)
    samples = max(len(a) for a in audios)
    audio = np.zeros((b, samples), dtype=np.float32)
    for r, a in enumerate(audios):
        audio[r, : len(a)] = a
    width = max(1, max(len(p) for p in prefixes))  # no zero-size tensor on the wire
    prefix = np.zeros((b, width), dtype=np.int64)
    for r, p in enumerate(prefixes):
        prefix[r, : len(p)] = p
    return {
        "audio": audio,
        "audio_len": np.array([[len(a)] for a in audios], dtype=np.int64),
        "prefix": prefix,
        "prefix_len": np.array([[len(p)] for p in prefixes], dtype=np.int64),
        "options": np.stack(
            [o.vector() for o in ([options] * b if isinstance(options, DecodeOptions) else options)]
        ),
        "language": np.array(
            [[x] for x in (languages if languages is not None else [LANG_AUTO] * b)],
            dtype=np.int64,
        ),
    }


def unpack_results(out: Mapping[str, Array]) -> list[tuple[Decoded, int, dict[str, float]]]:
    """The rows of one transcribe response: hypothesis, audio context, timings."""
    tokens, counts = np.asarray(out["tokens"]), np.asarray(out["token_count"]).reshape(-1)
    rows = []
    for r, count in enumerate(counts):
        d = Decoded(
            [int(t) for t in tokens[r, : int(count)]],
            float(np.asarray(out["logprob"]).reshape(-1)[r]),
            int(np.asarray(out["generated"]).reshape(-1)[r]),
            float(np.asarray(out["no_speech_prob"]).reshape(-1)[r]),
            int(np.asarray(out["language"]).reshape(-1)[r]),
            float(np.asarray(out["language_prob"]).reshape(-1)[r]),
        )
        t = np.asarray(out["timings_ms"]).reshape(-1, 2)[r]
        ctx = int(np.asarray(out["audio_ctx"]).reshape(-1)[r])
        rows.append((d, ctx, {"encode": float(t[0]), "decode": float(t[1])}))
    return rows


class Transcriber:
    """The transcribe model: the requests of one batch (each a mapping of
    :data:`TRANSCRIBE_INPUTS`, its rows on the first axis) decoded together by one
    :func:`transcribe` call, answered request by request. A malformed request gets a
    ValueError of its own in place of its outputs; the others are answered."""

    def __init__(self, encoder: Run, decoder: Run, vocab: Vocabulary) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.vocab = vocab

    @classmethod
    def open_ort(cls, folder: Path, providers: Sequence[Any], threads: int = 1) -> Transcriber:
        """With ONNX Runtime sessions on ``folder``'s encoder.onnx and decoder.onnx
        (``providers`` as ONNX Runtime takes them: CUDA first on a GPU instance)."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sessions = []
        for name in ("encoder.onnx", "decoder.onnx"):
            available = set(ort.get_available_providers())
            wanted = [p for p in providers if (p[0] if isinstance(p, tuple) else p) in available]
            sessions.append(ort.InferenceSession(str(folder / name), so, providers=wanted or None))

        def runner(session: Any) -> Run:
            names = [o.name for o in session.get_outputs()]

            def run(feeds: Mapping[str, Array]) -> dict[str, Array]:
                return dict(zip(names, session.run(names, dict(feeds)), strict=True))

            return run

        vocab_size = sessions[1].get_outputs()[0].shape[-1]
        return cls(
            runner(sessions[0]),
            runner(sessions[1]),
            Vocabulary.from_folder(folder, int(vocab_size)),
        )

    def infer(self, requests: Sequence[Mapping[str, Array]]) -> list[dict[str, Array] | ValueError]:
        rows: list[tuple[int, Array, list[int], DecodeOptions, int]] = []
        answers: list[dict[str, Array] | ValueError] = []
        for k, req in enumerate(requests):
            try:
                got = _rows(k, req)
                for *_, language in got:
                    if not self.vocab.takes(language):
                        raise ValueError(f"language token {language} is not one of the model's")
                rows += got
                answers.append({})
            except (KeyError, ValueError, TypeError) as e:
                answers.append(ValueError(f"transcribe: {e}"))
        if rows:
            done = transcribe_by_context(
                self.encoder,
                self.decoder,
                [r[1] for r in rows],
                [r[2] for r in rows],
                [r[3] for r in rows],
                self.vocab,
                languages=[r[4] for r in rows],
            )
            for k in range(len(requests)):
                if isinstance(answers[k], ValueError):
                    continue
                mine = [g for (owner, *_), g in zip(rows, done, strict=True) if owner == k]
                answers[k] = _outputs(mine)
        return answers


def _rows(
    k: int, req: Mapping[str, Array]
) -> list[tuple[int, Array, list[int], DecodeOptions, int]]:
    audio = np.asarray(req["audio"], dtype=np.float32)
    audio_len = np.asarray(req["audio_len"]).reshape(-1)
    prefix = np.asarray(req["prefix"]).astype(np.int64)
    prefix_len = np.asarray(req["prefix_len"]).reshape(-1)
    options = np.asarray(req["options"], dtype=np.float32)
    if options.ndim != 2 or options.shape[1] not in (5, 6):  # 5: from before beam_size
        raise ValueError(f"options: [B, 6] expected, got shape {list(options.shape)}")
    b = audio.shape[0] if audio.ndim == 2 else -1
    language = (
        np.asarray(req["language"]).reshape(-1).astype(np.int64)
        if "language" in req
        else np.full(max(b, 0), LANG_AUTO, dtype=np.int64)
    )
    if b < 1 or not all(len(x) == b for x in (audio_len, prefix, prefix_len, options, language)):
        raise ValueError(
            "audio [B, samples], audio_len, prefix, prefix_len, options, language: B rows each"
        )
    if audio.shape[1] > 30 * SAMPLE_RATE_HZ or not np.isfinite(audio).all():
        raise ValueError("audio: at most 30 s of finite 16 kHz samples")
    out = []
    for r in range(b):
        n, p = int(audio_len[r]), int(prefix_len[r])
        if not 0 <= n <= audio.shape[1] or not 0 <= p <= min(prefix.shape[1], MAX_PREFIX):
            raise ValueError(f"row {r}: audio_len {n} or prefix_len {p} out of range")
        out.append(
            (
                k,
                audio[r, :n],
                [int(t) for t in prefix[r, :p]],
                DecodeOptions.from_vector(options[r]),
                int(language[r]),
            )
        )
    return out


def _outputs(rows: Sequence[tuple[Decoded | None, int, Mapping[str, float]]]) -> dict[str, Array]:
    """One request's output tensors from its rows: (hypothesis, audio context, timings)."""
    decoded = [d for d, _, _ in rows if d is not None]
    b = len(decoded)
    width = max(1, max((len(d.tokens) for d in decoded), default=0))
    tokens = np.full((b, width), -1, dtype=np.int64)
    for r, d in enumerate(decoded):
        tokens[r, : len(d.tokens)] = d.tokens
    return {
        "tokens": tokens,
        "token_count": np.array([[len(d.tokens)] for d in decoded], dtype=np.int64),
        "logprob": np.array([[d.logprob] for d in decoded], dtype=np.float64),
        "generated": np.array([[d.generated] for d in decoded], dtype=np.int64),
        "no_speech_prob": np.array([[d.no_speech] for d in decoded], dtype=np.float64),
        "language": np.array([[d.language] for d in decoded], dtype=np.int64),
        "language_prob": np.array([[d.language_prob] for d in decoded], dtype=np.float64),
        "audio_ctx": np.array([[ctx] for d, ctx, _ in rows if d is not None], dtype=np.int64),
        "timings_ms": np.array(
            [[t["encode"], t["decode"]] for d, _, t in rows if d is not None], dtype=np.float64
        ).reshape(b, 2),
    }


def transcribe_signature() -> Signature:
    """The python transcribe model's tensors (batch axis first), for Triton's python backend."""
    from ..signature import Signature, TensorSpec  # not at the top: loaded by path on Triton

    def specs(items: Sequence[tuple[str, str, tuple[int, ...]]]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(n, t, ("batch", *(d if d >= 0 else f"{n}_{k}" for k, d in enumerate(dims))))
            for n, t, dims in items
        )

    return Signature(specs(TRANSCRIBE_INPUTS), specs(TRANSCRIBE_OUTPUTS))


def detect_languages(
    encoder: Run,
    decoder: Run,
    audios: Sequence[Array],
    options: Sequence[DecodeOptions],
    vocab: Vocabulary,
) -> list[tuple[int, float]]:
    """Each audio's language token and its probability, read after ``<|startoftranscript|>``
    as :func:`batch_decode` reads it (among ``vocab.detect_ids`` when set): one encoder pass
    and one one-token decoder step for the batch. For detection on other audio than a row's
    own (the turn so far: :attr:`.request.AsrRequest.language_audio`)."""
    if not vocab.multilingual:
        raise ValueError("an English-only model has no language to detect")
    mel, _ = encoder_input(audios, options)
    out = encoder({"mel": mel})
    cross_k, cross_v = out["cross_k"], out["cross_v"]
    L, n, H, dh, _ = cross_k.shape
    logits = decoder(
        {
            "tokens": np.full((n, 1), vocab.sot, dtype=np.int64),
            "past_k": np.zeros((L, n, H, 0, dh), dtype=np.float32),
            "past_v": np.zeros((L, n, H, 0, dh), dtype=np.float32),
            **cross_feeds(cross_k, cross_v),
        }
    )["logits"]
    ids = vocab.detect_among(LANG_AUTO)
    pl = np.exp(_log_softmax(logits[:, 0, ids]))
    return [(int(ids[int(np.argmax(p))]), float(np.max(p))) for p in pl]
