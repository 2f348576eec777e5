"""A mode's dispatch table and the registry's rows, without a server or engines."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tidegate.media import IcePolicy, MediaConfig
from tidegate.pipelines.config import LoopbackConfig
from tidegate.pipelines.errors import InvalidConfigError, UnsupportedError
from tidegate.pipelines.mode import Mode
from tidegate.pipelines.modes.loopback import LoopbackLane
from tidegate.pipelines.registry import LANES, MODES
from tidegate.protocol.messages import InputSensor, InputText, ResponseDone, RtcOffer
from tidegate.sessions.config import resolve_config

from .lanes import FakeSession

MEDIA = MediaConfig(ice=IcePolicy.from_settings(("127.0.0.1",), "", ()))


def loopback_mode(session: FakeSession, lanes: int = 1) -> Mode:
    config = LoopbackConfig(echo_max_latency_ms=200.0, max_pixels=1_000_000)
    return Mode("loopback", session, MEDIA, lambda m: [LoopbackLane(session, config)] * lanes)


@pytest.mark.asyncio
async def test_messages_go_through_the_table() -> None:
    """A message a lane takes reaches it (input.text echoed); one no lane takes is refused
    with unsupported naming it and the mode; the media lane takes rtc.offer in every mode."""
    session = FakeSession()
    mode = loopback_mode(session)
    await mode.handle(InputText(id="t1", text="hello"))
    assert [d.text for d in session.of(ResponseDone)] == ["hello"]
    with pytest.raises(UnsupportedError, match=r"input\.sensor is not handled in loopback mode"):
        await mode.handle(InputSensor(channel="t", ts=1.0, values=(1.0,)))
    assert mode.takes(RtcOffer) and mode.lane(LoopbackLane).responses == 1
    await mode.close()


def test_two_lanes_cannot_take_one_message_type() -> None:
    """Composing two lanes that take the same message type fails when the mode is built."""
    with pytest.raises(ValueError, match="two lanes"):
        loopback_mode(FakeSession(), lanes=2)


def test_every_mode_needs_engines_and_lanes_the_registry_names() -> None:
    """The public modes are rows of the registry; vision needs only the vision engine."""
    assert {"assistant", "transcribe", "loopback", "vision"} <= set(MODES)
    assert MODES["vision"].needs == ("vision",)
    assert set(LANES) == {"transcribe", "vision"}


def test_lanes_configs_are_checked() -> None:
    """A config naming lanes gets mode 'lanes'; a bad list, an unknown or repeated lane, or
    lanes beside another mode are invalid_field naming the problem; missing engines are
    unsupported."""

    running = SimpleNamespace(schedulers={"vision": None}, batchers={})  # engines by name
    resolved = resolve_config({"lanes": ["vision"]}, "assistant", running)  # type: ignore[arg-type]
    assert resolved == {"mode": "lanes", "lanes": ["vision"]}
    with pytest.raises(UnsupportedError, match="VAD and ASR engines"):
        resolve_config({"lanes": ["transcribe"]}, "assistant", running)  # type: ignore[arg-type]
    bad = [
        ({"lanes": []}, "non-empty list"),
        ({"lanes": "vision"}, "non-empty list"),
        ({"lanes": ["vision", "radar"]}, "'radar'"),
        ({"lanes": ["vision", "vision"]}, "named twice"),
        ({"mode": "transcribe", "lanes": ["vision"]}, "not of mode 'transcribe'"),
    ]
    for config, says in bad:
        with pytest.raises(InvalidConfigError, match=says):
            resolve_config(config, "assistant", running)  # type: ignore[arg-type]
