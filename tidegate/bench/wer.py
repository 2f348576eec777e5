"""Word error rate: the accuracy figure of the speech scenarios (and of the tests)."""

from __future__ import annotations

import re
import unicodedata


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped (apostrophes kept); letters of any script count
    (``für``, ``año``, ``été`` stay whole words), compared in Unicode NFC form."""
    text = unicodedata.normalize("NFC", text.lower()).replace("\u2019", "'")
    return re.sub(r"[^\w']|_", " ", text).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: edit distance over words, divided by the reference's length."""
    return _edits(words(reference), words(hypothesis))


def ler(reference: str, hypothesis: str) -> float:
    """Letter error rate: edit distance over the words' letters with the spaces between words
    dropped, divided by the reference's letter count. A transcriber that re-cuts words
    ("France is" heard "Francis") costs two words of WER but one letter here: the measure
    for "is this audio that text", where WER measures the transcriber as much as the audio."""
    return _edits(list("".join(words(reference))), list("".join(words(hypothesis))))


def _edits(r: list[str], h: list[str]) -> float:
    d = list(range(len(h) + 1))
    for i in range(1, len(r) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(h) + 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r[i - 1] != h[j - 1]))
            prev, d[j] = d[j], cur
    return d[len(h)] / max(len(r), 1)
