"""WebRTC through aiortc: peer connections, ICE/TURN configuration, track readers and writers,
resampling, jitter buffering, frame conversion. Imports only ``tidegate.protocol``."""
