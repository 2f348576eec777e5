"""The bench's test audio: deterministic speech, pauses where they are said to be, echo
mixed at the stated delay and level, and the noise and backchannel clips."""

from __future__ import annotations

import numpy as np
import pytest

from tidegate.bench import audio_sets

pytestmark = pytest.mark.skipif(bool(audio_sets.have_tools()), reason="needs espeak-ng and sox")

SR = audio_sets.SAMPLE_RATE_HZ


def test_speech_is_deterministic() -> None:
    """The same text gives the same samples, also after the cache is emptied."""
    a = audio_sets.speech("Please open the window.")
    audio_sets._speak.cache_clear()
    b = audio_sets.speech("Please open the window.")
    assert a.dtype == np.float32 and len(a) > SR // 2
    assert np.array_equal(a, b)
    assert np.abs(a[:10]).max() > audio_sets.TRIM_LEVEL  # espeak's lead-in trimmed


def test_paused_sentences_pause_where_they_say() -> None:
    """Each paused clip is silent exactly over its pause (500-900 ms), seeded."""
    clips = audio_sets.paused_set(seed=1)
    again = audio_sets.paused_set(seed=1)
    assert [c.pause_s for c in clips] == [c.pause_s for c in again]
    for c in clips:
        assert c.pause_s is not None
        start, stop = c.pause_s
        assert 0.5 <= stop - start <= 0.9
        gap = c.audio[round(start * SR) + 1 : round(stop * SR) - 1]
        assert np.abs(gap).max() == 0.0
        assert np.abs(c.audio[round(stop * SR) : round(stop * SR) + SR // 2]).max() > 0.05
        tail = c.audio[round(c.end_s * SR) + 1 :]
        assert len(tail) >= SR and np.abs(tail).max() == 0.0


def test_echo_is_mixed_at_its_delay_and_level() -> None:
    """The echo peaks in cross-correlation at its delay and sits at its level; the parts add
    up to the microphone signal."""
    far = audio_sets.speech("The weather today is sunny and warm.")
    mic, echo, user = audio_sets.mic_with_echo(
        far, delay_s=0.1, level_db=-12.0, near=far[:SR], near_at_s=0.5, noise_db=-90.0
    )
    lags = np.arange(0, 4000)
    corr = [float(np.dot(echo[lag:], far[: len(far) - lag])) for lag in lags[::16]]
    assert abs(lags[::16][int(np.argmax(corr))] - 1600) <= 32
    level = 10 * np.log10(np.sum(echo**2) / np.sum(far[: len(far) - 1600] ** 2))
    assert abs(level + 12.0) < 1.0
    assert np.allclose(mic, echo + user, atol=1e-3)


def test_noise_burst_and_backchannel() -> None:
    """The cough-like burst is short and peaks at its level; "mm-hmm" is a short clip."""
    burst = audio_sets.noise_burst(seed=2, seconds=0.25, level_db=-12.0)
    assert len(burst) == SR // 4
    assert abs(20 * np.log10(np.abs(burst).max()) + 12.0) < 0.1
    assert np.array_equal(burst, audio_sets.noise_burst(seed=2, seconds=0.25, level_db=-12.0))
    mm = audio_sets.backchannel("mm-hmm")
    assert 0.2 * SR < len(mm) < 1.5 * SR


def test_the_test_voices_speak_every_language() -> None:
    """Each language's test voice (SVOX Pico outside English) gives 16 kHz speech, the same
    samples every time; an MBROLA voice still speaks through espeak-ng."""
    texts = {
        "en": "Please open the window.",
        "de": "Bitte öffne das Fenster.",
        "es": "Por favor abre la ventana.",
        "fr": "Ouvre la fenêtre, s'il te plaît.",
    }
    for lang, voice in audio_sets.LANGUAGE_VOICES.items():
        a = audio_sets.speak(texts[lang], voice=voice)
        assert a.dtype == np.float32 and SR < len(a) < 4 * SR, (lang, len(a))
        assert np.abs(a).max() > 0.05, lang
        audio_sets._speak.cache_clear()
        assert np.array_equal(a, audio_sets.speak(texts[lang], voice=voice)), lang
    assert audio_sets.LANGUAGE_VOICES["es"].startswith("pico-")
    mbrola = audio_sets.speak(texts["es"], voice="mb-es2")
    assert len(mbrola) > SR // 2


def test_the_languages_bench_refuses_a_malformed_voice_choice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tidegate.bench.micro import languages

    assert languages.main(["--language", "es", "--voices", "es"]) == 2
    assert "LANG=VOICE" in capsys.readouterr().err
    assert languages.main(["--language", "es", "--voices", "de=mb-de2"]) == 2
    assert "not in --language" in capsys.readouterr().err
    assert languages.voices_for(("de", "es"), {"es": "mb-es2"}) == {
        "de": audio_sets.LANGUAGE_VOICES["de"],
        "es": "mb-es2",
    }
