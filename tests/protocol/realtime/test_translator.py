"""The translator end to end: Realtime client events in, tidegate messages out; tidegate events
in, Realtime server events out — every one of them checked against the official SDK's types."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from tidegate.media.realtime_audio import RealtimeAudioCodec
from tidegate.protocol.errors import CloseCode
from tidegate.protocol.messages import (
    AsrFinal,
    AsrPartial,
    Error,
    FlowCredit,
    FunctionCallOutput,
    InputAudio,
    OutputAudio,
    Pong,
    ResponseAudioStarted,
    ResponseCancel,
    ResponseCreate,
    ResponseCreated,
    ResponseDone,
    ResponseFunctionCallDelta,
    ResponseFunctionCallDone,
    ResponsePaused,
    ResponseResumed,
    ResponseTextDelta,
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
from tidegate.protocol.realtime import (
    ClearInputAudio,
    CommitInputAudio,
    CreateResponse,
    RealtimeCode,
    RealtimeTranslator,
)

from .samples import (
    EXAMPLES,
    GA_CLIENT_EVENTS,
    TONE_24K,
    b64,
    drain,
    feed,
    frame,
    new_translator,
    send,
    types,
)

FRAME_48K = (np.sin(np.arange(960) / 9) * 8000).astype("<i2").tobytes()  # 20 ms


def audio_out(rid: str, n: int = 1) -> list[OutputAudio]:
    return [
        OutputAudio(
            pcm=FRAME_48K,
            format="s16le",
            sample_rate=48_000,
            channels=1,
            ts=20.0 * i,
            response_id=rid,
        )
        for i in range(n)
    ]


def errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["error"] for e in events if e["type"] == "error"]


def test_session_created_then_update_round_trip() -> None:
    """start() asks tidegate for the assistant mode and nothing else; session.created shows
    the GA session; an update tidegate must apply goes to it, and session.updated follows
    its confirmation."""
    t = RealtimeTranslator(audio=RealtimeAudioCodec(), model="gpt-realtime")
    t.start(0.0)
    (create,) = t.to_session()
    assert isinstance(create, SessionCreate) and create.config == {"mode": "assistant"}
    assert t.data_to_send() == []
    created = feed(t, SessionCreated(session_id="s", config={}, limits={}, ice_servers=()))
    assert types(created) == ["session.created"]
    assert created[0]["session"]["model"] == "gpt-realtime"
    assert created[0]["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert send(t, EXAMPLES["session.update"]) == []  # waits for tidegate
    (update,) = t.to_session()
    assert isinstance(update, SessionUpdate)
    # OpenAI's "alloy" is the server's default voice: no change to send
    assert update.config == {
        "mode": "assistant",
        "instructions": "Be brief.",
        "turn": {"policy": "silence", "end_of_turn_s": 0.3},
    }
    (updated,) = feed(t, SessionUpdated(config=update.config))
    assert updated["type"] == "session.updated"
    s = updated["session"]
    assert s["instructions"] == "Be brief." and s["audio"]["output"]["format"] == {
        "type": "audio/pcmu"
    }


def test_an_update_tidegate_refuses_comes_back_with_the_event_id() -> None:
    """tidegate's error (ref = the message it refused) names the client's event_id; the
    config stays as it was."""
    t = new_translator()
    drain(t)
    t.to_session()
    send(
        t,
        {
            "type": "session.update",
            "event_id": "mine",
            "session": {"type": "realtime", "instructions": "x"},
        },
    )
    (update,) = t.to_session()
    (err,) = feed(
        t,
        Error(
            code="invalid_field",
            message="session config: unknown key 'instructions'",
            ref=update.id,
        ),
    )
    assert err["error"]["event_id"] == "mine" and err["error"]["code"] == "invalid_field"
    assert t.config.instructions == ""


def test_format_only_update_is_answered_at_once() -> None:
    """What the translator alone applies (formats, transcription) needs no round trip."""
    t = new_translator()
    drain(t)
    t.to_session()
    out = send(
        t,
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {
                    "input": {"format": {"type": "audio/pcma"}, "transcription": {"model": "x"}}
                },
            },
        },
    )
    assert types(out) == ["session.updated"] and t.to_session() == []


def test_a_spoken_turn() -> None:
    """append -> input.audio at 24 kHz with media time; VAD, ASR and a reply become the GA
    sequence, with transcription deltas that add up to the final transcript."""
    t = new_translator()
    drain(t)
    t.to_session()
    send(
        t,
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {"input": {"transcription": {"model": "whisper-1"}}},
            },
        },
    )
    for i in range(3):
        assert (
            send(t, {"type": "input_audio_buffer.append", "audio": b64(TONE_24K)}, now_ms=20.0 * i)
            == []
        )
    msgs = [m for m in t.to_session() if isinstance(m, InputAudio)]
    assert len(msgs) == 3
    assert [m.ts for m in msgs] == [0.0, 20.0, 40.0]
    assert msgs[0].sample_rate == 24_000 and msgs[0].pcm == TONE_24K
    events = feed(
        t,
        VadSpeechStarted(audio_ms=5.0),
        AsrPartial(segment_id="g1", text="what is", audio_start_ms=5, audio_end_ms=40),
        VadSpeechStopped(audio_ms=60.0),
        AsrFinal(segment_id="g1", text="what is it", audio_start_ms=5, audio_end_ms=60),
        ResponseCreated(response_id="r_1"),
        ResponseTextDelta(response_id="r_1", delta="It is"),
        *audio_out("r_1", 3),
        ResponseTextDelta(response_id="r_1", delta=" fine."),
        ResponseDone(response_id="r_1", status="completed", text="It is fine."),
    )
    assert types(events) == [
        "input_audio_buffer.speech_started",
        "conversation.item.input_audio_transcription.delta",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.done",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio.delta",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",  # the resampler's tail
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    user = events[0]["item_id"]
    assert {e.get("item_id") for e in events[1:4]} == {user}
    deltas = "".join(e["delta"] for e in events if e["type"].endswith("transcription.delta"))
    assert deltas == "what is it" == events[6]["transcript"]
    audio = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    assert len(audio) == 3 * 960  # 60 ms at 24 kHz, exactly
    done = events[-1]["response"]
    assert done["status"] == "completed" and done["usage"] is not None
    assert done["output"][0]["content"][0] == {"type": "output_audio", "transcript": "It is fine."}
    assert events[10]["previous_item_id"] == user


def test_a_text_turn_sends_the_text_with_response_create() -> None:
    """User text items wait for response.create and travel in tidegate's response.create."""
    t = new_translator()
    drain(t)
    t.to_session()
    out = send(t, EXAMPLES["conversation.item.create"])
    assert types(out) == ["conversation.item.added", "conversation.item.done"]
    assert t.to_session() == []
    send(
        t,
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "there"}],
            },
        },
    )
    assert send(t, {"type": "response.create", "event_id": "go"}) == []
    (create,) = t.to_session()
    assert isinstance(create, ResponseCreate) and create.text == "Hi\nthere"
    events = feed(
        t,
        ResponseCreated(response_id="r_9", ref=create.id),
        ResponseTextDelta(response_id="r_9", delta="Hello"),
        ResponseDone(response_id="r_9", status="completed", text="Hello"),
    )
    assert events[0]["type"] == "response.created"


