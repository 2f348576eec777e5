"""Streaming speech recognition: Whisper tiny.en converted to ONNX (see docs/asr.md)."""
