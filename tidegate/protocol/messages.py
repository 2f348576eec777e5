"""The message catalogue of protocol v1: frozen, slotted dataclasses, one per message type.

Every message is a map with ``type``. A client may add ``id``; the server copies it into ``ref``
on the replies and errors that message causes. Every server message carries ``seq`` (per
connection, increasing from 1) and ``t`` (server time in ms). The connection assigns ``seq``
and ``t`` when it sends; the values on a message object you build are ignored.

Fields are declared with :func:`spec`, which attaches a check from :mod:`.schema`. The checks
are compiled once per class into :meth:`Message.from_wire` / :meth:`Message.to_wire`.
docs/protocol.md documents every type here; a test fails when one is missing there.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from .compile import compile_encoder, compile_parser
from .errors import InvalidFieldError, UnknownTypeError
from .schema import (
    DEFAULT_LIMITS,
    INT64_MAX,
    MISSING,
    NUL,
    Binary,
    Check,
    FieldMismatch,
    Flag,
    FreeMap,
    Limits,
    ListOf,
    Number,
    Text,
)

MAX_ID_CHARS = 64
MAX_TEXT_CHARS = 8_192
MAX_LANGUAGE_CHARS = 16  # a language code (ISO 639-1, or a BCP 47 tag)
MAX_SDP_CHARS = 65_536
MAX_SENSOR_VALUES = 256
MAX_SENSOR_CHANNELS = 64
MAX_CHANNEL_CHARS = 64
MAX_TIME_MS = 2.0**53  # any finite ms timestamp a float64 holds exactly
MAX_SAMPLE_RATE_HZ = 192_000
MAX_CHANNELS = 8
MAX_IMAGE_SIDE_PX = 8_192
MAX_TOOL_NAME_CHARS = 64
MAX_TOOL_JSON_CHARS = 32_768  # a tool call's arguments, a tool's output
MAX_TURN_SEGMENTS = 64  # the segment ids a reply names as the turn it answers
#: why a segment's final failed (``asr.final`` ``error``, an ErrorCode value), in words
FINAL_ERRORS = {
    "overloaded": "the speech recognizer is overloaded",
    "timeout": "the speech recognizer missed its deadline",
    "internal": "the speech recognizer failed",
}

T = TypeVar("T")


class Direction(enum.Enum):
    CLIENT = "client"  # client to server
    SERVER = "server"  # server to client


def spec(check: Check, default: Any = MISSING) -> Any:
    """Declare a wire field with its check (and a default, which makes it optional)."""
    if default is MISSING:
        return dataclasses.field(metadata={"check": check})
    return dataclasses.field(default=default, metadata={"check": check})


@dataclasses.dataclass(frozen=True, slots=True)
class _FieldPlan:
    name: str
    check: Check
    required: bool
    nested: type[Record] | None
    is_tuple: bool
    tuple_of_records: bool


class Record:
    """A nested value of a message (timing, detection, ICE server): a frozen dataclass."""

    __slots__ = ()
    _plan: ClassVar[tuple[_FieldPlan, ...]] = ()
    _names: ClassVar[frozenset[str]] = frozenset()
    _parse: ClassVar[Callable[[dict[Any, Any], Limits], Any]]
    _encode: ClassVar[Callable[[Any], dict[str, Any]]]

    @classmethod
    def from_map(cls: type[T], data: Any, limits: Limits = DEFAULT_LIMITS) -> T:
        """Build from a decoded map; raises FieldMismatch (with a path) when it does not fit."""
        if type(data) is not dict:
            raise FieldMismatch("a map", data)
        if not data.keys() <= cls._names:  # type: ignore[attr-defined]
            extra = sorted(map(str, data.keys() - cls._names))[0]  # type: ignore[attr-defined]
            raise FieldMismatch("only the fields " + ", ".join(sorted(cls._names)), extra)  # type: ignore[attr-defined]
        return cls._parse(data, limits)  # type: ignore[attr-defined]

    def to_map(self) -> dict[str, Any]:
        return self._encode()


class Nested:
    """Check for a field holding a :class:`Record`."""

    __slots__ = ("expected", "record")

    def __init__(self, record: type[Record]) -> None:
        self.record = record
        self.expected = f"a map ({record.__name__})"

    def __call__(self, value: Any, limits: Limits) -> Record:
        return self.record.from_map(value, limits)


def _plan_of(cls: type) -> tuple[_FieldPlan, ...]:
    plans = []
    for f in dataclasses.fields(cls):
        check = f.metadata.get("check")
        if check is None:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        nested = check.record if isinstance(check, Nested) else None
        is_tuple = isinstance(check, ListOf)
        of_records = is_tuple and isinstance(check.item, Nested)
        plans.append(_FieldPlan(f.name, check, required, nested, is_tuple, of_records))
    return tuple(plans)


R = TypeVar("R", bound=type[Record])


def record(cls: R) -> R:
    """Class decorator: compile a Record's field plan."""
    cls._plan = _plan_of(cls)
    cls._names = frozenset(p.name for p in cls._plan)
    cls._parse = compile_parser(cls, cls._plan, ())
    cls._encode = compile_encoder(cls._plan, ())
    return cls


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------

