"""The Realtime dialect as a sans-I/O translator between a Realtime client and a tidegate session.

One :class:`RealtimeTranslator` per ``/v1/realtime`` connection. It does no I/O and reads no
clock: the transport shell feeds it and drains it, passing the time in ms::

    t = RealtimeTranslator(audio=RealtimeAudioCodec(), model=query_model)
    t.start(now_ms)                       # queues tidegate's session.create
    t.receive_text(frame, now_ms)         # each WebSocket text frame from the client
    t.receive_message(server_msg, now_ms) # each tidegate ServerMessage of the session
    for item in t.to_session():           # tidegate ClientMessages and Commands, in order
        ...                               #   -> the session runtime
    for text in t.data_to_send():         # JSON text frames for the client, in order
        ...
    if t.close_code is not None: ...      # close the WebSocket with it

No timers are needed: pacing of input audio is decided on each append from ``now_ms``.

What maps to what (docs/realtime.md has the whole table):

- ``input_audio_buffer.append`` -> ``input.audio`` (s16le at 24 kHz, or 8 kHz for G.711),
  refused with ``input_audio_buffer_full`` when it would put the stream more than
  ``input_audio_max_ahead_s`` ahead of real time, or (manual turns) past
  ``input_audio_buffer_max_s`` uncommitted. Realtime has no credits: the refusal is the
  back-pressure, and nothing refused is queued.
- user text items wait for ``response.create`` and travel with it (tidegate's
  ``response.create`` ``text``): tidegate's ``input.text`` would answer at once, which a Realtime
  item does not.
- tidegate's VAD/ASR events become ``input_audio_buffer.*`` and transcription events, one user
  item per speech segment; a reply becomes a response with a message item (audio + transcript,
  or text) and function_call items. A tool round ends the Realtime response (``response.done``
  lists the calls, as clients expect); the reply's continuation in tidegate (after the
  ``function_call_output``) becomes the next Realtime response, which the client's
  ``response.create`` claims (or which opens by itself when tidegate goes on first).
"""

from __future__ import annotations

import base64
import dataclasses
from collections import OrderedDict, deque
from typing import Any

import orjson

from ..errors import CloseCode, ErrorCode
from ..messages import (
    FINAL_ERRORS,
    AsrFinal,
    AsrPartial,
    ClientMessage,
    Error,
    FunctionCallOutput,
    InputAudio,
    OutputAudio,
    ResponseAudioStarted,
    ResponseCancel,
    ResponseCreate,
    ResponseCreated,
    ResponseDone,
    ResponseFunctionCallDelta,
    ResponseFunctionCallDone,
    ResponseTextDelta,
    ServerMessage,
    SessionClose,
    SessionClosed,
    SessionCreate,
    SessionCreated,
    SessionUpdate,
    SessionUpdated,
    TurnEnd,
    Usage,
    VadSpeechStarted,
    VadSpeechStopped,
)
from . import events as ev
from .audio import INPUT_PCM_FORMAT, AudioCodec, AudioEncoder, AudioFormat
from .commands import ClearInputAudio, Command, CommitInputAudio, CreateResponse
from .errors import RealtimeCode, RealtimeError
from .items import Conversation, ItemRecord
from .session import DEFAULT_MODEL, SessionConfig, tidegate_voice, tool_choice_for_tidegate

INPUT_AUDIO_MAX_AHEAD_S = 2.5  # below tidegate's audio_max_ahead_s (3 s), which then never refuses
INPUT_AUDIO_BUFFER_MAX_S = 60.0  # manual turns: uncommitted audio
MIN_COMMIT_MS = 100.0  # as OpenAI: a commit needs at least 100 ms of audio
MAX_ITEMS = 512
MAX_PENDING_REFS = 1024
MAX_BAD_EVENTS = 16  # in a row, then close 4400
MAX_PENDING_UPDATES = 16  # session.update waiting for tidegate; more are refused
MAX_OPEN_SPEECH = 64  # speech items waiting for their first transcript (drop oldest)
#: a start of speech belongs to the segment whose audio holds it (ms of float rounding)
SEGMENT_SLACK_MS = 1.0
MAX_REPLIES = 16  # tidegate runs one reply at a time; this only bounds a runtime's bug
TIDEGATE_OUTPUT_RATE_HZ = 48_000

SessionInput = ClientMessage | Command

# tidegate error codes -> the Realtime error family.
_ERROR_TYPES = {
    ErrorCode.RATE_LIMITED.value: "rate_limit_error",
    ErrorCode.OVERLOADED.value: "server_error",
    ErrorCode.TIMEOUT.value: "server_error",
    ErrorCode.INTERNAL.value: "server_error",
    ErrorCode.UNAUTHORIZED.value: "authentication_error",
    ErrorCode.FORBIDDEN.value: "permission_error",
}


@dataclasses.dataclass(slots=True)
class _Response:
    """One Realtime response (a tidegate reply, or one tool round of it)."""

    id: str
    tid: str  # tidegate's response_id
    modalities: tuple[str, ...]
    output_format: AudioFormat
    voice: str
    max_output_tokens: int | str
    metadata: dict[str, str] | None
    output: list[ItemRecord] = dataclasses.field(default_factory=list)
    message: ItemRecord | None = None  # the message item being streamed
    encoder: AudioEncoder | None = None
    calls: dict[str, ItemRecord] = dataclasses.field(default_factory=dict)
    done: bool = False
    last_ts: float = -1.0  # the newest output.audio ts forwarded (frames sent again: dropped)
    usage: Usage | None = None  # tidegate's, on the response that ends the reply
    oob: bool = False  # out of band (conversation none): its items join no conversation


@dataclasses.dataclass(slots=True)
class _Reply:
    """A tidegate reply and the Realtime responses it has spanned."""

    tid: str
    options: dict[str, Any]
    current: _Response | None = None
    text_before: int = 0  # characters of message text in earlier rounds (for the cut text)
    claimed: str | None = None  # a response.create's event id waiting for the continuation
    claimable: bool = False  # a continuation opened by itself, not yet claimed by the client
    cancel_asked: bool = False  # response.cancel or a truncation asked tidegate to cut it
    waiting_calls: set[str] = dataclasses.field(default_factory=set)
    #: the Realtime response whose ``output_audio_buffer.started`` announced the reply's
    #: audio on a call's track (its ``stopped`` or ``cleared`` names it too)
    audio_response: str | None = None
    oob: bool = False  # an out-of-band response (conversation none)


