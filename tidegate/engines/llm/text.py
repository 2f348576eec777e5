"""Text in and out of the LLM: the chat template (the model's own, from its GGUF metadata,
rendered in a sandboxed Jinja environment), the tokenizer, UTF-8-safe incremental
detokenization, and stop-sequence matching over streamed text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import RequestError

ROLES = ("system", "user", "assistant")
REPLACEMENT_CHAR = "\ufffd"


class ChatTokenizer:
    """The model's tokenizer plus its chat template."""

    def __init__(self, tokenizer_json: Path, chat_template: str, *, eos_id: int) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(tokenizer_json))
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string(chat_template)
        self.eos_id = eos_id
        end = self._tok.token_to_id("<|im_end|>")
        self.stop_ids = frozenset({eos_id} | ({end} if end is not None else set()))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def render(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The prompt text of a conversation, ending with the assistant's turn opened."""
        if not messages:
            raise RequestError("llm: a chat needs at least one message")
        clean = []
        for i, m in enumerate(messages):
            role, content = m.get("role"), m.get("content")
            if role not in ROLES:
                raise RequestError(f"llm: messages[{i}].role must be one of {ROLES}, got {role!r}")
            if not isinstance(content, str):
                raise RequestError(f"llm: messages[{i}].content must be a string")
            clean.append({"role": role, "content": content})
        return str(self._template.render(messages=clean, add_generation_prompt=True))

    def encode(self, text: str) -> list[int]:
        # encode_batch releases the GIL while it works (encode does not): called in a worker
        # thread, a long prompt leaves the event loop running.
        return list(self._tok.encode_batch([text], add_special_tokens=False)[0].ids)

    def max_token_chars(self) -> int:
        """The most characters one token decodes to: a text of N characters has at least
        N / this many tokens."""
        ids = range(self.vocab_size)
        return max(1, *(len(self._tok.decode([i], skip_special_tokens=False)) for i in ids))

    def encode_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        return self.encode(self.render(messages))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=False))


class Detokenizer:
    """Turns a stream of token ids into a stream of text, never splitting a UTF-8 character:
    text is released only once the decoded tail is no longer an incomplete byte sequence
    (which the byte-level decoder shows as U+FFFD). Decodes a short window, not the whole
    reply, so each token costs O(1)."""

    def __init__(self, tokenizer: ChatTokenizer) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # ids up to here have been released as text

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix = self._tok.decode(self._ids[self._prefix : self._read])
        full = self._tok.decode(self._ids[self._prefix :])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT_CHAR):
            self._prefix, self._read = self._read, len(self._ids)
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """What is left at the end (an incomplete character shows as U+FFFD)."""
        prefix = self._tok.decode(self._ids[self._prefix : self._read])
        full = self._tok.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return full[len(prefix) :]


class StopMatcher:
    """Holds back streamed text that may be the start of a stop sequence.

    ``push`` returns the text that is safe to release and whether a stop sequence ended the
    reply (the stop sequence itself is never released)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def push(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        buf = self._held + text
        cut = min((i for i in (buf.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return buf[:cut], True
        keep = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        out, self._held = self._held, ""
        return out
