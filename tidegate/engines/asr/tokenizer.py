"""Whisper's tokenizer from the model package's ``tokenizer.json`` (the ``tokenizers``
package: byte-level BPE), with the special token ids the decoder needs and the language
tokens (``<|de|>``...) of a multilingual model."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingPackageError, ModelError

#: Whisper's rule: a vocabulary this large (or larger) is multilingual; tiny.en has 51,864.
MULTILINGUAL_VOCAB = 51_865
#: what a request asks for when the model should find the language itself
AUTO = "auto"
_LANGUAGE_TOKEN = re.compile(r"<\|([a-z]{2,3}|haw|yue)\|>")


def language_tokens(
    tokenizer_json: Mapping[str, object], lang_ids: Sequence[int]
) -> dict[str, int]:
    """Language code -> token id for the ``lang_ids`` that config.json lists (in its order)."""
    added = tokenizer_json.get("added_tokens", [])
    assert isinstance(added, list)
    by_id = {int(t["id"]): str(t["content"]) for t in added}
    out: dict[str, int] = {}
    for i in lang_ids:
        m = _LANGUAGE_TOKEN.fullmatch(by_id.get(int(i), ""))
        if m:
            out[m.group(1)] = int(i)
    return out


@dataclass(frozen=True, slots=True)
class SpecialTokens:
    eot: int
    sot: int
    no_timestamps: int
    no_speech: int
    first_special: int  # every id from here on is special (no text)
    transcribe: int | None = None  # multilingual models only


class WhisperTokenizer:
    """Text <-> token ids for Whisper, English-only (tiny.en) or multilingual (base):
    ``multilingual`` says which; ``languages`` maps each language code the model knows to its
    token (empty for an English-only model, which is always ``en``)."""

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

        self.vocab_size = int(self._tok.get_vocab_size())
        self.multilingual = self.vocab_size >= MULTILINGUAL_VOCAB
        no_speech = self._tok.token_to_id("<|nospeech|>")
        self.special = SpecialTokens(
            eot=tid("<|endoftext|>"),
            sot=tid("<|startoftranscript|>"),
            no_timestamps=tid("<|notimestamps|>"),
            no_speech=int(no_speech) if no_speech is not None else tid("<|nocaptions|>"),
            first_special=tid("<|endoftext|>") + 1,
            transcribe=tid("<|transcribe|>") if self.multilingual else None,
        )
        self.languages: dict[str, int] = {}
        config = path.with_name("config.json")
        if self.multilingual:
            try:
                lang_ids = json.loads(config.read_text(encoding="utf-8"))["lang_ids"]
                tok = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, KeyError) as e:
                raise ModelError(f"{config}: no language ids ({e})") from None
            self.languages = language_tokens(tok, lang_ids)
            if "en" not in self.languages:
                raise ModelError(f"{config}: lang_ids has no <|en|> token")
        self.language_of = {i: code for code, i in self.languages.items()}

    def language_token(self, language: str) -> int:
        """The token a request's language is decoded with: the language's token, -1 for
        ``auto`` (detected from the audio), 0 on an English-only model (no language token:
        only ``en`` or ``auto``). ValueError names what was wrong and what is accepted."""
        code = language.strip().lower()
        if code == AUTO:
            return -1 if self.multilingual else 0
        if not self.multilingual:
            if code == "en":
                return 0
            raise ValueError(
                f"language {language!r}: this model is English-only; use 'en' or 'auto', or "
                "a multilingual model (whisper-base)"
            )
        if code not in self.languages:
            raise ValueError(
                f"language {language!r}: not one of the model's {len(self.languages)} language "
                "codes (ISO 639-1, e.g. 'de', 'es', 'fr') or 'auto'"
            )
        return self.languages[code]

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [i for i in ids if i < self.special.eot]
        return str(self._tok.decode(ids, skip_special_tokens=True))