def test_per_response_options_become_a_command() -> None:
    """response.create with instructions and text modality goes out as CreateResponse; the
    response it makes streams text, not audio."""
    t = new_translator()
    drain(t)
    t.to_session()
    send(t, EXAMPLES["response.create"])
    (cmd,) = t.to_session()
    assert isinstance(cmd, CreateResponse)
    assert cmd.options == {"instructions": "Answer in French.", "output_modalities": ["text"]}
    events = feed(
        t,
        ResponseCreated(response_id="r_2", ref=cmd.id),
        ResponseTextDelta(response_id="r_2", delta="Oui"),
        *audio_out("r_2"),
        ResponseDone(response_id="r_2", status="completed", text="Oui"),
    )
    assert "response.output_text.delta" in types(events)
    assert "response.output_audio.delta" not in types(events)
    assert events[0]["response"]["output_modalities"] == ["text"]
    assert events[-1]["response"]["output"][0]["content"] == [
        {"type": "output_text", "text": "Oui"}
    ]


def test_an_out_of_band_response_stays_out_of_the_conversation() -> None:
    """``conversation: "none"``: a ``CreateResponse`` beside the conversation (the pending
    user text stays pending, the conversation's reply in progress goes on), its ``input``
    items and references as LLM messages; its response has ``conversation_id`` null, is in
    text, and its items join no conversation; ``response.cancel`` by its id cuts it alone.
    ``input`` without ``conversation: "none"`` and a reference to no item are refused."""
    t = new_translator()
    drain(t)
    t.to_session()
    send(
        t,
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "id": "u1",
                "role": "user",
                "content": [{"type": "input_text", "text": "I want a refund."}],
            },
        },
    )
    send(t, {"type": "response.create"})
    (create,) = t.to_session()
    feed(t, ResponseCreated(response_id="r_main", ref=create.id))  # the conversation's reply
    oob = {
        "conversation": "none",
        "instructions": "Classify the user's intent in one word.",
        "metadata": {"topic": "intent"},
        "input": [
            {"type": "item_reference", "id": "u1"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "?"}]},
        ],
    }
    assert send(t, {"type": "response.create", "event_id": "o1", "response": oob}) == []
    (cmd,) = t.to_session()
    assert isinstance(cmd, CreateResponse) and cmd.text is None
    assert cmd.options["conversation"] == "none"
    assert cmd.options["input"] == [
        {"role": "user", "content": "I want a refund."},
        {"role": "user", "content": "?"},
    ]
    events = feed(
        t,
        ResponseCreated(response_id="r_oob", ref=cmd.id),
        ResponseTextDelta(response_id="r_oob", delta="refund"),
        ResponseDone(response_id="r_oob", status="completed", text="refund"),
    )
    kinds = types(events)
    assert "conversation.item.added" not in kinds and "conversation.item.done" not in kinds
    created = events[0]["response"]
    assert created["conversation_id"] is None and created["output_modalities"] == ["text"]
    assert created["metadata"] == {"topic": "intent"}
    done = events[-1]["response"]
    assert done["output"][0]["content"] == [{"type": "output_text", "text": "refund"}]
    assert t.conversation.get(done["output"][0]["id"]) is None
    # the conversation's reply is still the one in progress: a second create is refused
    (err,) = errors(send(t, {"type": "response.create", "event_id": "again"}))
    assert err["code"] == RealtimeCode.RESPONSE_ACTIVE
    # an out-of-band one in progress is cancelled by its id, not the conversation's
    send(t, {"type": "response.create", "response": {"conversation": "none"}})
    (cmd,) = t.to_session()
    assert isinstance(cmd, CreateResponse) and "input" not in cmd.options  # the conversation
    events = feed(t, ResponseCreated(response_id="r_oob2", ref=cmd.id))
    send(t, {"type": "response.cancel", "response_id": events[0]["response"]["id"]})
    (cancel,) = t.to_session()
    assert isinstance(cancel, ResponseCancel) and cancel.response_id == "r_oob2"
    bad = {"input": [{"type": "item_reference", "id": "u1"}]}
    (err,) = errors(send(t, {"type": "response.create", "event_id": "b1", "response": bad}))
    assert err["param"] == "response.input" and err["event_id"] == "b1"
    missing = {"conversation": "none", "input": [{"type": "item_reference", "id": "nope"}]}
    (err,) = errors(send(t, {"type": "response.create", "event_id": "b2", "response": missing}))
    assert err["code"] == RealtimeCode.ITEM_NOT_FOUND and err["param"] == "response.input[0].id"
    assert t.to_session() == []


def test_a_refused_command_is_an_error_for_the_event() -> None:
    """A runtime that does not serve a command answers unsupported; the client hears it."""
    t = new_translator()
    drain(t)
    t.to_session()
    send(t, EXAMPLES["response.create"])
    (cmd,) = t.to_session()
    (err,) = errors(
        feed(
            t,
            Error(
                code="unsupported", message="per-response instructions are not served", ref=cmd.id
            ),
        )
    )
    assert err["event_id"] == "c_resp" and err["code"] == "unsupported"


