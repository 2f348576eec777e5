"""The turn's language (engines/asr/turn_language.py), shared by the audio and reply lanes:
every segment of a turn asks the language found for it, an unsure turn detects on its audio so
far, a turn ends with its reply, typed text answers in the session's or the last spoken
language."""

from __future__ import annotations

import numpy as np

from tidegate.engines.asr.request import AsrResult
from tidegate.engines.asr.streaming import Segment, StreamingSettings
from tidegate.engines.asr.turn_language import Heard, TurnLanguage


def test_segments_of_a_turn_share_its_language() -> None:
    """Once a segment of the turn is heard in a language, the next segments ask for it (with
    its probability) until the turn ends; then the session's ``auto`` again."""
    config = {"language": "auto"}
    tl = TurnLanguage(lambda: config.get("language"))
    assert tl.for_segment() is None and tl.asked == "auto"
    tl.heard("de", 0.81)
    assert tl.for_segment() == Heard("de", 0.81)
    tl.heard("de", 0.99)  # a later segment of the same turn keeps the first probability
    tl.heard("fr", 0.4, sure=False)  # an unsure guess does not move a locked turn
    assert tl.for_segment() == Heard("de", 0.81)
    tl.segment_done()  # the assistant's turns end with the reply, not with a final
    assert tl.for_segment() == Heard("de", 0.81)
    assert tl.for_reply(spoken=True) == "de"
    assert tl.for_segment() is None and tl.last == Heard("de", 0.81)


def test_auto_and_none_are_not_languages() -> None:
    """A segment that asked ``auto`` and found nothing leaves the turn undecided."""
    tl = TurnLanguage(lambda: None)
    tl.heard(None, None)
    tl.heard("auto", 0.5)
    assert tl.for_segment() is None and tl.end_turn() is None


def test_each_final_is_a_turn_without_turn_taking() -> None:
    """With no turn-taking (transcribe), each segment's final ends the turn."""
    tl = TurnLanguage(lambda: "auto", per_segment=True)
    tl.heard("fr", 0.7)
    tl.segment_done()
    assert tl.for_segment() is None and tl.last == Heard("fr", 0.7)


def test_typed_text_answers_in_the_sessions_or_the_last_spoken_language() -> None:
    """``input.text`` has no audio: the session's code, else the language last spoken, else
    unknown."""
    config: dict[str, str] = {}
    tl = TurnLanguage(lambda: config.get("language"))
    assert tl.for_reply(spoken=False) is None
    tl.heard("es", 0.9)
    tl.end_turn()
    assert tl.for_reply(spoken=False) == "es"
    config["language"] = "de"  # session.update: from the next reply on
    assert tl.for_reply(spoken=False) == "de"
    config["language"] = "auto"
    assert tl.for_reply(spoken=False) == "es"


def test_an_unsure_turn_detects_on_its_audio_so_far() -> None:
    """Until a detection is sure, the turn's segments are kept (the newest 30 s) and the next
    decode detects on them and its own audio; an unsure guess answers the reply when nothing
    surer came; a sure detection locks the turn and drops the audio."""
    tl = TurnLanguage(lambda: "auto")
    first = np.full(16_000, 0.1, np.float32)
    assert tl.context(first) is None  # nothing earlier in the turn
    tl.heard("en", 0.55, sure=False)
    tl.add_audio(first)
    assert tl.for_segment() is None
    second = np.full(8_000, 0.2, np.float32)
    context = tl.context(second)
    assert context is not None and len(context) == 24_000 and context[-1] == np.float32(0.2)
    for _ in range(40):  # a long unsure turn keeps its newest 30 s
        tl.add_audio(first)
    context = tl.context(second)
    assert context is not None and len(context) == 30 * 16_000
    tl.heard("de", 0.9)
    assert tl.for_segment() == Heard("de", 0.9) and tl.context(second) is None
    assert tl.end_turn() == Heard("de", 0.9)
    tl.heard("fr", 0.4, sure=False)
    assert tl.for_reply(spoken=True) == "fr"  # the guess, when the turn never got sure


def _result(language: str, probability: float) -> AsrResult:
    return AsrResult(
        tokens=(1,),
        text="hallo",
        avg_logprob=-0.2,
        no_speech_prob=0.0,
        compression_ratio=1.0,
        generated=1,
        language=language,
        language_probability=probability,
    )


def test_the_lanes_steps_lock_a_sure_final_and_keep_an_unsure_ones_audio() -> None:
    """final_done reports a segment's language; an unsure one keeps its audio, and the next
    segment's request detects on it; a sure one locks the turn, and later segments adopt it."""
    tl = TurnLanguage(lambda: "auto")
    first = Segment("a", 0, lambda tokens: " x", language="auto")
    first.append(np.full(16_000, 0.1, np.float32))
    assert tl.request(first).language_audio is None
    first.final_text(_result("en", 0.55), StreamingSettings())
    assert tl.final_done(first, _result("en", 0.55), lock_probability=0.7, locked=False) == (
        "en",
        0.55,
    )
    second = Segment("b", 16_000, lambda tokens: " x", language="auto")
    second.append(np.full(8_000, 0.2, np.float32))
    request = tl.request(second)
    assert request.language == "auto" and request.language_audio is not None
    assert len(request.language_audio) == 24_000
    second.final_text(_result("de", 0.9), StreamingSettings())
    tl.final_done(second, _result("de", 0.9), lock_probability=0.7, locked=False)
    third = Segment("c", 30_000, lambda tokens: " x", language="auto")
    third.append(np.full(8_000, 0.2, np.float32))
    request = tl.request(third)
    assert (request.language, request.language_audio) == ("de", None)
    assert tl.for_reply(spoken=True) == "de"
