"""The turn's language shared by the audio and reply lanes: every segment of a turn asks the
language found for it, a turn ends with its reply, typed text answers in the session's or the
last spoken language, and the LLM's hint names the language."""

from __future__ import annotations

import numpy as np

from tidegate.pipelines.language import Heard, TurnLanguage, language_name, reply_hint


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


def test_the_hint_names_the_language() -> None:
    """The LLM is told the language by name; an unlisted code by its code."""
    assert reply_hint("de") == "The user speaks German. Reply in German."
    assert language_name("xx") == "the language with ISO 639-1 code 'xx'"


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
