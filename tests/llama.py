"""The real OpenAI-compatible server of the LLM provider tests (a pytest plugin, loaded by
tests/conftest.py): llama.cpp's ``llama-server`` serving SmolLM2-135M
(:mod:`tidegate.bench.llama_server`), built by scripts/fetch_assets.py on first use and cached
under .cache/llama-server/. ``llama_servers(n)`` starts n of them on loopback ports; they are
stopped after the test."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tidegate.bench.llama_server import LlamaServer

ROOT = Path(__file__).resolve().parents[1]


def llama_binary() -> Path:
    """The llama-server binary, built (minutes, once per machine) if it is missing."""
    spec = importlib.util.spec_from_file_location(
        "fetch_assets", ROOT / "scripts" / "fetch_assets.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path: Path = module.llama_server(ROOT / ".cache")
    return path


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    return llama_binary()


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