CLIENT_MESSAGES: dict[str, type[ClientMessage]] = {}
SERVER_MESSAGES: dict[str, type[ServerMessage]] = {}

_ENVELOPE_CLIENT = frozenset({"type", "id"})
_ENVELOPE_SERVER = frozenset({"type", "seq", "t", "ref"})
_ID_CHECK = Text(MAX_ID_CHARS, min_chars=1)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of every wire message."""

    TYPE: ClassVar[str] = ""
    DIRECTION: ClassVar[Direction]
    _plan: ClassVar[tuple[_FieldPlan, ...]] = ()
    _names: ClassVar[frozenset[str]] = frozenset()
    _binary_fields: ClassVar[tuple[str, ...]] = ()
    _parse: ClassVar[Callable[[dict[Any, Any], Limits], Any]]
    _encode: ClassVar[Callable[..., dict[str, Any]]]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ClientMessage(Message):
    """A message from a client to the server. ``id`` is echoed as ``ref`` on replies."""

    DIRECTION: ClassVar[Direction] = Direction.CLIENT
    id: str | None = None

    def to_wire(self) -> dict[str, Any]:
        """The message as a wire map: ``type``, ``id`` if set, then the fields."""
        return self._encode(self.TYPE)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ServerMessage(Message):
    """A message from the server. ``seq`` and ``t`` are set by the connection when sent."""

    DIRECTION: ClassVar[Direction] = Direction.SERVER
    seq: int = 0
    t: float = 0.0
    ref: str | None = None

    def to_wire(self, seq: int | None = None, t: float | None = None) -> dict[str, Any]:
        """The message as a wire map: ``type``, ``seq``, ``t``, ``ref`` if set, the fields."""
        return self._encode(self.TYPE, self.seq if seq is None else seq, self.t if t is None else t)


M = TypeVar("M", bound=type[Message])


def message(cls: M) -> M:
    """Class decorator: compile a message's field plan and register its type."""
    if not cls.TYPE:
        raise TypeError(f"{cls.__name__} has no TYPE")
    cls._plan = _plan_of(cls)
    cls._names = frozenset(p.name for p in cls._plan)
    cls._binary_fields = tuple(p.name for p in cls._plan if isinstance(p.check, Binary))
    if cls.DIRECTION is Direction.CLIENT:
        cls._parse = compile_parser(cls, cls._plan, _ENVELOPE_CLIENT_PLAN)
        cls._encode = compile_encoder(cls._plan, ("type",), ("id",))
    else:
        cls._parse = compile_parser(cls, cls._plan, _ENVELOPE_SERVER_PLAN)
        cls._encode = compile_encoder(cls._plan, ("type", "seq", "t"), ("ref",))
    registry: dict[str, Any] = (
        CLIENT_MESSAGES if cls.DIRECTION is Direction.CLIENT else SERVER_MESSAGES
    )
    if cls.TYPE in registry:
        raise TypeError(f"duplicate message type {cls.TYPE!r}")
    registry[cls.TYPE] = cls
    return cls