def test_function_call_round_trip() -> None:
    """A tool round ends the Realtime response with the call in its output; the output item
    goes to tidegate; the client's response.create claims the continuation."""
    t = new_translator()
    drain(t)
    t.to_session()
    events = feed(
        t,
        ResponseCreated(response_id="r_3"),
        ResponseTextDelta(response_id="r_3", delta="Let me look."),
        ResponseFunctionCallDelta(
            response_id="r_3", call_id="call_1", name="weather", arguments='{"city":'
        ),
        ResponseFunctionCallDelta(
            response_id="r_3", call_id="call_1", name="weather", arguments='"Paris"}'
        ),
        ResponseFunctionCallDone(
            response_id="r_3", call_id="call_1", name="weather", arguments='{"city":"Paris"}'
        ),
    )
    assert types(events)[-1] == "response.done"
    done = events[-1]["response"]
    assert [o["type"] for o in done["output"]] == ["message", "function_call"]
    assert (
        done["output"][1]["arguments"] == '{"city":"Paris"}'
        and done["output"][1]["call_id"] == "call_1"
    )
    args = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(args) == '{"city":"Paris"}'
    out = send(
        t,
        {
            "type": "conversation.item.create",
            "event_id": "o",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"c": 21}'},
        },
    )
    assert types(out) == ["conversation.item.added", "conversation.item.done"]
    (fco,) = t.to_session()
    assert isinstance(fco, FunctionCallOutput) and fco.call_id == "call_1"
    out = send(t, {"type": "response.create", "event_id": "again"})
    assert types(out) == ["response.created"] and t.to_session() == []
    events = feed(
        t,
        ResponseTextDelta(response_id="r_3", delta="21 degrees."),
        ResponseDone(response_id="r_3", status="completed", text="Let me look.21 degrees."),
    )
    assert events[-1]["response"]["id"] == out[0]["response"]["id"]
    assert events[-1]["response"]["status"] == "completed"
    # An output for a call nobody waits for is refused by name.
    (err,) = errors(
        send(
            t,
            {
                "type": "conversation.item.create",
                "event_id": "late",
                "item": {"type": "function_call_output", "call_id": "call_1", "output": "x"},
            },
        )
    )
    assert err["code"] == RealtimeCode.ITEM_NOT_FOUND and err["event_id"] == "late"


def test_continuation_before_the_client_asks() -> None:
    """When tidegate goes on first, the continuation opens by itself and a later
    response.create is absorbed into it (no second response, no error)."""
    t = new_translator()
    drain(t)
    t.to_session()
    feed(
        t,
        ResponseCreated(response_id="r_4"),
        ResponseFunctionCallDone(response_id="r_4", call_id="c", name="f", arguments="{}"),
    )
    send(
        t,
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "c", "output": "1"},
        },
    )
    t.to_session()
    events = feed(t, ResponseTextDelta(response_id="r_4", delta="ok"))
    assert types(events)[0] == "response.created"
    assert send(t, {"type": "response.create"}) == []
    assert t.to_session() == []
    events = feed(t, ResponseDone(response_id="r_4", status="completed", text="ok"))
    assert types(events)[-1] == "response.done"


def test_barge_in_cuts_the_response_and_truncate_reports_it() -> None:
    """Speech over a reply: speech_started, then response.done cancelled (turn_detected) with
    the heard transcript; the client's truncate is checked against the audio sent."""
    t = new_translator()
    drain(t)
    t.to_session()
    events = feed(
        t,
        ResponseCreated(response_id="r_5"),
        ResponseTextDelta(response_id="r_5", delta="One two three four"),
        *audio_out("r_5", 10),
    )
    item_id = events[1]["item"]["id"]
    events = feed(
        t,
        VadSpeechStarted(audio_ms=1000.0),
        ResponseDone(response_id="r_5", status="cancelled", text="One two"),
    )
    assert types(events)[0] == "input_audio_buffer.speech_started"
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert done["output"][0]["status"] == "incomplete"
    assert done["output"][0]["content"][0]["transcript"] == "One two"
    (err,) = errors(
        send(
            t,
            {
                "type": "conversation.item.truncate",
                "event_id": "tr",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 5000,
            },
        )
    )
    assert err["code"] == "invalid_value" and err["param"] == "audio_end_ms"
    (ok,) = send(
        t,
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": 150,
        },
    )
    assert ok == {
        **ok,
        "type": "conversation.item.truncated",
        "item_id": item_id,
        "audio_end_ms": 150,
    }


def test_a_calls_reply_tells_its_audio_buffer_started_stopped_and_cleared() -> None:
    """On a WebRTC call (the reply's audio on the track): ``output_audio_buffer.started``
    once its audio begins (after its audio part was added), ``stopped`` after the
    ``response.done`` of a reply that played to its end, ``cleared`` before the
    ``response.done`` of one cut by speech; a text-only response and a WebSocket
    connection tell nothing of a buffer they do not have."""
    t = new_translator(track_audio=True)
    drain(t)
    t.to_session()
    events = feed(
        t,
        ResponseCreated(response_id="r_1"),
        ResponseTextDelta(response_id="r_1", delta="Paris."),
        ResponseAudioStarted(response_id="r_1"),
        ResponsePaused(response_id="r_1", played_ms=200.0),  # a cough: no event
        ResponseResumed(response_id="r_1", played_ms=200.0, paused_ms=300.0, reason="no_words"),
        ResponseDone(response_id="r_1", status="completed", text="Paris."),
    )
    kinds = types(events)
    rid = events[0]["response"]["id"]
    assert kinds.count("output_audio_buffer.started") == 1
    assert kinds.index("response.content_part.added") < kinds.index("output_audio_buffer.started")
    assert kinds[-1] == "output_audio_buffer.stopped" and kinds[-2] == "response.done"
    assert {e["response_id"] for e in events if e["type"].startswith("output_audio_buffer")} == {
        rid
    }
    events = feed(
        t,
        ResponseCreated(response_id="r_2"),
        ResponseTextDelta(response_id="r_2", delta="Once upon a time"),
        ResponseAudioStarted(response_id="r_2"),
        VadSpeechStarted(audio_ms=4000.0),
        ResponseDone(response_id="r_2", status="cancelled", text="Once"),
    )
    kinds = types(events)
    assert kinds.index("output_audio_buffer.cleared") < kinds.index("response.done")
    assert "output_audio_buffer.stopped" not in kinds
    # text only: no audio part, no buffer
    send(t, {"type": "response.create", "response": {"output_modalities": ["text"]}})
    (cmd,) = t.to_session()
    events = feed(
        t,
        ResponseCreated(response_id="r_3", ref=cmd.id),
        ResponseTextDelta(response_id="r_3", delta="Hi."),
        ResponseAudioStarted(response_id="r_3"),
        ResponseDone(response_id="r_3", status="completed", text="Hi."),
    )
    assert not [k for k in types(events) if k.startswith("output_audio_buffer")]
    ws = new_translator()
    drain(ws)
    events = feed(
        ws,
        ResponseCreated(response_id="r_1"),
        ResponseTextDelta(response_id="r_1", delta="Paris."),
        ResponseAudioStarted(response_id="r_1"),
        *audio_out("r_1", 2),
        ResponseDone(response_id="r_1", status="completed", text="Paris."),
    )
    assert not [k for k in types(events) if k.startswith("output_audio_buffer")]


