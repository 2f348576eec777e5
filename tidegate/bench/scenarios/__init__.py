"""Scenario modules register themselves on import; list each one here."""

from . import control, db, echo, engines, llm_tts  # noqa: F401
