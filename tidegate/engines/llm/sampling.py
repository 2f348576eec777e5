"""Sampling settings and the sampler: greedy, temperature, nucleus (top-p)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import RequestError
from ..runtime import Array

MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1  # OpenAI's seed is an int64


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one generation picks its tokens. ``temperature`` 0 is greedy (deterministic);
    ``seed`` makes a sampled generation reproducible."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise RequestError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 <= self.top_p <= 1.0:  # 0 keeps only the likeliest token
            raise RequestError(f"top_p must be in [0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise RequestError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.seed is not None and not SEED_MIN <= self.seed <= SEED_MAX:
            raise RequestError(f"seed must be a 64-bit signed integer, got {self.seed}")
        if len(self.stop) > MAX_STOP_SEQUENCES or any(
            not isinstance(s, str) or len(s) > MAX_STOP_CHARS for s in self.stop
        ):
            raise RequestError(
                f"stop takes at most {MAX_STOP_SEQUENCES} strings of at most "
                f"{MAX_STOP_CHARS} characters"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sample(logits: Array, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token id from one row of logits."""
    if params.greedy:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / params.temperature
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[rng.choice(len(keep), p=kept)])
    return int(rng.choice(len(probs), p=probs))
