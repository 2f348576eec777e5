"""A mode: a named composition of lanes, with one dispatch table built when it is.

Every mode has the media lane (WebRTC signalling: ``rtc.offer``, ``rtc.candidate``); its other
lanes are what its registry row builds (:mod:`tidegate.pipelines.registry`). The client
messages each lane takes are merged once, at construction, into a table message type ->
handler; a type no lane takes is refused with ``unsupported``. A peer the media lane accepts
is handed to every lane (``start_media``); the stats are the lanes' merged; closing closes the
lanes in reverse order, then the media.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tidegate.engines.service import EngineService
from tidegate.media import MediaConfig, MediaPeer
from tidegate.protocol import ClientMessage
from tidegate.protocol.realtime.commands import Command

from .errors import UnsupportedError
from .media import SessionMedia
from .port import Handler, Lane, SessionPort

L = TypeVar("L")


def running(engines: EngineService | None) -> EngineService:
    """The engines a mode that needs some is built with (the registry checked its needs)."""
    if engines is None:
        raise UnsupportedError("this server runs no engines; use mode 'loopback'")
    return engines


class Mode:
    """See the module docstring."""

    def __init__(
        self,
        name: str,
        session: SessionPort,
        media: MediaConfig,
        build_lanes: Callable[[SessionMedia], Sequence[Lane]],
    ) -> None:
        self.name = name
        self.media = SessionMedia(session, media, self._start_media)
        lanes = list(build_lanes(self.media))
        self.lanes: dict[str, Lane] = {}
        table: dict[type[Any], Handler] = dict(self.media.handlers())
        for lane in lanes:
            if lane.name in self.lanes:
                raise ValueError(f"mode {name!r}: two lanes named {lane.name!r}")
            self.lanes[lane.name] = lane
            for kind, handler in lane.handlers().items():
                if kind in table:
                    raise ValueError(f"mode {name!r}: two lanes take {kind.TYPE}")
                table[kind] = handler
        self._table = table

    def lane(self, kind: type[L]) -> L:
        """This mode's lane of class ``kind`` (LookupError: it has none)."""
        for lane in self.lanes.values():
            if isinstance(lane, kind):
                return lane
        raise LookupError(f"mode {self.name!r} has no {kind.__name__}")

    def takes(self, kind: type[Any]) -> bool:
        return kind in self._table

    async def handle(self, msg: ClientMessage | Command) -> None:
        handler = self._table.get(type(msg))
        if handler is None:
            raise UnsupportedError(f"{msg.TYPE} is not handled in {self.name} mode")
        await handler(msg)

    def _start_media(self, peer: MediaPeer) -> None:
        for lane in self.lanes.values():
            lane.start_media(peer)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for lane in self.lanes.values():
            out.update(lane.stats())
        out["media"] = self.media.stats()
        return out

    async def close(self) -> None:
        for lane in reversed(list(self.lanes.values())):
            await lane.close()
        await self.media.close()