def parse_message(
    data: Any,
    direction: Direction,
    *,
    limits: Limits = DEFAULT_LIMITS,
    strict: bool = True,
    binary_decoder: Callable[[Any], bytes] | None = None,
) -> Message:
    """Turn a decoded map into a message of ``direction``.

    ``strict`` refuses unknown fields (the server is strict with clients; a client is lenient,
    so that a server may add fields within v1). ``binary_decoder`` converts byte fields from a
    text encoding (JSON carries them as base64). Raises InvalidFieldError or UnknownTypeError.
    """
    if type(data) is not dict:
        raise InvalidFieldError(
            f"message: expected a map with a 'type' field, got {type(data).__name__}"
        )
    registry: dict[str, Any] = CLIENT_MESSAGES if direction is Direction.CLIENT else SERVER_MESSAGES
    ref = _ref_of(data, direction)
    mtype = data.get("type")
    if type(mtype) is not str:
        raise InvalidFieldError("message.type: expected a string naming the message type", ref=ref)
    cls = registry.get(mtype)
    if cls is None:
        shown = mtype if len(mtype) <= 64 else mtype[:61] + "..."
        raise UnknownTypeError(
            f"unknown message type {shown!r} from the {direction.value}; "
            "see docs/protocol.md for the catalogue",
            ref=ref,
        )
    envelope = _ENVELOPE_CLIENT if direction is Direction.CLIENT else _ENVELOPE_SERVER
    try:
        if binary_decoder is not None and cls._binary_fields:
            data = dict(data)
            for name in cls._binary_fields:
                if name in data and data[name] is not None:
                    try:
                        data[name] = binary_decoder(data[name])
                    except (ValueError, TypeError):
                        raise FieldMismatch(
                            "base64 text (JSON encoding)", data[name], name
                        ) from None
        if strict and not data.keys() <= (cls._names | envelope):
            extra = data.keys() - cls._names - envelope
            name = sorted(map(str, extra))[0][:64]
            raise InvalidFieldError(
                f"{mtype}: unexpected field {name!r}; expected only "
                + ", ".join(sorted(cls._names)),
                ref=ref,
            )
        return cls._parse(data, limits)
    except FieldMismatch as e:
        raise InvalidFieldError(e.describe(mtype), ref=ref) from None


_SEQ_CHECK = Number(0, INT64_MAX, integer=True)
_TIME_CHECK = Number(0, MAX_TIME_MS)
_ENVELOPE_CLIENT_PLAN: tuple[tuple[str, Check | None, bool], ...] = (("id", _ID_CHECK, False),)
_ENVELOPE_SERVER_PLAN: tuple[tuple[str, Check | None, bool], ...] = (
    ("seq", _SEQ_CHECK, True),
    ("t", _TIME_CHECK, True),
    ("ref", _ID_CHECK, False),
)


def _ref_of(data: dict[Any, Any], direction: Direction) -> str | None:
    """The message id (client) or ref (server), if it is a valid one; else None."""
    v = data.get("id" if direction is Direction.CLIENT else "ref")
    if type(v) is str and 0 < len(v) <= MAX_ID_CHARS and NUL not in v:
        return v
    if v is not None and direction is Direction.CLIENT:
        raise InvalidFieldError(
            f"message.id: expected a string of 1 to {MAX_ID_CHARS} characters, without NUL"
        )
    return None


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------

_TIME = Number(0, MAX_TIME_MS)
_MEDIA_MS = Number(0, MAX_TIME_MS)


@record
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Timing(Record):
    """Server stage times in ms (server clock): when the input arrived, when the engine
    started and ended, and when the event was sent (filled by the connection on send)."""

    received: float | None = spec(_TIME, None)
    engine_start: float | None = spec(_TIME, None)
    engine_end: float | None = spec(_TIME, None)
    sent: float | None = spec(_TIME, None)


@record
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Usage(Record):
    """Tokens a response took, summed over its LLM rounds: ``input_tokens`` the prompts
    (the system message, the history, tool results), ``cached_tokens`` those of them whose
    KV state was reused, ``output_tokens`` the tokens generated (text and tool calls)."""

    input_tokens: int = spec(Number(0, 2**31, integer=True))
    cached_tokens: int = spec(Number(0, 2**31, integer=True), 0)
    output_tokens: int = spec(Number(0, 2**31, integer=True))


