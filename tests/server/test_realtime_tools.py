"""A function call round trip over ``/v1/realtime`` with the official SDK: the LLM on
llama-cpp-python's server as its provider (tests/llama.py; a grammar makes SmolLM2-135M emit
the named call), the other engines local, as in test_assistant_tools.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.llama import WEATHER, ToolServer
from tests.support import wait_ready
from tidegate.bench.llama_server import LlamaServer

from .conftest import LiveServer, make_settings, run_server
from .test_realtime import Events, no_errors, session, user_text
from .test_realtime import prepared as prepared  # a fixture

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOOL = {  # the Realtime API's flat function form
    "type": "function",
    "name": WEATHER["function"]["name"],
    "description": WEATHER["function"]["description"],
    "parameters": WEATHER["function"]["parameters"],
}
SUNNY = '{"city": "Paris", "sky": "sunny", "temperature_c": 21}'


@pytest.fixture(scope="module")
def provider(
    tool_server_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    server = ToolServer(tool_server_python, tmp_path_factory.mktemp("llama"), name="a")
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(
    tmp_path_factory: pytest.TempPathFactory, prepared: Path, provider: LlamaServer
) -> AsyncIterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("realtime-tools")
    (tmp / "models").symlink_to(prepared / "models")
    settings = make_settings(
        tmp,
        engines=("vad", "asr", "llm", "tts"),
        llm_runtime="providers",
        llm_providers=(f"a={provider.url}",),
        assistant_max_reply_tokens=48,
    )
    async with run_server(settings) as server:
        await wait_ready(server.http, timeout_s=120)
        yield server


async def test_function_call_round_trip(live: LiveServer) -> None:
    """session.update declares the tool (flat form, a named tool_choice); a text question
    gets the call as argument deltas, its done, and a response.done listing the call; the
    client's function_call_output and response.create get the spoken continuation."""

    async def body(connection: Any, events: Events) -> None:
        await connection.session.update(
            session={
                "type": "realtime",
                "tools": [TOOL],
                "tool_choice": {"type": "function", "name": "get_weather"},
            }
        )
        await events.until(lambda: events.of("session.updated") or events.of("error"), 30)
        await connection.conversation.item.create(item=user_text("What is the weather in Paris?"))
        await connection.response.create()
        await events.until(lambda: events.of("response.done"))
        (call,) = events.of("response.function_call_arguments.done")
        await connection.conversation.item.create(
            item={"type": "function_call_output", "call_id": call["call_id"], "output": SUNNY}
        )
        await connection.response.create()
        await events.until(lambda: len(events.of("response.done")) >= 2)

    events = await session(live, body)
    no_errors(events)
    (call,) = events.of("response.function_call_arguments.done")
    assert call["name"] == "get_weather"
    assert isinstance(json.loads(call["arguments"]), dict)
    deltas = [
        e["delta"]
        for e in events.of("response.function_call_arguments.delta")
        if e["call_id"] == call["call_id"]
    ]
    assert "".join(deltas).strip() == call["arguments"].strip()
    first, second = events.of("response.done")[:2]
    calls = [o for o in first["response"]["output"] if o["type"] == "function_call"]
    assert [c["call_id"] for c in calls] == [call["call_id"]]
    assert second["response"]["status"] == "completed"
    assert second["response"]["id"] != first["response"]["id"]
    message = next(o for o in second["response"]["output"] if o["type"] == "message")
    assert message["content"][0]["transcript"]
    audio = events.of("response.output_audio.delta")
    assert any(e["response_id"] == second["response"]["id"] for e in audio)


async def test_a_response_brings_its_own_tools(live: LiveServer) -> None:
    """``response.create`` with its own ``tools`` and ``tool_choice`` (none for the session):
    the call comes as with session tools; a ``tool_choice`` naming a tool the response does
    not declare is refused naming it, and the session goes on."""

    async def body(connection: Any, events: Events) -> None:
        await connection.response.create(
            response={"tools": [TOOL], "tool_choice": {"type": "function", "name": "get_time"}}
        )
        await events.until(lambda: events.of("error"), 30)
        await connection.conversation.item.create(item=user_text("What is the weather in Paris?"))
        await connection.response.create(
            response={
                "tools": [TOOL],
                "tool_choice": {"type": "function", "name": "get_weather"},
            }
        )
        await events.until(lambda: events.of("response.done"))

    events = await session(live, body)
    (error,) = events.of("error")
    assert "tool_choice" in error["error"]["message"], error
    (call,) = events.of("response.function_call_arguments.done")
    assert call["name"] == "get_weather" and isinstance(json.loads(call["arguments"]), dict)
    (done,) = events.of("response.done")
    assert [o["type"] for o in done["response"]["output"]] == ["function_call"]
