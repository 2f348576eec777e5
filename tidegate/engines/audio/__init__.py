"""Audio processing: per-session echo cancellation (WebRTC AEC3) and noise suppression."""

from .delay import DelayEstimate, estimate_delay
from .echo import EchoCanceller

__all__ = ["DelayEstimate", "EchoCanceller", "estimate_delay"]
