"""The decoder's architecture figures (``config.json`` next to the graph, written by
:mod:`tidegate.tools.convert_llm`) and the attention-bias mask value the graph was built for."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

MASK_VALUE = -1.0e9


@dataclass(frozen=True, slots=True)
class LlamaConfig:
    """The architecture figures a graph is built from (read from GGUF metadata)."""

    layers: int
    width: int
    ffn_width: int
    heads: int
    kv_heads: int
    vocab: int
    rope_base: float
    rms_eps: float
    context_tokens: int
    bos_id: int
    eos_id: int
    chat_template: str

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LlamaConfig:
        return cls(**json.loads(text))
