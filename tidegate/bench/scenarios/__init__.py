"""Scenario modules register themselves on import; list each one here."""

from . import (  # noqa: F401
    asr,
    assistant,
    cluster,
    control,
    db,
    ears,
    echo,
    engines,
    llm_tts,
    sensors,
    vision,
)
