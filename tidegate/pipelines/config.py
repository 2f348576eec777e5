"""The lanes' typed configs. The composition root (``tidegate.server``) builds them from the
settings (every field is a setting of the same name, documented there); a lane never
reads the settings."""

from __future__ import annotations

from dataclasses import dataclass

from tidegate.engines.asr.streaming import StreamingSettings
from tidegate.media import MediaConfig

from .interrupt import DEFAULT_BACKCHANNELS, ECHO_WINDOW_S
from .own_voice import ECHO_HOLD_S, OWN_VOICE_LIKENESS


@dataclass(frozen=True, slots=True)
class AudioConfig:
    """The audio lane (VAD -> ASR): its inbound buffer, pace and ASR streaming policy."""

    streaming: StreamingSettings
    audio_buffer_s: float
    audio_silence_dbfs: float
    audio_lag_report_ms: float
    audio_max_ahead_s: float
    asr_max_pending_finals: int
    #: echo cancellation (pipelines/echo.py): the default of a session's
    #: ``audio.echo_cancellation`` (auto | on | off) and ``audio.noise_suppression``
    echo_cancellation: str = "auto"
    noise_suppression: bool = False
    echo_max_delay_s: float = 0.5
    echo_realign_min_s: float = 1.0
    echo_max_pending_frames: int = 500
    #: a sound over a reply this long pauses it, before the VAD's start of speech
    interrupt_pause_after_s: float = 0.15


TURN_POLICIES = ("semantic", "silence")
#: a session's ``turn.policy`` may also be ``manual``: no turn ends by itself; the client
#: commits the audio it sent (the Realtime dialect's ``turn_detection: null``)
SESSION_TURN_POLICIES = (*TURN_POLICIES, "manual")


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """Turn-taking: how a turn ends. ``policy`` is the default a session config's
    ``turn.policy`` overrides; ``end_of_turn_s`` is the silence policy's wait after the end of
    speech, ``max_wait_s`` the semantic policy's wait after a pause judged incomplete;
    ``idle_timeout_s`` how long the user may stay silent after a reply before the assistant
    takes the turn (0: never), at most ``idle_max_prompts`` times in a row."""

    end_of_turn_s: float
    policy: str = "semantic"
    max_wait_s: float = 1.5
    idle_timeout_s: float = 0.0
    idle_max_prompts: int = 3


@dataclass(frozen=True, slots=True)
class ReplyConfig:
    """The reply lane (LLM -> TTS -> audio out)."""

    system_prompt: str
    max_reply_tokens: int
    max_history_messages: int
    max_pending_chunks: int
    max_tool_calls_items: int
    tool_timeout_s: float
    audio_lead_s: float
    vision_max_age_s: float
    #: a turn whose end is at most this far away is replied to speculatively (0: never)
    speculate_max_wait_s: float
    #: interruptions (pipelines/interrupt.py): how long a reply paused by speech waits for
    #: the ASR's verdict (0: speech cuts it at once); the defaults of a session's
    #: ``interrupt.min_words`` and ``interrupt.backchannels``; what a backchannel is
    interrupt_confirm_s: float = 2.0
    interrupt_max_pause_s: float = 10.0
    #: a reply paused by a sound that ended short of speech, or whose final had no words,
    #: resumes after this much quiet
    interrupt_onset_hold_s: float = 0.4
    interrupt_min_words: int = 1
    interrupt_backchannels: str = "ignore"
    interrupt_backchannel_phrases: tuple[str, ...] = DEFAULT_BACKCHANNELS
    #: words heard over a reply that it played this long before its pause are its own (0: off)
    interrupt_echo_window_s: float = ECHO_WINDOW_S
    #: speech over a reply sounding at least this like it is its own voice (above 1: off)
    interrupt_echo_likeness: float = OWN_VOICE_LIKENESS
    #: after the reply's own voice was told by its sound, sounds over a reply are judged by
    #: their sound this long before they pause it (pipelines/interrupt.py; 0: never)
    interrupt_echo_hold_s: float = ECHO_HOLD_S
    #: the first TTS chunk's length in words (engines/tts/stream.py ChunkPolicy; 0: a sentence)
    first_chunk_words: int = 3
    #: a response's own ``tools`` (response.create), bounded as a session's are
    max_tools_items: int = 32
    max_tools_bytes: int = 32_768
    #: out-of-band responses (conversation none) one session runs at once
    max_out_of_band_replies: int = 2


@dataclass(frozen=True, slots=True)
class VisionConfig:
    """The vision lane: its rate and the largest frame it takes."""

    interval_s: float
    max_pixels: int


@dataclass(frozen=True, slots=True)
class LoopbackConfig:
    """The loopback lane: how much echoed audio may queue."""

    echo_max_latency_ms: float
    max_pixels: int


@dataclass(frozen=True, slots=True)
class LaneConfig:
    """Every lane's config, as one value a mode is built with."""

    media: MediaConfig
    audio: AudioConfig
    turns: TurnConfig
    reply: ReplyConfig
    vision: VisionConfig
    loopback: LoopbackConfig