@record
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Detection(Record):
    """One detected object: ``box`` is [x, y, w, h] in the frame's pixels."""

    label: str = spec(Text(64))
    score: float = spec(Number(0, 1))
    box: tuple[float, float, float, float] = spec(
        ListOf(Number(-MAX_IMAGE_SIDE_PX, 2 * MAX_IMAGE_SIDE_PX), min_items=4, max_items=4)
    )


@record
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class IceServer(Record):
    """An ICE server as RTCPeerConnection takes it (TURN credentials are short-lived)."""

    urls: tuple[str, ...] = spec(ListOf(Text(512), min_items=1, max_items=16))
    username: str | None = spec(Text(512), None)
    credential: str | None = spec(Text(512), None)


# --------------------------------------------------------------------------------------------
# Client to server
# --------------------------------------------------------------------------------------------


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionCreate(ClientMessage):
    """Create a session, or resume a detached one by ``session_id``."""

    TYPE: ClassVar[str] = "session.create"
    config: dict[str, Any] | None = spec(FreeMap(), None)
    session_id: str | None = spec(Text(MAX_ID_CHARS, min_chars=1), None)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionUpdate(ClientMessage):
    TYPE: ClassVar[str] = "session.update"
    config: dict[str, Any] = spec(FreeMap())


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionClose(ClientMessage):
    TYPE: ClassVar[str] = "session.close"


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Ping(ClientMessage):
    """Clock probe: the server answers ``pong`` with ``t_client`` and its own time."""

    TYPE: ClassVar[str] = "ping"
    t_client: float = spec(Number(-MAX_TIME_MS, MAX_TIME_MS))


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InputText(ClientMessage):
    TYPE: ClassVar[str] = "input.text"
    text: str = spec(Text(MAX_TEXT_CHARS, min_chars=1))


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InputAudio(ClientMessage):
    """A chunk of PCM audio, interleaved; ``ts`` is the media time of its first sample (ms);
    ``playout_delay_ms``, optional, is how long after it receives ``output.audio`` the client
    plays it (its output buffering), for the server's echo canceller (docs/assistant.md)."""

    TYPE: ClassVar[str] = "input.audio"
    pcm: bytes = spec(Binary(min_bytes=1))
    format: str = spec(Text(choices=("s16le", "f32le")))
    sample_rate: int = spec(Number(8_000, MAX_SAMPLE_RATE_HZ, integer=True))
    channels: int = spec(Number(1, MAX_CHANNELS, integer=True))
    ts: float | None = spec(_MEDIA_MS, None)
    playout_delay_ms: float | None = spec(Number(0, 10_000), None)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InputFrame(ClientMessage):
    """A video frame; raw encodings (rgb24, i420) need ``width`` and ``height``."""

    TYPE: ClassVar[str] = "input.frame"
    image: bytes = spec(Binary(min_bytes=1))
    encoding: str = spec(Text(choices=("jpeg", "png", "rgb24", "i420")))
    width: int | None = spec(Number(1, MAX_IMAGE_SIDE_PX, integer=True), None)
    height: int | None = spec(Number(1, MAX_IMAGE_SIDE_PX, integer=True), None)
    ts: float | None = spec(_MEDIA_MS, None)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class InputSensor(ClientMessage):
    """Readings of one sensor channel at media time ``ts`` (ms)."""

    TYPE: ClassVar[str] = "input.sensor"
    channel: str = spec(Text(MAX_CHANNEL_CHARS, min_chars=1))
    ts: float = spec(_MEDIA_MS)
    values: tuple[float, ...] = spec(
        ListOf(Number(-1e300, 1e300), min_items=1, max_items=MAX_SENSOR_VALUES)
    )


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SensorSubscribe(ClientMessage):
    """Receive another session's sensor readings (same tenant) as ``sensor.reading``;
    ``channels`` None means all of its channels."""

    TYPE: ClassVar[str] = "sensor.subscribe"
    session_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))
    channels: tuple[str, ...] | None = spec(
        ListOf(Text(MAX_CHANNEL_CHARS, min_chars=1), min_items=1, max_items=MAX_SENSOR_CHANNELS),
        None,
    )


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SensorUnsubscribe(ClientMessage):
    TYPE: ClassVar[str] = "sensor.unsubscribe"
    session_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResponseCreate(ClientMessage):
    TYPE: ClassVar[str] = "response.create"
    text: str | None = spec(Text(MAX_TEXT_CHARS, min_chars=1), None)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResponseCancel(ClientMessage):
    TYPE: ClassVar[str] = "response.cancel"
    response_id: str | None = spec(Text(MAX_ID_CHARS, min_chars=1), None)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FunctionCallOutput(ClientMessage):
    """The result of a tool call the server asked for (``response.function_call.done``):
    ``output`` is any text, JSON by convention; the reply then continues with it."""

    TYPE: ClassVar[str] = "function_call.output"
    call_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))
    output: str = spec(Text(MAX_TOOL_JSON_CHARS))


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RtcOffer(ClientMessage):
    """A WebRTC offer; ``echo_cancellation`` says whether the client cancels its own playback
    echo (browsers do): ``false`` has the server cancel it (``audio.echo_cancellation``
    ``auto``). ``playout_delay_ms``, optional, is how long after a packet of the reply's audio
    arrives the client plays it (its jitter buffer): a client that gives it silences what it
    holds at ``response.paused`` until ``response.resumed`` (as a WS-only client drops it),
    and the server counts a sent frame as heard only that long after sending it, so a pause
    takes those frames back and a resumed reply plays them again."""

    TYPE: ClassVar[str] = "rtc.offer"
    sdp: str = spec(Text(MAX_SDP_CHARS, min_chars=1))
    echo_cancellation: bool | None = spec(Flag(), None)
    playout_delay_ms: float | None = spec(Number(0, 1_000), None)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RtcCandidate(ClientMessage):
    """A trickled ICE candidate; an empty ``candidate`` ends the trickle."""

    TYPE: ClassVar[str] = "rtc.candidate"
    candidate: str = spec(Text(1024))
    sdp_mid: str | None = spec(Text(64), None)
    sdp_mline_index: int | None = spec(Number(0, 64, integer=True), None)


