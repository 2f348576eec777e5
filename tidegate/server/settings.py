"""Server configuration: defaults, then an optional TOML file, then ``TIDEGATE_*`` variables.

Every limit is a setting with a unit in its name and a documented default (docs/configuration.md
holds the table ``tidegate config --markdown`` prints from the field docs). An engine kind's
settings are its config dataclass (tidegate/engines/config.py), nested: ``vad_threshold`` is
``settings.engine(VAD).threshold``. Secrets are never defaults: the JWT signing key is
generated into the data folder on first run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import platformdirs

from tidegate.engines.config import EngineDefaults
from tidegate.engines.registry import ENGINE_KINDS, KINDS, EngineConfigs, EngineKind, engine_specs
from tidegate.media.errors import IceConfigError
from tidegate.media.ice import IcePolicy
from tidegate.pipelines.interrupt import (
    BACKCHANNEL_POLICIES,
    DEFAULT_BACKCHANNELS,
    ECHO_WINDOW_S,
    MAX_MIN_WORDS,
)
from tidegate.pipelines.own_voice import ECHO_HOLD_S, OWN_VOICE_LIKENESS

from .errors import ConfigError

ENV_PREFIX = "TIDEGATE_"
ROUTE_ID_RE = re.compile(r"[a-z0-9]{1,16}")
# What a bare `tidegate serve` runs: every CPU engine (the embedded defaults, as `make run`).
DEFAULT_ENGINES = ("vad", "asr", "vision", "llm", "tts", "turn")
# Settings whose empty environment value means "none" rather than "unset" (the default).
EMPTY_MEANS_NONE = frozenset({"engines"})
# counts that may be 0, which turns what they count off
ZERO_IS_OFF = frozenset({"llm_provider_standby_every_tokens", "asr_prompt_tokens"})


C = TypeVar("C")


class Flat(NamedTuple):
    """One setting under its public (flat) name: ``kind`` is the engine kind whose config
    holds it as ``attr`` (None: a field of Settings itself)."""

    kind: EngineKind[Any, Any] | None
    attr: str
    hint: Any
    field: dataclasses.Field[Any]


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("tidegate", appauthor=False))


def _doc(text: str, **kw: Any) -> Any:
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True, slots=True)
class Settings:
    """All server settings. Field names map to ``TIDEGATE_<NAME>`` environment variables."""

    host: str = _doc("Address to listen on.", default="127.0.0.1")
    port: int = _doc("TCP port to listen on (0 picks a free one).", default=8080)
    data_dir: Path = _doc(
        "Folder for the signing key, prepared models and the database.",
        default_factory=_default_data_dir,
    )
    config: Path | None = _doc("Optional TOML file with these settings.", default=None)
    log_level: str = _doc("Logging level: debug, info, warning, error.", default="info")

    # -- authentication -------------------------------------------------------------------------
    jwt_secret: str | None = _doc(
        "HS256 signing key. Unset: a random key is generated into data_dir/jwt.key.",
        default=None,
    )
    jwt_audience: str = _doc("The audience (aud) every token must name.", default="tidegate")
    jwt_issuer: str | None = _doc("If set, the issuer (iss) every token must name.", default=None)
    jwt_leeway_s: float = _doc("Clock skew tolerated on exp/nbf/iat.", default=5.0)
    token_ttl_s: float = _doc("Lifetime of tokens minted by `tidegate token`.", default=3600.0)
    allowed_origins: tuple[str, ...] = _doc(
        "Browser origins allowed to open the control channel (comma-separated). Empty: "
        "requests without an Origin header, and same-origin pages.",
        default=(),
    )

    oidc_issuers_file: Path | None = _doc(
        "TOML file of trusted OIDC issuers ([issuers.NAME]: issuer, discovery_url or jwks_url, "
        "audience, algorithms, claim mapping; docs/security.md). Unset: only HS256 tokens "
        "signed with the local key.",
        default=None,
    )
    jwks_cache_min_s: float = _doc(
        "Shortest time an issuer's key set is used before a scheduled refresh, whatever its "
        "cache headers say.",
        default=60.0,
    )
    jwks_cache_max_s: float = _doc(
        "Longest time an issuer's key set is used before a scheduled refresh (also when it "
        "sends no cache headers).",
        default=3600.0,
    )
    jwks_refresh_min_s: float = _doc(
        "A token naming a key id an issuer's cached set lacks triggers one fetch of its keys, "
        "and then no other such fetch for this long (forged key ids cannot cause a refresh "
        "storm; concurrent tokens share the fetch); a failed fetch is retried after it.",
        default=30.0,
    )
    jwks_timeout_s: float = _doc(
        "Longest fetch of an issuer's discovery document or key set.", default=5.0
    )
    jwks_max_bytes: int = _doc(
        "Largest discovery document or key set accepted from an issuer.", default=1_048_576
    )
    auth_log_interval_s: float = _doc(
        "Refused tokens are logged at most once per reason in this interval (the rest are "
        "counted, and the count is logged with the next line).",
        default=10.0,
    )
    web_token_url: str = _doc(
        "An operator-provided token endpoint the browser client signs in with (POST, with the "
        "page's cookies; answers {\"token\": ...}), e.g. an SSO proxy's. Empty: none "
        "(docs/security.md).",
        default="",
    )

    dev_login: str = _doc(
        "Development login (POST /v1/dev/token mints a short-lived session token for the "
        "browser client): auto (on only when host is a loopback address, for local requests "
        "no proxy forwarded), on, or off (404). While on, it and the page at / answer only a "
        "loopback Host with the server's port (with on: also the hosts of allowed_origins).",
        default="auto",
    )
    dev_login_ttl_s: float = _doc("Lifetime of a development-login token.", default=600.0)
    web_dir: Path | None = _doc(
        "The built browser client served at /. Unset: client-web/dist of the source tree.",
        default=None,
    )

    # -- control channel ------------------------------------------------------------------------
    max_message_bytes: int = _doc("Largest control message accepted.", default=1_048_576)
    max_depth: int = _doc("Deepest nesting accepted in a message.", default=8)
    max_string_chars: int = _doc("Longest string accepted in a message.", default=65_536)
    max_bad_messages: int = _doc(
        "Invalid messages in a row, or within bad_messages_window_s, before the connection "
        "is closed (4400); as many rate_limited refusals within that window close it with 4429.",
        default=16,
    )
    bad_messages_window_s: float = _doc(
        "The window in which max_bad_messages invalid messages (or rate_limited refusals) "
        "close a connection, whatever valid messages come between them.",
        default=10.0,
    )
    outbox_max_messages: int = _doc(
        "Events queued for one client before it counts as too slow (4408).", default=512
    )
    outbox_max_bytes: int = _doc("Bytes queued for one client before 4408.", default=8_388_608)
    send_timeout_s: float = _doc(
        "A send that takes longer closes the connection (4408).", default=10.0
    )
    upload_credit_messages: int = _doc("Upload messages a client may have in flight.", default=64)
    upload_credit_bytes: int = _doc("Upload bytes a client may have in flight.", default=2_097_152)
    frame_max_pixels: int = _doc(
        "Largest input.frame image (width x height, read from its header before decoding; "
        "also the largest WebRTC video frame decoded, read from the VP8 keyframe or H.264 "
        "SPS). Default: 3840x2160.",
        default=8_294_400,
    )
    media_worker_threads: int = _doc(
        "Threads that decode input.frame images and resample input.audio, off the event loop.",
        default=2,
    )
    media_max_pending_items: int = _doc(
        "Decodes and resamples in hand (running or waiting) at once; more are refused "
        "(overloaded).",
        default=32,
    )
    metrics_interval_s: float = _doc(
        "Interval of per-session `metrics` events (0: off).", default=5.0
    )
    first_message_timeout_s: float = _doc(
        "A control connection whose first message has not arrived this long after it was "
        "accepted is closed (4409; 0: no limit).",
        default=10.0,
    )
    sessionless_idle_s: float = _doc(
        "A control connection without a session that sends nothing for this long is closed "
        "(4409; 0: no limit). Connections with a session are never closed for idling.",
        default=60.0,
    )
    max_sessionless_connections_per_subject: int = _doc(
        "Control connections one subject (tenant + sub) may hold without a session; more are "
        "refused (rate_limited, close 4429).",
        default=16,
    )

    # -- connections (every TCP connection: HTTP and WebSocket) -------------------------------
    handshake_timeout_s: float = _doc(
        "A connection must send a complete HTTP request (a WebSocket upgrade included) within "
        "this of connecting or of starting its next request, and a WebSocket must be accepted "
        "within this of connecting; else it is dropped (0: no limit).",
        default=10.0,
    )
    max_connections: int = _doc(
        "Open connections at once. At the cap a new connection replaces the oldest one still "
        "in its handshake, or is refused (503). The cap is lowered to the process's open-file "
        "limit less fd_reserve_files.",
        default=4096,
    )
    max_connections_per_address: int = _doc(
        "Open connections from one client address; more are refused (429). proxy_addresses "
        "are exempt.",
        default=256,
    )
    proxy_addresses: tuple[str, ...] = _doc(
        "Addresses of the reverse proxies in front of this node (comma-separated), exempt "
        "from max_connections_per_address (NGINX limits per client with limit_conn).",
        default=(),
    )
    fd_reserve_files: int = _doc(
        "File descriptors kept free of connections for the database, the journal, models and "
        "logs: max_connections is lowered to the open-file limit less this and twice "
        "listen_backlog_connections (connections accepted but not yet counted).",
        default=64,
    )
    listen_backlog_connections: int = _doc(
        "The listening socket's backlog, which is also how many connections the event loop "
        "accepts in one go (so it counts against the file descriptors; see fd_reserve_files). "
        "A burst of more connects than this waits for the kernel's SYN retry.",
        default=128,
    )

    # -- sessions -------------------------------------------------------------------------------
    max_sessions: int = _doc("Sessions one node holds at once.", default=256)
    max_sessions_per_tenant: int = _doc("Sessions one tenant holds at once.", default=64)
    session_resume_s: float = _doc(
        "How long a session outlives its connection, waiting to be resumed.", default=30.0
    )
    default_mode: str = _doc("Mode of a session whose config names none.", default="assistant")
    route_id: str = _doc(
        "This node's routing id behind NGINX (1-16 of a-z, 0-9): embedded in every session id "
        "it creates (s_<route_id>.<random>), so that a session's requests reach this node "
        "(docs/deploy.md). Empty: plain session ids (one node).",
        default="",
    )
    drain_timeout_s: float = _doc(
        "On SIGTERM: how long the node drains (new sessions refused with overloaded, /readyz "
        "503) waiting for its sessions to end, before it closes the rest and flushes the "
        "record journal (docs/deploy.md). 0: close at once.",
        default=30.0,
    )

    # -- media (WebRTC) -------------------------------------------------------------------------
    ice_servers: tuple[str, ...] = _doc(
        "STUN/TURN URLs our ICE agent uses and lists to clients (comma-separated). Empty: "
        "none (there is no public default).",
        default=(),
    )
    ice_hosts: tuple[str, ...] = _doc(
        "Addresses to gather ICE host candidates on (comma-separated): ADDR, or "
        "ADVERTISED=BIND behind a 1:1 NAT (e.g. 203.0.113.7=10.0.0.7), or '*' for every "
        "interface but loopback.",
        default=("127.0.0.1",),
    )
    ice_ports: str = _doc(
        "UDP port range for media, LOW-HIGH (e.g. 40000-40100). Empty: ephemeral ports.",
        default="",
    )
    turn_urls: tuple[str, ...] = _doc(
        "TURN URLs handed to clients with short-lived credentials (comma-separated; needs "
        "turn_secret).",
        default=(),
    )
    turn_secret: str | None = _doc(
        "coturn's static-auth-secret (use-auth-secret), to mint TURN credentials.", default=None
    )
    turn_ttl_s: float = _doc("Lifetime of minted TURN credentials.", default=600.0)
    jitter_target_ms: float = _doc(
        "Longest wait for a missing audio packet before it is concealed (FEC/PLC).",
        default=20.0,
    )
    jitter_max_gap_packets: int = _doc(
        "A sequence jump larger than this resynchronises the audio jitter buffer.", default=50
    )
    audio_fec: bool = _doc("Rebuild lost audio packets from Opus in-band FEC.", default=True)
    audio_buffer_s: float = _doc(
        "Decoded inbound audio queued for the consumer before silence, then speech, is "
        "dropped (with a flow.lag event).",
        default=3.0,
    )
    audio_lag_report_ms: float = _doc(
        "Inbound audio lag that triggers a flow.lag event.", default=500.0
    )
    audio_max_ahead_s: float = _doc(
        "How far WS-only input.audio may run ahead of real time (its media time against the "
        "wall clock since the stream started); a chunk beyond it is refused (rate_limited, "
        "with retry_after_ms), and a chunk's credit comes back no earlier than its audio's "
        "time. 0: no pacing (bench's as-fast-as-possible ASR runs only).",
        default=3.0,
    )
    audio_silence_dbfs: float = _doc(
        "Level below which an inbound 20 ms chunk counts as silence (dropped first).",
        default=-50.0,
    )
    audio_out_buffer_s: float = _doc(
        "Outbound audio queued per session; beyond it the oldest is dropped.", default=10.0
    )
    video_decoder_max_frames: int = _doc(
        "Encoded WebRTC video frames waiting for the decoder thread per track; more are "
        "dropped and a keyframe is asked for (a keyframe always replaces the frames waiting).",
        default=32,
    )
    data_channel_max_inbound_messages: int = _doc(
        "Events from a WebRTC client's data channel (the Realtime dialect's oai-events) "
        "waiting to be read; more are dropped (counted).",
        default=256,
    )
    data_channel_max_buffered_bytes: int = _doc(
        "Events buffered for a WebRTC client's data channel; past it the sender waits, and a "
        "client that does not read is closed after send_timeout_s.",
        default=1 << 20,
    )
    realtime_call_connect_s: float = _doc(
        "POST /v1/realtime/calls: how long after the answer the client has to connect and "
        "open its oai-events data channel; after it the call and its session end.",
        default=30.0,
    )
    realtime_call_max_sidebands: int = _doc(
        "WebSockets (/v1/realtime?call_id=) attached to one Realtime WebRTC call as its "
        "sidebands; more are refused.",
        default=2,
    )
    realtime_sideband_max_pending_events: int = _doc(
        "Events waiting to be sent to one sideband of a call; a sideband that falls further "
        "behind is closed (4408), the call goes on.",
        default=1024,
    )
    audio_out_bitrate_bps: int = _doc("Opus bitrate of outbound audio.", default=32_000)
    audio_out_complexity: int = _doc(
        "Opus encoder complexity of outbound audio (0-10; CPU per frame grows with it: "
        "~70 us at 0, ~130 us at 2 per 20 ms frame on the CI machine).",
        default=0,
    )
    audio_out_lead_ms: float = _doc(
        "How early an outbound 20 ms packet may leave before its window on the clock opens "
        "(absorbs the producer's jitter without a timer wakeup; 0: strict windows).",
        default=20.0,
    )
    echo_max_latency_ms: float = _doc(
        "Loopback mode: the longest its echo may queue; older echo audio is dropped (after a "
        "stall, so that the echo's latency recovers instead of standing).",
        default=20.0,
    )

    # -- engines (docs/engines.md) -------------------------------------------------------------
    engines: tuple[str, ...] = _doc(
        "Engines loaded and warmed up at start-up (comma-separated: vad, asr, vision, llm, "
        "tts, turn); /readyz turns ready once they are. Default: every CPU engine "
        "(`tidegate serve` prepares missing models first). turn is optional: a server that "
        "cannot have its model starts without it, says so in its log, and its turns end by "
        "the silence policy. Empty (TIDEGATE_ENGINES=): none.",
        default=DEFAULT_ENGINES,
    )
    #: Each engine kind's config (registry.py's table): ``engine(ASR)`` is the ``asr_*``
    #: settings as an AsrConfig. Flattened into ``<kind>_<field>`` names for the environment,
    #: the file and ``describe``.
    engine_configs: EngineConfigs = field(default_factory=EngineConfigs)
    models_file: Path | None = _doc(
        "TOML file of custom models ([models.NAME] path, inputs, outputs, sha256).", default=None
    )
    engine_runtime: str = _doc(
        "onnx (ONNX Runtime), tensorrt (TensorRT, for prebuilt engine files) or triton (a "
        "Triton Inference Server, triton_url).",
        default="onnx",
    )
    engine_providers: tuple[str, ...] = _doc(
        "ONNX Runtime execution providers in order of preference (tensorrt, cuda, cpu), or "
        "auto: the best this machine has.",
        default=("auto",),
    )
    engine_threads: int = _doc(
        "Intra-op threads per engine instance (0: ONNX Runtime's default).", default=1
    )
    engine_trt_cache_dir: Path | None = _doc(
        "TensorRT engine cache folder. Unset: data_dir/trt-cache.", default=None
    )
    triton_url: str = _doc(
        "gRPC endpoint (host:port) of the Triton server for engines on the triton runtime "
        "(docs/triton.md).",
        default="127.0.0.1:8001",
    )
    triton_urls: tuple[str, ...] = _doc(
        "Per-engine Triton servers, ENGINE=HOST:PORT (comma-separated); others use triton_url.",
        default=(),
    )
    triton_timeout_s: float = _doc(
        "Client deadline of one Triton call (one batch; a reconnect included).", default=2.0
    )
    triton_policy: str = _doc(
        "When Triton is down or slow: refuse (the call fails, new sessions are refused for "
        "triton_retry_s) or fallback (the node runs the model locally meanwhile).",
        default="refuse",
    )
    triton_retry_s: float = _doc(
        "After a failed Triton call, how long the server counts as down before it is tried again.",
        default=5.0,
    )
    engine_max_sessions: int = _doc(
        "Sessions a stateful engine (VAD) keeps state for at once.", default=1024
    )

    # -- the audio lane (the ASR engine's own settings are asr_* above, engine_configs) -----
    asr_partial_interval_s: float = _doc(
        "How often the growing speech segment is re-decoded for asr.partial.", default=1.0
    )
    asr_partial_hold_s: float = _doc(
        "A partial waits while the newest audio has been quiet for less than this: the "
        "segment may be ending, and its final must not queue behind a partial.",
        default=0.2,
    )
    asr_max_segment_s: float = _doc(
        "Speech longer than this is cut at the next pause into separate segments.", default=15.0
    )
    asr_pre_roll_s: float = _doc(
        "Audio a speech segment keeps from before the VAD's start of speech (never before the "
        "previous segment's end): the first word's onset, which the VAD confirms late.",
        default=0.2,
    )
    asr_prompt_tokens: int = _doc(
        "Tokens of the session's previous finals given to every decode of a segment as "
        "Whisper's previous-text context (0: none, the default; at most 64 are used). Off by "
        "default: with tiny.en it fixed first words of the recorded clips but made a trailing "
        "fragment decode as the previous phrase again (docs/asr.md).",
        default=0,
    )
    asr_prompt_max_gap_s: float = _doc(
        "The previous-text context is kept only across pauses up to this long (s); after a "
        "longer one a segment starts without it.",
        default=1.0,
    )
    asr_join_max_gap_s: float = _doc(
        "A segment that begins within this long (s) of the previous one's end (a pause inside "
        "a turn) has its final decoded a second time together with the segments before it: "
        "the turn's words as one utterance are what the reply answers (asr.final stays per "
        "segment). 0: never. Only in modes with turn-taking.",
        default=2.0,
    )
    asr_join_max_s: float = _doc(
        "A joined decode covers at most this much audio (s): the oldest segments drop out.",
        default=15.0,
    )
    asr_partial_backoff_items: int = _doc(
        "Adaptive partial rate: the partial interval grows by asr_partial_interval_s for every "
        "this many requests queued for the ASR engine.",
        default=4,
    )
    asr_partial_max_queue_items: int = _doc(
        "No partial starts while this many requests are queued for the ASR engine (finals "
        "only; they are never skipped).",
        default=16,
    )
    asr_hard_max_segment_s: float = _doc(
        "Speech is cut here even without a pause (Whisper's window is 30 s).", default=25.0
    )
    asr_max_pending_finals: int = _doc(
        "Ended segments waiting for their final decode; beyond it the audio lane fills.",
        default=4,
    )
    asr_language_detect_s: float = _doc(
        "Under language auto, a turn's language is locked by the first decode of at least this "
        "much speech that is sure of it (docs/languages.md); a shorter turn is detected on its "
        "final.",
        default=2.0,
    )
    asr_language_lock_probability: float = _doc(
        "A detection locks the turn's language only with at least this probability; a less "
        "sure one waits for more speech (up to asr_language_detect_max_s, or the final).",
        default=0.7,
    )
    asr_language_detect_max_s: float = _doc(
        "Past this much speech the turn's language is locked however sure the detection.",
        default=6.0,
    )
    asr_early_final: bool = _doc(
        "A segment's final is decoded from the moment the VAD hears its quiet begin, not when "
        "the quiet has lasted vad_min_silence_s; withdrawn if speech resumes (docs/asr.md): "
        "the final comes ~0.1 s sooner after every turn.",
        default=True,
    )

    # -- LLM and TTS (docs/llm-tts.md) --------------------------------------------------------
    llm_default_max_tokens: int = _doc(
        "Reply length when a request names none (the OpenAI endpoint).", default=256
    )

    admission_queue_fraction: float = _doc(
        "New sessions are refused (overloaded, with a retry hint) while an engine their mode "
        "needs has its queue at least this full (0..1; 0: this test is off).",
        default=0.75,
    )
    admission_wait_fraction: float = _doc(
        "New sessions are refused while an engine their mode needs has a queued request that "
        "waited at least this fraction of the engine's deadline (0: this test is off).",
        default=0.5,
    )

    metrics_port: int | None = _doc(
        "If set, /metrics is also served without authentication on this port (bound to "
        "metrics_host), for a Prometheus inside the deployment. Unset: only /metrics on the "
        "main port, which needs an admin-scope token.",
        default=None,
    )
    metrics_host: str = _doc("Address the metrics_port listens on.", default="127.0.0.1")

    # -- assistant sessions (docs/assistant.md) -------------------------------------------------
    assistant_end_of_turn_s: float = _doc(
        "Silence after the VAD's end of speech that ends the user's turn (the turn ends at "
        "the later of this and the ASR final).",
        default=0.2,
    )
    audio_echo_cancellation: str = _doc(
        "Server-side echo cancellation of a session's microphone audio, before VAD and ASR, "
        "unless its config says (audio.echo_cancellation): auto (on for WS-only audio and for "
        "WebRTC clients whose rtc.offer says echo_cancellation false), on, or off.",
        default="auto",
    )
    audio_noise_suppression: bool = _doc(
        "Noise suppression with the echo canceller, unless a session's config says "
        "(audio.noise_suppression).",
        default=False,
    )
    audio_echo_max_delay_s: float = _doc(
        "Longest speaker -> microphone delay the echo canceller searches, beyond what the "
        "play and capture times show.",
        default=0.5,
    )
    audio_echo_realign_min_s: float = _doc(
        "The echo canceller moves its reference only for an estimated delay change this large; "
        "smaller ones AEC3 tracks by itself without restarting its adaptation. The default, "
        "above audio_echo_max_delay_s, leaves it all to AEC3 (the envelope estimate misjudged "
        "speech echo; docs/assistant.md).",
        default=1.0,
    )
    audio_echo_max_pending_frames: int = _doc(
        "Frames of the session's speech queued for the echo canceller between two microphone "
        "reads; the oldest are dropped beyond (counted).",
        default=500,
    )
    turn_policy: str = _doc(
        "How an assistant session's turn ends, unless its config says (turn.policy): semantic "
        "(the turn engine scores each pause: complete ends the turn at once, incomplete waits "
        "up to turn_max_wait_s for more speech) or silence (assistant_end_of_turn_s after the "
        "end of speech). semantic falls back to silence when the turn engine is not loaded.",
        default="semantic",
    )
    turn_max_wait_s: float = _doc(
        "Semantic policy: how long after a pause judged incomplete the turn waits for more "
        "speech before it ends anyway (reason timeout).",
        default=1.5,
    )
    turn_idle_timeout_s: float = _doc(
        "After the assistant's reply has played, how long the user may stay silent before the "
        "assistant takes the turn itself: turn.end with reason idle, and a reply that prompts "
        "the user (the Realtime dialect's idle_timeout_ms), unless a session's config says "
        "(turn.idle_timeout_s). Not under the manual turn policy. 0: never.",
        default=0.0,
    )
    turn_idle_max_prompts: int = _doc(
        "Idle turns in a row (turn_idle_timeout_s) the assistant takes without the user "
        "speaking or typing in between; then it waits in silence.",
        default=3,
    )
    interrupt_confirm_s: float = _doc(
        "Speech over a reply pauses its audio at once; words (interrupt_min_words) then cut "
        "it, and a sound the ASR hears no words in resumes it: at its final (once the user "
        "has been quiet interrupt_onset_hold_s); without a final, "
        "this long after the pause or after the end of the sound, whichever is later; for a "
        "sound still going on this long after the pause, at a partial without words. 0: "
        "speech cuts a reply at once. A session's config may say (interrupt.confirm_s).",
        default=2.0,
    )
    interrupt_pause_after_s: float = _doc(
        "A sound over a reply pauses it once it has been above the VAD's threshold this long, "
        "before the VAD's start of speech (vad_min_speech_s). At or above vad_min_speech_s: "
        "replies pause at the start of speech.",
        default=0.15,
    )
    interrupt_onset_hold_s: float = _doc(
        "A reply paused by a sound that ended short of speech (a click, a cough, one short "
        "word such as 'Stop,' before the rest), or whose final had no words, resumes after "
        "the user has been quiet this long; more sound within it keeps it paused.",
        default=0.4,
    )
    interrupt_max_pause_s: float = _doc(
        "The longest a reply paused by a sound that goes on waits for the ASR's verdict "
        "before it resumes (a stream that stopped mid-sound, a stuck ASR).",
        default=10.0,
    )
    interrupt_min_words: int = _doc(
        "Words (not counting backchannels, unless interrupt_backchannels is interrupt) the "
        "user must say over a reply to cut it, unless a session's config says "
        "(interrupt.min_words).",
        default=1,
    )
    interrupt_backchannels: str = _doc(
        "What backchannels over a reply do, unless a session's config says "
        "(interrupt.backchannels): ignore (they are not words, the reply goes on, and they "
        "are not the user's turn) or interrupt (they count as words).",
        default="ignore",
    )
    interrupt_backchannel_phrases: tuple[str, ...] = _doc(
        "What counts as a backchannel (comma-separated; matched as whole words, case and "
        "punctuation ignored, hyphens as spaces); hums and fillers (mm, hmm, mhm, uh, um, ah, "
        "oh, er, however spelt) always count as one.",
        default=DEFAULT_BACKCHANNELS,
    )
    interrupt_echo_window_s: float = _doc(
        "A text heard over a reply that is near what the reply itself played within this "
        "many seconds before its pause (at most 0.35 edits per letter, or 0.2 per sound of its "
        "end: docs/assistant.md) is its own voice coming back from a speaker, not the user's: "
        "it does not cut it (response.resumed reason echo). 0: off.",
        default=ECHO_WINDOW_S,
    )
    interrupt_echo_likeness: float = _doc(
        "Speech heard over a reply whose sound is at least this like what the reply played "
        "(the best correlation of their spectral envelopes over the speaker-to-microphone "
        "delays, 0..1: docs/assistant.md) is its own voice coming back, whatever words the "
        "ASR heard in it: it does not cut it (response.resumed reason echo). Above 1: off.",
        default=OWN_VOICE_LIKENESS,
    )
    interrupt_echo_hold_s: float = _doc(
        "Once a reply's own voice has been told by its sound in a session "
        "(interrupt_echo_likeness), for this long after a sound over a reply is judged by its "
        "sound before it pauses the reply: the reply plays on while the sound is like what it "
        "played, and pauses the moment it is not (a user speaking over the echo) or when "
        "0.2 s of it gave too little to judge. Without it a speaker with no canceller pauses "
        "the reply at each of its own sentences. 0: never held.",
        default=ECHO_HOLD_S,
    )
    assistant_max_reply_tokens: int = _doc("Longest spoken reply, in tokens.", default=96)
    assistant_system_prompt: str = _doc(
        "The system message every assistant conversation starts with.",
        default=(
            "You are a helpful voice assistant. Answer in one or two short sentences of plain text."
        ),
    )
    assistant_max_history_messages: int = _doc(
        "User and assistant messages kept for the LLM (oldest dropped first).", default=16
    )
    assistant_audio_lead_s: float = _doc(
        "Reply audio sent ahead of its playout (WebRTC track queue, output.audio); a "
        "barge-in flushes at most this much.",
        default=0.2,
    )
    assistant_speculate_max_wait_s: float = _doc(
        "Speculative reply start: once a turn's text is known and its end is at most this "
        "far away (the silence policy's wait, the semantic policy's timeout), its reply starts "
        "held and is adopted when the turn ends with the same text, else discarded "
        "(docs/assistant.md). 0: off.",
        default=0.5,
    )
    assistant_max_pending_chunks: int = _doc(
        "Reply text chunks waiting for synthesis (more coalesce into the newest).", default=16
    )
    assistant_first_chunk_words: int = _doc(
        "A reply's first TTS chunk ends after this many words (or at its first clause or "
        "sentence end, if sooner), so that its speech starts before the sentence is written "
        "(0: whole sentences from the first; docs/assistant.md).",
        default=3,
    )
    assistant_max_out_of_band_replies: int = _doc(
        "Out-of-band responses (the Realtime dialect's response.create with conversation "
        "none: beside the conversation, in text) one session runs at once; more are refused "
        "(overloaded).",
        default=2,
    )
    assistant_max_tools_items: int = _doc(
        "Tools (functions) a session config may declare (needs llm_runtime=providers).",
        default=32,
    )
    assistant_max_tools_bytes: int = _doc(
        "Largest JSON of a session's declared tools.", default=32_768
    )
    assistant_tool_timeout_s: float = _doc(
        "How long a reply waits for the client's function_call.output of a tool call; then "
        "the reply ends failed.",
        default=30.0,
    )
    assistant_max_tool_calls_items: int = _doc(
        "Tool calls one reply may make (over all its rounds); one more fails the reply.",
        default=8,
    )
    assistant_vision_interval_s: float = _doc(
        "The vision lane's rate cap: one look per this interval on average (a frame is looked "
        "at when it arrives if a look is left, else the next frame once one is earned); 0: "
        "looks only at a turn's end (when the server runs a vision engine).",
        default=1.0,
    )
    assistant_vision_max_age_s: float = _doc(
        "A vision result older than this is not given to the LLM as context.", default=5.0
    )

    # -- persistence (docs/persistence.md) ------------------------------------------------------
    database_url: str | None = _doc(
        "Database: postgresql://USER@HOST:PORT/DB (through asyncpg) or sqlite:///PATH. Unset: "
        "the SQLite file data_dir/tidegate.db, in WAL mode.",
        default=None,
    )
    db_migrate_on_start: bool = _doc(
        "Bring the schema up to date (alembic upgrade head) before the first write.", default=True
    )
    db_queue_max_records: int = _doc(
        "Records queued for the writer task. Full: a new record is refused and counted "
        "(policy reject); the media path never waits.",
        default=10_000,
    )
    db_batch_max_records: int = _doc("Most records committed in one transaction.", default=500)
    db_timeout_s: float = _doc(
        "Longest connect or statement; past it the database counts as unavailable and "
        "records wait in the journal.",
        default=5.0,
    )
    db_retry_s: float = _doc(
        "How often an unavailable database is tried again (replaying the journal).", default=1.0
    )
    db_journal_fsync: bool = _doc(
        "fsync the journal after each batch, so records survive power loss, not only a crash.",
        default=True,
    )
    db_journal_compact_bytes: int = _doc(
        "Once every journaled record is committed, a journal this large is truncated.",
        default=16_777_216,
    )
    sensor_batch_max_readings: int = _doc(
        "Sensor readings of one channel kept as one record (sensor_batches row).", default=256
    )
    sensor_batch_max_s: float = _doc(
        "A sensor batch older than this is written with the next reading.", default=5.0
    )
    sensor_max_channels: int = _doc(
        "Sensor channels one session may publish (more are refused, rate_limited).", default=64
    )
    sensor_rate_readings_per_s: float = _doc(
        "input.sensor readings per second one session may send (0: no limit); more are "
        "refused (rate_limited, with a retry hint).",
        default=200.0,
    )
    sensor_rate_burst_readings: int = _doc(
        "input.sensor readings one session may send in a burst.", default=400
    )
    sensor_max_subscriptions: int = _doc(
        "sensor.subscribe subscriptions one session may hold at once.", default=8
    )
    sensor_subscriber_backlog_messages: int = _doc(
        "Events queued for a subscriber beyond which its sensor readings wait in the "
        "subscription, latest-wins per channel (sensor.reading's dropped counts them).",
        default=64,
    )
    api_page_max_items: int = _doc("Largest page the HTTP API returns.", default=200)
    http_max_body_bytes: int = _doc(
        "Largest HTTP request body (chat completions, SDP offers): a larger Content-Length is "
        "refused (413) before the body is read, a streamed body as soon as it passes this.",
        default=1_048_576,
    )

    # -- rate limits (per token subject: tenant + sub) ------------------------------------------
    rate_sessions_per_s: float = _doc(
        "New sessions per second one subject may open (0: no limit).", default=1.0
    )
    rate_burst_sessions: int = _doc("New sessions one subject may open at once.", default=10)
    rate_messages_per_s: float = _doc(
        "Control messages per second one subject may send, uploads included (0: no limit).",
        default=500.0,
    )
    rate_burst_messages: int = _doc(
        "Control messages one subject may send in a burst.", default=1_000
    )
    rate_requests_per_s: float = _doc(
        "HTTP API requests per second one subject may make (0: no limit).", default=20.0
    )
    rate_burst_requests: int = _doc("HTTP API requests one subject may make at once.", default=40)
    max_completions_per_subject: int = _doc(
        "Chat completions one subject may have generating at once on one node; one more is "
        "refused (429, rate_limited).",
        default=4,
    )

    # -- cluster coordination (docs/cluster.md) ------------------------------------------------
    redis_url: str | None = _doc(
        "Redis that the nodes of one deployment share (redis://HOST:PORT/DB): rate limits, "
        "session quotas, the session directory, result caches and sensor fan-out span the "
        "nodes. Unset: everything stays in this process (one node needs no Redis).",
        default=None,
    )
    redis_key_prefix: str = _doc(
        "Prefix of every Redis key and channel (deployments sharing one Redis differ in it).",
        default="tidegate:",
    )
    redis_timeout_s: float = _doc(
        "Longest Redis connect or command; past it Redis counts as down and this node works "
        "locally (logged and counted) until it answers again.",
        default=0.5,
    )
    redis_retry_s: float = _doc("How often a Redis that is down is tried again.", default=1.0)
    node_id: str | None = _doc(
        "This node's id in the session directory. Unset: route_id, else the record "
        "writer's (random) node id.",
        default=None,
    )
    node_url: str | None = _doc(
        "Where this node is reached (http://HOST:PORT), published in the session directory so "
        "that a request that reached the wrong node can be sent on.",
        default=None,
    )
    cluster_heartbeat_s: float = _doc(
        "How often a node refreshes its directory entries (node, sessions, quotas).",
        default=2.0,
    )
    cluster_node_ttl_s: float = _doc(
        "A node (and its sessions) not heard from for this long is dropped from the directory.",
        default=10.0,
    )
    cluster_max_sessions: int | None = _doc(
        "Sessions the whole cluster may hold (counted in the directory). Unset: only each "
        "node's max_sessions applies.",
        default=None,
    )
    cluster_sensor_backlog_readings: int = _doc(
        "Sensor readings waiting to be published to Redis; more drop the oldest (counted).",
        default=1024,
    )
    result_caches: bool = _doc(
        "Cache TTS audio of repeated text and greedy (temperature 0) LLM completions.",
        default=True,
    )
    cache_tts_max_bytes: int = _doc(
        "In-process TTS audio cache (least recently used entries dropped).", default=33_554_432
    )
    cache_llm_max_bytes: int = _doc(
        "In-process LLM completion cache (least recently used entries dropped).",
        default=4_194_304,
    )
    cache_item_max_bytes: int = _doc(
        "Largest entry either cache keeps (longer audio or text is not cached).",
        default=2_097_152,
    )
    cache_ttl_s: float = _doc(
        "Lifetime of a shared cache entry in Redis (also bounds memory under maxmemory).",
        default=3600.0,
    )

    @property
    def key_path(self) -> Path:
        return self.data_dir / "jwt.key"

    @classmethod
    def flat(cls) -> dict[str, Flat]:
        """Every setting by its public name (``TIDEGATE_<NAME>``, the file's keys), in the
        order ``tidegate config`` lists them: the engine kinds' configs flattened as
        ``<kind>_<field>``."""
        if _FLAT:
            return _FLAT
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name != "engine_configs":
                _FLAT[f.name] = Flat(None, f.name, hints[f.name], f)
                continue
            for row in KINDS:
                kind_hints = typing.get_type_hints(row.config)
                for g in dataclasses.fields(row.config):
                    _FLAT[f"{row.name}_{g.name}"] = Flat(row, g.name, kind_hints[g.name], g)
        return _FLAT

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then the TOML file named by TIDEGATE_CONFIG, then the environment,
        then ``overrides`` (e.g. command-line flags). Raises ConfigError naming the culprit."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        flat = cls.flat()
        config_path = overrides.get("config") or env.get(ENV_PREFIX + "CONFIG")
        if config_path:
            path = Path(config_path)
            try:
                with path.open("rb") as fh:
                    data = tomllib.load(fh)
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise ConfigError(f"cannot read config file {path}: {e}") from None
            for key, raw in _flatten_tables(data):
                if key not in flat:
                    raise ConfigError(f"{path}: unknown setting {key!r}")
                values[key] = _convert(key, raw, flat[key].hint)
            values["config"] = path
        for name, item in flat.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is not None and (raw != "" or name in EMPTY_MEANS_NONE):
                values[name] = _convert(ENV_PREFIX + name.upper(), raw, item.hint)
        for name, raw in overrides.items():
            if raw is None:
                continue
            if name not in flat:
                raise ConfigError(f"unknown setting {name!r}")
            values[name] = _convert(name, raw, flat[name].hint)
        settings = cls.build(values)
        settings.validate()
        return settings

    @classmethod
    def build(cls, values: Mapping[str, Any], base: Settings | None = None) -> Settings:
        """Settings from values by public name (``vad_threshold``), over ``base`` or the
        defaults; not validated. ConfigError for an unknown name."""
        flat = cls.flat()
        top: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            item = flat.get(name)
            if item is None:
                raise ConfigError(f"unknown setting {name!r}")
            if item.kind is None:
                top[name] = value
            else:
                nested.setdefault(item.kind.name, {})[item.attr] = value
        old = base.engine_configs if base is not None else EngineConfigs()
        if nested:
            by_name = dict(old.by_name)
            for kind, changes in nested.items():
                by_name[kind] = dataclasses.replace(by_name[kind], **changes)  # type: ignore[type-var]
            top["engine_configs"] = EngineConfigs.of(by_name)
        if base is None:
            return cls(**top)
        return dataclasses.replace(base, **top)

    def replace(self, **values: Any) -> Settings:
        """These settings with ``values`` (by public name, as ``Settings.load`` takes them)
        changed; not validated."""
        return Settings.build(values, self)

    def engine(self, kind: EngineKind[C, Any]) -> C:
        """The config of an engine kind: ``settings.engine(ASR).deadline_s``."""
        return self.engine_configs[kind]

    def value(self, name: str) -> Any:
        """A setting by its public name (``vad_threshold`` is ``engine(VAD).threshold``)."""
        item = self.flat()[name]
        owner = self if item.kind is None else self.engine_configs.by_name[item.kind.name]
        return getattr(owner, item.attr)

    def engine_defaults(self) -> EngineDefaults:
        """What every engine shares (engine_* and triton_* settings); ValueError naming a bad
        triton_urls entry."""
        urls: dict[str, str] = {}
        for item in self.triton_urls:
            engine, sep, url = item.partition("=")
            if not sep or engine not in ENGINE_KINDS or not url:
                raise ValueError(
                    f"triton_urls: {item!r} is not ENGINE=HOST:PORT with ENGINE one of "
                    f"{', '.join(ENGINE_KINDS)}"
                )
            urls[engine] = url
        return EngineDefaults(
            runtime=self.engine_runtime,
            providers=self.engine_providers,
            threads=self.engine_threads,
            trt_cache_dir=self.engine_trt_cache_dir or self.data_dir / "trt-cache",
            triton_url=self.triton_url,
            triton_urls=tuple(urls.items()),
            triton_timeout_s=self.triton_timeout_s,
            triton_policy=self.triton_policy,
            triton_retry_s=self.triton_retry_s,
            max_sessions=self.engine_max_sessions,
        )

    def validate(self) -> None:
        if self.route_id and not ROUTE_ID_RE.fullmatch(self.route_id):
            raise ConfigError(f"route_id must be 1-16 of a-z and 0-9, got {self.route_id!r}")
        for name in self.flat():
            v = self.value(name)
            if name.endswith(
                (
                    "_bytes",
                    "_messages",
                    "_sessions",
                    "_records",
                    "_readings",
                    "_items",
                    "_requests",
                    "_tokens",
                )
            ) or name.startswith("max_"):
                least = 0 if name in ZERO_IS_OFF else 1
                if isinstance(v, int) and v < least:
                    raise ConfigError(f"{name} must be at least {least}, got {v}")
            if name.endswith("_s") and isinstance(v, float) and not 0 <= v < math.inf:
                # NaN too: every comparison with it is false (a timer never due, a round()
                # that raises at the first session)
                raise ConfigError(f"{name} must be a finite number of seconds >= 0, got {v}")
            if name.endswith("_words") and isinstance(v, int) and v < 0:
                raise ConfigError(f"{name} cannot be negative, got {v}")
        if self.listen_backlog_connections < 1:
            raise ConfigError(
                "listen_backlog_connections must be at least 1, got "
                f"{self.listen_backlog_connections}"
            )
        if self.fd_reserve_files < 0:
            raise ConfigError(f"fd_reserve_files cannot be negative, got {self.fd_reserve_files}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        if self.dev_login not in ("auto", "on", "off"):
            raise ConfigError(f"dev_login must be auto, on or off, got {self.dev_login!r}")
        if self.audio_echo_cancellation not in ("auto", "on", "off"):
            raise ConfigError(
                "audio_echo_cancellation must be auto, on or off, got "
                f"{self.audio_echo_cancellation!r}"
            )
        if self.turn_policy not in ("semantic", "silence"):
            raise ConfigError(f"turn_policy must be semantic or silence, got {self.turn_policy!r}")
        if self.interrupt_backchannels not in BACKCHANNEL_POLICIES:
            raise ConfigError(
                "interrupt_backchannels must be ignore or interrupt, got "
                f"{self.interrupt_backchannels!r}"
            )
        if not self.interrupt_echo_likeness > 0:  # NaN too: it would take every sound for echo
            raise ConfigError(
                "interrupt_echo_likeness must be positive (above 1: off), got "
                f"{self.interrupt_echo_likeness}"
            )
        if self.turn_idle_max_prompts < 1:
            raise ConfigError(
                f"turn_idle_max_prompts must be at least 1, got {self.turn_idle_max_prompts}"
            )
        if not 1 <= self.interrupt_min_words <= MAX_MIN_WORDS:
            raise ConfigError(
                f"interrupt_min_words must be 1..{MAX_MIN_WORDS}, got {self.interrupt_min_words}"
            )
        self._validate_media()
        self._validate_engines()
        for name in ("jwks_cache_min_s", "jwks_refresh_min_s", "jwks_timeout_s"):
            if getattr(self, name) <= 0:  # zero would fetch an issuer's keys in a busy loop
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.jwks_cache_max_s < self.jwks_cache_min_s:
            raise ConfigError(
                f"jwks_cache_max_s ({self.jwks_cache_max_s:g}) must be at least "
                f"jwks_cache_min_s ({self.jwks_cache_min_s:g})"
            )
        if self.web_token_url and not self.web_token_url.startswith(("https://", "http://", "/")):
            raise ConfigError(
                f"web_token_url must be an http(s) URL or a path, got {self.web_token_url!r}"
            )
        if self.cluster_node_ttl_s <= self.cluster_heartbeat_s:
            raise ConfigError(
                f"cluster_node_ttl_s ({self.cluster_node_ttl_s:g}) must exceed "
                f"cluster_heartbeat_s ({self.cluster_heartbeat_s:g}), or live nodes expire"
            )

    def _validate_engines(self) -> None:
        try:
            engine_specs(self.engines, self.engine_configs, self.engine_defaults())
        except ValueError as e:
            raise ConfigError(f"engine settings: {e}") from None

    def _validate_media(self) -> None:
        try:
            IcePolicy.from_settings(self.ice_hosts, self.ice_ports, self.ice_servers)
        except IceConfigError as e:
            raise ConfigError(e.message) from None
        if self.turn_urls and not self.turn_secret:
            raise ConfigError("turn_urls needs turn_secret (coturn's static-auth-secret)")
        if not 0 <= self.audio_out_complexity <= 10:
            raise ConfigError(
                f"audio_out_complexity must be 0..10, got {self.audio_out_complexity}"
            )
        if not 0 <= self.audio_out_lead_ms <= 100:
            raise ConfigError(f"audio_out_lead_ms must be 0..100, got {self.audio_out_lead_ms}")
        if self.audio_max_ahead_s < 0:
            raise ConfigError(f"audio_max_ahead_s cannot be negative, got {self.audio_max_ahead_s}")
        if self.video_decoder_max_frames < 1:
            raise ConfigError(
                f"video_decoder_max_frames must be positive, got {self.video_decoder_max_frames}"
            )
        if self.realtime_call_max_sidebands < 0:
            raise ConfigError(
                "realtime_call_max_sidebands cannot be negative (0: none), got "
                f"{self.realtime_call_max_sidebands}"
            )
        for name in (
            "data_channel_max_inbound_messages",
            "data_channel_max_buffered_bytes",
            "realtime_sideband_max_pending_events",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.realtime_call_connect_s <= 0:
            raise ConfigError(
                f"realtime_call_connect_s must be positive, got {self.realtime_call_connect_s}"
            )
        if self.frame_max_pixels < 1:
            raise ConfigError(f"frame_max_pixels must be positive, got {self.frame_max_pixels}")
        if not 1 <= self.media_worker_threads <= self.media_max_pending_items:
            raise ConfigError(
                "media_worker_threads must be 1 or more and at most media_max_pending_items, got "
                f"{self.media_worker_threads} and {self.media_max_pending_items}"
            )
        for name in ("audio_buffer_s", "audio_out_buffer_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.jitter_target_ms < 0:
            raise ConfigError(f"jitter_target_ms cannot be negative, got {self.jitter_target_ms}")

    def describe(self) -> list[tuple[str, str, str]]:
        """(variable, default, doc) for every setting."""
        rows = []
        for name, item in self.flat().items():
            default = "(per user data dir)" if name == "data_dir" else repr(item.field.default)
            rows.append((ENV_PREFIX + name.upper(), default, item.field.metadata.get("doc", "")))
        return rows


_FLAT: dict[str, Flat] = {}


def _flatten_tables(data: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """A config file's keys by public name: ``vad_threshold = 0.6``, or a table per engine
    kind (``[vad]`` ``threshold = 0.6``)."""
    out: list[tuple[str, Any]] = []
    for key, raw in data.items():
        if key in ENGINE_KINDS and isinstance(raw, dict):
            out.extend((f"{key}_{sub}", value) for sub, value in raw.items())
        else:
            out.append((key, raw))
    return out


def _convert(name: str, raw: Any, hint: Any) -> Any:
    """Convert a raw value (a string from the environment, or a TOML value) to ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        if isinstance(raw, str) and raw.lower() in ("none", "null"):
            return None
        return _convert(name, raw, inner[0])
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if hint is int:
            if isinstance(raw, bool):
                raise ValueError("expected an integer")
            return int(raw)
        if hint is float:
            if isinstance(raw, bool):
                raise ValueError("expected a number")
            return float(raw)
        if hint is str:
            return str(raw)
        if hint is Path:
            return Path(str(raw)).expanduser()
        if origin is tuple:
            items = raw if isinstance(raw, list) else [s for s in str(raw).split(",")]
            return tuple(str(s).strip() for s in items if str(s).strip())
    except ValueError as e:
        raise ConfigError(f"{name}: cannot use {raw!r}: {e}") from None
    raise ConfigError(f"{name}: unsupported setting type {hint}")
