"""Tools a conversation declares (validated, size-limited, normalised) and calls a model makes
(checked before they reach the client)."""

from __future__ import annotations

from typing import Any

import pytest

from tidegate.engines.errors import RequestError
from tidegate.engines.llm.tools import (
    ToolCallError,
    finish_call,
    validate_tool_choice,
    validate_tools,
)

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}}


def check(raw: Any) -> tuple[dict[str, Any], ...]:
    return validate_tools(raw, max_items=4, max_bytes=2048)


def test_both_forms_normalise_to_chat_completions() -> None:
    """The Chat Completions form and the flat Realtime form give the same tool."""
    nested = check([{"type": "function", "function": {"name": "f", "parameters": PARAMS}}])
    flat = check([{"type": "function", "name": "f", "parameters": PARAMS}])
    want = {"type": "function", "function": {"name": "f", "parameters": PARAMS}}
    assert nested == flat == (want,)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"name": "f"}, "expected a list"),
        ([{"type": "web_search"}], "tools[0]"),
        ([{"type": "function", "function": {"name": "bad name"}}], "tools[0].name"),
        ([{"type": "function", "name": "f"}, {"type": "function", "name": "f"}], "declared twice"),
        ([{"type": "function", "name": "f", "parameters": {"type": "array"}}], "parameters"),
        ([{"type": "function", "name": "f", "extra": 1}], "unexpected field 'extra'"),
        ([{"type": "function", "name": f"f{i}"} for i in range(5)], "at most 4"),
        ([{"type": "function", "name": "f", "description": "x" * 1000}] * 1, "bytes of JSON"),
    ],
)
def test_bad_tools_are_refused_naming_the_problem(raw: Any, words: str) -> None:
    """A bad declaration is refused with a message naming what is wrong."""
    with pytest.raises(RequestError, match=words.replace("[", r"\[").replace("]", r"\]")):
        validate_tools(raw, max_items=4, max_bytes=512)


def test_tool_choice_names_a_declared_tool() -> None:
    """tool_choice is auto/none/required or a declared function; anything else is refused."""
    tools = check([{"type": "function", "name": "f"}])
    assert validate_tool_choice("required", tools) == "required"
    named = {"type": "function", "function": {"name": "f"}}
    assert validate_tool_choice(named, tools) == named
    with pytest.raises(RequestError, match="tool_choice"):
        validate_tool_choice({"type": "function", "function": {"name": "g"}}, tools)


def test_a_finished_call_must_be_a_declared_tool_with_a_json_object() -> None:
    """A call's arguments must be one JSON object (empty counts as {}) of a declared tool."""
    assert finish_call("c1", "f", ' {"city": "Paris"} ', {"f"}).arguments == '{"city": "Paris"}'
    assert finish_call("c1", "f", "", {"f"}).arguments == "{}"
    with pytest.raises(ToolCallError, match="not valid JSON"):
        finish_call("c1", "f", '{"city": "Par', {"f"})
    with pytest.raises(ToolCallError, match="not a JSON object"):
        finish_call("c1", "f", "[1]", {"f"})
    with pytest.raises(ToolCallError, match="not a declared tool"):
        finish_call("c1", "g", "{}", {"f"})
