"""Whisper's tokenizer from the model package's ``tokenizer.json`` (the ``tokenizers``
package: byte-level BPE), with the special token ids the decoder needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingPackageError, ModelError


@dataclass(frozen=True, slots=True)
class SpecialTokens:
    eot: int
    sot: int
    no_timestamps: int
    no_speech: int
    first_special: int  # every id from here on is special (no text)


class WhisperTokenizer:
    """Text <-> token ids for Whisper (English-only vocabulary here)."""

    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise MissingPackageError("tokenizers", "pip install tokenizers") from None
        self._tok = Tokenizer.from_file(str(path))

        def tid(text: str) -> int:
            i = self._tok.token_to_id(text)
            if i is None:
                raise ModelError(f"{path}: no token {text!r}")
            return int(i)

        no_speech = self._tok.token_to_id("<|nospeech|>")
        self.special = SpecialTokens(
            eot=tid("<|endoftext|>"),
            sot=tid("<|startoftranscript|>"),
            no_timestamps=tid("<|notimestamps|>"),
            no_speech=int(no_speech) if no_speech is not None else tid("<|nocaptions|>"),
            first_special=tid("<|endoftext|>") + 1,
        )
        self.vocab_size = int(self._tok.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [i for i in ids if i < self.special.eot]
        return str(self._tok.decode(ids, skip_special_tokens=True))
