"""Tool calling in the assistant mode, end to end: a real server (VAD, ASR, TTS engines; the LLM on
llama-cpp-python's server as its provider, tests/llama.py) and a WS-only client that declares
tools, gets the model's call as ``response.function_call.delta`` / ``.done``, answers with
``function_call.output`` and hears the reply that follows as speech."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.llama import WEATHER, ToolServer
from tests.support import scaled, wait_ready
from tidegate.bench.llama_server import LlamaServer
from tidegate.bench.wer import wer
from tidegate.engines.asr.whisper_onnx import WhisperOnnx
from tidegate.pipelines.reply import ReplyLane
from tidegate.protocol.client import RefusedError
from tidegate.protocol.messages import (
    FunctionCallOutput,
    InputText,
    OutputAudio,
    ResponseCancel,
    ResponseDone,
    ResponseFunctionCallDelta,
    ResponseFunctionCallDone,
    ResponseTextDelta,
    SessionUpdate,
    SessionUpdated,
)

from .conftest import LiveServer, make_settings, run_server
from .test_assistant import Conversation, transcribe
from .test_assistant import prepared as prepared  # a fixture
from .test_assistant import whisper as whisper  # a fixture

pytestmark = pytest.mark.asyncio(loop_scope="module")

NAMED = {"type": "function", "function": {"name": "get_weather"}}
TOOLS = {"mode": "assistant", "tools": [WEATHER], "tool_choice": NAMED}
ASK = "What is the weather in Paris?"
SUNNY = '{"city": "Paris", "sky": "sunny", "temperature_c": 21}'
TOOL_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def provider(
    tool_server_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LlamaServer]:
    """A provider that can call tools (llama-cpp-python's server, tests/llama.py)."""
    server = ToolServer(tool_server_python, tmp_path_factory.mktemp("llama"), name="a")
    server.start()
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(
    tmp_path_factory: pytest.TempPathFactory,
    prepared: Path,
    provider: LlamaServer,
) -> AsyncIterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("assistant-tools")
    (tmp / "models").symlink_to(prepared / "models")
    settings = make_settings(
        tmp,
        engines=("vad", "asr", "llm", "tts"),
        llm_runtime="providers",
        llm_providers=(f"a={provider.url}",),
        assistant_tool_timeout_s=TOOL_TIMEOUT_S,
        assistant_max_reply_tokens=48,
    )
    async with run_server(settings) as server:
        await wait_ready(server.http, timeout_s=120)
        yield server


class tools_session:
    """``async with tools_session(live) as c``: an assistant session declaring the tools."""

    def __init__(self, live: LiveServer, config: dict[str, Any] | None = None) -> None:
        self.live = live
        self.config = config or TOOLS

    async def __aenter__(self) -> Conversation:
        self.client = await self.live.client()
        created = await self.client.create_session(self.config)
        self.conv = Conversation(self.client, created.session_id)
        self.reader = asyncio.get_running_loop().create_task(self.conv.read())
        return self.conv

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.client.close_session()
        finally:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
            await self.client.close()


async def test_a_tool_round_trip_is_heard_as_speech(
    live: LiveServer,
    whisper: WhisperOnnx,
) -> None:
    """The model's call reaches the client as deltas then one done (a JSON object naming the
    city); the client's output goes back and the reply goes on, as text and as speech that
    says that text; the response is recorded with the call and its output."""
    async with tools_session(live) as c:
        await c.client.send(InputText(id="t1", text=ASK))
        await c.wait(lambda: c.of(ResponseFunctionCallDone))
        (call,) = c.of(ResponseFunctionCallDone)
        await c.client.send(FunctionCallOutput(id="o1", call_id=call.call_id, output=SUNNY))
        await c.wait(lambda: c.done())
        await asyncio.sleep(0.2)
    (done,) = c.done()
    assert done.status == "completed" and done.response_id == call.response_id, done
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments), dict)
    pieces = [d for d in c.of(ResponseFunctionCallDelta) if d.call_id == call.call_id]
    assert pieces and "".join(p.arguments for p in pieces).strip() == call.arguments.strip()
    kinds = [type(e) for e, _ in c.events]
    assert kinds.index(ResponseFunctionCallDelta) < kinds.index(ResponseFunctionCallDone)
    assert done.text and c.deltas(done.response_id) == done.text
    assert kinds.index(ResponseFunctionCallDone) < kinds.index(ResponseTextDelta)
    audio = c.audio(done.response_id)
    assert len(audio) / 48_000 > 0.5
    heard = transcribe(whisper, audio)
    assert wer(done.text, heard) <= 0.5, (done.text, heard)
    admin = live.token()
    async with httpx.AsyncClient(base_url=live.http) as http, asyncio.timeout(scaled(30)):
        while True:
            r = await http.get(
                f"/v1/sessions/{c.session_id}/responses",
                headers={"Authorization": f"Bearer {admin}"},
            )
            items = r.json().get("items", []) if r.status_code == 200 else []
            if items:
                break
            await asyncio.sleep(0.2)
    (row,) = items
    (recorded,) = json.loads(row["tool_calls"])
    assert recorded == {
        "call_id": call.call_id,
        "name": "get_weather",
        "arguments": call.arguments,
        "output": SUNNY,
    }


