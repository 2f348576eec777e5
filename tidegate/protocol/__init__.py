"""The tidegate wire protocol, v1, as a sans-I/O core.

Nothing here does I/O or reads a clock: bytes in, events out; messages in, bytes out; time is
an argument. The asyncio client lives in :mod:`tidegate.protocol.client`.
"""

from .codec import CBOR, JSON, MSGPACK, Codec, get_codec
from .connection import BadInput, Connection, Event, Role, State
from .errors import (
    CloseCode,
    DecodeError,
    ErrorCode,
    FlowViolationError,
    InvalidFieldError,
    LocalProtocolError,
    MessageTooLargeError,
    NegotiationError,
    ProtocolError,
    RemoteProtocolError,
    UnexpectedMessageError,
    UnknownTypeError,
)
from .flow import BoundedBuffer, BufferStats, Credits, LatestSlot, Overflow, Push, RecentCount
from .messages import (
    CLIENT_MESSAGES,
    SERVER_MESSAGES,
    ClientMessage,
    Direction,
    Message,
    ServerMessage,
    parse_message,
)
from .negotiation import (
    BEARER_PREFIX,
    PROTOCOL_VERSION,
    Negotiated,
    bearer_subprotocol,
    negotiate,
    subprotocol_for,
)
from .schema import Limits

__all__ = [
    "BEARER_PREFIX",
    "CBOR",
    "CLIENT_MESSAGES",
    "JSON",
    "MSGPACK",
    "PROTOCOL_VERSION",
    "SERVER_MESSAGES",
    "BadInput",
    "BoundedBuffer",
    "BufferStats",
    "ClientMessage",
    "CloseCode",
    "Codec",
    "Connection",
    "Credits",
    "DecodeError",
    "Direction",
    "ErrorCode",
    "Event",
    "FlowViolationError",
    "InvalidFieldError",
    "LatestSlot",
    "Limits",
    "LocalProtocolError",
    "Message",
    "MessageTooLargeError",
    "Negotiated",
    "NegotiationError",
    "Overflow",
    "ProtocolError",
    "Push",
    "RecentCount",
    "RemoteProtocolError",
    "Role",
    "ServerMessage",
    "State",
    "UnexpectedMessageError",
    "UnknownTypeError",
    "bearer_subprotocol",
    "get_codec",
    "negotiate",
    "parse_message",
    "subprotocol_for",
]
