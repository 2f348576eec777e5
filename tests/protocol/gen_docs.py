"""Regenerate the generated sections of docs/protocol.md: the catalogue, from the message
classes, and the session states, from the transition table (tidegate/protocol/state.py).

    .venv/bin/python -m tests.protocol.gen_docs

The prose around the markers is written by hand; what is between them is generated, so it
cannot drift from the code (tests/protocol/test_docs.py checks it).
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

from tidegate.protocol import get_codec
from tidegate.protocol.errors import CloseCode, ErrorCode
from tidegate.protocol.messages import CLIENT_MESSAGES, SERVER_MESSAGES, Message, Record
from tidegate.protocol.state import Role, markdown, mermaid

from .samples import SAMPLES

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
BEGIN, END = "<!-- BEGIN GENERATED: catalogue -->", "<!-- END GENERATED: catalogue -->"
STATES_BEGIN = "<!-- BEGIN GENERATED: states -->"
STATES_END = "<!-- END GENERATED: states -->"


def diag(obj: Any, indent: int = 0) -> str:
    """CBOR diagnostic notation (RFC 8949 section 8) of a decoded document."""
    pad = "  " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad}{diag(k)}: {diag(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(diag(v, indent) for v in obj) + "]"
    if isinstance(obj, bytes):
        return (
            f"h'{obj.hex()}'" if len(obj) <= 16 else f"h'{obj[:8].hex()}...' / {len(obj)} bytes /"
        )
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if obj is None:
        return "null"
    if isinstance(obj, float):
        return repr(obj) if math.isfinite(obj) else "NaN"
    if isinstance(obj, str):
        return (
            '"'
            + obj.replace("\\", "\\\\")
            .replace('"', '\\"')
            .replace("\r", "\\r")
            .replace("\n", "\\n")
            + '"'
        )
    return str(obj)


def _fields(cls: type[Message] | type[Record]) -> list[str]:
    rows = ["| field | required | value |", "| --- | --- | --- |"]
    for p in cls._plan:
        rows.append(f"| `{p.name}` | {'yes' if p.required else 'no'} | {p.check.expected} |")
    return rows if len(rows) > 2 else ["No fields beyond the envelope."]


def _describe(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    base = inspect.getdoc(cls.__mro__[1]) or ""
    if doc == base or doc.startswith(cls.__name__ + "("):  # inherited, or dataclass's own
        return ""
    return " ".join(doc.split())


def catalogue() -> str:
    out: list[str] = []
    cbor = get_codec("cbor")
    samples = {(m.DIRECTION.value, m.TYPE): m for m in reversed(SAMPLES)}
    for title, registry, direction in (
        ("Client to server", CLIENT_MESSAGES, "client"),
        ("Server to client", SERVER_MESSAGES, "server"),
    ):
        out.append(f"### {title}\n")
        for mtype, cls in registry.items():
            out.append(f"#### `{mtype}`\n")
            text = _describe(cls)
            if text:
                out.append(text + "\n")
            out.extend(_fields(cls))
            sample = samples[(direction, mtype)]
            out.append("\nExample (CBOR diagnostic notation):\n")
            out.append("```\n" + diag(cbor.decode(cbor.encode(sample.to_wire()))) + "\n```\n")
    out.append("### Nested records\n")
    from tidegate.protocol.messages import Detection, IceServer, Timing

    for rec in (Timing, Detection, IceServer):
        out.append(f"#### {rec.__name__}\n")
        out.append(_describe(rec) + "\n")
        out.extend(_fields(rec))
        out.append("")
    out.append("### Error codes\n")
    out.append("| code | meaning |")
    out.append("| --- | --- |")
    src = inspect.getsource(ErrorCode)
    for code in ErrorCode:
        line = next(ln for ln in src.splitlines() if f'"{code.value}"' in ln)
        meaning = line.split("#", 1)[1].strip() if "#" in line else ""
        out.append(f"| `{code.value}` | {meaning} |")
    out.append("\n### Close codes\n")
    out.append("| code | name | meaning |")
    out.append("| --- | --- | --- |")
    src = inspect.getsource(CloseCode)
    for cc in CloseCode:
        line = next(ln for ln in src.splitlines() if f"= {cc.value}" in ln)
        meaning = (
            line.split("#", 1)[1].strip() if "#" in line else cc.name.lower().replace("_", " ")
        )
        out.append(f"| {cc.value} | `{cc.name}` | {meaning} |")
    return "\n".join(out) + "\n"


def states() -> str:
    """Per role: the phase changes as a Mermaid diagram, then the whole table."""
    out = []
    for role in (Role.SERVER, Role.CLIENT):
        out.append(f"#### {role.value.capitalize()}\n")
        out.append(f"```mermaid\n{mermaid(role)}\n```\n")
        out.append(markdown(role) + "\n")
    return "\n".join(out)


def _replace(current: str, begin: str, end: str, body: str) -> str:
    head, rest = current.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}{end}{tail}"


def render(current: str) -> str:
    text = _replace(current, BEGIN, END, catalogue())
    return _replace(text, STATES_BEGIN, STATES_END, states())


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text()))
    print(f"wrote {DOC}")
