"""The conformance check: a server event is valid when the official SDK's pydantic union
(``openai.types.realtime.RealtimeServerEvent``) takes it, and it carries no field that the
SDK's models do not declare (they allow extras, so that is checked here)."""

from __future__ import annotations

from typing import Any

import orjson
from openai.types.realtime import RealtimeServerEvent
from pydantic import BaseModel, TypeAdapter

SERVER_EVENTS: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)


def _no_extras(model: Any, path: str) -> None:
    if isinstance(model, BaseModel):
        extra = model.model_extra or {}
        assert not extra, f"{path}: fields the SDK does not declare: {sorted(extra)}"
        for name in type(model).model_fields:
            _no_extras(getattr(model, name), f"{path}.{name}")
    elif isinstance(model, list):
        for i, v in enumerate(model):
            _no_extras(v, f"{path}[{i}]")
    elif isinstance(model, dict):
        for k, v in model.items():
            _no_extras(v, f"{path}.{k}")


def check_server_event(text: str) -> dict[str, Any]:
    """Validate one JSON text frame; returns it decoded."""
    data: dict[str, Any] = orjson.loads(text)
    event = SERVER_EVENTS.validate_python(data)
    _no_extras(event, data["type"])
    return data


def check_all(frames: list[str]) -> list[dict[str, Any]]:
    return [check_server_event(f) for f in frames]
