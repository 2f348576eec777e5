"""What the reply lane tells the LLM of the user's language: the hint names it."""

from __future__ import annotations

from tidegate.pipelines.language import language_name, reply_hint


def test_the_hint_names_the_language() -> None:
    """The LLM is told the language by name; an unlisted code by its code."""
    assert reply_hint("de") == "The user speaks German. Reply in German."
    assert language_name("xx") == "the language with ISO 639-1 code 'xx'"
