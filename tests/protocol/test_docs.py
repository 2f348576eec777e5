"""docs/protocol.md documents every message type the code has."""

from __future__ import annotations

from tidegate.protocol.errors import CloseCode, ErrorCode
from tidegate.protocol.messages import CLIENT_MESSAGES, SERVER_MESSAGES

from .gen_docs import DOC, STATES_BEGIN, STATES_END, render, states


def test_every_message_type_is_documented() -> None:
    """A message type that exists in code but not in the doc fails the build."""
    text = DOC.read_text()
    for mtype in [*CLIENT_MESSAGES, *SERVER_MESSAGES]:
        assert f"#### `{mtype}`" in text, f"{mtype} missing from {DOC}"
    for code in ErrorCode:
        assert f"`{code.value}`" in text
    for close in CloseCode:
        assert f"| {close.value} |" in text


def test_generated_catalogue_is_current() -> None:
    """The generated section matches the code (regenerate with tests.protocol.gen_docs)."""
    assert DOC.read_text() == render(DOC.read_text())


def test_state_diagram_is_the_transition_table() -> None:
    """The session-state section (Mermaid diagrams and tables) is rendered from the table of
    tidegate/protocol/state.py, and a change to the table changes it."""
    text = DOC.read_text()
    section = text.split(STATES_BEGIN, 1)[1].split(STATES_END, 1)[0]
    assert section == "\n" + states()
    assert "```mermaid\nstateDiagram-v2" in section
    assert "open --> closing: receives session.close" in section  # the server's close
    assert "creating --> open: sends session.created" in section
