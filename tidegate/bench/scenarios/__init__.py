"""Scenario modules register themselves on import (:func:`tidegate.bench.harness.scenario`);
list each one here."""

from ..harness import SCENARIOS, Scenario
from . import (  # noqa: F401
    asr,
    assistant,
    cluster,
    control,
    db,
    ears,
    echo,
    engines,
    languages,
    llm_tts,
    sensors,
    turn_words,
    turns,
    vision,
)


def load_scenarios() -> dict[str, Scenario]:
    """Every scenario, by name (each module above registered itself on import)."""
    return SCENARIOS
