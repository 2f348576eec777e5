"""tidegate/media/_aiortc.py is the only module that touches aiortc's or aioice's private
attributes, and it refuses aiortc/aioice versions it was not written against.

The check walks the AST of every module under tidegate/ except the seam. In a module that can
hold aiortc or aioice objects (one that imports aiortc, aioice or tidegate.media), it flags:

- ``x._name`` where ``x`` is anything but ``self``, ``cls`` or ``super()`` (reaching into
  another object's private attribute: in these modules that object may be aiortc's);
- ``getattr/setattr/hasattr/delattr(x, name)`` where ``name`` spells a private name: a string
  ``"_x"``, or one built from a leading ``"_..."`` (``"_RTCRtpReceiver__" + name``, an
  f-string), as name-mangled attributes are reached;
- in a class deriving from an aiortc/aioice class, ``self._name`` or a method ``_name`` where
  aiortc's or aioice's own classes in its MRO define or assign ``_name`` (our private
  attribute would be theirs);

and anywhere under tidegate/, an assignment to ``__class__`` (how aiortc's own objects are
turned into ours). No allow-list is needed today; an entry would need a reason next to it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

import tidegate
from tests.support import scaled
from tidegate.media._aiortc import EXPECTED_VERSIONS, AiortcVersionError, check_versions

PACKAGE = Path(tidegate.__file__).parent
SEAM = PACKAGE / "media" / "_aiortc.py"
FOREIGN = ("aiortc", "aioice")
WATCHED = (*FOREIGN, "tidegate.media")  # importing these: the module may hold aiortc objects
ATTR_FUNCS = {"getattr", "setattr", "hasattr", "delattr"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imports(tree: ast.Module, package: str) -> dict[str, str]:
    """Names bound by imports of ``package`` (or its submodules): local name → dotted origin."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == package or a.name.startswith(package + "."):
                    out[a.asname or a.name.split(".")[0]] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == package or node.module.startswith(package + "."):
                for a in node.names:
                    out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _relative_media_import(tree: ast.Module, path: Path) -> bool:
    """``from . import x`` / ``from .x import y`` inside tidegate/media counts as importing it."""
    inside_media = path.parent == PACKAGE / "media"
    return inside_media and any(
        isinstance(n, ast.ImportFrom) and n.level > 0 for n in ast.walk(tree)
    )


def _builds_private_name(expr: ast.expr) -> bool:
    """An attribute name given as an expression that spells a private name: ``"_x"``, or one
    built from a string starting with ``_`` (``"_RTCRtpReceiver__" + name``, an f-string)."""
    first = expr
    while True:
        if isinstance(first, ast.BinOp):
            first = first.left
        elif isinstance(first, ast.JoinedStr) and first.values:
            first = first.values[0]
        else:
            break
    return (
        isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value[:1] == "_"
    )


@cache
def _foreign_private_names(dotted: str) -> frozenset[str]:
    """Private names that aiortc's/aioice's classes in the MRO of ``dotted`` define or assign
    on ``self`` (instance attributes exist only in their source, hence the AST)."""
    module_name, _, attr = dotted.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return frozenset()
    if not inspect.isclass(cls):
        return frozenset()
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] not in (*FOREIGN, "pyee"):  # pyee: their base
            continue
        names.update(n for n in vars(klass) if _private(n))
        tree = ast.parse(inspect.getsource(klass))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                if _private(node.attr):
                    names.add(node.attr)
                    if node.attr.startswith("__"):  # as Python mangles it
                        names.add(f"_{klass.__name__}{node.attr}")
    return frozenset(names)


def violations(source: str, path: Path) -> Iterator[str]:
    """Where ``source`` (the module at ``path``) touches a private attribute of an aiortc or
    aioice object, or swaps an object's class."""
    tree = ast.parse(source)
    where = path.relative_to(PACKAGE.parent) if path.is_relative_to(PACKAGE) else path
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        else:
            continue
        for t in targets:
            if isinstance(t, ast.Attribute) and t.attr == "__class__":
                yield f"{where}:{node.lineno}: assigns __class__"
    foreign: dict[str, str] = {}
    for package in FOREIGN:
        foreign.update(_imports(tree, package))
    watched = bool(foreign) or bool(_imports(tree, "tidegate.media"))
    watched = watched or _relative_media_import(tree, path)
    if not watched:
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            own = isinstance(base, ast.Name) and base.id in ("self", "cls")
            own = own or (  # super()._x: our own class's method (an aiortc base: below)
                isinstance(base, ast.Call)
                and isinstance(base.func, ast.Name)
                and base.func.id == "super"
            )
            if not own:
                yield f"{where}:{node.lineno}: .{node.attr} of {ast.unparse(base)}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ATTR_FUNCS
            and len(node.args) >= 2
            and _builds_private_name(node.args[1])
        ):
            yield f"{where}:{node.lineno}: {node.func.id}(..., {ast.unparse(node.args[1])})"
        elif isinstance(node, ast.ClassDef):
            theirs: set[str] = set()
            for b in node.bases:
                name = ast.unparse(b)
                head, _, rest = name.partition(".")
                if head in foreign:
                    origin = foreign[head] + (f".{rest}" if rest else "")
                    theirs |= _foreign_private_names(origin)
            if not theirs:
                continue
            for inner in ast.walk(node):
                if (
                    isinstance(inner, ast.Attribute)
                    and isinstance(inner.value, ast.Name)
                    and inner.value.id == "self"
                    and inner.attr in theirs
                ):
                    yield f"{where}:{inner.lineno}: self.{inner.attr} is aiortc's/aioice's"
                elif (
                    isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and inner.name in theirs
                ):
                    yield f"{where}:{inner.lineno}: overrides aiortc's/aioice's {inner.name}"