def test_output_audio_buffer_clear_cuts_a_calls_playing_reply_once() -> None:
    """``output_audio_buffer.clear`` on a call cuts the reply whose audio plays (one
    tidegate cancel, also when ``response.cancel`` came first, as the Agents SDK sends
    them); ``cleared`` comes with its ``response.done``; with nothing playing it is
    ``cleared`` at once for the last reply that played. Over a WebSocket it is refused by
    name."""
    t = new_translator(track_audio=True)
    drain(t)
    t.to_session()
    feed(
        t,
        ResponseCreated(response_id="r_1"),
        ResponseTextDelta(response_id="r_1", delta="Once upon a time"),
        ResponseAudioStarted(response_id="r_1"),
    )
    assert send(t, {"type": "output_audio_buffer.clear", "event_id": "c1"}) == []
    (cancel,) = t.to_session()
    assert isinstance(cancel, ResponseCancel) and cancel.response_id == "r_1"
    events = feed(t, ResponseDone(response_id="r_1", status="cancelled", text="Once"))
    kinds = types(events)
    assert kinds[0] == "output_audio_buffer.cleared" and kinds[-1] == "response.done"
    rid = events[-1]["response"]["id"]
    assert events[0]["response_id"] == rid
    assert events[-1]["response"]["status_details"]["reason"] == "client_cancelled"
    # the SDK's interrupt(): response.cancel, then output_audio_buffer.clear: one cut
    feed(
        t,
        ResponseCreated(response_id="r_2"),
        ResponseTextDelta(response_id="r_2", delta="Twice"),
        ResponseAudioStarted(response_id="r_2"),
    )
    assert send(t, {"type": "response.cancel"}) == []
    assert send(t, {"type": "output_audio_buffer.clear"}) == []
    assert len([m for m in t.to_session() if isinstance(m, ResponseCancel)]) == 1
    events = feed(t, ResponseDone(response_id="r_2", status="cancelled", text="Twice"))
    assert types(events).count("output_audio_buffer.cleared") == 1
    # the cut done before the clear arrives (it raced the SDK's two events): nothing more,
    # the buffer's end was told
    assert send(t, {"type": "output_audio_buffer.clear"}) == []
    assert t.to_session() == []
    ws = new_translator()
    drain(ws)
    (err,) = errors(send(ws, {"type": "output_audio_buffer.clear", "event_id": "c9"}))
    assert err["code"] == RealtimeCode.UNSUPPORTED_EVENT and err["event_id"] == "c9"
    assert "WebRTC" in err["message"]


def test_a_resumed_reply_is_seamless_to_a_realtime_client() -> None:
    """A false interruption: response.paused and response.resumed give no Realtime event,
    the frames tidegate sends again after the pause are not forwarded twice (the audio is
    exactly that of the reply without the pause), and the reply completes as usual."""

    def audio_of(events: list[dict[str, Any]]) -> bytes:
        deltas = [e["delta"] for e in events if e["type"] == "response.output_audio.delta"]
        return b"".join(base64.b64decode(d) for d in deltas)

    frames = audio_out("r_9", 12)
    start = (ResponseCreated(response_id="r_9"), ResponseTextDelta(response_id="r_9", delta="Hi"))
    end = ResponseDone(response_id="r_9", status="completed", text="Hi")
    plain = new_translator()
    drain(plain)
    plain.to_session()
    expected = audio_of(feed(plain, *start, *frames, end))
    t = new_translator()
    drain(t)
    t.to_session()
    events = feed(t, *start, *frames[:10])
    during = feed(
        t,
        VadSpeechStarted(audio_ms=1000.0),
        ResponsePaused(response_id="r_9", played_ms=120.0),
        VadSpeechStopped(audio_ms=1400.0),
        ResponseResumed(
            response_id="r_9", played_ms=120.0, paused_ms=900.0, reason="no_words", heard=""
        ),
    )
    assert not [e for e in during if e["type"].startswith("response.")], types(during)
    after = feed(t, *frames[6:], end)  # frames 6..9 again, then 10 and 11
    assert audio_of(events + during + after) == expected and expected
    assert after[-1]["type"] == "response.done"
    assert after[-1]["response"]["status"] == "completed"


def test_cancel() -> None:
    """response.cancel cuts the active reply in tidegate (client_cancelled); without one it is
    refused as not active."""
    t = new_translator()
    drain(t)
    t.to_session()
    (err,) = errors(send(t, {"type": "response.cancel", "event_id": "x"}))
    assert err["code"] == RealtimeCode.RESPONSE_NOT_ACTIVE and err["event_id"] == "x"
    feed(t, ResponseCreated(response_id="r_6"), ResponseTextDelta(response_id="r_6", delta="Hi"))
    assert send(t, {"type": "response.cancel"}) == []
    (cancel,) = t.to_session()
    assert isinstance(cancel, ResponseCancel) and cancel.response_id == "r_6"
    events = feed(t, ResponseDone(response_id="r_6", status="cancelled", text="Hi"))
    assert events[-1]["response"]["status_details"]["reason"] == "client_cancelled"
    feed(t, ResponseCreated(response_id="r_7"))
    (err,) = errors(send(t, {"type": "response.create", "event_id": "two"}))
    assert err["code"] == RealtimeCode.RESPONSE_ACTIVE


