"""Scenario modules register themselves on import; list each one here."""

from . import control  # noqa: F401