class RealtimeTranslator:
    """See the module docstring."""

    def __init__(
        self,
        *,
        audio: AudioCodec,
        model: str = DEFAULT_MODEL,
        session_type: str = "realtime",
        max_event_bytes: int = ev.MAX_EVENT_BYTES,
        input_audio_max_ahead_s: float = INPUT_AUDIO_MAX_AHEAD_S,
        input_audio_buffer_max_s: float = INPUT_AUDIO_BUFFER_MAX_S,
        max_items: int = MAX_ITEMS,
        max_bad_events: int = MAX_BAD_EVENTS,
        track_audio: bool = False,
    ) -> None:
        """``track_audio``: the reply's audio plays on a WebRTC track (a call), not as
        ``response.output_audio.delta``: the ``output_audio_buffer.*`` events are sent and
        ``output_audio_buffer.clear`` is served."""
        if session_type not in ev.SESSION_TYPES:
            raise ValueError(f"session_type must be one of {ev.SESSION_TYPES}")
        self.audio = audio
        self.max_event_bytes = max_event_bytes
        self.input_audio_max_ahead_ms = input_audio_max_ahead_s * 1000.0
        self.input_audio_buffer_max_ms = input_audio_buffer_max_s * 1000.0
        self.max_bad_events = max_bad_events
        self.track_audio = track_audio
        self.config = SessionConfig(type=session_type, model=model)
        self.session_id: str | None = None
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        self.conversation = Conversation(max_items)
        self._out: list[str] = []
        self._to_session: list[SessionInput] = []
        self._n_event = 0
        self._n_id = 0
        self._n_msg = 0
        self._bad_in_a_row = 0
        self._started = False
        self._closing = False
        self._switching = False  # a session.type change: the old session closes, a new opens
        # tidegate message id -> the client event_id that caused it (None: no id given).
        self._refs: OrderedDict[str, str | None] = OrderedDict()
        self._pending_updates: deque[tuple[str, SessionConfig]] = deque()
        self._create_options: dict[str, dict[str, Any]] = {}
        # input audio
        self._lead_until_ms = 0.0
        self._in_samples = 0  # at the input format's rate, for ts
        self._in_rate_hz = self.config.input_format.rate_hz
        self._in_ms_base = 0.0
        self._uncommitted_ms = 0.0
        # speech items
        self._speech_item: str | None = None
        self._segments: dict[str, str] = {}  # tidegate segment_id -> item id
        # Speech items waiting for their segment id, with the media time their speech began
        # (noise with no words never gets one).
        self._unassigned: deque[tuple[str, float]] = deque(maxlen=MAX_OPEN_SPEECH)
        self._partial: dict[str, str] = {}  # item id -> transcript so far
        # manual turns: committed items waiting for tidegate's turn.end (commit id -> item
        # id), and the finals heard since the last commit or clear
        self._commits: OrderedDict[str, str] = OrderedDict()
        self._buffer_text: list[str] = []
        self._buffer_s = 0.0
        # replies
        self._replies: dict[str, _Reply] = {}
        self._calls: dict[str, str] = {}  # call_id -> tidegate response id, awaiting output
        self._rate_limits: list[dict[str, Any]] | None = None
        self.stats = {"events_in": 0, "events_out": 0, "errors_out": 0, "audio_refused": 0}

    # -- ids and output ------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        self._n_id += 1
        return f"{prefix}_{self._n_id}"

    def _emit(self, etype: str, **fields: Any) -> None:
        self._n_event += 1
        event = {"type": etype, "event_id": f"event_{self._n_event}", **fields}
        self._out.append(orjson.dumps(event).decode())
        self.stats["events_out"] += 1

    def session_event(self) -> str:
        """A ``session.created`` frame of the session as it is now, for one more connection
        to the same session only (a call's sideband): it is not queued for the others."""
        self._n_event += 1
        event = {
            "type": "session.created",
            "event_id": f"event_{self._n_event}",
            "session": self.config.to_wire(),
        }
        return orjson.dumps(event).decode()

    def _error(self, error: RealtimeError) -> None:
        body: dict[str, Any] = {
            "type": error.error_type,
            "code": error.realtime_code,
            "message": error.message,
            "param": error.param,
            "event_id": error.event_id,
        }
        self.stats["errors_out"] += 1
        self._emit("error", error=body)

    def _send(self, msg: ClientMessage | Command, event_id: str | None) -> None:
        self._refs[msg.id or ""] = event_id
        while len(self._refs) > MAX_PENDING_REFS:
            self._refs.popitem(last=False)
        self._to_session.append(msg)

    def _msg_id(self) -> str:
        self._n_msg += 1
        return f"rt{self._n_msg}"

    def data_to_send(self) -> list[str]:
        """The JSON text frames for the client, in order."""
        out, self._out = self._out, []
        return out

    def to_session(self) -> list[SessionInput]:
        """tidegate client messages and commands for the session runtime, in order."""
        out, self._to_session = self._to_session, []
        return out

    def update_rate_limits(self, limits: list[dict[str, Any]]) -> None:
        """The edge's budget for this client (``name``, ``limit``, ``remaining``,
        ``reset_seconds``): sent as ``rate_limits.updated`` after each ``response.done``."""
        self._rate_limits = [dict(x) for x in limits]

    # -- the client's side ---------------------------------------------------------------------

    def start(self, now_ms: float) -> None:
        """Queue tidegate's ``session.create`` for this connection."""
        if not self._started:
            self._started = True
            self._send(SessionCreate(config=self.config.tidegate_config(), id=self._msg_id()), None)

    def close(self) -> None:
        """The client went away: queue tidegate's ``session.close``."""
        if not self._closing:
            self._closing = True
            self._send(SessionClose(id=self._msg_id()), None)

    def receive_text(self, data: str | bytes, now_ms: float) -> None:
        """One WebSocket text frame from the client. Never raises for bad input: it becomes
        an ``error`` event (and ``max_bad_events`` of them in a row close with 4400)."""
        if self.close_code is not None:
            return
        self.stats["events_in"] += 1
        try:
            event = ev.parse_client_event(data, max_event_bytes=self.max_event_bytes)
            handler = _HANDLERS[type(event)]
            handler(self, event, now_ms)
        except RealtimeError as e:
            self._error(e)
            self._bad_in_a_row += 1
            if self._bad_in_a_row >= self.max_bad_events:
                self.close_code = CloseCode.PROTOCOL_VIOLATION
                self.close_reason = f"{self._bad_in_a_row} invalid events in a row"
            return
        self._bad_in_a_row = 0

    def _pending_config(self) -> SessionConfig:
        return self._pending_updates[-1][1] if self._pending_updates else self.config

    def _fresh(self) -> bool:
        """Nothing has happened on the session yet (the kind may still change)."""
        return (
            self.session_id is not None
            and not self._switching
            and not self._pending_updates
            and self._in_media_ms() == 0.0
            and len(self.conversation) == 0
            and not self._replies
        )

    def _on_session_update(self, e: ev.SessionUpdate, now_ms: float) -> None:
        base = self._pending_config()
        if e.patch["type"] != base.type:
            if not self._fresh():
                raise RealtimeError(
                    RealtimeCode.INVALID_STATE,
                    f"session.type can change only before anything else happens on the session "
                    f"(it is '{base.type}'); open another connection for the other kind.",
                    param="session.type",
                    event_id=e.event_id,
                )
            # A new tidegate session of the other mode replaces the untouched one.
            new = SessionConfig(type=e.patch["type"], model=base.model).apply(e.patch)
            self._switching = True
            self._pending_updates.append((self._msg_id(), new))
            self._send(SessionClose(id=self._msg_id()), e.event_id)
            create = SessionCreate(config=new.tidegate_config(), id=self._pending_updates[-1][0])
            self._send(create, e.event_id)
            return
        if len(self._pending_updates) >= MAX_PENDING_UPDATES:
            raise RealtimeError(
                RealtimeCode.INVALID_STATE,
                f"{len(self._pending_updates)} session.update events are still waiting for the "
                "session; wait for session.updated.",
                event_id=e.event_id,
            )
        new = base.apply(e.patch)
        if new.tidegate_config() == base.tidegate_config() and not self._pending_updates:
            self.config = new
            self._emit("session.updated", session=new.to_wire())
            return
        mid = self._msg_id()
        self._pending_updates.append((mid, new))
        self._send(SessionUpdate(config=new.tidegate_update(base), id=mid), e.event_id)

    def _in_media_ms(self) -> float:
        return self._in_ms_base + self._in_samples * 1000.0 / self._in_rate_hz

    def _on_append(self, e: ev.AudioAppend, now_ms: float) -> None:
        fmt = self._pending_config().input_format
        if len(e.audio) % fmt.sample_bytes:
            raise RealtimeError(
                RealtimeCode.INVALID_AUDIO,
                f"Invalid 'audio': {len(e.audio)} bytes is not a whole number of {fmt.mime} "
                f"samples ({fmt.sample_bytes} bytes each).",
                param="audio",
                event_id=e.event_id,
            )
        duration = fmt.duration_ms(len(e.audio))
        start = max(self._lead_until_ms, now_ms)
        ahead = start + duration - now_ms
        if ahead > self.input_audio_max_ahead_ms:
            self.stats["audio_refused"] += 1
            wait = ahead - self.input_audio_max_ahead_ms
            raise RealtimeError(
                RealtimeCode.BUFFER_FULL,
                f"Audio appended faster than real time: this append would put the stream "
                f"{ahead:.0f} ms ahead (limit {self.input_audio_max_ahead_ms:.0f} ms, "
                f"input_audio_max_ahead_s). It was dropped; send it again in {wait:.0f} ms, "
                "and pace appends at real time.",
                param="audio",
                event_id=e.event_id,
            )
        manual = self._pending_config().turn_detection is None
        if manual and self._uncommitted_ms + duration > self.input_audio_buffer_max_ms:
            self.stats["audio_refused"] += 1
            raise RealtimeError(
                RealtimeCode.BUFFER_FULL,
                f"The input audio buffer holds {self._uncommitted_ms:.0f} ms uncommitted; "
                f"the limit is {self.input_audio_buffer_max_ms:.0f} ms "
                "(input_audio_buffer_max_s). Commit or clear it first. The append was dropped.",
                param="audio",
                event_id=e.event_id,
            )
        self._lead_until_ms = start + duration
        self._uncommitted_ms += duration
        if fmt.rate_hz != self._in_rate_hz:  # the format changed: media time goes on from here
            self._in_ms_base = self._in_media_ms()
            self._in_samples = 0
            self._in_rate_hz = fmt.rate_hz
        pcm = self.audio.decode(fmt, e.audio)
        ts = self._in_media_ms()
        self._in_samples += len(e.audio) // fmt.sample_bytes
        msg = InputAudio(
            pcm=pcm,
            format=INPUT_PCM_FORMAT,
            sample_rate=fmt.rate_hz,
            channels=1,
            ts=ts,
            id=self._msg_id(),
        )
        self._send(msg, e.event_id)

    def _on_commit(self, e: ev.AudioCommit, now_ms: float) -> None:
        if self._uncommitted_ms < MIN_COMMIT_MS:
            raise RealtimeError(
                RealtimeCode.BUFFER_EMPTY,
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS:.0f} ms of audio, but buffer only has "
                f"{self._uncommitted_ms:.2f} ms of audio.",
                event_id=e.event_id,
            )
        self._uncommitted_ms = 0.0
        mid = self._msg_id()
        self._send(CommitInputAudio(id=mid), e.event_id)
        if self.config.turn_detection is None:
            # the item's transcript comes with tidegate's turn.end (reason commit)
            item_id = self._new_id("item")
            self._commits[mid] = item_id
            while len(self._commits) > MAX_OPEN_SPEECH:
                self._commits.popitem(last=False)
            self._committed(item_id)

    def _on_clear(self, e: ev.AudioClear, now_ms: float) -> None:
        self._uncommitted_ms = 0.0
        self._buffer_text.clear()
        self._buffer_s = 0.0
        self._send(ClearInputAudio(id=self._msg_id()), e.event_id)
        self._emit("input_audio_buffer.cleared")

    def _on_item_create(self, e: ev.ItemCreate, now_ms: float) -> None:
        if e.previous_item_id is not None and e.previous_item_id != self.conversation.last_id:
            raise RealtimeError(
                RealtimeCode.UNSUPPORTED_PARAMETER,
                "'previous_item_id' may only name the last item (or be omitted): tidegate "
                "appends to the conversation.",
                param="previous_item_id",
                event_id=e.event_id,
            )
        item_id = e.item.id or self._new_id("item")
        if self.conversation.get(item_id) is not None:
            raise RealtimeError(
                RealtimeCode.INVALID_VALUE,
                f"An item with id '{item_id}' already exists.",
                param="item.id",
                event_id=e.event_id,
            )
        if self.config.type == "transcription":
            raise RealtimeError(
                RealtimeCode.INVALID_STATE,
                "A transcription session has no conversation items to create.",
                param="item",
                event_id=e.event_id,
            )
        if isinstance(e.item, ev.UserText):
            pending = sum(len(i.text) + 1 for i in self._pending_texts())
            if pending + len(e.item.text) > ev.MAX_TEXT_CHARS:
                raise RealtimeError(
                    RealtimeCode.INVALID_VALUE,
                    f"User text waiting for response.create would exceed {ev.MAX_TEXT_CHARS} "
                    "characters; send response.create first.",
                    param="item.content",
                    event_id=e.event_id,
                )
            record = ItemRecord(item_id, "user_text", text=e.item.text, sent=False)
        else:
            tid = self._calls.pop(e.item.call_id, None)
            if tid is None:
                raise RealtimeError(
                    RealtimeCode.ITEM_NOT_FOUND,
                    f"No function call '{e.item.call_id}' is waiting for its output.",
                    param="item.call_id",
                    event_id=e.event_id,
                )
            reply = self._replies.get(tid)
            if reply is not None:
                reply.waiting_calls.discard(e.item.call_id)
            record = ItemRecord(
                item_id, "function_call_output", call_id=e.item.call_id, output=e.item.output
            )
            msg = FunctionCallOutput(
                call_id=e.item.call_id, output=e.item.output, id=self._msg_id()
            )
            self._send(msg, e.event_id)
        previous = self.conversation.add(record)
        self._emit("conversation.item.added", previous_item_id=previous, item=record.to_wire())
        self._emit("conversation.item.done", previous_item_id=previous, item=record.to_wire())

    def _pending_texts(self) -> list[ItemRecord]:
        return [i for i in self.conversation.items() if i.kind == "user_text" and not i.sent]

    def _on_truncate(self, e: ev.ItemTruncate, now_ms: float) -> None:
        item = self.conversation.get(e.item_id)
        if item is None:
            raise RealtimeError(
                RealtimeCode.ITEM_NOT_FOUND,
                f"Item with item_id not found: {e.item_id}",
                param="item_id",
                event_id=e.event_id,
            )
        if item.kind != "assistant" or not item.audio:
            raise RealtimeError(
                RealtimeCode.INVALID_VALUE,
                "Only an assistant message item with audio can be truncated.",
                param="item_id",
                event_id=e.event_id,
            )
        if e.content_index != 0:
            raise RealtimeError(
                RealtimeCode.INVALID_VALUE,
                "Invalid 'content_index': the item has one content part (0).",
                param="content_index",
                event_id=e.event_id,
            )
        if e.audio_end_ms > item.audio_ms + 1.0:
            raise RealtimeError(
                RealtimeCode.INVALID_VALUE,
                f"audio_end_ms ({e.audio_end_ms}) is past the item's audio "
                f"({item.audio_ms:.0f} ms sent).",
                param="audio_end_ms",
                event_id=e.event_id,
            )
        item.truncated_ms = e.audio_end_ms
        reply = self._replies.get(item.response_tid)
        if reply is not None and item.status == "in_progress":
            reply.cancel_asked = True
            self._send(ResponseCancel(response_id=reply.tid, id=self._msg_id()), e.event_id)
        self._emit(
            "conversation.item.truncated",
            item_id=item.id,
            content_index=0,
            audio_end_ms=e.audio_end_ms,
        )

    def _on_delete(self, e: ev.ItemDelete, now_ms: float) -> None:
        item = self.conversation.get(e.item_id)
        if item is None:
            raise RealtimeError(
                RealtimeCode.ITEM_NOT_FOUND,
                f"Item with item_id not found: {e.item_id}",
                param="item_id",
                event_id=e.event_id,
            )
        if item.kind != "user_text" or item.sent:
            raise RealtimeError(
                RealtimeCode.UNSUPPORTED_PARAMETER,
                "This server can delete only user text items that no response has used yet: "
                "tidegate's history keeps what the model has seen.",
                param="item_id",
                event_id=e.event_id,
            )
        self.conversation.remove(item.id)
        self._emit("conversation.item.deleted", item_id=item.id)

    def _on_retrieve(self, e: ev.ItemRetrieve, now_ms: float) -> None:
        item = self.conversation.get(e.item_id)
        if item is None:
            raise RealtimeError(
                RealtimeCode.ITEM_NOT_FOUND,
                f"Item with item_id not found: {e.item_id}",
                param="item_id",
                event_id=e.event_id,
            )
        self._emit("conversation.item.retrieved", item=item.to_wire())

    def _active_reply(self) -> _Reply | None:
        """The reply of the default conversation in progress (out-of-band ones aside)."""
        for reply in self._replies.values():
            if not reply.oob:
                return reply
        return None

    def _on_response_create(self, e: ev.ResponseCreate, now_ms: float) -> None:
        if self.config.type == "transcription":
            raise RealtimeError(
                RealtimeCode.INVALID_STATE,
                "A transcription session makes no responses.",
                event_id=e.event_id,
            )
        if e.options.get("conversation") == "none":
            self._out_of_band(e)
            return
        reply = self._active_reply()
        if reply is not None:
            if reply.claimable:
                # tidegate went on after the tool round before this response.create came:
                # the response it opened is this one (its response.created is already out).
                reply.claimable = False
                return
            if reply.current is None and reply.claimed is None:
                # A tool round ended; tidegate goes on by itself: this claims the continuation.
                reply.claimed = e.event_id or ""
                self._open(reply)
                return
            raise RealtimeError(
                RealtimeCode.RESPONSE_ACTIVE,
                "Conversation already has an active response in progress; cancel it or wait "
                "for response.done.",
                event_id=e.event_id,
            )
        texts = self._pending_texts()
        for item in texts:
            item.sent = True
        text = "\n".join(i.text for i in texts) or None
        mid = self._msg_id()
        self._create_options[mid] = e.options
        while len(self._create_options) > MAX_PENDING_REFS:
            self._create_options.pop(next(iter(self._create_options)))
        runtime = _runtime_options(e.options)
        if runtime:
            self._send(CreateResponse(id=mid, text=text, options=runtime), e.event_id)
        else:
            self._send(ResponseCreate(text=text, id=mid), e.event_id)

    def _out_of_band(self, e: ev.ResponseCreate) -> None:
        """``conversation: "none"``: a response beside the conversation (it may run while
        the conversation's does), over its ``input`` (items and references to the
        conversation's, as LLM messages) or, without one, the conversation as it is; its
        output joins no conversation. The pending user text stays pending."""
        options = dict(e.options)
        runtime = _runtime_options(options)
        runtime["conversation"] = "none"
        if "input" in options:
            runtime["input"] = [
                self._input_message(x, i, e.event_id) for i, x in enumerate(options["input"])
            ]
        mid = self._msg_id()
        self._create_options[mid] = options
        while len(self._create_options) > MAX_PENDING_REFS:
            self._create_options.pop(next(iter(self._create_options)))
        self._send(CreateResponse(id=mid, text=None, options=runtime), e.event_id)

    def _input_message(
        self, x: ev.Item | ev.ItemReference, i: int, event_id: str | None
    ) -> dict[str, Any]:
        """One item of an out-of-band response's ``input`` as an LLM message."""
        if isinstance(x, ev.UserText):
            return {"role": "user", "content": x.text}
        if isinstance(x, ev.CallOutput):
            return {"role": "tool", "tool_call_id": x.call_id, "content": x.output}
        item = self.conversation.get(x.id)
        if item is None:
            raise RealtimeError(
                RealtimeCode.ITEM_NOT_FOUND,
                f"Item with id '{x.id}' not found in the conversation.",
                param=f"response.input[{i}].id",
                event_id=event_id,
            )
        if item.kind == "function_call":
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.text},
            }
            return {"role": "assistant", "content": "", "tool_calls": [call]}
        if item.kind == "function_call_output":
            return {"role": "tool", "tool_call_id": item.call_id, "content": item.output}
        role = "assistant" if item.kind == "assistant" else "user"
        return {"role": role, "content": item.text}

    def _on_response_cancel(self, e: ev.ResponseCancel, now_ms: float) -> None:
        if e.response_id is not None:  # any response in progress, out-of-band ones too
            named = [
                r for r in self._replies.values() if r.current and r.current.id == e.response_id
            ]
            reply = named[0] if named else None
        else:
            reply = self._active_reply()
        if reply is None:
            raise RealtimeError(
                RealtimeCode.RESPONSE_NOT_ACTIVE,
                "Cancellation failed: no active response found"
                + (f" with id '{e.response_id}'." if e.response_id else "."),
                param="response_id" if e.response_id else None,
                event_id=e.event_id,
            )
        reply.cancel_asked = True
        self._send(ResponseCancel(response_id=reply.tid, id=self._msg_id()), e.event_id)

    def _on_output_clear(self, e: ev.OutputAudioClear, now_ms: float) -> None:
        """``output_audio_buffer.clear`` (calls): cut the reply whose audio is playing, as a
        ``response.cancel`` would (the Agents SDK sends both, the cancel first: one cut);
        ``output_audio_buffer.cleared`` follows with its ``response.done``. With nothing
        playing (or the cut already asked) there is nothing to do: every reply that played
        has already said ``stopped`` or ``cleared``, or is about to."""
        if not self.track_audio:
            raise RealtimeError(
                RealtimeCode.UNSUPPORTED_EVENT,
                f"'output_audio_buffer.clear' is not supported here: {ev.OUTPUT_CLEAR_OVER_WS}.",
                param="type",
                event_id=e.event_id,
            )
        reply = self._active_reply()
        if reply is not None and reply.audio_response is not None and not reply.cancel_asked:
            reply.cancel_asked = True
            self._send(ResponseCancel(response_id=reply.tid, id=self._msg_id()), e.event_id)

    # -- tidegate's side -----------------------------------------------------------------------

    def receive_message(self, msg: ServerMessage, now_ms: float) -> None:
        """One tidegate server message of the session; types with no Realtime counterpart
        (pong, flow.credit, flow.lag, metrics, vision.result, sensor.reading, rtc.*,
        response.paused, response.resumed) are dropped (docs/realtime.md says which)."""
        handler = _SERVER_HANDLERS.get(type(msg))
        if handler is not None:
            handler(self, msg, now_ms)

    def _on_created(self, msg: SessionCreated, now_ms: float) -> None:
        self.session_id = msg.session_id
        if self._switching:
            self._switching = False
            self._on_updated(SessionUpdated(config=msg.config), now_ms)
            return
        self._emit("session.created", session=self.config.to_wire())

    def _on_updated(self, msg: SessionUpdated, now_ms: float) -> None:
        if not self._pending_updates:
            return
        _, config = self._pending_updates.popleft()
        self.config = config
        self._emit("session.updated", session=config.to_wire())

    def _on_closed(self, msg: SessionClosed, now_ms: float) -> None:
        if self._switching:
            return  # the session replaced by a session.type change
        self.close_code = CloseCode.NORMAL
        self.close_reason = msg.reason[:120]

    def _on_error(self, msg: Error, now_ms: float) -> None:
        event_id = None
        if msg.ref is not None:
            event_id = self._refs.get(msg.ref)
            if self._switching and self._pending_updates and self._pending_updates[0][0] == msg.ref:
                # The new session was refused: there is none now; the client must reconnect.
                self._switching = False
                self.close_code = (
                    CloseCode.INTERNAL if msg.code == "internal" else CloseCode.PROTOCOL_VIOLATION
                )
                self.close_reason = "the session of the requested type could not be opened"
            for i, (mid, _) in enumerate(self._pending_updates):
                if mid == msg.ref:  # refused: it and the updates built on it are dropped
                    while len(self._pending_updates) > i:
                        self._pending_updates.pop()
                    break
            self._create_options.pop(msg.ref, None)
            item_id = self._commits.pop(msg.ref, None)
            if item_id is not None:  # the commit failed: its item ends without transcript
                self._complete_commit(item_id, failed=True)
        message = msg.message or f"refused by the session ({msg.code})"
        if msg.retry_after_ms is not None:
            message += f" (retry after {msg.retry_after_ms:.0f} ms)"
        self._error(
            RealtimeError(
                msg.code,
                message,
                event_id=event_id,
                error_type=_ERROR_TYPES.get(msg.code, "invalid_request_error"),
            )
        )

    def _transcribing(self) -> bool:
        return self.config.type == "transcription" or self.config.transcription is not None

    def _on_speech_started(self, msg: VadSpeechStarted, now_ms: float) -> None:
        if self.config.turn_detection is None:
            return
        item_id = self._new_id("item")
        self._speech_item = item_id
        self._unassigned.append((item_id, msg.audio_ms))
        self._emit(
            "input_audio_buffer.speech_started", audio_start_ms=int(msg.audio_ms), item_id=item_id
        )

    def _on_speech_stopped(self, msg: VadSpeechStopped, now_ms: float) -> None:
        if self.config.turn_detection is None or self._speech_item is None:
            return
        item_id, self._speech_item = self._speech_item, None
        self._uncommitted_ms = 0.0
        self._emit(
            "input_audio_buffer.speech_stopped", audio_end_ms=int(msg.audio_ms), item_id=item_id
        )
        self._committed(item_id)

    def _committed(self, item_id: str) -> None:
        record = ItemRecord(item_id, "user_audio", status="in_progress")
        previous = self.conversation.add(record)
        self._emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        self._emit("conversation.item.added", previous_item_id=previous, item=record.to_wire())

    def _segment_item(self, msg: AsrPartial | AsrFinal, *, new: bool = True) -> str | None:
        """The speech item of ``msg``'s segment: the one whose speech began within the
        segment's audio (a segment starts at most its pre-roll before the VAD's start of
        speech), whatever order the segments' events come in: a segment's first partial
        can come before the previous segment's final. A segment the client was told of by
        no start of speech gets an item of its own, unless ``new`` is false (None)."""
        item_id = self._segments.get(msg.segment_id)
        if item_id is None:
            mine = [
                (item, at)
                for item, at in self._unassigned
                if msg.audio_start_ms - SEGMENT_SLACK_MS
                <= at
                <= msg.audio_end_ms + SEGMENT_SLACK_MS
            ]
            if mine:
                self._unassigned.remove(mine[0])
                item_id = mine[0][0]
            elif not new:
                return None
            else:  # speech the client was not told about (VAD events off, a long one cut)
                item_id = self._new_id("item")
                self._committed(item_id)
            self._segments[msg.segment_id] = item_id
            while len(self._segments) > MAX_PENDING_REFS:
                self._segments.pop(next(iter(self._segments)))
        return item_id

    def _transcript_delta(self, item_id: str, text: str) -> None:
        before = self._partial.get(item_id, "")
        delta = text[len(before) :] if text.startswith(before) else text
        self._partial[item_id] = text
        while len(self._partial) > MAX_OPEN_SPEECH:
            self._partial.pop(next(iter(self._partial)))
        if delta and self._transcribing():
            self._emit(
                "conversation.item.input_audio_transcription.delta",
                item_id=item_id,
                content_index=0,
                delta=delta,
            )

    def _on_partial(self, msg: AsrPartial, now_ms: float) -> None:
        if self.config.turn_detection is None:
            return  # manual turns: the transcript comes after the commit
        if not msg.text:  # tentative words only: no delta (deltas only grow), no item taken
            return
        item_id = self._segment_item(msg)
        assert item_id is not None
        self._transcript_delta(item_id, msg.text)

    def _on_final(self, msg: AsrFinal, now_ms: float) -> None:
        """Every segment ends with a final (tidegate's ``asr.final``): its item's transcript,
        ``""`` for a cough or a scrap, or, when the recogniser failed on it,
        ``conversation.item.input_audio_transcription.failed`` (the item ends ``incomplete``
        with the words committed before the failure, if any)."""
        seconds = max(0.0, (msg.audio_end_ms - msg.audio_start_ms) / 1000.0)
        if self.config.turn_detection is None:  # manual turns: held for the commit
            if msg.text and (
                sum(len(t) + 1 for t in self._buffer_text) + len(msg.text) <= ev.MAX_TEXT_CHARS
            ):
                self._buffer_text.append(msg.text)
                self._buffer_s += seconds
            return
        # a segment without words that no start of speech announced (the rest of a long
        # one cut, a clear's) is no item of the conversation
        item_id = self._segment_item(msg, new=bool(msg.text) or msg.error is not None)
        self._segments.pop(msg.segment_id, None)
        if item_id is None:
            return
        self._transcript_delta(item_id, msg.text)
        self._partial.pop(item_id, None)
        if self._transcribing() and msg.error is not None:
            self._emit(
                "conversation.item.input_audio_transcription.failed",
                item_id=item_id,
                content_index=0,
                error={
                    "type": "transcription_error",
                    "code": msg.error,
                    "message": FINAL_ERRORS.get(msg.error, "the transcription failed"),
                },
            )
        elif self._transcribing():
            self._emit(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=msg.text,
                usage={"type": "duration", "seconds": seconds},
            )
        item = self.conversation.get(item_id)
        if item is None:
            return
        item.text = msg.text
        item.transcript_known = msg.error is None or bool(msg.text)
        item.status = "completed" if msg.error is None else "incomplete"
        self._emit("conversation.item.done", item=item.to_wire())

    def _on_turn_end(self, msg: TurnEnd, now_ms: float) -> None:
        """A commit's words are all out (manual turns): its item gets its transcript. An idle
        turn is the API's idle timeout (below)."""
        if msg.reason == "idle":
            self._idle_timeout(msg)
            return
        if msg.reason != "commit" or msg.ref is None:
            return
        item_id = self._commits.pop(msg.ref, None)
        if item_id is not None:
            self._complete_commit(item_id)

    def _idle_timeout(self, msg: TurnEnd) -> None:
        """The user said nothing for ``idle_timeout_ms`` after the reply had played
        (tidegate's ``turn.end`` ``idle``): ``input_audio_buffer.timeout_triggered`` over the
        silent stretch, which is committed as an item without words; tidegate's reply to the
        silence follows as a response."""
        td = self.config.turn_detection
        span_ms = td.idle_timeout_ms if td is not None and td.idle_timeout_ms is not None else 0
        end_ms = msg.audio_ms if msg.audio_ms is not None else self._in_media_ms()
        item_id = self._new_id("item")
        self._emit(
            "input_audio_buffer.timeout_triggered",
            audio_start_ms=int(max(0.0, end_ms - span_ms)),
            audio_end_ms=int(end_ms),
            item_id=item_id,
        )
        self._committed(item_id)
        item = self.conversation.get(item_id)
        if item is not None:
            item.transcript_known = True
            item.status = "completed"
            self._emit("conversation.item.done", item=item.to_wire())

    def _complete_commit(self, item_id: str, *, failed: bool = False) -> None:
        text = "" if failed else " ".join(self._buffer_text)
        seconds = self._buffer_s
        self._buffer_text.clear()
        self._buffer_s = 0.0
        if self._transcribing() and not failed:
            if text:
                self._emit(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=item_id,
                    content_index=0,
                    delta=text,
                )
            self._emit(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=text,
                usage={"type": "duration", "seconds": seconds},
            )
        item = self.conversation.get(item_id)
        if item is None:
            return
        item.text = text
        item.transcript_known = not failed
        item.status = "incomplete" if failed else "completed"
        self._emit("conversation.item.done", item=item.to_wire())

    # -- replies -------------------------------------------------------------------------------

    def _on_response_created(self, msg: ResponseCreated, now_ms: float) -> None:
        options = self._create_options.pop(msg.ref, {}) if msg.ref else {}
        reply = _Reply(msg.response_id, options, oob=options.get("conversation") == "none")
        self._replies[msg.response_id] = reply
        while len(self._replies) > MAX_REPLIES:
            self._replies.pop(next(iter(self._replies)))
        self._open(reply)

    def _open(self, reply: _Reply) -> _Response:
        o = reply.options
        cfg = self.config
        response = _Response(
            id=self._new_id("resp"),
            tid=reply.tid,
            # out of band: in text (tidegate says nothing aloud beside the conversation)
            modalities=("text",)
            if reply.oob
            else o.get("output_modalities", cfg.output_modalities),
            output_format=o.get("output_format", cfg.output_format),
            voice=o.get("voice", cfg.voice),
            max_output_tokens=o.get("max_output_tokens", cfg.max_output_tokens),
            metadata=o.get("metadata"),
            oob=reply.oob,
        )
        reply.current = response
        self._emit("response.created", response=self._response_wire(response, "in_progress"))
        return response

    def _response_wire(
        self, r: _Response, status: str, details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": r.id,
            "object": "realtime.response",
            "status": status,
            "status_details": details,
            "output": [i.to_wire() for i in r.output],
            "conversation_id": None if r.oob else "conv_1",
            "output_modalities": list(r.modalities),
            "audio": {"output": {"format": r.output_format.to_wire(), "voice": r.voice}},
            "max_output_tokens": r.max_output_tokens,
            "metadata": r.metadata,
            "usage": None,
        }
        if status != "in_progress":
            out["usage"] = _usage_wire(r.usage)
        return out

    def _current(self, tid: str) -> _Response | None:
        """The open Realtime response of a tidegate reply, opening the continuation when
        tidegate goes on after a tool round."""
        reply = self._replies.get(tid)
        if reply is None:
            return None
        if reply.current is None:
            reply.claimable = reply.claimed is None
            return self._open(reply)
        return reply.current

    def _message(self, r: _Response) -> ItemRecord:
        if r.message is not None:
            return r.message
        audio = r.modalities == ("audio",)
        item = ItemRecord(
            self._new_id("item"), "assistant", status="in_progress", audio=audio, response_tid=r.tid
        )
        self._add_output(r, item)
        part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        self._emit(
            "response.content_part.added",
            response_id=r.id,
            item_id=item.id,
            output_index=len(r.output) - 1,
            content_index=0,
            part=part,
        )
        r.message = item
        if audio:
            r.encoder = self.audio.encoder(r.output_format, TIDEGATE_OUTPUT_RATE_HZ)
        return item

    def _add_output(self, r: _Response, item: ItemRecord) -> None:
        r.output.append(item)
        self._emit(
            "response.output_item.added",
            response_id=r.id,
            output_index=len(r.output) - 1,
            item=item.to_wire(),
        )
        if not r.oob:  # an out-of-band response's items join no conversation
            previous = self.conversation.add(item)
            self._emit("conversation.item.added", previous_item_id=previous, item=item.to_wire())

    def _where(self, r: _Response, item: ItemRecord) -> dict[str, Any]:
        return {"response_id": r.id, "item_id": item.id, "output_index": r.output.index(item)}

    def _on_text_delta(self, msg: ResponseTextDelta, now_ms: float) -> None:
        r = self._current(msg.response_id)
        if r is None or not msg.delta:
            return
        item = self._message(r)
        item.text += msg.delta
        etype = (
            "response.output_audio_transcript.delta" if item.audio else "response.output_text.delta"
        )
        self._emit(etype, **self._where(r, item), content_index=0, delta=msg.delta)

    def _on_audio_started(self, msg: ResponseAudioStarted, now_ms: float) -> None:
        """A call's reply began on the track: ``output_audio_buffer.started`` (after its
        audio part was added, as the API orders them)."""
        if not self.track_audio:
            return
        reply = self._replies.get(msg.response_id)
        r = self._current(msg.response_id)
        if reply is None or r is None or r.modalities != ("audio",):
            return  # a text-only response: its speech is not heard (docs/realtime.md)
        self._message(r)
        if reply.audio_response is None:
            reply.audio_response = r.id
            self._emit("output_audio_buffer.started", response_id=r.id)

    def _on_audio(self, msg: OutputAudio, now_ms: float) -> None:
        if msg.response_id is None:
            return
        r = self._current(msg.response_id)
        if r is None or r.modalities != ("audio",):
            return  # a text-only response: tidegate's speech is not sent (docs/realtime.md)
        if msg.format != "s16le" or msg.sample_rate != TIDEGATE_OUTPUT_RATE_HZ:
            return  # tidegate's output.audio is s16le at 48 kHz; anything else is not ours
        if msg.ts is not None:
            # A reply paused by speech (response.paused) and resumed sends again the frames
            # its client had not played; this client had them already (it plays on).
            if msg.ts <= r.last_ts:
                return
            r.last_ts = msg.ts
        item = self._message(r)
        assert r.encoder is not None
        pcm = msg.pcm if msg.channels == 1 else _first_channel(msg.pcm, msg.channels)
        data = r.encoder.encode(pcm)
        if data:
            self._audio_delta(r, item, data)

    def _audio_delta(self, r: _Response, item: ItemRecord, data: bytes) -> None:
        item.audio_ms += r.output_format.duration_ms(len(data))
        self._emit(
            "response.output_audio.delta",
            **self._where(r, item),
            content_index=0,
            delta=base64.b64encode(data).decode(),
        )

    def _finish_message(self, r: _Response, status: str, cut_text: str | None = None) -> None:
        item = r.message
        if item is None:
            return
        r.message = None
        if item.audio and r.encoder is not None:
            tail = r.encoder.flush()
            if tail and status == "completed":
                self._audio_delta(r, item, tail)
            r.encoder = None
        if cut_text is not None and len(cut_text) < len(item.text):
            item.text = cut_text
        item.status = status
        where = self._where(r, item)
        if item.audio:
            self._emit("response.output_audio.done", **where, content_index=0)
            self._emit(
                "response.output_audio_transcript.done",
                **where,
                content_index=0,
                transcript=item.text,
            )
            part = {"type": "audio", "transcript": item.text}
        else:
            self._emit("response.output_text.done", **where, content_index=0, text=item.text)
            part = {"type": "text", "text": item.text}
        self._emit("response.content_part.done", **where, content_index=0, part=part)
        self._emit(
            "response.output_item.done",
            response_id=r.id,
            output_index=where["output_index"],
            item=item.to_wire(),
        )
        if not r.oob:
            self._emit("conversation.item.done", item=item.to_wire())

    def _on_call_delta(self, msg: ResponseFunctionCallDelta, now_ms: float) -> None:
        r = self._current(msg.response_id)
        if r is None:
            return
        item = r.calls.get(msg.call_id)
        if item is None:
            self._finish_message(r, "completed")
            item = ItemRecord(
                self._new_id("item"),
                "function_call",
                status="in_progress",
                call_id=msg.call_id,
                name=msg.name,
                response_tid=r.tid,
            )
            r.calls[msg.call_id] = item
            self._add_output(r, item)
        item.text += msg.arguments
        if msg.arguments:
            self._emit(
                "response.function_call_arguments.delta",
                **self._where(r, item),
                call_id=msg.call_id,
                delta=msg.arguments,
            )

    def _on_call_done(self, msg: ResponseFunctionCallDone, now_ms: float) -> None:
        r = self._current(msg.response_id)
        if r is None:
            return
        if msg.call_id not in r.calls:
            self._on_call_delta(
                ResponseFunctionCallDelta(
                    response_id=msg.response_id, call_id=msg.call_id, name=msg.name, arguments=""
                ),
                now_ms,
            )
        item = r.calls[msg.call_id]
        item.text = msg.arguments
        item.status = "completed"
        where = self._where(r, item)
        self._emit(
            "response.function_call_arguments.done",
            **where,
            call_id=msg.call_id,
            name=msg.name,
            arguments=msg.arguments,
        )
        self._emit(
            "response.output_item.done",
            response_id=r.id,
            output_index=where["output_index"],
            item=item.to_wire(),
        )
        reply = self._replies[msg.response_id]
        if not r.oob:  # an out-of-band response's calls are reported, not answered
            self._emit("conversation.item.done", item=item.to_wire())
            reply.waiting_calls.add(msg.call_id)
            self._calls[msg.call_id] = msg.response_id
        # The round ends the Realtime response: clients answer the calls after response.done.
        self._close_response(reply, r, "completed", None)

    def _close_response(
        self, reply: _Reply, r: _Response, status: str, details: dict[str, Any] | None
    ) -> None:
        if r.message is not None:
            reply.text_before += len(r.message.text)
        self._finish_message(r, "completed" if status == "completed" else "incomplete")
        for call in r.calls.values():
            if call.status == "in_progress":
                call.status = "incomplete"
        r.done = True
        reply.current = None
        reply.claimed = None
        self._emit("response.done", response=self._response_wire(r, status, details))
        if self._rate_limits is not None:
            self._emit("rate_limits.updated", rate_limits=self._rate_limits)

    def _on_response_done(self, msg: ResponseDone, now_ms: float) -> None:
        reply = self._replies.pop(msg.response_id, None)
        if reply is None:
            return
        for call_id in reply.waiting_calls:
            self._calls.pop(call_id, None)
        r = reply.current
        if r is None:
            if reply.claimed is None and msg.status == "completed":
                # the last round ended with the calls; nothing came after (what it said
                # before them has played)
                if reply.audio_response is not None:
                    self._emit("output_audio_buffer.stopped", response_id=reply.audio_response)
                return
            r = self._open(reply)
        status = {"completed": "completed", "cancelled": "cancelled", "failed": "failed"}[
            msg.status
        ]
        details: dict[str, Any] | None = None
        if status == "cancelled":
            cause = "client_cancelled" if reply.cancel_asked else "turn_detected"
            details = {"type": "cancelled", "reason": cause}
            if r.message is not None:
                heard = _heard_part(msg.text, reply.text_before)
                r.message.text = heard if len(heard) < len(r.message.text) else r.message.text
        elif status == "failed":
            details = {
                "type": "failed",
                "error": {
                    "type": "server_error",
                    "code": "response_failed",
                    "message": msg.reason or "the reply failed",
                },
            }
        else:
            details = {"type": "completed"}
        r.usage = msg.usage
        played = reply.audio_response
        if played is not None and status != "completed":  # the track stopped mid-reply
            self._emit("output_audio_buffer.cleared", response_id=played)
        self._close_response(reply, r, status, details)
        if played is not None and status == "completed":  # it has played to its end
            self._emit("output_audio_buffer.stopped", response_id=played)