def test_input_audio_is_paced_at_real_time() -> None:
    """Appends may run input_audio_max_ahead_s ahead of real time; past that each is refused
    (input_audio_buffer_full, with its event_id) and not forwarded; a pause banks nothing."""
    t = new_translator(input_audio_max_ahead_s=0.1)
    drain(t)
    t.to_session()
    one = {"type": "input_audio_buffer.append", "audio": b64(TONE_24K)}  # 20 ms
    for _ in range(5):
        assert send(t, one, now_ms=0.0) == []
    (err,) = errors(send(t, {**one, "event_id": "fast"}, now_ms=0.0))
    assert err["code"] == RealtimeCode.BUFFER_FULL and err["event_id"] == "fast"
    assert len(t.to_session()) == 5
    assert send(t, one, now_ms=20.0) == []  # 20 ms later there is room for 20 ms
    # Real time for a minute never refuses; a long pause does not let a burst through.
    for i in range(3000):
        assert send(t, one, now_ms=40.0 + 20.0 * i) == []
    now = 40.0 + 20.0 * 3000 + 10_000.0
    results = [send(t, one, now_ms=now) for _ in range(10)]
    assert sum(1 for r in results if r) == 10 - 5
    assert t.stats["audio_refused"] == 6


def test_manual_turns_commit_and_clear() -> None:
    """turn_detection null: commit needs 100 ms; it becomes CommitInputAudio and a user item;
    clear becomes ClearInputAudio and input_audio_buffer.cleared; the buffer is bounded."""
    t = new_translator(input_audio_buffer_max_s=0.1)
    drain(t)
    t.to_session()
    send(
        t,
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        },
    )
    (upd,) = t.to_session()
    assert isinstance(upd, SessionUpdate) and upd.config["turn"] == {"policy": "manual"}
    feed(t, SessionUpdated(config=upd.config))
    (err,) = errors(send(t, {"type": "input_audio_buffer.commit", "event_id": "early"}))
    assert err["code"] == RealtimeCode.BUFFER_EMPTY
    one = {"type": "input_audio_buffer.append", "audio": b64(TONE_24K)}
    for i in range(5):
        send(t, one, now_ms=20.0 * i)
    (err,) = errors(send(t, one, now_ms=100.0))
    assert err["code"] == RealtimeCode.BUFFER_FULL and "input_audio_buffer_max_s" in err["message"]
    # speech heard before the commit: no transcript event until tidegate's turn.end (commit)
    held = feed(
        t,
        VadSpeechStarted(audio_ms=0.0),
        AsrPartial(segment_id="g9", text="hel", audio_start_ms=0, audio_end_ms=60),
        AsrFinal(segment_id="g9", text="hello", audio_start_ms=0, audio_end_ms=100),
    )
    assert held == []
    out = send(t, {"type": "input_audio_buffer.commit"}, now_ms=100.0)
    assert types(out) == ["input_audio_buffer.committed", "conversation.item.added"]
    commit = t.to_session()[-1]
    assert isinstance(commit, CommitInputAudio)
    events = feed(
        t,
        AsrFinal(segment_id="g9b", text="", audio_start_ms=100, audio_end_ms=150),  # a cough
        AsrFinal(segment_id="g10", text="there", audio_start_ms=100, audio_end_ms=200),
        TurnEnd(reason="commit", audio_ms=200.0, ref=commit.id),
    )
    assert events[-1]["type"] == "conversation.item.done"
    assert events[-1]["item"]["id"] == out[0]["item_id"]
    assert events[-1]["item"]["content"][0]["transcript"] == "hello there"
    assert types(send(t, {"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    assert isinstance(t.to_session()[-1], ClearInputAudio)
    # words heard before a clear are dropped from the next commit's transcript
    feed(t, AsrFinal(segment_id="g11", text="drop", audio_start_ms=200, audio_end_ms=300))
    send(t, {"type": "input_audio_buffer.clear"})
    for i in range(5):
        send(t, one, now_ms=1000.0 + 20.0 * i)
    send(t, {"type": "input_audio_buffer.commit"}, now_ms=1100.0)
    commit = t.to_session()[-1]
    assert isinstance(commit, CommitInputAudio)
    events = feed(
        t,
        AsrFinal(segment_id="g12", text="keep", audio_start_ms=300, audio_end_ms=400),
        TurnEnd(reason="commit", audio_ms=400.0, ref=commit.id),
    )
    assert events[-1]["item"]["content"][0]["transcript"] == "keep"


def test_a_failed_commit_ends_its_item_incomplete() -> None:
    """A commit the runtime refuses (its audio not taken in time) is an error for the event,
    and its item ends incomplete rather than waiting for ever."""
    t = new_translator()
    drain(t)
    t.to_session()
    send(
        t,
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
        },
    )
    (upd,) = t.to_session()
    assert isinstance(upd, SessionUpdate)
    feed(t, SessionUpdated(config=upd.config))
    for i in range(5):
        send(t, {"type": "input_audio_buffer.append", "audio": b64(TONE_24K)}, now_ms=20.0 * i)
    send(t, {"type": "input_audio_buffer.commit", "event_id": "cm"}, now_ms=100.0)
    commit = t.to_session()[-1]
    events = feed(t, Error(code="overloaded", message="not taken in time", ref=commit.id))
    assert types(events) == ["conversation.item.done", "error"]
    assert events[0]["item"]["status"] == "incomplete"
    assert events[1]["error"]["event_id"] == "cm"


def test_turn_detection_maps_to_tidegate_turn_config() -> None:
    """semantic_vad is the semantic policy with eagerness as a maximum wait; create_response
    and interrupt_response false are respond / interrupt false; back to the default
    server_vad sends the default turn config (tidegate merges updates)."""
    t = new_translator()
    drain(t)
    t.to_session()
    turn = {"type": "semantic_vad", "eagerness": "low", "interrupt_response": False}
    send(
        t,
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": turn}}},
        },
    )
    (upd,) = t.to_session()
    assert isinstance(upd, SessionUpdate)
    assert upd.config["turn"] == {"policy": "semantic", "max_wait_s": 8.0, "interrupt": False}
    feed(t, SessionUpdated(config=upd.config))
    turn = {"type": "server_vad", "create_response": False}
    send(
        t,
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": turn}}},
        },
    )
    (upd,) = t.to_session()
    assert isinstance(upd, SessionUpdate)
    assert upd.config == {"mode": "assistant", "turn": {"respond": False}}
    feed(t, SessionUpdated(config=upd.config))
    send(
        t,
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {"input": {"turn_detection": {"type": "server_vad"}}},
            },
        },
    )
    (upd,) = t.to_session()
    assert isinstance(upd, SessionUpdate)
    assert upd.config == {"mode": "assistant", "turn": {}}


