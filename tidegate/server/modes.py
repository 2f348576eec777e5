"""The composition root's part of every mode: the lanes' configs, built from the settings
(:func:`lane_config`), and :class:`ModeStarter`, the factory a session builds its mode with.

The modes and their lanes are the rows of :mod:`tidegate.pipelines.registry`; the config check
is :mod:`tidegate.sessions.config` (re-exported here).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from tidegate.engines.asr.streaming import StreamingSettings
from tidegate.media import IcePolicy, MediaConfig
from tidegate.pipelines.config import (
    AudioConfig,
    LaneConfig,
    LoopbackConfig,
    ReplyConfig,
    TurnConfig,
    VisionConfig,
)
from tidegate.pipelines.registry import MODES
from tidegate.sessions.config import CONFIG_KEYS, ENGINE_MODES, MODE_NAMES, resolve_config
from tidegate.sessions.session import Mode, Session

from .settings import Settings

if TYPE_CHECKING:
    from tidegate.engines.service import EngineService

__all__ = [
    "CONFIG_KEYS",
    "ENGINE_MODES",
    "MODE_NAMES",
    "lane_config",
    "media_config",
    "resolve_config",
    "ModeStarter",
]


@functools.lru_cache(maxsize=8)
def media_config(settings: Settings) -> MediaConfig:
    """The media part of the settings (validated by Settings.validate)."""
    s = settings
    return MediaConfig(
        ice=IcePolicy.from_settings(s.ice_hosts, s.ice_ports, s.ice_servers),
        jitter_target_ms=s.jitter_target_ms,
        jitter_max_gap_packets=s.jitter_max_gap_packets,
        audio_fec=s.audio_fec,
        audio_buffer_s=s.audio_buffer_s,
        audio_silence_dbfs=s.audio_silence_dbfs,
        audio_lag_report_ms=s.audio_lag_report_ms,
        audio_out_buffer_s=s.audio_out_buffer_s,
        audio_out_bitrate_bps=s.audio_out_bitrate_bps,
        audio_out_complexity=s.audio_out_complexity,
        audio_out_lead_ms=s.audio_out_lead_ms,
        video_max_pixels=s.frame_max_pixels,
        video_decoder_max_frames=s.video_decoder_max_frames,
        data_channel_max_inbound_messages=s.data_channel_max_inbound_messages,
        data_channel_max_buffered_bytes=s.data_channel_max_buffered_bytes,
    )


@functools.lru_cache(maxsize=8)
def lane_config(settings: Settings) -> LaneConfig:
    """The lanes' configs from the settings (the composition root's part of every mode)."""
    s = settings
    return LaneConfig(
        media=media_config(s),
        audio=AudioConfig(
            streaming=StreamingSettings(
                partial_interval_s=s.asr_partial_interval_s,
                max_segment_s=s.asr_max_segment_s,
                hard_max_segment_s=s.asr_hard_max_segment_s,
                partial_hold_s=s.asr_partial_hold_s,
                pre_roll_s=s.asr_pre_roll_s,
                prompt_tokens=s.asr_prompt_tokens,
                prompt_max_gap_s=s.asr_prompt_max_gap_s,
                partial_backoff_items=s.asr_partial_backoff_items,
                partial_max_queue_items=s.asr_partial_max_queue_items,
                language_detect_s=s.asr_language_detect_s,
                language_lock_probability=s.asr_language_lock_probability,
                language_detect_max_s=s.asr_language_detect_max_s,
                early_final=s.asr_early_final,
                join_max_gap_s=s.asr_join_max_gap_s,
                join_max_s=s.asr_join_max_s,
            ),
            audio_buffer_s=s.audio_buffer_s,
            audio_silence_dbfs=s.audio_silence_dbfs,
            audio_lag_report_ms=s.audio_lag_report_ms,
            audio_max_ahead_s=s.audio_max_ahead_s,
            asr_max_pending_finals=s.asr_max_pending_finals,
            echo_cancellation=s.audio_echo_cancellation,
            noise_suppression=s.audio_noise_suppression,
            echo_max_delay_s=s.audio_echo_max_delay_s,
            echo_realign_min_s=s.audio_echo_realign_min_s,
            echo_max_pending_frames=s.audio_echo_max_pending_frames,
            interrupt_pause_after_s=s.interrupt_pause_after_s,
        ),
        turns=TurnConfig(
            end_of_turn_s=s.assistant_end_of_turn_s,
            policy=s.turn_policy,
            max_wait_s=s.turn_max_wait_s,
            idle_timeout_s=s.turn_idle_timeout_s,
            idle_max_prompts=s.turn_idle_max_prompts,
        ),
        reply=ReplyConfig(
            system_prompt=s.assistant_system_prompt,
            max_reply_tokens=s.assistant_max_reply_tokens,
            max_history_messages=s.assistant_max_history_messages,
            max_pending_chunks=s.assistant_max_pending_chunks,
            max_tool_calls_items=s.assistant_max_tool_calls_items,
            tool_timeout_s=s.assistant_tool_timeout_s,
            audio_lead_s=s.assistant_audio_lead_s,
            vision_max_age_s=s.assistant_vision_max_age_s,
            speculate_max_wait_s=s.assistant_speculate_max_wait_s,
            interrupt_confirm_s=s.interrupt_confirm_s,
            interrupt_max_pause_s=s.interrupt_max_pause_s,
            interrupt_onset_hold_s=s.interrupt_onset_hold_s,
            interrupt_min_words=s.interrupt_min_words,
            interrupt_backchannels=s.interrupt_backchannels,
            interrupt_backchannel_phrases=s.interrupt_backchannel_phrases,
            interrupt_echo_window_s=s.interrupt_echo_window_s,
            interrupt_echo_likeness=s.interrupt_echo_likeness,
            interrupt_echo_hold_s=s.interrupt_echo_hold_s,
            first_chunk_words=s.assistant_first_chunk_words,
            max_tools_items=s.assistant_max_tools_items,
            max_tools_bytes=s.assistant_max_tools_bytes,
            max_out_of_band_replies=s.assistant_max_out_of_band_replies,
        ),
        vision=VisionConfig(
            interval_s=s.assistant_vision_interval_s, max_pixels=s.frame_max_pixels
        ),
        loopback=LoopbackConfig(
            echo_max_latency_ms=s.echo_max_latency_ms, max_pixels=s.frame_max_pixels
        ),
    )


class ModeStarter:
    """The factory a session builds its mode with: its registry row, the lanes' configs from
    these settings (resolve_config checked the engines)."""

    def __init__(self, settings: Settings) -> None:
        self.config = lane_config(settings)

    def __call__(self, session: Session, engines: EngineService | None) -> Mode:
        return MODES[session.config["mode"]].build(session, self.config, engines)
