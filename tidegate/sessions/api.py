"""The one way to open, resume and close a session; every transport calls it.

The control WebSocket (``tidegate.server.control``), the HTTP offer
(``POST /v1/sessions/{id}/offer``) and any later transport (an OpenAI-Realtime endpoint) do
the same three things through :class:`Sessions`::

    session = await sessions.open(principal, {"mode": "transcribe"}, client={...})
    session.attach(connection)             # an Attachment: too_slow(), superseded(), stats()
    await sessions.handle(session, msg)    # any client message (sensor or mode): RefusalError
    events = session.outbox.take_all()     # after ``await session.outbox.wait()``
    await sessions.close(session)

``open`` checks, in this order: the node is not draining, the engines the mode needs are warm,
admission (no engine the mode uses is saturated), the config (:mod:`.config`), the cluster's
quotas and limits, the node's own (:class:`~tidegate.sessions.session.SessionRegistry`); it
returns a session complete with its mode and sensor lane, registered in the directory, born
detached (it expires after ``session_resume_s`` unless attached). ``resume`` finds a session
of the caller's (or says which node holds it); ``update`` merges a config change; ``close``
ends it (recorded with its status and reason).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from tidegate.pipelines.errors import InvalidConfigError, NotFoundError, OverloadedError
from tidegate.protocol import ClientMessage
from tidegate.protocol.realtime.commands import Command

from .admission import Admission
from .config import ENGINE_MODES, resolve_config
from .ports import Directory
from .principal import Principal
from .sensorbus import SensorBus
from .sensors import SENSOR_TYPES, SensorLane
from .session import Mode, Session, SessionRegistry

if TYPE_CHECKING:
    from tidegate.engines.service import EngineService

ENGINE_WARMUP_RETRY_MS = 1_000.0
DRAINING_RETRY_MS = 1_000.0  # a draining node: the client reconnects (another node answers)


class Node(Protocol):
    """What the sessions need to know of the node that holds them (the server's runtime)."""

    @property
    def draining(self) -> bool: ...

    @property
    def engines_warming(self) -> bool: ...

    @property
    def engines(self) -> EngineService | None: ...


class ModeBuilder(Protocol):
    """Builds a session's mode (the composition root's, with the lanes' configs)."""

    def __call__(self, session: Session, engines: EngineService | None) -> Mode: ...


class Sessions:
    """See the module docstring."""

    def __init__(
        self,
        node: Node,
        registry: SessionRegistry,
        directory: Directory,
        admission: Admission,
        sensor_bus: SensorBus,
        build_mode: ModeBuilder,
        *,
        default_mode: str,
        max_tools_items: int,
        max_tools_bytes: int,
        metrics_interval_s: float = 0.0,
    ) -> None:
        self.node = node
        self.registry = registry
        self.directory = directory
        self.admission = admission
        self.sensor_bus = sensor_bus
        self.build_mode = build_mode
        self.default_mode = default_mode
        self.max_tools_items = max_tools_items
        self.max_tools_bytes = max_tools_bytes
        self.metrics_interval_s = metrics_interval_s

    def resolve(self, config: dict[str, Any] | None, default_mode: str) -> dict[str, Any]:
        """A config checked and completed (RefusalError naming what is wrong)."""
        return resolve_config(
            config,
            default_mode,
            self.node.engines,
            max_tools_items=self.max_tools_items,
            max_tools_bytes=self.max_tools_bytes,
        )

    async def open(
        self,
        principal: Principal,
        config: dict[str, Any] | None,
        *,
        client: dict[str, Any] | None = None,
    ) -> Session:
        """A new session of ``principal`` (see the module docstring for the checks)."""
        node = self.node
        engines = node.engines
        mode = (config or {}).get("mode", self.default_mode)
        if node.draining:  # SIGTERM: this node's sessions finish, no new ones
            raise OverloadedError(
                "this node is shutting down; connect again to reach another node",
                retry_after_ms=DRAINING_RETRY_MS,
            )
        if mode in ENGINE_MODES and node.engines_warming:
            raise OverloadedError(
                "the engines are still warming up; try again shortly",
                retry_after_ms=ENGINE_WARMUP_RETRY_MS,
            )
        self.admission.check(mode, engines)  # an engine it needs is saturated?
        resolved = self.resolve(config, self.default_mode)
        ticket = await self.directory.admit(principal)  # quotas and limits across the nodes
        try:
            session = self.registry.create(
                principal,
                resolved,
                client,
                mode=lambda s: self.build_mode(s, engines),
                sensors=self._sensors,
            )
        except BaseException:
            await self.directory.cancel(ticket)
            raise
        try:
            await self.directory.register(session, ticket)
        except BaseException:  # never attached: gone at once, not after its window
            await self.registry.remove(session, "closed", "the session failed to start")
            raise
        if self.metrics_interval_s > 0:
            session.spawn(session.run_metrics(self.metrics_interval_s), "metrics")
        return session

    def _sensors(self, session: Session) -> SensorLane:
        return SensorLane(
            session, self.sensor_bus, self.registry.get, self.directory.held_elsewhere
        )

    async def resume(
        self,
        session_id: str,
        principal: Principal,
        *,
        client: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        what: str = "session.create",
    ) -> Session:
        """The caller's session ``session_id``, resumed; NotFoundError naming the node that
        holds it when another does. A ``config`` given must be the session's own."""
        try:
            session = self.registry.resume(session_id, principal, client)
        except NotFoundError:  # another node's? then say which
            await self.directory.wrong_node(session_id, principal.tenant, what)
            raise
        if config is not None and self.resolve(config, session.config["mode"]) != session.config:
            raise InvalidConfigError(
                "session.create: a resumed session keeps its config; use session.update"
            )
        return session

    async def find(self, session_id: str, principal: Principal, what: str) -> Session:
        """A live session of the caller's, for a request about it (an HTTP offer): the same
        answer for another tenant's session as for a missing one (no existence oracle)."""
        session = self.registry.get(session_id)
        if session is None or session.closed or session.tenant != principal.tenant:
            await self.directory.wrong_node(session_id, principal.tenant, what)
            raise NotFoundError("no such session (closed, expired or unknown)")
        if session.principal.subject != principal.subject and not principal.is_admin:
            raise NotFoundError("no such session (closed, expired or unknown)")
        return session

    def update(self, session: Session, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge ``changes`` into the session's config (checked; the mode cannot change)."""
        current = session.config
        merged = self.resolve({**current, **changes}, current["mode"])
        if merged["mode"] != current["mode"]:
            raise InvalidConfigError("session.update: the mode of a session cannot change")
        session.config = merged
        return merged

    async def handle(self, session: Session, msg: ClientMessage | Command) -> None:
        """A client message for the session: a sensor message to its sensor lane, anything
        else to its mode. A refusal raises RefusalError (the transport answers it with an
        ``error``); an upload that is refused or fails was consumed, not kept: the transport
        gives its credit back (``session.return_credit(upload_size(msg))``), as the control
        channel does. A dialect's :class:`Command` goes to the mode like a message."""
        sensors = session.sensors
        if not isinstance(msg, Command) and msg.TYPE in SENSOR_TYPES and sensors is not None:
            await sensors.handle(msg)
        elif session.mode is not None:
            await session.mode.handle(msg)

    async def close(
        self, session: Session, status: str = "closed", reason: str = "closed by the client"
    ) -> None:
        """End the session (``status``: closed, expired, shutdown; both are recorded)."""
        await self.registry.remove(session, status, reason)