async def test_an_unanswered_call_fails_the_reply(live: LiveServer) -> None:
    """A client that never answers a call gets, after assistant_tool_timeout_s, the reply
    ended failed with a reason naming the call; a late output is refused (not_found)."""
    async with tools_session(live) as c:
        await c.client.send(InputText(id="t1", text=ASK))
        await c.wait(lambda: c.done(), timeout_s=60 + TOOL_TIMEOUT_S)
        (call,) = c.of(ResponseFunctionCallDone)
        with pytest.raises(RefusedError) as late:
            await c.client.request(FunctionCallOutput(id="o1", call_id=call.call_id, output="{}"))
    (done,) = c.done()
    assert done.status == "failed" and done.reason is not None
    assert call.call_id in done.reason and f"within {TOOL_TIMEOUT_S:g} s" in done.reason
    assert late.value.server_code == "not_found"


async def test_cancel_while_a_call_waits(live: LiveServer) -> None:
    """response.cancel while a call waits for its output ends the reply cancelled at once."""
    async with tools_session(live) as c:
        await c.client.send(InputText(id="t1", text=ASK))
        await c.wait(lambda: c.of(ResponseFunctionCallDone))
        await c.client.send(ResponseCancel(id="x1"))
        await c.wait(lambda: c.done(), timeout_s=TOOL_TIMEOUT_S / 2)
        session = live.runtime.registry.get(c.session_id)
        assert session is not None
        history = list(session.mode.lane(ReplyLane).history)  # type: ignore[union-attr]
    (done,) = c.done()
    assert done.status == "cancelled"
    assert all("tool_calls" not in m and m["role"] != "tool" for m in history)
    assert not [a for a in c.of(OutputAudio) if a.response_id == done.response_id]


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"mode": "assistant", "tools": "get_weather"}, "expected a list"),
        ({"mode": "assistant", "tools": [{"type": "function", "name": "a b"}]}, "name"),
        ({"mode": "assistant", "tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"mode": "loopback", "tools": [WEATHER]}, "only the assistant mode"),
    ],
)
async def test_bad_tools_are_refused_at_creation(
    live: LiveServer, config: dict[str, Any], words: str
) -> None:
    """A session whose tools are malformed is refused (invalid_field) naming the problem."""
    async with await live.client() as client:
        with pytest.raises(RefusedError) as caught:
            await client.create_session(config)
    assert caught.value.server_code == "invalid_field" and words in str(caught.value)


async def test_response_done_reason_is_absent_when_completed(live: LiveServer) -> None:
    """A reply without tools completes with no reason."""
    async with tools_session(live, {"mode": "assistant"}) as c:
        await c.client.send(InputText(id="t1", text="Say hello."))
        await c.wait(lambda: c.done())
    (done,) = c.done()
    assert isinstance(done, ResponseDone) and done.status == "completed" and done.reason is None


async def test_tools_can_be_declared_by_session_update(live: LiveServer) -> None:
    """session.update adds tools to a running assistant session, normalised (the flat Realtime
    form becomes the Chat Completions form)."""
    flat = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}
    async with await live.client() as client:
        await client.create_session({"mode": "assistant"})
        updated = await client.request(SessionUpdate(id="u1", config={"tools": [flat]}))
    assert isinstance(updated, SessionUpdated)
    assert updated.config["tools"] == [
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    ]