#: response.create options the session runtime serves (tidegate config names); the rest
#: (output format, metadata) the translator applies itself
_RUNTIME_OPTIONS = ("instructions", "output_modalities", "max_output_tokens", "voice", "tools")


def _runtime_options(options: dict[str, Any]) -> dict[str, Any]:
    """A response's options for the runtime, in tidegate's config vocabulary."""
    out: dict[str, Any] = {}
    for name in _RUNTIME_OPTIONS:
        if name in options:
            value = options[name]
            out[name] = list(value) if isinstance(value, tuple) else value
    if "voice" in out:
        out["voice"] = tidegate_voice(out["voice"])
    if "tool_choice" in options:
        out["tool_choice"] = tool_choice_for_tidegate(options["tool_choice"])
    return out


def _usage_wire(usage: Usage | None) -> dict[str, Any]:
    """``response.done``'s usage: tidegate's text tokens; audio tokens are not counted (0:
    tidegate's speech is not made of tokens; docs/realtime.md)."""
    i = usage.input_tokens if usage is not None else 0
    o = usage.output_tokens if usage is not None else 0
    cached = usage.cached_tokens if usage is not None else 0
    return {
        "total_tokens": i + o,
        "input_tokens": i,
        "output_tokens": o,
        "input_token_details": {"text_tokens": i, "audio_tokens": 0, "cached_tokens": cached},
        "output_token_details": {"text_tokens": o, "audio_tokens": 0},
    }


