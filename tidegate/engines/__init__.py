"""Inference engines and runtimes (ONNX Runtime, TensorRT), the model registry and the
cross-session batching scheduler. Imports only ``tidegate.protocol``."""
