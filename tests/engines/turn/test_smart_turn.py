"""Smart Turn v3.2 on real speech: features as the model expects them, complete sentences
scored above unfinished ones, long and short audio, bad requests."""

from __future__ import annotations

import importlib.util
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support import prepare_models
from tidegate.bench import audio_sets
from tidegate.engines import models
from tidegate.engines.engine import Failed, Ok
from tidegate.engines.errors import RequestError
from tidegate.engines.turn import SmartTurn, TurnResult, turn_features
from tidegate.engines.turn.features import reference_features
from tidegate.engines.turn.smart_turn import MIN_AUDIO_SAMPLES
from tidegate.engines.vad import VadSettings
from tidegate.tools.prepare import find_wheel

from ..voices import piper_voice

pytestmark = pytest.mark.skipif(bool(audio_sets.have_tools()), reason="needs espeak-ng and sox")

WHEEL_DIR = Path(__file__).resolve().parents[3] / ".cache" / "wheels"
#: Audio after the end of speech when the VAD reports the pause (its default min silence).
AFTER_SPEECH_S = VadSettings().min_silence_s


@pytest.fixture(scope="module")
def data() -> Path:
    return prepare_models("smart-turn-v3.2", "piper-joe")


@pytest.fixture(scope="module")
def engine(data: Path) -> SmartTurn:
    e = SmartTurn(models.model_dir(data, "smart-turn-v3.2") / "smart-turn-v3.2-cpu.onnx")
    e.load()
    return e


@pytest.fixture(scope="module")
def voice(data: Path) -> Iterator[Callable[[str], np.ndarray]]:
    with piper_voice(data) as speak:
        yield speak


def score(engine: SmartTurn, clips: list[np.ndarray]) -> list[float]:
    out = engine.run_batch(clips, [None] * len(clips))
    assert all(isinstance(o, Ok) for o in out), out
    return [o.value.probability for o in out if isinstance(o, Ok)]


def test_features_match_the_reference_preprocessing() -> None:
    """The features equal pipecat's own Smart Turn preprocessing (read from the wheel the
    model comes from) on speech shorter and longer than the 8 s window."""
    wheel = find_wheel(WHEEL_DIR, "pipecat-ai", "1.14.0")
    assert wheel is not None, "the pipecat-ai wheel is cached by models prepare"
    member = "pipecat/audio/turn/smart_turn/_whisper_features.py"
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(member).decode()
    spec = importlib.util.spec_from_loader("smart_turn_reference", loader=None)
    assert spec is not None
    reference = importlib.util.module_from_spec(spec)
    exec(compile(source, member, "exec"), reference.__dict__)  # numpy only
    speech = audio_sets.speech("I would like to book a table for four people tonight.")
    for audio in (speech, np.tile(speech, 4)):
        window = audio[-128_000:]
        padded = np.pad(window, (128_000 - len(window), 0))
        expected = reference.compute_whisper_log_mel_features(padded)
        assert np.abs(turn_features(audio) - expected).max() < 1e-4


@pytest.mark.parametrize(
    "samples", [201, 399, 400, 512, 16_000, 32_123, 127_599, 127_600, 127_601, 128_000, 200_000]
)
def test_features_computed_over_the_audio_only_equal_the_whole_window(samples: int) -> None:
    """The padding's frames are computed once, the FFT runs over the audio's frames only: the
    features equal those of the whole padded window, at every length around the edges
    (padding shorter than a frame, audio shorter than the end's reflection, a DC offset)."""
    rng = np.random.default_rng(samples)
    for level, offset in ((0.1, 0.0), (0.001, 0.05)):
        audio = (rng.standard_normal(samples) * level + offset).astype(np.float32)
        assert np.abs(turn_features(audio) - reference_features(audio)).max() < 1e-5


def test_complete_sentences_score_above_unfinished_ones(
    engine: SmartTurn, voice: Callable[[str], np.ndarray]
) -> None:
    """Spoken by a real voice (Piper; espeak's flat prosody leaves the model near chance),
    finished sentences score above sentences cut where they are clearly unfinished: most
    complete/unfinished pairs are ordered that way (0.85 measured on a VNNI CPU, 0.78 on an AVX2
    one, docs/engines.md) and the medians are."""
    after = audio_sets.silence(AFTER_SPEECH_S)
    lead = audio_sets.silence(0.3)
    heads = [h for h, _ in audio_sets.PAUSED_SENTENCES]
    fulls = [f"{h} {t}." for h, t in audio_sets.PAUSED_SENTENCES]
    fulls += list(audio_sets.COMPLETE_SENTENCES)
    cut = score(engine, [np.concatenate([lead, audio_sets.speech(h, voice), after]) for h in heads])
    done = score(
        engine, [np.concatenate([lead, audio_sets.speech(t, voice), after]) for t in fulls]
    )
    separated = np.mean([c < d for c in cut for d in done])
    report = f"unfinished {np.round(cut, 2)} complete {np.round(done, 2)}"
    assert separated >= 0.75, report
    assert np.median(done) > np.median(cut) + 0.2, report


def test_long_audio_scores_only_its_last_8_s(engine: SmartTurn) -> None:
    """Audio longer than the window scores exactly as its last 8 s do."""
    speech = audio_sets.speech("Can you tell me the weather in London tomorrow morning?")
    long = np.tile(speech, 1 + 128_000 // len(speech) + 1)
    a, b = score(engine, [long, long[-128_000:]])
    assert a == b
    (out,) = engine.run_batch([long], [None])
    assert isinstance(out, Ok) and out.value.scored_s == 8.0


def test_int16_audio_is_accepted(engine: SmartTurn) -> None:
    """int16 audio scores as its float32 equivalent."""
    speech = audio_sets.speech("Thank you, that is all I needed.")
    pcm = np.round(speech * 32768).clip(-32768, 32767).astype(np.int16)
    a, b = score(engine, [pcm, pcm.astype(np.float32) / 32768])
    assert a == b


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(MIN_AUDIO_SAMPLES - 1, np.float32),
        np.zeros((2, 16_000), np.float32),
        np.zeros(16_000, np.float64),
        np.full(16_000, np.nan, np.float32),
    ],
    ids=["too-short", "two-channels", "float64", "nan"],
)
def test_bad_audio_fails_alone(engine: SmartTurn, bad: np.ndarray) -> None:
    """A bad request fails with a RequestError; its neighbours in the batch are scored."""
    good = audio_sets.speech("Please set an alarm for seven in the morning.")
    out = engine.run_batch([good, bad, good], [None] * 3)
    assert isinstance(out[1], Failed) and isinstance(out[1].error, RequestError)
    assert isinstance(out[0], Ok) and isinstance(out[2], Ok)
    assert isinstance(out[0].value, TurnResult) and out[0].value == out[2].value


def test_too_much_audio_is_refused(data: Path) -> None:
    """A request longer than max_audio_s is refused, not copied."""
    e = SmartTurn(
        models.model_dir(data, "smart-turn-v3.2") / "smart-turn-v3.2-cpu.onnx", max_audio_s=10
    )
    e.load()
    (out,) = e.run_batch([np.zeros(11 * 16_000, np.float32)], [None])
    assert isinstance(out, Failed) and "160000" in str(out.error)