def test_idle_timeout_is_tidegates_idle_turn() -> None:
    """server_vad ``idle_timeout_ms`` is tidegate's ``turn.idle_timeout_s`` (semantic_vad has
    none: unknown there, as in the API); tidegate's ``turn.end`` ``idle`` is the API's
    ``input_audio_buffer.timeout_triggered`` over the silent stretch of the audio appended,
    whose item is committed without words before the response that prompts the user."""
    t = new_translator()
    drain(t)
    t.to_session()
    turn = {"type": "server_vad", "idle_timeout_ms": 6000}
    session = {"type": "realtime", "audio": {"input": {"turn_detection": turn}}}
    send(t, {"type": "session.update", "session": session})
    (upd,) = t.to_session()
    assert isinstance(upd, SessionUpdate)
    assert upd.config == {"mode": "assistant", "turn": {"idle_timeout_s": 6.0}}
    updated = feed(t, SessionUpdated(config=upd.config))
    assert updated[0]["session"]["audio"]["input"]["turn_detection"]["idle_timeout_ms"] == 6000
    for i in range(400):  # 8 s of audio appended, 20 ms at a time
        send(t, {"type": "input_audio_buffer.append", "audio": b64(TONE_24K)}, now_ms=20.0 * i)
    t.to_session()
    events = feed(
        t,
        TurnEnd(reason="idle"),
        ResponseCreated(response_id="r_1"),
        ResponseTextDelta(response_id="r_1", delta="Are you still there?"),
    )
    kinds = types(events)
    assert kinds[:4] == [
        "input_audio_buffer.timeout_triggered",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert "response.created" in kinds
    timeout = events[0]
    assert (timeout["audio_start_ms"], timeout["audio_end_ms"]) == (2000, 8000)
    assert timeout["item_id"] == events[1]["item_id"] == events[3]["item"]["id"]
    assert events[3]["item"]["status"] == "completed"
    semantic = {"type": "semantic_vad", "idle_timeout_ms": 6000}
    session = {"type": "realtime", "audio": {"input": {"turn_detection": semantic}}}
    (err,) = errors(send(t, {"type": "session.update", "session": session}))
    assert err["code"] == RealtimeCode.UNKNOWN_PARAMETER
    assert err["param"] == "session.audio.input.turn_detection.idle_timeout_ms"


def test_transcription_language_goes_to_tidegate() -> None:
    """transcription.language is tidegate's config language; removing it sends null (the
    engine's default again)."""
    t = new_translator()
    drain(t)
    t.to_session()
    tr = {"model": "whisper-1", "language": "de"}
    session = {"type": "realtime", "audio": {"input": {"transcription": tr}}}
    send(t, {"type": "session.update", "session": session})
    (upd,) = t.to_session()
    assert isinstance(upd, SessionUpdate)
    assert upd.config == {"mode": "assistant", "language": "de"}
    feed(t, SessionUpdated(config=upd.config))
    session = {"type": "realtime", "audio": {"input": {"transcription": None}}}
    send(t, {"type": "session.update", "session": session})
    (upd,) = t.to_session()
    assert isinstance(upd, SessionUpdate)
    assert upd.config == {"mode": "assistant", "language": None}


@pytest.mark.parametrize(
    ("session", "param"),
    [
        (
            {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 0.8}}}},
            "session.audio.input.turn_detection.threshold",
        ),
        (
            {
                "audio": {
                    "input": {"turn_detection": {"type": "server_vad", "prefix_padding_ms": 500}}
                }
            },
            "session.audio.input.turn_detection.prefix_padding_ms",
        ),
        ({"audio": {"output": {"speed": 1.2}}}, "session.audio.output.speed"),
    ],
)
def test_session_keys_tidegate_cannot_honour_are_refused_by_name(
    session: dict[str, Any], param: str
) -> None:
    """A session.update asking what tidegate cannot do is refused naming the key; the API's
    default values of those keys are accepted."""
    t = new_translator()
    drain(t)
    t.to_session()
    (err,) = errors(send(t, {"type": "session.update", "session": {"type": "realtime", **session}}))
    assert err["code"] == RealtimeCode.UNSUPPORTED_PARAMETER and err["param"] == param
    assert t.to_session() == []
    default = {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300}
    accepted = send(
        t,
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"turn_detection": default}}},
        },
    )
    assert errors(accepted) == []


def test_response_done_carries_tidegate_usage() -> None:
    """response.done's usage is tidegate's token count (text tokens; audio tokens 0)."""
    t = new_translator()
    drain(t)
    t.to_session()
    send(t, {"type": "response.create"})
    (create,) = t.to_session()
    events = feed(
        t,
        ResponseCreated(response_id="r_u", ref=create.id),
        ResponseTextDelta(response_id="r_u", delta="Hi"),
        ResponseDone(
            response_id="r_u",
            status="completed",
            text="Hi",
            usage=Usage(input_tokens=40, cached_tokens=30, output_tokens=3),
        ),
    )
    usage = next(e for e in events if e["type"] == "response.done")["response"]["usage"]
    assert usage["input_tokens"] == 40 and usage["output_tokens"] == 3
    assert usage["total_tokens"] == 43
    assert usage["input_token_details"] == {
        "text_tokens": 40,
        "audio_tokens": 0,
        "cached_tokens": 30,
    }
    assert usage["output_token_details"] == {"text_tokens": 3, "audio_tokens": 0}


