"""The accuracy measures of the speech scenarios and tests: word and letter error rates."""

from __future__ import annotations

import pytest

from tidegate.bench.wer import ler, wer

REPLY = "The capital of France is Paris."


@pytest.mark.parametrize(
    ("heard", "words", "letters"),
    [
        (REPLY, 0.0, 0.0),
        ("the Capital of France is Paris", 0.0, 0.0),  # case and punctuation are not errors
        ("the capital of Francis Paris.", 2 / 6, 1 / 25),  # a re-cut word: two words, a letter
        ("but capital of Francis Paris.", 3 / 6, 4 / 25),
        ("France is Paris.", 3 / 6, 12 / 25),  # a chunk lost
        ("", 1.0, 1.0),
    ],
)
def test_word_and_letter_error_rates(heard: str, words: float, letters: float) -> None:
    assert wer(REPLY, heard) == pytest.approx(words)
    assert ler(REPLY, heard) == pytest.approx(letters)


def test_letters_of_any_script_count() -> None:
    assert ler("für año été", "fur ano ete") == pytest.approx(4 / 9)
    assert wer("für año été", "für año été") == 0.0
