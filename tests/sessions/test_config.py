"""The session config check: ``instructions`` (the assistant's system prompt per session)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tidegate.pipelines.errors import InvalidConfigError
from tidegate.sessions.config import MAX_INSTRUCTIONS_CHARS, resolve_config


def test_instructions_are_the_assistants_only() -> None:
    with pytest.raises(InvalidConfigError, match="only the assistant mode"):
        resolve_config({"mode": "loopback", "instructions": "Be brief."}, "assistant")


@pytest.mark.parametrize(
    ("value", "words"),
    [(42, "expected a string"), ("x" * (MAX_INSTRUCTIONS_CHARS + 1), "at most")],
)
def test_bad_instructions_are_refused(value: Any, words: str) -> None:
    """A string within the bound is kept; anything else is refused naming what is wrong."""
    # the assistant's engines, as resolve_config sees running ones
    engines = SimpleNamespace(schedulers={"vad": None, "asr": None}, batchers={"llm": None})
    engines.batchers["tts"] = None
    with pytest.raises(InvalidConfigError, match=words):
        resolve_config({"mode": "assistant", "instructions": value}, "assistant", engines)  # type: ignore[arg-type]
    ok = resolve_config({"mode": "assistant", "instructions": "Be brief."}, "assistant", engines)  # type: ignore[arg-type]
    assert ok["instructions"] == "Be brief."
