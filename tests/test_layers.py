"""Imports point down the layer list of DESIGN.md, never up; the protocol core does no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "tidegate"

# DESIGN.md "Layers and folders": the layers a layer may import (its own included). A layer is
# a folder under tidegate/; bench/micro is a layer of its own beside the protocol-only scenarios.
ALLOWED = {
    "protocol": {"protocol"},
    "media": {"protocol", "media"},
    "engines": {"protocol", "engines"},
    "pipelines": {"protocol", "media", "engines", "pipelines"},
    "sessions": {"protocol", "media", "engines", "pipelines", "sessions"},
    "store": {"protocol", "pipelines", "sessions", "store"},
    "cluster": {"protocol", "engines", "sessions", "cluster"},
    "server": {
        "protocol",
        "media",
        "engines",
        "pipelines",
        "sessions",
        "store",
        "cluster",
        "server",
        "tools",
    },
    "tools": {"protocol", "engines", "tools"},
    "bench": {"protocol", "bench"},
    "bench.micro": {"protocol", "engines", "pipelines", "store", "tools", "bench", "bench.micro"},
}
# Single modules a layer may import beyond its map, each with its reason.
ALLOWED_MODULES = {
    # The bench's WebRTC client taps raw RTP arrivals off aiortc's receiver (no playout
    # buffer); only the seam may touch that private hook (tests/media/test_aiortc_seam.py).
    "bench": {"tidegate.media._aiortc"},
    # The turn-words bench runs the audio lane and turn-taking in process as the server
    # composes them (lane configs, engine specs and offline preparation from the default
    # settings): the composition root itself, not a copy of it that would drift.
    "bench.micro": {
        "tidegate.server.settings",
        "tidegate.server.modes",
        "tidegate.server.engines",
        "tidegate.server.runtime",
    },
}
# Reverse arrows the redesign (issue 18) is removing, file -> modules: each entry must still be
# needed (the test fails on a stale one), and the list only shrinks.
PENDING: dict[str, set[str]] = {}


def layer_of(module: str) -> str | None:
    """The layer of a ``tidegate.*`` module (None for the package root: cli, __main__)."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "tidegate":
        return None
    if parts[1] == "bench" and len(parts) > 2 and parts[2] == "micro":
        return "bench.micro"
    return parts[1] if parts[1] in ALLOWED else None


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


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "migrations" not in p.parts)


def layer_files() -> list[tuple[str, Path]]:
    out = []
    for p in package_files():
        layer = layer_of(module_name(p))
        if layer is not None:
            out.append((layer, p))
    return out


def reverse_arrows(layer: str, path: Path) -> list[tuple[str, int]]:
    found = []
    for module, line in imports_of(path):
        target = layer_of(module)
        if target is None or module in ALLOWED_MODULES.get(layer, ()):
            continue
        if target not in ALLOWED[layer]:
            found.append((module, line))
    return found


@pytest.mark.parametrize(
    ("layer", "path"), layer_files(), ids=lambda x: str(x).split("tidegate/")[-1]
)
def test_imports_point_down(layer: str, path: Path) -> None:
    """Each module imports only its own layer and the layers beneath it."""
    rel = str(path.relative_to(ROOT.parent))
    pending = PENDING.get(rel, set())
    bad = [(m, line) for m, line in reverse_arrows(layer, path) if m not in pending]
    assert not bad, "; ".join(f"{rel}:{line} ({layer}) imports {m}" for m, line in bad)
    stale = pending - {m for m, _ in reverse_arrows(layer, path)}
    assert not stale, f"{rel}: PENDING lists {sorted(stale)}, no longer imported: remove them"


def test_every_module_has_a_layer() -> None:
    """Every module of the package lives in a layer of the map (or is the package root)."""
    loose = [
        str(p.relative_to(ROOT))
        for p in package_files()
        if layer_of(module_name(p)) is None and p.parent != ROOT
    ]
    assert not loose, f"modules outside every layer of DESIGN.md: {loose}"


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


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``tidegate`` modules it imports, at module level or inside a function
    (``from pkg import name`` counts as importing ``pkg.name`` when that is a module)."""
    files = {module_name(p): p for p in package_files()}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                subs = {f"{module}.{a.name}" for a in node.names} & files.keys()
                edges |= subs or ({module} & files.keys())
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


# Import cycles the redesign (issue 18) is removing; the test fails on a new one and on a
# listed one that is gone (remove it), so this list only shrinks.
KNOWN_CYCLES: list[list[str]] = []


def test_no_import_cycles() -> None:
    """No import cycle inside the package, function-local imports included."""
    assert cycles(import_graph()) == KNOWN_CYCLES


def test_the_cycle_finder_finds_cycles() -> None:
    """The check itself works: a two-module and a three-module cycle are found, a chain not."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert cycles(graph) == [["a", "b"], ["c", "d", "e"]]
