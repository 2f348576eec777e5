"""tidegate: a real-time inference streaming server."""

__version__ = "0.1.0"