# --------------------------------------------------------------------------------------------
# Server to client
# --------------------------------------------------------------------------------------------


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionCreated(ServerMessage):
    TYPE: ClassVar[str] = "session.created"
    session_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))
    config: dict[str, Any] = spec(FreeMap())
    limits: dict[str, Any] = spec(FreeMap())
    ice_servers: tuple[IceServer, ...] = spec(ListOf(Nested(IceServer), max_items=16))
    resumed: bool = spec(Flag(), False)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionUpdated(ServerMessage):
    TYPE: ClassVar[str] = "session.updated"
    config: dict[str, Any] = spec(FreeMap())


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SessionClosed(ServerMessage):
    """The session ended; ``reason`` says why (client request, idle, server shutdown)."""

    TYPE: ClassVar[str] = "session.closed"
    reason: str = spec(Text(256))


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Pong(ServerMessage):
    TYPE: ClassVar[str] = "pong"
    t_client: float = spec(Number(-MAX_TIME_MS, MAX_TIME_MS))
    t_server: float = spec(_TIME)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Error(ServerMessage):
    """A refusal: ``code`` from the documented list, ``message`` in plain words."""

    TYPE: ClassVar[str] = "error"
    code: str = spec(Text(64, min_chars=1))
    message: str = spec(Text(2048))
    retry_after_ms: float | None = spec(Number(0, 86_400_000), None)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _VadEvent(ServerMessage):
    """A voice-activity edge: ``audio_ms`` is its media time in the session's audio."""

    audio_ms: float = spec(_MEDIA_MS)
    timing: Timing | None = spec(Nested(Timing), None)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class VadSpeechStarted(_VadEvent):
    """The user started speaking (after the VAD's minimum speech, less its padding)."""

    TYPE: ClassVar[str] = "vad.speech_started"


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class VadSpeechStopped(_VadEvent):
    """The user stopped speaking (after the VAD's minimum silence)."""

    TYPE: ClassVar[str] = "vad.speech_stopped"


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TurnEnd(ServerMessage):
    """The user's turn ended (sent at the decision; its reply starts once the turn's ASR
    finals are out, and speech before then continues the turn): ``reason`` is how it was
    decided (``semantic``: the turn model judged it complete at a pause; ``timeout``: judged
    incomplete, and no speech followed within ``turn_max_wait_s``; ``silence``: the silence
    policy, or its fallback; ``commit``: the client committed its audio, the Realtime
    dialect's ``input_audio_buffer.commit``; ``idle``: the user said nothing for the
    session's ``turn.idle_timeout_s`` after the assistant's reply had played, and the
    assistant takes the turn: a reply prompting the user follows unless ``turn.respond`` is
    false), ``probability`` the turn model's score at the last pause (absent under the
    silence policy), ``audio_ms`` the media time of that pause (with ``commit``: of the end
    of the audio committed; absent with ``idle``). With ``commit``, every final of the
    committed audio is out before it (``ref``: the commit's id)."""

    TYPE: ClassVar[str] = "turn.end"
    reason: str = spec(Text(choices=("semantic", "silence", "timeout", "commit", "idle")))
    probability: float | None = spec(Number(0, 1), None)
    audio_ms: float | None = spec(_MEDIA_MS, None)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class _AsrSegment(ServerMessage):
    """Recognised text of one speech segment, with the media times it covers."""

    segment_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))
    text: str = spec(Text(MAX_TEXT_CHARS))
    audio_start_ms: float = spec(_MEDIA_MS)
    audio_end_ms: float = spec(_MEDIA_MS)
    timing: Timing | None = spec(Nested(Timing), None)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AsrPartial(_AsrSegment):
    """Text recognised so far while the user speaks. ``text`` is the committed part only, so
    every partial's ``text`` is a prefix of the next one's and of the final. ``tentative`` is
    what the recognizer hears beyond it now (words, to be joined to ``text`` with a space):
    a caption shows it at once, but the next partial or the final may change or drop it;
    absent when the newest hypothesis adds nothing to ``text``."""

    TYPE: ClassVar[str] = "asr.partial"
    tentative: str | None = spec(Text(MAX_TEXT_CHARS), None)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AsrFinal(_AsrSegment):
    """The segment's text once its speech has ended. Every segment ends with exactly one
    final, whatever became of it: ``text`` is empty when its speech held no words the
    recogniser could read (a cough, a breath, an unsure scrap) or when a clear of the input
    audio dropped it (the Realtime dialect's ``input_audio_buffer.clear``), and a client
    showing its partials takes them back.
    ``error`` is set when the recogniser failed on the segment (``overloaded``, ``timeout``
    or ``internal``, the ``error`` message sent before it says more): ``text`` is then only
    the words committed before the failure. ``language`` is the language it was recognised
    in (ISO 639-1: the session's ``language``, or detected once per turn under ``auto``;
    the same for every segment of a turn) and ``language_probability`` the model's
    probability of that language given the turn's audio (1 for an English-only model)."""

    TYPE: ClassVar[str] = "asr.final"
    language: str | None = spec(Text(MAX_LANGUAGE_CHARS, min_chars=1), None)
    language_probability: float | None = spec(Number(0, 1), None)
    error: str | None = spec(Text(choices=tuple(FINAL_ERRORS)), None)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class VisionResult(ServerMessage):
    TYPE: ClassVar[str] = "vision.result"
    frame_ts: float = spec(_MEDIA_MS)
    detections: tuple[Detection, ...] = spec(ListOf(Nested(Detection), max_items=256))
    timing: Timing | None = spec(Nested(Timing), None)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResponseCreated(ServerMessage):
    """A response began. For a reply to the user's spoken turn, ``input_text`` is the words
    it answers and ``segment_ids`` the speech segments they came from (their ``asr.final``
    ids, in order). The words can differ from those segments' captions: a sentence the
    user paused in is cut into segments, each captioned alone, and answered as decoded
    whole (docs/asr.md, "Joined decodes"); a client can show the turn as one utterance
    with these words. Both are absent for a typed turn, for a reply with no turn of its own
    (``response.create`` after one was answered), and for a turn too long to name
    (over 64 segments or the text limit)."""

    TYPE: ClassVar[str] = "response.created"
    response_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))
    input_text: str | None = spec(Text(MAX_TEXT_CHARS), None)
    segment_ids: tuple[str, ...] | None = spec(
        ListOf(Text(MAX_ID_CHARS, min_chars=1), min_items=1, max_items=MAX_TURN_SEGMENTS), None
    )


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResponseTextDelta(ServerMessage):
    TYPE: ClassVar[str] = "response.text.delta"
    response_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))
    delta: str = spec(Text(MAX_TEXT_CHARS))
    timing: Timing | None = spec(Nested(Timing), None)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResponseAudioStarted(ServerMessage):
    """The reply's audio begins: its first frame is on its way, on the session's WebRTC audio
    track (it plays once through the client's jitter buffer), or WS-only as the
    ``output.audio`` that follows. Once per reply, for a reply that speaks, after its first
    ``response.text.delta``. Its audio ends with ``response.done``: a spoken reply's
    ``response.done`` comes once its audio has played (``completed``) or been cut
    (``cancelled``, ``failed``); ``response.paused`` and ``response.resumed`` come between.
    A client can show the assistant speaking from here to there."""

    TYPE: ClassVar[str] = "response.audio.started"
    response_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResponseDone(ServerMessage):
    """The end of a response; when ``cancelled``, ``text`` is what was delivered before the cut;
    when ``failed``, ``reason`` says why; ``usage`` the tokens its LLM rounds took (absent
    when no round ran). ``language`` is the language the reply was asked in
    (the user's turn, detected or the session's), ``voice`` the voice that spoke it, and
    ``text_only`` says why a reply was not spoken (no voice for its language)."""

    TYPE: ClassVar[str] = "response.done"
    response_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))
    status: str = spec(Text(choices=("completed", "cancelled", "failed")))
    text: str = spec(Text(4 * MAX_TEXT_CHARS))
    timing: Timing | None = spec(Nested(Timing), None)
    reason: str | None = spec(Text(1024), None)
    usage: Usage | None = spec(Nested(Usage), None)
    language: str | None = spec(Text(MAX_LANGUAGE_CHARS, min_chars=1), None)
    voice: str | None = spec(Text(MAX_ID_CHARS, min_chars=1), None)
    text_only: str | None = spec(Text(1024), None)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResponsePaused(ServerMessage):
    """The user started speaking over the reply: its audio stopped at once, while the server
    decides (from the ASR) whether that was an interruption. ``played_ms`` is how much of the
    reply's audio had played: a WS-only client stops playing and drops the ``output.audio``
    frames of the reply from that ``ts`` on, which the server sends again if it resumes. Then
    either ``response.done`` ``cancelled`` (words: the user interrupted) or
    ``response.resumed``."""

    TYPE: ClassVar[str] = "response.paused"
    response_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))
    played_ms: float = spec(_MEDIA_MS)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResponseResumed(ServerMessage):
    """A paused reply plays on from ``played_ms`` (where it paused): what the user made was
    not an interruption. ``reason``: ``no_words`` (no speech the ASR could read, or none yet
    ``interrupt_confirm_s`` after the pause), ``backchannel`` (only backchannels such as
    "mm-hmm", under ``interrupt.backchannels: ignore``), ``few_words`` (fewer words than
    ``interrupt.min_words``), ``echo`` (the reply's own voice, just played, coming back into
    the microphone: its words, ``interrupt_echo_window_s``, or its sound,
    ``interrupt_echo_likeness``); ``heard`` what the ASR heard
    (empty for no words); ``paused_ms`` how long it was paused."""

    TYPE: ClassVar[str] = "response.resumed"
    response_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))
    played_ms: float = spec(_MEDIA_MS)
    paused_ms: float = spec(_MEDIA_MS)
    reason: str = spec(Text(choices=("no_words", "backchannel", "few_words", "echo")))
    heard: str = spec(Text(MAX_TEXT_CHARS), "")


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResponseFunctionCallDelta(ServerMessage):
    """A piece of a tool call as the model streams it: ``arguments`` is the new fragment of
    the call's JSON text."""

    TYPE: ClassVar[str] = "response.function_call.delta"
    response_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))
    call_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))
    name: str = spec(Text(MAX_TOOL_NAME_CHARS, min_chars=1))
    arguments: str = spec(Text(MAX_TOOL_JSON_CHARS))


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ResponseFunctionCallDone(ServerMessage):
    """A whole tool call (``arguments``: JSON text of one object). The reply waits for the
    client's ``function_call.output`` with the same ``call_id``."""

    TYPE: ClassVar[str] = "response.function_call.done"
    response_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))
    call_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))
    name: str = spec(Text(MAX_TOOL_NAME_CHARS, min_chars=1))
    arguments: str = spec(Text(MAX_TOOL_JSON_CHARS))


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class OutputAudio(ServerMessage):
    """Audio for a client without WebRTC (loopback echo, synthesized speech)."""

    TYPE: ClassVar[str] = "output.audio"
    pcm: bytes = spec(Binary(min_bytes=1))
    format: str = spec(Text(choices=("s16le", "f32le")))
    sample_rate: int = spec(Number(8_000, MAX_SAMPLE_RATE_HZ, integer=True))
    channels: int = spec(Number(1, MAX_CHANNELS, integer=True))
    ts: float | None = spec(_MEDIA_MS, None)
    response_id: str | None = spec(Text(MAX_ID_CHARS, min_chars=1), None)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RtcAnswer(ServerMessage):
    TYPE: ClassVar[str] = "rtc.answer"
    sdp: str = spec(Text(MAX_SDP_CHARS, min_chars=1))


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ServerRtcCandidate(ServerMessage):
    TYPE: ClassVar[str] = "rtc.candidate"
    candidate: str = spec(Text(1024))
    sdp_mid: str | None = spec(Text(64), None)
    sdp_mline_index: int | None = spec(Number(0, 64, integer=True), None)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SensorReading(ServerMessage):
    """A reading of a session this client subscribed to: ``ts`` is the publisher's media time
    (ms); ``dropped`` counts this channel's readings coalesced away (latest wins) for this
    subscriber since the last one delivered."""

    TYPE: ClassVar[str] = "sensor.reading"
    session_id: str = spec(Text(MAX_ID_CHARS, min_chars=1))
    channel: str = spec(Text(MAX_CHANNEL_CHARS, min_chars=1))
    ts: float = spec(_MEDIA_MS)
    values: tuple[float, ...] = spec(
        ListOf(Number(-1e300, 1e300), min_items=1, max_items=MAX_SENSOR_VALUES)
    )
    dropped: int = spec(Number(0, 2**53, integer=True), 0)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FlowCredit(ServerMessage):
    """More upload credit: the client may send this many more upload messages and bytes."""

    TYPE: ClassVar[str] = "flow.credit"
    messages: int = spec(Number(0, 2**31, integer=True))
    bytes: int = spec(Number(0, 2**40, integer=True))


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FlowLag(ServerMessage):
    """A lane fell behind real time: ``lag_ms`` of input waits, ``dropped_ms`` was discarded."""

    TYPE: ClassVar[str] = "flow.lag"
    lane: str = spec(Text(32, min_chars=1))
    lag_ms: float = spec(_MEDIA_MS)
    dropped_ms: float = spec(_MEDIA_MS)


@message
@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Metrics(ServerMessage):
    """Per-session counters and gauges (media, queues, latency)."""

    TYPE: ClassVar[str] = "metrics"
    stats: dict[str, Any] = spec(FreeMap())


UPLOAD_TYPES = frozenset({InputAudio.TYPE, InputFrame.TYPE, InputSensor.TYPE})
"""Client messages that consume flow-control credit."""

SENSOR_VALUE_BYTES = 8


def upload_size(msg: ClientMessage) -> int:
    """The bytes of credit an upload consumes: its payload, or 8 per sensor value."""
    if isinstance(msg, InputAudio):
        return len(msg.pcm)
    if isinstance(msg, InputFrame):
        return len(msg.image)
    if isinstance(msg, InputSensor):
        return SENSOR_VALUE_BYTES * len(msg.values)
    raise TypeError(f"{msg.TYPE} is not an upload")