def test_transcription_session() -> None:
    """session.type transcription: tidegate's transcribe mode; deltas and completions; no
    responses."""
    t = new_translator(session_type="transcription")
    created = drain(t)
    assert created[0]["session"]["type"] == "transcription"
    (create,) = t.to_session()
    assert isinstance(create, SessionCreate) and create.config == {"mode": "transcribe"}
    events = feed(
        t,
        VadSpeechStarted(audio_ms=0.0),
        AsrPartial(segment_id="a", text="hel", audio_start_ms=0, audio_end_ms=200),
        AsrPartial(segment_id="a", text="hello", audio_start_ms=0, audio_end_ms=400),
        VadSpeechStopped(audio_ms=500.0),
        AsrFinal(segment_id="a", text="hello world", audio_start_ms=0, audio_end_ms=500),
    )
    deltas = [e["delta"] for e in events if e["type"].endswith(".delta")]
    assert deltas == ["hel", "lo", " world"]
    completed = next(e for e in events if e["type"].endswith(".completed"))
    assert completed["usage"] == {"type": "duration", "seconds": 0.5}
    (err,) = errors(send(t, {"type": "response.create", "event_id": "r"}))
    assert err["code"] == RealtimeCode.INVALID_STATE
    (err,) = errors(
        send(t, {"type": "session.update", "event_id": "u", "session": {"type": "realtime"}})
    )
    assert err["param"] == "session.type"


def test_segments_find_their_speech_items_by_time_whatever_the_order() -> None:
    """Each segment's transcript goes to the item of the speech that began within its audio:
    a later segment's partial before the earlier one's final, and a start of speech whose
    segment never got a final (its ASR failed), shift nothing. A partial with tentative words
    only sends nothing (the Realtime deltas carry committed text)."""
    t = new_translator(session_type="transcription")
    drain(t)
    t.to_session()

    def seg(
        kind: type[AsrPartial | AsrFinal], sid: str, start: float, end: float, **kw: Any
    ) -> AsrPartial | AsrFinal:
        return kind(segment_id=sid, audio_start_ms=start, audio_end_ms=end, **kw)

    events = feed(
        t,
        VadSpeechStarted(audio_ms=200.0),  # a: audio 0-900 (its pre-roll before 200)
        VadSpeechStopped(audio_ms=900.0),
        VadSpeechStarted(audio_ms=1200.0),  # b: audio 1000-
        seg(AsrPartial, "b", 1000, 2000, text="", tentative="how"),
        seg(AsrPartial, "b", 1000, 3000, text="how", tentative="are"),
        seg(AsrFinal, "a", 0, 900, text="hello"),
        VadSpeechStopped(audio_ms=3200.0),
        seg(AsrFinal, "b", 1000, 3200, text="how are you"),
        VadSpeechStarted(audio_ms=4200.0),  # c: its final never comes
        VadSpeechStopped(audio_ms=4800.0),
        VadSpeechStarted(audio_ms=5500.0),  # d: audio 5300-6000
        VadSpeechStopped(audio_ms=6000.0),
        seg(AsrFinal, "d", 5300, 6000, text="bye"),
    )
    started = [e["item_id"] for e in events if e["type"] == "input_audio_buffer.speech_started"]
    deltas = [(e["item_id"], e["delta"]) for e in events if e["type"].endswith(".delta")]
    a, b, _, d = started
    assert deltas == [(b, "how"), (a, "hello"), (b, " are you"), (d, "bye")]
    done = [(e["item_id"], e["transcript"]) for e in events if e["type"].endswith(".completed")]
    assert done == [(a, "hello"), (b, "how are you"), (d, "bye")]


def test_every_speech_item_ends_whatever_its_segment_became() -> None:
    """Every segment ends with a final (docs/asr.md), so every item a start of speech opened
    ends: a cough the VAD took for speech completes with transcript "", a segment the
    recogniser failed on with `...transcription.failed` and its item `incomplete` (with the
    words committed before the failure, if any), and a segment without words that no start
    of speech announced makes no item and takes no other segment's."""
    t = new_translator(session_type="transcription")
    drain(t)
    t.to_session()

    def final(sid: str, start: float, end: float, text: str = "", **kw: Any) -> AsrFinal:
        return AsrFinal(segment_id=sid, text=text, audio_start_ms=start, audio_end_ms=end, **kw)

    events = feed(
        t,
        VadSpeechStarted(audio_ms=200.0),  # a cough
        VadSpeechStopped(audio_ms=600.0),
        final("a", 0, 600),
        VadSpeechStarted(audio_ms=1200.0),  # the recogniser missed its deadline
        VadSpeechStopped(audio_ms=2000.0),
        Error(code="timeout", message="speech at 1000-2000 ms was not transcribed"),
        final("b", 1000, 2000, error="timeout"),
        VadSpeechStarted(audio_ms=2600.0),  # failed after committing a word
        AsrPartial(segment_id="c", text="so", audio_start_ms=2400, audio_end_ms=3000),
        VadSpeechStopped(audio_ms=3400.0),
        final("c", 2400, 3400, "so", error="overloaded"),
        final("r", 3400, 3500),  # the rest of a long one, no words: announced by nothing
        VadSpeechStarted(audio_ms=6200.0),
        VadSpeechStopped(audio_ms=7000.0),
        final("d", 6000, 7000, "hi"),
    )
    a, b, c, d = [e["item_id"] for e in events if e["type"] == "input_audio_buffer.speech_started"]
    completed = [
        (e["item_id"], e["transcript"]) for e in events if e["type"].endswith(".completed")
    ]
    assert completed == [(a, ""), (d, "hi")]
    failed = [e for e in events if e["type"].endswith(".failed")]
    assert [(e["item_id"], e["error"]["code"]) for e in failed] == [
        (b, "timeout"),
        (c, "overloaded"),
    ]
    assert failed[0]["error"]["type"] == "transcription_error"
    assert "deadline" in failed[0]["error"]["message"]
    done = {e["item"]["id"]: e["item"] for e in events if e["type"] == "conversation.item.done"}
    assert set(done) == {a, b, c, d}  # no item for the unannounced rest
    assert [done[i]["status"] for i in (a, b, c, d)] == [
        "completed",
        "incomplete",
        "incomplete",
        "completed",
    ]
    assert done[c]["content"][0]["transcript"] == "so"
    assert types(events).count("conversation.item.added") == 4


