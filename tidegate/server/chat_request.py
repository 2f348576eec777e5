"""The body of ``POST /v1/chat/completions``, validated at the edge before anything reaches an
engine: every field OpenAI's Chat Completions API documents is checked for its type and
documented range, whatever serves the request afterwards (the local LLM batcher, or another
provider). Unknown fields are ignored, as OpenAI-compatible servers do.

:func:`parse_chat_request` answers a :class:`ChatRequest` or raises :class:`ChatRequestError`
(``invalid_field``, HTTP 400), whose ``param`` names the field. :func:`sampling_params` and
:func:`local_messages` turn a request into what the local engine takes (and refuse what it
cannot do: more than one choice, content parts other than text).

Ranges (OpenAI's): ``temperature`` 0..2, ``top_p`` 0..1, ``presence_penalty`` and
``frequency_penalty`` -2..2, ``n`` 1..128, ``seed`` a signed 64-bit integer, ``max_tokens`` /
``max_completion_tokens`` at least 1, ``stop`` a string or up to 4 strings, ``logit_bias``
token ids to -100..100, ``top_logprobs`` 0..20. An integer field takes a JSON number with no
fraction; booleans are never numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tidegate.engines.errors import RequestError
from tidegate.engines.llm import SamplingParams
from tidegate.protocol import ErrorCode

from .errors import RefusalError

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MAX_STOP_SEQUENCES = 4
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
INT32_MAX = 2**31 - 1
MAX_NAME_CHARS = 256
TOKEN_ID_RE = re.compile(r"0|[1-9][0-9]{0,9}")
TOOL_CHOICES = ("none", "auto", "required")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")


class ChatRequestError(RefusalError):
    """A field of the request is missing, of the wrong type or out of range; ``param`` names
    it (as OpenAI's error object does)."""

    code = ErrorCode.INVALID_FIELD

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated request. ``body`` is the whole parsed body, for a provider that forwards
    the fields it understands."""

    model: str | None
    messages: tuple[Mapping[str, Any], ...]
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    n: int
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool
    body: Mapping[str, Any]


# -- field checks ----------------------------------------------------------------------------


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ChatRequestError(name, f"expected a number from {low:g} to {high:g}")
    if not low <= value <= high:
        raise ChatRequestError(name, f"expected a number from {low:g} to {high:g}, got {value}")
    return float(value)


def _integer(body: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChatRequestError(name, f"expected an integer from {low} to {high}")
    if not low <= value <= high:
        raise ChatRequestError(name, f"expected an integer from {low} to {high}, got {value}")
    return value


def _boolean(body: Mapping[str, Any], name: str, where: str = "") -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise ChatRequestError(where + name, "expected true or false")
    return value


def _string(body: Mapping[str, Any], name: str, where: str = "") -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or len(value) > MAX_NAME_CHARS):
        raise ChatRequestError(
            where + name, f"expected a string of at most {MAX_NAME_CHARS} characters"
        )
    return value


def _object(body: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise ChatRequestError(name, "expected an object")
    return value


def _content(i: int, role: str, content: Any) -> None:
    where = f"messages[{i}].content"
    if isinstance(content, str):
        return
    if content is None:
        if role in ("assistant", "function"):  # an assistant turn that only called tools
            return
        raise ChatRequestError(where, "expected a string or an array of content parts")
    if not isinstance(content, list):
        raise ChatRequestError(where, "expected a string or an array of content parts")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise ChatRequestError(f"{where}[{j}]", 'expected an object with a string "type"')
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise ChatRequestError(f"{where}[{j}].text", "expected a string")


def _messages(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ChatRequestError("messages", "expected a non-empty array of messages")
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise ChatRequestError(f"messages[{i}]", "expected an object")
        role = m.get("role")
        if role not in ROLES:
            raise ChatRequestError(f"messages[{i}].role", f"expected one of {list(ROLES)}")
        _content(i, role, m.get("content"))
        _string(m, "name", f"messages[{i}].")
    return tuple(raw)


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if (
        isinstance(stop, list)
        and len(stop) <= MAX_STOP_SEQUENCES
        and all(isinstance(s, str) for s in stop)
    ):
        return tuple(stop)
    raise ChatRequestError("stop", f"expected a string or an array of 1 to {MAX_STOP_SEQUENCES}")


def _logit_bias(body: Mapping[str, Any]) -> None:
    for key, value in (_object(body, "logit_bias") or {}).items():
        if TOKEN_ID_RE.fullmatch(key) is None:
            raise ChatRequestError("logit_bias", f"keys are token ids (ASCII digits), got {key!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ChatRequestError("logit_bias", f"values are numbers, got {value!r}")
        if not -100 <= value <= 100:
            raise ChatRequestError("logit_bias", f"values are -100 to 100, got {value!r}")


def _tools(body: Mapping[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None and (
        not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)
    ):
        raise ChatRequestError("tools", "expected an array of objects")
    choice = body.get("tool_choice")
    if choice is not None and choice not in TOOL_CHOICES and not isinstance(choice, dict):
        raise ChatRequestError("tool_choice", f"expected one of {list(TOOL_CHOICES)} or an object")
    fmt = _object(body, "response_format")
    if fmt is not None and fmt.get("type") not in RESPONSE_FORMATS:
        raise ChatRequestError("response_format.type", f"expected one of {list(RESPONSE_FORMATS)}")


# -- the request -----------------------------------------------------------------------------


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate a parsed JSON body (see the module docstring)."""
    if not isinstance(body, dict):
        raise ChatRequestError("body", "expected a JSON object")
    model = _string(body, "model")
    messages = _messages(body)
    max_tokens = _integer(body, "max_tokens", 1, INT32_MAX)
    newer = _integer(body, "max_completion_tokens", 1, INT32_MAX)
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    n = _integer(body, "n", 1, 128)
    seed = _integer(body, "seed", INT64_MIN, INT64_MAX)
    for name in ("presence_penalty", "frequency_penalty"):
        _number(body, name, -2, 2)
    _integer(body, "top_logprobs", 0, 20)
    for name in ("logprobs", "store", "parallel_tool_calls"):
        _boolean(body, name)
    for name in ("user", "safety_identifier", "prompt_cache_key", "service_tier"):
        _string(body, name)
    _object(body, "metadata")
    _logit_bias(body)
    _tools(body)
    stream = _boolean(body, "stream") or False
    options = _object(body, "stream_options")
    include_usage = False
    if options is not None:
        include_usage = _boolean(options, "include_usage", "stream_options.") is True
    return ChatRequest(
        model=model,
        messages=messages,
        max_tokens=newer if newer is not None else max_tokens,
        temperature=temperature,
        top_p=top_p,
        n=1 if n is None else n,
        stop=_stop(body),
        seed=seed,
        stream=stream,
        include_usage=include_usage,
        body=body,
    )


# -- what the local engine takes -------------------------------------------------------------


def sampling_params(req: ChatRequest, default_max_tokens: int) -> SamplingParams:
    """The local engine's sampling settings for ``req`` (OpenAI's defaults: temperature 1,
    top_p 1)."""
    if req.n != 1:
        raise ChatRequestError("n", "this server answers 1 choice per request")
    try:
        return SamplingParams(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            max_tokens=default_max_tokens if req.max_tokens is None else req.max_tokens,
            stop=req.stop,
            seed=req.seed,
        )
    except RequestError as e:
        raise ChatRequestError("stop", str(e)) from None


def local_messages(req: ChatRequest) -> list[dict[str, str]]:
    """The chat as the local engine's template takes it: ``developer`` is ``system``, text
    parts are joined; other content parts are refused."""
    out = []
    for i, m in enumerate(req.messages):
        role, content = m["role"], m.get("content")
        if role == "developer":
            role = "system"
        if isinstance(content, list):
            if any(part["type"] != "text" for part in content):
                raise ChatRequestError(
                    f"messages[{i}].content", "only text parts are supported by this model"
                )
            content = "".join(part["text"] for part in content)
        out.append({"role": role, "content": content or ""})
    return out
