"""The /v1/realtime opening: token from the header or the browser subprotocol, model, refusals."""

from __future__ import annotations

import pytest

from tidegate.protocol.realtime import RealtimeCode, RealtimeError
from tidegate.protocol.realtime.handshake import Handshake, accept


def test_bearer_header_as_the_sdks_send_it() -> None:
    """The SDK's Authorization header and ?model= are taken; no subprotocol is answered."""
    h = accept([], {"authorization": "Bearer abc.def.ghi"}, {"model": "gpt-realtime"})
    assert h == Handshake(
        token="abc.def.ghi", subprotocol=None, model="gpt-realtime", session_type="realtime"
    )


def test_browser_subprotocols() -> None:
    """A browser's ["realtime", "openai-insecure-api-key.<jwt>"]: the key is taken and only
    "realtime" is answered; organisation and project entries are ignored."""
    h = accept(["realtime", "openai-insecure-api-key.tok", "openai-project.p1"], {}, {})
    assert h == Handshake(
        token="tok", subprotocol="realtime", model="tidegate", session_type="realtime"
    )
    assert accept([], {}, {"intent": "transcription"}).session_type == "transcription"


def test_a_call_id_asks_for_a_sideband() -> None:
    """``?call_id=`` names the WebRTC call to attach to (the shell checks it exists)."""
    assert accept([], {}, {"call_id": "s_Ab3-x_9"}).call_id == "s_Ab3-x_9"
    assert accept([], {}, {}).call_id is None


def test_no_credentials_is_left_to_the_shell() -> None:
    """Nothing offered: token None (the shell refuses with 4401)."""
    assert accept(["realtime"], {}, {}).token is None


@pytest.mark.parametrize(
    ("subprotocols", "headers", "query", "param"),
    [
        (["realtime", "openai-beta.realtime-v1"], {}, {}, "OpenAI-Beta"),
        ([], {"openai-beta": "realtime=v1"}, {}, "OpenAI-Beta"),
        ([], {}, {"call_id": "rtc/../1"}, "call_id"),
        ([], {}, {"call_id": ""}, "call_id"),
        ([], {}, {"call_id": "x" * 65}, "call_id"),
        ([], {}, {"model": "x" * 200}, "model"),
        ([], {}, {"intent": "chat"}, "intent"),
    ],
)
def test_refusals_name_what(
    subprotocols: list[str], headers: dict[str, str], query: dict[str, str], param: str
) -> None:
    """The beta protocol, malformed call ids and odd models are refused, naming the
    parameter."""
    with pytest.raises(RealtimeError) as info:
        accept(subprotocols, headers, query)
    assert info.value.param == param
    assert info.value.realtime_code in {c.value for c in RealtimeCode}
