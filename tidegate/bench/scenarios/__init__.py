"""Scenario modules register themselves on import; list each one here."""

from . import asr, assistant, control, db, echo, engines, llm_tts, sensors, vision  # noqa: F401
