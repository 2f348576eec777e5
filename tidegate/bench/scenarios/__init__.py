"""Scenario modules register themselves on import; list each one here."""

from . import control, engines  # noqa: F401
