"""LLM token streaming: a llama decoder converted from GGUF to ONNX at preparation time
(``convert``), its padded KV cache (``model``), chat template and streaming detokenizer
(``text``), sampling (``sampling``) and continuous batching across sessions (``batcher``); or
OpenAI-compatible servers with failover (``providers``, on ``runtime/openai.py``), with tool
calling (``tools``)."""

from .batcher import Generation, LlmBatcher, LlmSettings
from .providers import ProviderPool
from .sampling import SamplingParams

#: The LLM engine: the local model or the providers; both have ``generate`` giving a
#: :class:`Generation`, ``close_session``, ``queue_load``, ``stats``, ``start``, ``close``.
LlmEngine = LlmBatcher | ProviderPool

__all__ = ["Generation", "LlmBatcher", "LlmEngine", "LlmSettings", "ProviderPool", "SamplingParams"]
