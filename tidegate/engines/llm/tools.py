"""Tool (function) calling: the tools a conversation declares, validated and size-limited, and
the calls a model makes.

A tool is OpenAI's function schema, in the Chat Completions form
``{"type": "function", "function": {"name", "description", "parameters"}}`` or the flat form of
the Realtime API (``{"type": "function", "name", "description", "parameters"}``); both are
normalised to the first. A call streams as :class:`ToolCallDelta` pieces (its ``arguments``
arrive as fragments of JSON text) and ends as a :class:`ToolCall` whose arguments have been
checked to be one JSON object: a model that emits anything else fails the reply with
:class:`ToolCallError` (the model's fault, not the client's; no repair is attempted).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import EngineError, RequestError

TOOL_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_DESCRIPTION_CHARS = 1024
TOOL_CHOICES = ("auto", "none", "required")


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call as it streams: ``index`` orders the calls of one reply;
    ``call_id`` and ``name`` are known from the call's first piece; ``arguments`` is the new
    fragment of its JSON text."""

    index: int
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A whole tool call: ``arguments`` is JSON text of one object."""

    call_id: str
    name: str
    arguments: str

    def as_message(self) -> dict[str, Any]:
        """The call as an entry of an assistant message's ``tool_calls``."""
        return {
            "id": self.call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


class ToolCallError(EngineError):
    """The model called a tool badly (arguments that are not a JSON object, or a tool that
    was not declared): the reply fails; the message says what the model emitted."""


def validate_tools(raw: Any, *, max_items: int, max_bytes: int) -> tuple[dict[str, Any], ...]:
    """``raw`` as a tuple of tools in the Chat Completions form; :class:`RequestError` naming
    the first problem (not a list, too many, too large, a bad name, parameters that are not a
    JSON-schema object, a name declared twice)."""
    if not isinstance(raw, list):
        raise RequestError("tools: expected a list of function tools")
    if len(raw) > max_items:
        raise RequestError(f"tools: {len(raw)} tools; at most {max_items}")
    try:
        size = len(orjson.dumps(raw))
    except TypeError as e:
        raise RequestError(f"tools: not JSON: {e}") from None
    if size > max_bytes:
        raise RequestError(f"tools: {size} bytes of JSON; at most {max_bytes}")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise RequestError(f'{where}: expected {{"type": "function", ...}}')
        fn = tool.get("function", tool)
        if not isinstance(fn, dict):
            raise RequestError(f"{where}.function: expected a map")
        allowed = {"name", "description", "parameters", "strict"}
        extra = sorted(set(fn) - allowed - ({"type", "function"} if fn is tool else set()))
        if extra:
            raise RequestError(f"{where}: unexpected field {extra[0]!r}")
        name = fn.get("name")
        if not isinstance(name, str) or not TOOL_NAME_RE.fullmatch(name):
            raise RequestError(f"{where}.name: expected 1 to 64 of A-Z, a-z, 0-9, _ and -")
        if name in seen:
            raise RequestError(f"{where}.name: {name!r} is declared twice")
        seen.add(name)
        function: dict[str, Any] = {"name": name}
        description = fn.get("description")
        if description is not None:
            if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
                raise RequestError(
                    f"{where}.description: expected a string of at most "
                    f"{MAX_DESCRIPTION_CHARS} characters"
                )
            function["description"] = description
        parameters = fn.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
                raise RequestError(
                    f'{where}.parameters: expected a JSON schema of {{"type": "object", ...}}'
                )
            function["parameters"] = parameters
        if isinstance(fn.get("strict"), bool):
            function["strict"] = fn["strict"]
        out.append({"type": "function", "function": function})
    return tuple(out)


def validate_tool_choice(raw: Any, tools: tuple[dict[str, Any], ...]) -> Any:
    """``auto``, ``none``, ``required`` or ``{"type": "function", "function": {"name"}}`` naming
    a declared tool; :class:`RequestError` otherwise."""
    if raw is None or raw in TOOL_CHOICES:
        return raw
    names = {t["function"]["name"] for t in tools}
    if isinstance(raw, dict) and raw.get("type") == "function":
        fn = raw.get("function")
        if isinstance(fn, dict) and fn.get("name") in names:
            return {"type": "function", "function": {"name": fn["name"]}}
    raise RequestError(
        "tool_choice: expected auto, none, required or "
        '{"type": "function", "function": {"name": ...}} naming a declared tool'
    )


def finish_call(call_id: str, name: str, arguments: str, declared: set[str]) -> ToolCall:
    """The streamed call, checked: a declared tool, arguments one JSON object (empty text
    counts as ``{}``). :class:`ToolCallError` otherwise."""
    if name not in declared:
        raise ToolCallError(f"the model called {name!r}, which is not a declared tool")
    text = arguments.strip() or "{}"
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        shown = text if len(text) <= 200 else text[:197] + "..."
        raise ToolCallError(
            f"the model called {name!r} with arguments that are not valid JSON: {shown!r}"
        ) from None
    if not isinstance(value, dict):
        raise ToolCallError(f"the model called {name!r} with arguments that are not a JSON object")
    return ToolCall(call_id, name, text)
