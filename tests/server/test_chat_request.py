"""The chat completions body, validated against OpenAI's documented types and ranges."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidegate.server.chat_request import (
    ChatRequestError,
    local_messages,
    parse_chat_request,
    sampling_params,
)

HI = [{"role": "user", "content": "hi"}]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_a_full_request_is_read() -> None:
    """Every documented field at a valid value is accepted; the local engine's view follows."""
    req = parse_chat_request(
        {
            "model": "smollm2-135m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
                },
                {"role": "assistant", "content": None, "tool_calls": []},
            ],
            "max_completion_tokens": 9,
            "max_tokens": 3,
            "temperature": 2,
            "top_p": 0,
            "n": 1,
            "stop": ["\n", "END"],
            "seed": -(2**63),
            "stream": True,
            "stream_options": {"include_usage": True},
            "presence_penalty": -2,
            "frequency_penalty": 2.0,
            "logit_bias": {"42": -100, "7": 100},
            "logprobs": False,
            "top_logprobs": 20,
            "user": "u1",
            "metadata": {"k": "v"},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "auto",
            "response_format": {"type": "text"},
            "unknown_field": {"ignored": True},
        }
    )
    assert (req.max_tokens, req.seed, req.stream, req.include_usage) == (9, -(2**63), True, True)
    params = sampling_params(req, 256)
    assert (params.temperature, params.top_p, params.stop) == (2.0, 0.0, ("\n", "END"))
    assert local_messages(req) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": ""},
    ]


@pytest.mark.parametrize(
    ("param", "extra"),
    [
        ("model", {"model": 7}),
        ("messages", {"messages": []}),
        ("messages", {"messages": "hi"}),
        ("messages[0]", {"messages": ["hi"]}),
        ("messages[0].role", {"messages": [{"role": "robot", "content": "x"}]}),
        ("messages[0].content", {"messages": [{"role": "user", "content": 5}]}),
        ("messages[0].content", {"messages": [{"role": "user", "content": None}]}),
        ("messages[0].content[0]", {"messages": [{"role": "user", "content": ["x"]}]}),
        (
            "messages[0].content[0].text",
            {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        ),
        ("messages[0].name", {"messages": [{"role": "user", "content": "x", "name": 3}]}),
        ("temperature", {"temperature": 2.01}),
        ("temperature", {"temperature": True}),
        ("top_p", {"top_p": -0.01}),
        ("max_tokens", {"max_tokens": 0}),
        ("max_tokens", {"max_tokens": 2**31}),
        ("max_tokens", {"max_tokens": "5"}),
        ("max_completion_tokens", {"max_completion_tokens": 1.5}),
        ("n", {"n": 129}),
        ("seed", {"seed": 2**63}),
        ("seed", {"seed": -(2**63) - 1}),
        ("seed", {"seed": 1.5}),
        ("seed", {"seed": False}),
        ("presence_penalty", {"presence_penalty": 2.5}),
        ("frequency_penalty", {"frequency_penalty": -2.5}),
        ("top_logprobs", {"top_logprobs": -1}),
        ("logprobs", {"logprobs": "yes"}),
        ("logit_bias", {"logit_bias": []}),
        ("logit_bias", {"logit_bias": {"x": 1}}),
        ("logit_bias", {"logit_bias": {"\u0661": 1}}),
        ("logit_bias", {"logit_bias": {"1": 100.5}}),
        ("stop", {"stop": 5}),
        ("stop", {"stop": ["a", "b", "c", "d", "e"]}),
        ("stream", {"stream": "true"}),
        ("stream_options", {"stream_options": []}),
        ("stream_options.include_usage", {"stream_options": {"include_usage": 1}}),
        ("user", {"user": 5}),
        ("metadata", {"metadata": "x"}),
        ("tools", {"tools": {"type": "function"}}),
        ("tool_choice", {"tool_choice": "always"}),
        ("response_format.type", {"response_format": {"type": "xml"}}),
    ],
)
def test_a_bad_field_is_refused_naming_it(param: str, extra: dict[str, Any]) -> None:
    """A field of the wrong type or out of OpenAI's range is refused with ``param`` naming it."""
    with pytest.raises(ChatRequestError) as refused:
        parse_chat_request({"model": "m", "messages": HI, **extra})
    assert refused.value.param == param
    assert refused.value.code == "invalid_field" and refused.value.message.startswith(param)


def test_what_the_local_engine_cannot_do_is_refused() -> None:
    """More than one choice, image parts and over-long stop strings are refused by name."""
    for param, extra in (
        ("n", {"n": 2}),
        (
            "messages[0].content",
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        ),
    ):
        req = parse_chat_request({"messages": HI, **extra})
        with pytest.raises(ChatRequestError, match=param.replace("[", r"\[")):
            sampling_params(req, 16)
            local_messages(req)
    with pytest.raises(ChatRequestError, match="stop"):
        sampling_params(parse_chat_request({"messages": HI, "stop": "x" * 65}), 16)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "messages",
        "temperature",
        "top_p",
        "n",
        "seed",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "stream",
        "stream_options",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "metadata",
        "tools",
        "tool_choice",
        "response_format",
        "model",
    ]
)


@FUZZ
@given(st.dictionaries(FIELDS, JSON, max_size=6), st.booleans())
def test_any_json_is_a_request_or_a_named_refusal(fields: dict[str, Any], chat: bool) -> None:
    """Whatever JSON the fields hold, the result is a request whose sampling settings the
    engine accepts, or a ChatRequestError naming a field; never another exception."""
    body = {"messages": HI, **fields} if chat else fields
    refusal = None
    try:
        req = parse_chat_request(body)
        sampling_params(req, 16)
        local_messages(req)
    except ChatRequestError as e:
        refusal = e
    if refusal is not None:
        assert refusal.param and refusal.message.startswith(refusal.param)
