"""Example events of the Realtime dialect: one valid example of every GA client event, and
helpers to drive a translator (shared by the event, translator and fuzz tests)."""

from __future__ import annotations

import base64
import typing
from typing import Any

import numpy as np
import orjson
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent

from tidegate.media.realtime_audio import RealtimeAudioCodec
from tidegate.protocol.messages import ServerMessage, SessionCreated
from tidegate.protocol.realtime import RealtimeTranslator

from .conformance import check_all


def _literal_types(union: Any) -> set[str]:
    annotated = typing.get_args(union)[0]
    return {
        typing.get_args(m.model_fields["type"].annotation)[0] for m in typing.get_args(annotated)
    }


GA_CLIENT_EVENTS = _literal_types(RealtimeClientEvent)
GA_SERVER_EVENTS = _literal_types(RealtimeServerEvent)

TONE_24K = (np.sin(np.arange(480) / 5) * 6000).astype("<i2").tobytes()  # 20 ms at 24 kHz


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


EXAMPLES: dict[str, dict[str, Any]] = {
    "session.update": {
        "type": "session.update",
        "event_id": "c_session",
        "session": {
            "type": "realtime",
            "instructions": "Be brief.",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
                    "transcription": {"model": "whisper-1"},
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "alloy"},
            },
        },
    },
    "input_audio_buffer.append": {
        "type": "input_audio_buffer.append",
        "event_id": "c_append",
        "audio": b64(TONE_24K),
    },
    "input_audio_buffer.commit": {"type": "input_audio_buffer.commit", "event_id": "c_commit"},
    "input_audio_buffer.clear": {"type": "input_audio_buffer.clear", "event_id": "c_clear"},
    "output_audio_buffer.clear": {"type": "output_audio_buffer.clear", "event_id": "c_oclear"},
    "conversation.item.create": {
        "type": "conversation.item.create",
        "event_id": "c_item",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Hi"}],
        },
    },
    "conversation.item.truncate": {
        "type": "conversation.item.truncate",
        "event_id": "c_trunc",
        "item_id": "item_x",
        "content_index": 0,
        "audio_end_ms": 100,
    },
    "conversation.item.delete": {
        "type": "conversation.item.delete",
        "event_id": "c_del",
        "item_id": "item_x",
    },
    "conversation.item.retrieve": {
        "type": "conversation.item.retrieve",
        "event_id": "c_get",
        "item_id": "item_x",
    },
    "response.create": {
        "type": "response.create",
        "event_id": "c_resp",
        "response": {"instructions": "Answer in French.", "output_modalities": ["text"]},
    },
    "response.cancel": {"type": "response.cancel", "event_id": "c_cancel"},
}


def frame(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()


def new_translator(**kwargs: Any) -> RealtimeTranslator:
    """A translator whose tidegate session is open (session.created delivered)."""
    t = RealtimeTranslator(audio=RealtimeAudioCodec(), **kwargs)
    t.start(0.0)
    t.receive_message(
        SessionCreated(session_id="s_1", config={"mode": t.config.mode}, limits={}, ice_servers=()),
        0.0,
    )
    return t


def drain(t: RealtimeTranslator) -> list[dict[str, Any]]:
    """The translator's frames so far, each checked against the SDK."""
    return check_all(t.data_to_send())


def feed(t: RealtimeTranslator, *msgs: ServerMessage, now_ms: float = 0.0) -> list[dict[str, Any]]:
    for m in msgs:
        t.receive_message(m, now_ms)
    return drain(t)


def send(t: RealtimeTranslator, event: dict[str, Any], now_ms: float = 0.0) -> list[dict[str, Any]]:
    t.receive_text(frame(event), now_ms)
    return drain(t)


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]
