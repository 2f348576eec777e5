"""The real OpenAI-compatible servers of the LLM provider tests (a pytest plugin, loaded by
tests/conftest.py), both serving SmolLM2-135M and built by scripts/fetch_assets.py on first use
(cached under .cache/):

- llama.cpp's ``llama-server`` (:mod:`tidegate.bench.llama_server`): ``llama_servers(n)``
  starts n of them on loopback ports; they are stopped after the test;
- llama-cpp-python's server (``python -m llama_cpp.server``, in a venv of its own) with its
  ``chatml-function-calling`` chat handler, for tool calls: a call named by ``tool_choice`` is
  constrained by a grammar from the first token of the reply, so even a 135M model emits a
  valid call. llama-server cannot do that with this model: its tool grammars let free text
  come first, and SmolLM2-135M then never stops talking (docs/llm-tts.md). ``tool_server``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletionFunctionToolParam

from tidegate.bench.llama_server import LlamaServer

ROOT = Path(__file__).resolve().parents[1]

Servers = Callable[..., list[LlamaServer]]
#: the tool the provider tests declare (OpenAI function schema)
WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _fetch_assets() -> Any:
    spec = importlib.util.spec_from_file_location(
        "fetch_assets", ROOT / "scripts" / "fetch_assets.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def llama_binary() -> Path:
    """The llama-server binary, built (minutes, once per machine) if it is missing."""
    path: Path = _fetch_assets().llama_server(ROOT / ".cache")
    return path


def llama_python() -> Path:
    """The python of the llama-cpp-python server's venv, built (minutes, once) if missing."""
    path: Path = _fetch_assets().llama_cpp_python_venv(ROOT / ".cache")
    return path


class ToolServer(LlamaServer):
    """llama-cpp-python's OpenAI-compatible server, chat handler chatml-function-calling."""

    health_path = "/v1/models"

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--chat_format",
            "chatml-function-calling",
            "--n_ctx",
            str(self.context_tokens),
            "--n_threads",
            "1",
            "--n_threads_batch",
            "1",
            *self.extra,
        ]


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    return llama_binary()


@pytest.fixture(scope="session")
def tool_server_python() -> Path:
    return llama_python()


@pytest.fixture
def tool_server(tool_server_python: Path, tmp_path: Path) -> Iterator[ToolServer]:
    """A running llama-cpp-python server (see the module docstring)."""
    server = ToolServer(tool_server_python, tmp_path, name="tools")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def llama_servers(
    llama_server_binary: Path, tmp_path: Path
) -> Iterator[Callable[..., list[LlamaServer]]]:
    """``llama_servers(n, **options)``: n running llama-servers named a, b, ..."""
    started: list[LlamaServer] = []

    def start(n: int, **options: Any) -> list[LlamaServer]:
        out = []
        for _ in range(n):
            server = LlamaServer(
                llama_server_binary, tmp_path, name=chr(ord("a") + len(started)), **options
            )
            started.append(server)
            server.start()
            out.append(server)
        return out

    yield start
    for server in started:
        server.stop()
