"""The prepared decoder graph (built by :mod:`tidegate.tools.convert_llm`) and the padded KV
cache that lets sequences of different lengths share one step.

A :class:`KvCache` holds one row per sequence: per layer, keys and values
[rows, kv_heads, slots, head_dim], and ``valid`` [rows, slots] saying which slots hold a real
token of that row. Rows of different lengths are left-padded; the graph's
``attention_bias`` masks the padding and its ``position_ids`` carry each row's own
positions, so padding never changes a row's result. Slots no row uses are trimmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..runtime import Array, ModelRunner, RuntimeOptions, open_model
from .config import MASK_VALUE, LlamaConfig


@dataclass(slots=True)
class KvCache:
    """Keys, values (one array each per layer) and the valid-slot mask of some rows."""

    keys: list[Array]
    values: list[Array]
    valid: Array  # bool [rows, slots]

    @classmethod
    def empty(cls, cfg: LlamaConfig, rows: int = 0) -> KvCache:
        shape = (rows, cfg.kv_heads, 0, cfg.head_dim)
        return cls(
            [np.zeros(shape, np.float32) for _ in range(cfg.layers)],
            [np.zeros(shape, np.float32) for _ in range(cfg.layers)],
            np.zeros((rows, 0), dtype=bool),
        )

    @property
    def rows(self) -> int:
        return int(self.valid.shape[0])

    @property
    def slots(self) -> int:
        return int(self.valid.shape[1])

    def padded_to(self, slots: int) -> KvCache:
        """The same rows with ``slots - self.slots`` empty slots added on the left."""
        extra = slots - self.slots
        if extra <= 0:
            return self
        pad = ((0, 0), (0, 0), (extra, 0), (0, 0))
        return KvCache(
            [np.pad(k, pad) for k in self.keys],
            [np.pad(v, pad) for v in self.values],
            np.pad(self.valid, ((0, 0), (extra, 0))),
        )

    @classmethod
    def stack(cls, caches: Sequence[KvCache]) -> KvCache:
        """Rows of several caches in one (left-padded to the longest)."""
        slots = max(c.slots for c in caches)
        padded = [c.padded_to(slots) for c in caches]
        layers = len(padded[0].keys)
        return cls(
            [np.concatenate([c.keys[n] for c in padded]) for n in range(layers)],
            [np.concatenate([c.values[n] for c in padded]) for n in range(layers)],
            np.concatenate([c.valid for c in padded]),
        )

    def select(self, rows: Sequence[int]) -> KvCache:
        """Only ``rows`` (in that order), with slots no remaining row uses trimmed."""
        idx = np.asarray(rows, dtype=np.int64)
        valid = self.valid[idx]
        used = np.flatnonzero(valid.any(axis=0))
        start = int(used[0]) if used.size else self.slots
        return KvCache(
            [k[idx, :, start:] for k in self.keys],
            [v[idx, :, start:] for v in self.values],
            valid[:, start:],
        )

    def row(self, i: int) -> KvCache:
        """Row ``i`` alone, compacted to its valid slots (a session's conversation cache)."""
        cols = np.flatnonzero(self.valid[i])
        return KvCache(
            [np.ascontiguousarray(k[i : i + 1, :, cols]) for k in self.keys],
            [np.ascontiguousarray(v[i : i + 1, :, cols]) for v in self.values],
            np.ones((1, cols.size), dtype=bool),
        )

    def truncated(self, tokens: int) -> KvCache:
        """A compact one-row cache cut to its first ``tokens`` slots."""
        return KvCache(
            [k[:, :, :tokens] for k in self.keys],
            [v[:, :, :tokens] for v in self.values],
            self.valid[:, :tokens],
        )

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in (*self.keys, *self.values))


class LlamaModel:
    """The decoder graph on a runtime: one call runs one step for some rows."""

    def __init__(self, folder: Path, runtime: RuntimeOptions) -> None:
        config = folder / "config.json"
        if not config.is_file():
            raise ModelError(f"{folder}: no config.json (prepare the model first)")
        self.config = LlamaConfig.from_json(config.read_text())
        self.folder = folder
        self._model: ModelRunner = open_model(folder / "model.onnx", runtime)
        self.provider = self._model.provider

    def close(self) -> None:
        self._model.close()

    def run(
        self,
        cache: KvCache,
        tokens: Sequence[Sequence[int]],
        positions: Sequence[Sequence[int]],
        *,
        pad_id: int,
    ) -> tuple[Array, KvCache]:
        """Feed each row its new ``tokens`` at ``positions`` after what ``cache`` holds;
        returns the logits of each row's last new token [rows, vocab] and the grown cache.
        Rows with fewer new tokens are left-padded (masked) to the longest."""
        cfg = self.config
        rows = cache.rows
        if len(tokens) != rows or len(positions) != rows:
            raise ValueError("one token list per cache row")
        n = max(len(t) for t in tokens)
        ids = np.full((rows, n), pad_id, dtype=np.int64)
        pos = np.zeros((rows, n), dtype=np.int64)
        new_valid = np.zeros((rows, n), dtype=bool)
        for r, (t, p) in enumerate(zip(tokens, positions, strict=True)):
            if not t or len(t) != len(p):
                raise ValueError("each row needs at least one token, with a position each")
            ids[r, n - len(t) :] = t
            pos[r, n - len(t) :] = p
            new_valid[r, n - len(t) :] = True
        # Query i of a row may see its valid past slots and its valid new tokens up to i.
        causal = np.tril(np.ones((n, n), dtype=bool))
        allowed_new = causal[None, :, :] & new_valid[:, None, :]
        allowed_past = np.broadcast_to(cache.valid[:, None, :], (rows, n, cache.slots))
        allowed = np.concatenate([allowed_past, allowed_new], axis=2)
        bias = np.where(allowed, np.float32(0.0), np.float32(MASK_VALUE)).astype(np.float32)
        feeds: dict[str, Array] = {"input_ids": ids, "position_ids": pos, "attention_bias": bias}
        for layer in range(cfg.layers):
            feeds[f"past_key.{layer}"] = cache.keys[layer]
            feeds[f"past_value.{layer}"] = cache.values[layer]
        out = self._model.run(feeds)
        grown = KvCache(
            [out[f"present_key.{layer}"] for layer in range(cfg.layers)],
            [out[f"present_value.{layer}"] for layer in range(cfg.layers)],
            np.concatenate([cache.valid, new_valid], axis=1),
        )
        return out["logits"], grown
