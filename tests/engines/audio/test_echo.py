"""The echo canceller on real speech: the reply echoed into the microphone at -6..-20 dB with
40-250 ms delay is removed (ERLE), the user's own sentence keeps its energy, the delay is
found and followed through drift, and the buffers keep their policies."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tidegate.bench import audio_sets
from tidegate.engines.audio import EchoCanceller, estimate_delay
from tidegate.engines.errors import RequestError

pytestmark = pytest.mark.skipif(bool(audio_sets.have_tools()), reason="needs espeak-ng and sox")

SR = 16_000
FRAME = 320  # 20 ms, as a lane hands them over
#: The floor asserted; the issue's target is 20 dB, ~30 dB is measured (docs/ears.md).
MIN_ERLE_DB = 20.0


@pytest.fixture(scope="module")
def reply() -> np.ndarray:
    return np.concatenate(
        [audio_sets.speech(t) for t in audio_sets.REPLY_SENTENCES] + [audio_sets.silence(0.5)]
    )


def cancel(mic: np.ndarray, far: np.ndarray, ec: EchoCanceller) -> np.ndarray:
    """Play ``far`` and capture ``mic`` in step, 20 ms at a time, on one sample clock."""
    out = np.zeros_like(mic)
    for i in range(0, len(mic) - FRAME + 1, FRAME):
        ec.add_far(far[i : i + FRAME], i)
        out[i : i + FRAME] = ec.process_near(mic[i : i + FRAME], i)
    return out


def erle_db(echo: np.ndarray, residual: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(echo**2) / np.sum(residual**2)))


@pytest.mark.parametrize(
    ("delay_s", "level_db"), [(0.04, -6.0), (0.12, -12.0), (0.25, -20.0), (0.25, -6.0)]
)
def test_echo_is_removed(reply: np.ndarray, delay_s: float, level_db: float) -> None:
    """After a second of adaptation the echo of the reply loses at least 20 dB."""
    mic, echo, _ = audio_sets.mic_with_echo(
        reply, delay_s=delay_s, level_db=level_db, noise_db=-90.0
    )
    ec = EchoCanceller()
    out = cancel(mic, reply, ec)
    settled = slice(3 * SR, len(mic))
    assert erle_db(echo[settled], out[settled]) >= MIN_ERLE_DB, ec.stats()
    # the reference moves only when the estimate is off by realign_min_s (0.03 s) or more
    assert abs(ec.delay_s - delay_s) < 0.03, ec.stats()


def test_user_speech_survives_double_talk(reply: np.ndarray) -> None:
    """The user's question spoken over the echoed reply keeps most of its energy through
    the canceller (AEC3's suppressor ducks it a little), while the echo is cut."""
    near = audio_sets.speech(audio_sets.USER_SENTENCES[1])
    at_s = 5.0
    mic, echo, user = audio_sets.mic_with_echo(
        reply, delay_s=0.15, level_db=-12.0, near=near, near_at_s=at_s, seed=3
    )
    out = cancel(mic, reply, EchoCanceller())
    span = slice(round(at_s * SR), round(at_s * SR) + len(near))
    kept_db = 10 * np.log10(np.sum(out[span] ** 2) / np.sum(user[span] ** 2))
    assert kept_db > -6.0
    after = slice(span.stop + SR, len(mic))  # the reply goes on alone
    assert erle_db(echo[after], out[after]) >= MIN_ERLE_DB


def test_a_retracted_reference_does_not_duck_the_user(reply: np.ndarray) -> None:
    """A reply paused mid-sentence: the lane had told the canceller 0.3 s of reference ahead
    (what it wrote to the track), the speaker stops at the pause, and the user speaks 0.1 s
    later. Fed that reference, AEC3 expects an echo that never comes and ducks the user's
    first words; with the reference retracted at the pause they keep their energy."""
    near = audio_sets.speech(audio_sets.USER_SENTENCES[1])  # "Wait, what about Friday?"
    pause = 4 * SR
    played = reply.copy()
    played[pause:] = 0.0  # the speaker stops at the pause
    at = pause + SR // 10
    mic, _, user = audio_sets.mic_with_echo(
        played, delay_s=0.04, level_db=-6.0, near=near, near_at_s=at / SR, seed=3
    )
    ahead = round(0.3 * SR)

    def kept_db(retract: bool) -> float:
        ec = EchoCanceller(initial_delay_s=0.0)
        out, told = np.zeros_like(mic), 0
        for i in range(0, len(mic) - FRAME + 1, FRAME):
            while told < min(i + ahead, len(reply)) and i < pause:
                ec.add_far(reply[told : told + FRAME], told)
                told += FRAME
            if retract and i == pause:
                ec.retract_far(pause)
            out[i : i + FRAME] = ec.process_near(mic[i : i + FRAME], i)
        first = slice(at, at + 4 * SR // 10)  # the first 0.4 s of the user's speech
        if retract:
            assert ec.counters["reference_retracted_samples"] == told - pause
        return float(10 * np.log10(np.sum(out[first] ** 2) / np.sum(user[first] ** 2)))

    ducked, kept = kept_db(False), kept_db(True)
    assert kept > -2.0 and kept > ducked + 2.0, (ducked, kept)  # measured -5.5 / -0.1 dB


def test_ring_truncate_forgets_the_tail() -> None:
    """What a truncated ring forgot reads as missing, and it can be written again."""
    from tidegate.engines.audio.echo import _Ring

    ring = _Ring(100)
    ring.write(np.arange(1, 151, dtype=np.float32), 0)  # holds samples 50..149
    assert ring.truncate(120) == 30 and ring.truncate(130) == 0
    x, missing = ring.read(110, 20)
    assert list(x[:10]) == list(range(111, 121)) and not x[10:].any() and missing == 10
    x, missing = ring.read(40, 20)  # older than the ring held before: still missing
    assert not x[:10].any() and list(x[10:]) == list(range(51, 61)) and missing == 10
    ring.write(np.full(10, 7.0, np.float32), 125)  # a gap, then new samples
    x, missing = ring.read(118, 20)
    assert list(x) == [119.0, 120.0] + [0.0] * 5 + [7.0] * 10 + [0.0] * 3 and missing == 3


@pytest.mark.parametrize("delay_s", [0.02, 0.04, 0.1, 0.18, 0.3])
def test_delay_is_estimated(reply: np.ndarray, delay_s: float) -> None:
    """Envelope cross-correlation finds 20-300 ms speaker -> microphone delays within 8 ms."""
    max_delay_s = 0.5
    lag = round(max_delay_s * SR)
    mic, _, _ = audio_sets.mic_with_echo(reply, delay_s=delay_s, level_db=-12.0)
    start = 2 * SR
    window = mic[start : start + 2 * SR]
    ref = reply[start - lag : start + 2 * SR]
    found = estimate_delay(ref, window, sample_rate_hz=SR, min_delay_s=0.0, max_delay_s=0.5)
    assert found is not None
    assert abs(found.delay_samples / SR - delay_s) <= 0.008


def test_silence_gives_no_estimate() -> None:
    """No reference sound, no estimate (the delay in use is kept)."""
    quiet = np.zeros(SR + 8000, np.float32)
    found = estimate_delay(quiet, quiet[:SR], sample_rate_hz=SR, min_delay_s=0, max_delay_s=0.5)
    assert found is None


def test_drift_is_followed(reply: np.ndarray) -> None:
    """A speaker clock 3000 ppm slow (the delay grows from 50 to 88 ms over 12.5 s) is
    followed: the delay in use moves with it and the echo stays cancelled."""
    mic, echo, _ = audio_sets.mic_with_echo(
        reply, delay_s=0.05, level_db=-10.0, drift_ppm=3000.0, noise_db=-90.0
    )
    ec = EchoCanceller(initial_delay_s=0.1)
    out = cancel(mic, reply, ec)
    true_end_s = 0.05 + len(mic) * 3000e-6 / SR
    assert ec.counters["delay_changes"] >= 1
    # off by less than realign_min_s (0.03 s) plus the drift of the two estimates confirming it
    assert abs(ec.delay_s - true_end_s) <= 0.04, ec.stats()
    assert erle_db(echo[3 * SR :], out[3 * SR :]) >= 15.0


def test_reference_policies() -> None:
    """Reference older than the buffer is dropped and counted; a block whose reference
    never arrived is cancelled against silence and counted; dtypes are kept."""
    ec = EchoCanceller(reference_buffer_s=2.1)
    ec.add_far(np.zeros(SR, np.float32), 10 * SR)
    ec.add_far(np.zeros(SR, np.float32), 0)  # far older than the 2.1 s kept
    assert ec.counters["reference_dropped_samples"] == SR
    out = ec.process_near(np.zeros(FRAME, np.int16), 30 * SR)
    assert out.dtype == np.int16 and len(out) == FRAME
    assert ec.counters["reference_missing_blocks"] == 2


def test_bad_frames_are_refused() -> None:
    """Partial 10 ms blocks, other dtypes and NaN are refused with a RequestError."""
    ec = EchoCanceller()
    for bad in (
        np.zeros(100, np.float32),
        np.zeros(FRAME, np.float64),
        np.full(FRAME, np.nan, np.float32),
    ):
        with pytest.raises(RequestError):
            ec.process_near(bad, 0)
    with pytest.raises(ValueError, match="reference_buffer_s"):
        EchoCanceller(max_delay_s=1.0, reference_buffer_s=1.0)


def test_overlapping_calls_are_refused() -> None:
    """The canceller is thread-confined: a call overlapping another raises."""
    ec = EchoCanceller()
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            ec.process_near(np.zeros(FRAME, np.float32), 0)
        except RuntimeError as e:
            errors.append(e)

    with ec._confined():  # this thread is inside a call
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
    assert len(errors) == 1
    ec.process_near(np.zeros(FRAME, np.float32), 0)  # once free, it serves again


def test_noise_suppression() -> None:
    """With noise suppression on, steady noise loses at least 10 dB while speech keeps its
    level; off, the noise passes."""
    rng = np.random.default_rng(0)
    speech = audio_sets.speech("The weather today is sunny and warm.")
    mic = np.concatenate([audio_sets.silence(3.0), speech, audio_sets.silence(1.0)])
    mic = (mic + 0.01 * rng.standard_normal(len(mic))).astype(np.float32)
    noise, talk = slice(SR, 3 * SR), slice(3 * SR, 3 * SR + len(speech))
    quiet = np.zeros(len(mic), np.float32)
    for on, noise_floor_db in ((False, -1.0), (True, -10.0)):
        out = cancel(mic, quiet, EchoCanceller(noise_suppression=on, noise_suppression_level=2))
        noise_db = -erle_db(mic[noise], out[noise])
        if on:
            assert noise_db <= noise_floor_db
        else:
            assert noise_db >= noise_floor_db
        assert -erle_db(mic[talk], out[talk]) > -3.0
