"""Imports point down the layer list of DESIGN.md, never up; the protocol core does no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "tidegate"

ALLOWED = {
    "protocol": {"protocol"},
    "media": {"protocol", "media"},
    "engines": {"protocol", "engines"},
    "server": {"protocol", "media", "engines", "server"},
    "bench": {"protocol", "bench"},
}
# Single modules a layer may import beyond its map, each with its reason.
ALLOWED_MODULES = {
    # The bench's WebRTC client taps raw RTP arrivals off aiortc's receiver (no playout
    # buffer); only the seam may touch that private hook (tests/media/test_aiortc_seam.py).
    "bench": {"tidegate.media._aiortc"},
}
# The sans-I/O core: no event loop, sockets, threads or clocks (client/ is the I/O shell).
IO_MODULES = {
    "asyncio",
    "socket",
    "selectors",
    "ssl",
    "threading",
    "time",
    "datetime",
    "websockets",
    "trio",
    "anyio",
}


def imports_of(path: Path) -> list[tuple[str, int]]:
    """Absolute module names imported by a file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(ROOT.parent).parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.append((module, node.lineno))
    return out


def layer_files() -> list[tuple[str, Path]]:
    return [(layer, p) for layer in ALLOWED for p in sorted((ROOT / layer).rglob("*.py"))]


@pytest.mark.parametrize(
    ("layer", "path"), layer_files(), ids=lambda x: str(x).split("tidegate/")[-1]
)
def test_imports_point_down(layer: str, path: Path) -> None:
    """Each module imports only its own layer and the layers beneath it."""
    for module, line in imports_of(path):
        parts = module.split(".")
        if parts[0] != "tidegate" or len(parts) < 2:
            continue
        if module in ALLOWED_MODULES.get(layer, ()):
            continue
        assert parts[1] in ALLOWED[layer], f"{path}:{line} ({layer}) imports {module}"


@pytest.mark.parametrize(
    "path",
    sorted([*(ROOT / "protocol").glob("*.py"), *(ROOT / "protocol" / "realtime").glob("*.py")]),
    ids=lambda p: str(p.relative_to(ROOT / "protocol")),
)
def test_protocol_core_is_sans_io(path: Path) -> None:
    """The protocol core imports no event loop, socket, thread or clock."""
    for module, line in imports_of(path):
        assert module.split(".")[0] not in IO_MODULES, f"{path}:{line} imports {module}"


def test_the_walker_sees_reverse_arrows(tmp_path: Path) -> None:
    """The check itself works: a reverse import is found."""
    fake = ROOT / "protocol" / "__probe_layers__.py"
    fake.write_text("from tidegate.server import app\nfrom ..server import x\n")
    try:
        found = [m for m, _ in imports_of(fake)]
    finally:
        fake.unlink()
    assert found == ["tidegate.server", "tidegate.server"]
