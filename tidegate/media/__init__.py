"""WebRTC through aiortc: peer connections, ICE/TURN configuration, track readers and writers,
jitter buffering, frame conversion. Imports only ``tidegate.protocol``. See docs/media.md."""

from .audio_in import AudioChunk, AudioInbox
from .audio_out import AudioOutTrack
from .errors import (
    BadSdpError,
    CodecError,
    IceConfigError,
    LocalMediaError,
    MediaError,
    MediaStateError,
    RemoteMediaError,
)
from .ice import HostAddress, IcePolicy, apply_ice_policy, ice_server_records, turn_credentials
from .jitter import JitterBuffer, Release, ReleaseKind
from .peer import LocalCandidate, MediaConfig, MediaPeer, live_peers
from .video_in import VideoFrame, VideoInbox

__all__ = [
    "AudioChunk",
    "AudioInbox",
    "AudioOutTrack",
    "BadSdpError",
    "CodecError",
    "HostAddress",
    "IceConfigError",
    "IcePolicy",
    "JitterBuffer",
    "LocalCandidate",
    "LocalMediaError",
    "MediaConfig",
    "MediaError",
    "MediaPeer",
    "MediaStateError",
    "Release",
    "ReleaseKind",
    "RemoteMediaError",
    "VideoFrame",
    "VideoInbox",
    "apply_ice_policy",
    "ice_server_records",
    "live_peers",
    "turn_credentials",
]