def _heard_part(total_heard: str, text_before: int) -> str:
    """The current message's share of a cancelled reply's heard text (the text of earlier
    rounds comes first in it)."""
    return total_heard[text_before:] if len(total_heard) > text_before else ""


def _first_channel(pcm: bytes, channels: int) -> bytes:
    frame = 2 * channels
    return b"".join(pcm[i : i + 2] for i in range(0, len(pcm) - frame + 1, frame))


_HANDLERS: dict[type[ev.ClientEvent], Any] = {
    ev.SessionUpdate: RealtimeTranslator._on_session_update,
    ev.AudioAppend: RealtimeTranslator._on_append,
    ev.AudioCommit: RealtimeTranslator._on_commit,
    ev.AudioClear: RealtimeTranslator._on_clear,
    ev.ItemCreate: RealtimeTranslator._on_item_create,
    ev.ItemTruncate: RealtimeTranslator._on_truncate,
    ev.ItemDelete: RealtimeTranslator._on_delete,
    ev.ItemRetrieve: RealtimeTranslator._on_retrieve,
    ev.ResponseCreate: RealtimeTranslator._on_response_create,
    ev.ResponseCancel: RealtimeTranslator._on_response_cancel,
    ev.OutputAudioClear: RealtimeTranslator._on_output_clear,
}

_SERVER_HANDLERS: dict[type[ServerMessage], Any] = {
    SessionCreated: RealtimeTranslator._on_created,
    SessionUpdated: RealtimeTranslator._on_updated,
    SessionClosed: RealtimeTranslator._on_closed,
    TurnEnd: RealtimeTranslator._on_turn_end,
    Error: RealtimeTranslator._on_error,
    VadSpeechStarted: RealtimeTranslator._on_speech_started,
    VadSpeechStopped: RealtimeTranslator._on_speech_stopped,
    AsrPartial: RealtimeTranslator._on_partial,
    AsrFinal: RealtimeTranslator._on_final,
    ResponseCreated: RealtimeTranslator._on_response_created,
    ResponseTextDelta: RealtimeTranslator._on_text_delta,
    OutputAudio: RealtimeTranslator._on_audio,
    ResponseAudioStarted: RealtimeTranslator._on_audio_started,
    ResponseFunctionCallDelta: RealtimeTranslator._on_call_delta,
    ResponseFunctionCallDone: RealtimeTranslator._on_call_done,
    ResponseDone: RealtimeTranslator._on_response_done,
}
