"""The voices registry: a Piper voice first when prepared, espeak-ng as the last resort (its
voices real: espeak-ng speaks each row's voice), None for a language with no voice."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tidegate.engines.tts.voices import VOICES, voice_for


def test_piper_first_then_espeak() -> None:
    """English gets Piper's joe when prepared, espeak-ng otherwise."""
    v = voice_for("en", prepared=frozenset({"piper-joe"}), espeak=True)
    assert v is not None and (v.kind, v.name) == ("piper", "piper-joe")
    v = voice_for("EN", espeak=True)
    assert v is not None and v.kind == "espeak-ng"


def test_no_voice_is_none() -> None:
    """A language with no row, or espeak-ng missing, has no voice (text-only reply)."""
    assert voice_for("xx", espeak=True) is None
    assert voice_for("de", espeak=False) is None


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_every_espeak_voice_speaks() -> None:
    """Each espeak-ng row names a voice espeak-ng has (it writes audio for it)."""
    for v in VOICES:
        if v.kind == "espeak-ng":
            out = subprocess.run(
                ["espeak-ng", "-v", v.name, "--stdout", "1 2 3"], capture_output=True, check=True
            )
            assert len(out.stdout) > 1000, v
            assert b"not found" not in out.stderr.lower(), (v, out.stderr)
