"""Settings -> the engine layer's specs: the composition root walks the engine table
(tidegate/engines/registry.py), giving each kind its config (``settings.engine(KIND)``) and
the settings every engine shares. The engine layer never reads the server's settings."""

from __future__ import annotations

from tidegate.engines.llm.providers import ProvidersSettings
from tidegate.engines.registry import LLM, EngineSpec
from tidegate.engines.registry import engine_specs as specs_of
from tidegate.engines.registry import provider_settings as providers_of

from .settings import Settings


def engine_specs(settings: Settings) -> list[EngineSpec]:
    """The engines ``settings`` asks for (``engines``), each built from its row of the table;
    ValueError naming the bad setting otherwise."""
    return specs_of(settings.engines, settings.engine_configs, settings.engine_defaults())


def provider_settings(settings: Settings) -> ProvidersSettings | None:
    """The providers of ``llm_runtime=providers`` (None for the local model); ValueError naming
    the bad entry."""
    return providers_of(settings.engine(LLM))