def test_only_the_seam_touches_aiortc_private_attributes() -> None:
    """No module under tidegate/ but media/_aiortc.py reaches into aiortc/aioice privates."""
    found: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == SEAM:
            continue
        found += violations(path.read_text(), path)
    assert found == []


@pytest.mark.parametrize(
    "source",
    [
        "from aiortc import RTCPeerConnection\ndef f(pc):\n    return pc._sctp\n",
        "import aioice\ndef f(conn):\n    conn._local_candidates.append(1)\n",
        "from aiortc.rtcrtpreceiver import RTCRtpReceiver\n"
        "def f(r):\n    return getattr(r, '_RTCRtpReceiver__started')\n",
        "from aiortc.rtcrtpreceiver import RTCRtpReceiver\n"
        "def f(r, name):\n    return getattr(r, '_RTCRtpReceiver__' + name)\n",
        "from aiortc.rtcrtpsender import RTCRtpSender\n"
        "def f(s, name, v):\n    setattr(s, f'_RTCRtpSender__{name}', v)\n",
        "from tidegate.media import MediaPeer\n"
        "def f(p: MediaPeer):\n    return p.pc._transceivers\n",
        "from aiortc.rtcrtpreceiver import RTCRtpReceiver\n"
        "class R(RTCRtpReceiver):\n    def f(self):\n        return self._enabled\n",
        "from aiortc.rtcrtpreceiver import RTCRtpReceiver\n"
        "class R(RTCRtpReceiver):\n    async def _handle_rtp_packet(self, p, t):\n        pass\n",
        "def f(obj, cls):\n    obj.__class__ = cls\n",
    ],
)
def test_the_check_flags_each_kind_of_reach(source: str) -> None:
    """Each kind of private reach the seam exists for is flagged outside it."""
    assert list(violations(source, PACKAGE / "media" / "example.py")) != []


def test_the_check_leaves_our_own_private_attributes_alone() -> None:
    """Our own private attributes on our own objects are not aiortc's."""
    source = (
        "from aiortc.mediastreams import MediaStreamTrack\n"
        "class T(MediaStreamTrack):\n"
        "    def __init__(self):\n        super().__init__()\n        self._frames = 0\n"
        "class Plain:\n    def f(self):\n        return self._x\n"
    )
    assert list(violations(source, PACKAGE / "media" / "example.py")) == []


def test_versions_other_than_the_pinned_ones_are_refused_by_name() -> None:
    """An aiortc or aioice whose major.minor differs (or is missing) fails with a message that
    names the installed and the expected versions."""
    ok = {name: f"{major}.{minor}.3" for name, (major, minor) in EXPECTED_VERSIONS.items()}
    check_versions(ok)  # patch releases are fine
    with pytest.raises(AiortcVersionError) as e:
        check_versions({**ok, "aiortc": "1.17.0"})
    assert "aiortc 1.17.0 (expected 1.16.x)" in str(e.value)
    assert "aioice" not in str(e.value).split("installed:")[1]
    with pytest.raises(AiortcVersionError) as e:
        check_versions({"aiortc": ok["aiortc"]})
    assert "aioice not installed (expected 0.13.x)" in str(e.value)
    assert isinstance(e.value, ImportError)


def test_importing_media_with_another_aiortc_fails_with_the_versions() -> None:
    """Importing tidegate.media where aiortc reports another version fails at import, naming
    the installed and the expected versions."""
    code = (
        "import importlib.metadata as m\n"
        "real = m.version\n"
        "m.version = lambda n: '1.17.1' if n == 'aiortc' else real(n)\n"
        "import tidegate.media\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(60)
    )
    assert run.returncode != 0
    assert "AiortcVersionError" in run.stderr
    assert "aiortc 1.17.1 (expected 1.16.x)" in run.stderr