def test_items_delete_retrieve() -> None:
    """An unsent user text item can be deleted; retrieve returns an item; unknown ids are named."""
    t = new_translator()
    drain(t)
    t.to_session()
    added = send(
        t,
        {
            "type": "conversation.item.create",
            "item": {
                "id": "u1",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "x"}],
            },
        },
    )
    assert added[0]["item"]["id"] == "u1"
    (got,) = send(t, {"type": "conversation.item.retrieve", "item_id": "u1"})
    assert got["type"] == "conversation.item.retrieved" and got["item"]["id"] == "u1"
    (gone,) = send(t, {"type": "conversation.item.delete", "item_id": "u1"})
    assert gone == {**gone, "type": "conversation.item.deleted", "item_id": "u1"}
    (err,) = errors(send(t, {"type": "conversation.item.delete", "event_id": "d", "item_id": "u1"}))
    assert err["code"] == RealtimeCode.ITEM_NOT_FOUND and err["event_id"] == "d"


@pytest.mark.parametrize("etype", sorted(GA_CLIENT_EVENTS))
def test_every_ga_client_event_is_translated_or_refused_by_name(etype: str) -> None:
    """Each GA client event either produces tidegate input or server events, and an error
    always names the offending event_id — never silence."""
    t = new_translator()
    drain(t)
    t.to_session()
    t.receive_text(frame(EXAMPLES[etype]), 0.0)
    events = drain(t)
    to_tidegate = t.to_session()
    assert events or to_tidegate, etype
    for err in errors(events):
        assert err["event_id"] == EXAMPLES[etype]["event_id"]


def test_other_tidegate_messages_are_dropped_and_session_closed_closes() -> None:
    """Messages with no Realtime counterpart produce nothing; session.closed closes normally."""
    t = new_translator()
    drain(t)
    assert feed(t, Pong(t_client=1.0, t_server=2.0), FlowCredit(messages=1, bytes=1)) == []
    feed(t, SessionClosed(reason="closed by the client"))
    assert t.close_code == CloseCode.NORMAL


def test_bad_events_in_a_row_close_the_connection() -> None:
    """max_bad_events invalid events in a row: close 4400; each was answered first."""
    t = new_translator(max_bad_events=3)
    drain(t)
    for _ in range(3):
        t.receive_text("{", 0.0)
    assert len(errors(drain(t))) == 3
    assert t.close_code == CloseCode.PROTOCOL_VIOLATION


def test_rate_limits_follow_response_done() -> None:
    """rate_limits.updated carries the edge's figures after each response.done."""
    t = new_translator()
    drain(t)
    t.update_rate_limits(
        [{"name": "requests", "limit": 1000, "remaining": 990, "reset_seconds": 1.0}]
    )
    events = feed(
        t,
        ResponseCreated(response_id="r"),
        ResponseDone(response_id="r", status="completed", text=""),
    )
    assert types(events)[-2:] == ["response.done", "rate_limits.updated"]


def test_g711_in_and_out() -> None:
    """With G.711 formats, appends expand to 8 kHz s16le and 20 ms of tidegate audio is 160
    mu-law bytes."""
    t = new_translator()
    drain(t)
    t.to_session()
    send(
        t,
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {
                    "input": {"format": {"type": "audio/pcmu"}},
                    "output": {"format": {"type": "audio/pcmu"}},
                },
            },
        },
    )
    send(t, {"type": "input_audio_buffer.append", "audio": b64(bytes([0xFF, 0x80] * 80))})
    (msg,) = t.to_session()
    assert isinstance(msg, InputAudio) and msg.sample_rate == 8_000 and len(msg.pcm) == 320
    events = feed(
        t,
        ResponseCreated(response_id="r"),
        *audio_out("r", 5),
        ResponseDone(response_id="r", status="completed", text=""),
    )
    audio = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    assert len(audio) == 5 * 160


def test_the_first_update_may_switch_to_a_transcription_session() -> None:
    """GA clients ask for a transcription session with session.update: before anything else
    happens, the untouched assistant session is replaced by a transcribe one; afterwards the
    kind is fixed."""
    t = new_translator()
    drain(t)
    t.to_session()
    update = {
        "type": "session.update",
        "event_id": "sw",
        "session": {
            "type": "transcription",
            "audio": {"input": {"transcription": {"model": "whisper-1"}}},
        },
    }
    assert send(t, update) == []
    close, create = t.to_session()
    assert isinstance(close, SessionClose) and isinstance(create, SessionCreate)
    assert create.config == {"mode": "transcribe"}
    assert feed(t, SessionClosed(reason="replaced")) == [] and t.close_code is None
    (updated,) = feed(
        t, SessionCreated(session_id="s_2", config=create.config, limits={}, ice_servers=())
    )
    assert updated["type"] == "session.updated" and updated["session"]["type"] == "transcription"
    assert t.config.type == "transcription" and t.session_id == "s_2"
    send(t, {"type": "input_audio_buffer.append", "audio": b64(TONE_24K)})
    (err,) = errors(
        send(t, {"type": "session.update", "event_id": "late", "session": {"type": "realtime"}})
    )
    assert err["code"] == RealtimeCode.INVALID_STATE and err["event_id"] == "late"


def test_media_time_goes_on_across_a_format_change() -> None:
    """ts of input.audio is continuous when the input format changes mid-stream."""
    t = new_translator()
    drain(t)
    t.to_session()
    send(t, {"type": "input_audio_buffer.append", "audio": b64(TONE_24K)}, now_ms=0.0)
    send(
        t,
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcma"}}}},
        },
    )
    send(t, {"type": "input_audio_buffer.append", "audio": b64(bytes(80))}, now_ms=20.0)
    send(t, {"type": "input_audio_buffer.append", "audio": b64(bytes(80))}, now_ms=30.0)
    msgs = [m for m in t.to_session() if isinstance(m, InputAudio)]
    assert [(m.ts, m.sample_rate) for m in msgs] == [(0.0, 24_000), (20.0, 8_000), (30.0, 8_000)]


def test_the_transcription_language_becomes_the_sessions_language() -> None:
    """``audio.input.transcription.language`` is tidegate's session ``language`` (the other
    transcription settings stay the translator's)."""
    t = new_translator()
    drain(t)
    t.to_session()
    session = {"type": "realtime", "audio": {"input": {"transcription": {"language": "de"}}}}
    assert send(t, {"type": "session.update", "session": session}) == []
    (update,) = t.to_session()
    assert isinstance(update, SessionUpdate)
    assert update.config == {"mode": "assistant", "language": "de"}
