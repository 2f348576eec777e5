"""LLM token streaming: a llama decoder converted from GGUF to ONNX at preparation time
(``convert``), its padded KV cache (``model``), chat template and streaming detokenizer
(``text``), sampling (``sampling``) and continuous batching across sessions (``batcher``)."""

from .batcher import Generation, LlmBatcher, LlmSettings
from .sampling import SamplingParams

__all__ = ["Generation", "LlmBatcher", "LlmSettings", "SamplingParams"]
