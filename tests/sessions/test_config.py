"""The session config check: ``instructions`` (the assistant's system prompt per session),
``interrupt`` (what speech over a reply does), ``language`` and ``voices``."""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import Any

import pytest

from tidegate.pipelines.errors import InvalidConfigError, RefusalError, UnsupportedError
from tidegate.sessions.config import MAX_INSTRUCTIONS_CHARS, resolve_config


def test_instructions_are_the_assistants_only() -> None:
    with pytest.raises(InvalidConfigError, match="only the assistant mode"):
        resolve_config({"mode": "loopback", "instructions": "Be brief."}, "assistant")


@pytest.mark.parametrize(
    ("value", "words"),
    [(42, "expected a string"), ("x" * (MAX_INSTRUCTIONS_CHARS + 1), "at most")],
)
def test_bad_instructions_are_refused(value: Any, words: str) -> None:
    """A string within the bound is kept; anything else is refused naming what is wrong."""
    # the assistant's engines, as resolve_config sees running ones
    engines = SimpleNamespace(schedulers={"vad": None, "asr": None}, batchers={"llm": None})
    engines.batchers["tts"] = None
    with pytest.raises(InvalidConfigError, match=words):
        resolve_config({"mode": "assistant", "instructions": value}, "assistant", engines)  # type: ignore[arg-type]
    ok = resolve_config({"mode": "assistant", "instructions": "Be brief."}, "assistant", engines)  # type: ignore[arg-type]
    assert ok["instructions"] == "Be brief."


def _assistant_engines() -> Any:
    engines = SimpleNamespace(
        schedulers={"vad": None, "asr": None},
        batchers={"llm": None, "tts": None},
        specs=(SimpleNamespace(name="tts", model="piper-joe"),),
    )
    return engines


def test_interrupt_is_checked_and_kept() -> None:
    """``interrupt`` (assistant only): backchannels ignore|interrupt, min_words an integer
    1..20, confirm_s a number 0..5; kept as given."""
    config = {"backchannels": "interrupt", "min_words": 2, "confirm_s": 0.5}
    ok = resolve_config(
        {"mode": "assistant", "interrupt": config}, "assistant", _assistant_engines()
    )
    assert ok["interrupt"] == config
    zero = resolve_config(
        {"mode": "assistant", "interrupt": {"confirm_s": 0}}, "assistant", _assistant_engines()
    )
    assert zero["interrupt"] == {"confirm_s": 0}


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"mode": "assistant", "interrupt": {"backchannels": "sometimes"}}, "backchannels"),
        ({"mode": "assistant", "interrupt": {"min_words": 0}}, "an integer from 1 to 20"),
        ({"mode": "assistant", "interrupt": {"min_words": 2.5}}, "min_words"),
        ({"mode": "assistant", "interrupt": {"min_words": True}}, "min_words"),
        ({"mode": "assistant", "interrupt": {"confirm_s": 9}}, "a number from 0 to 5"),
        ({"mode": "assistant", "interrupt": {"confirm_s": "1"}}, "confirm_s"),
        ({"mode": "assistant", "interrupt": {"patience": 1}}, "unknown key 'patience'"),
        ({"mode": "assistant", "interrupt": "ignore"}, "expected a map"),
        ({"mode": "transcribe", "interrupt": {"min_words": 2}}, "only mode assistant"),
    ],
)
def test_bad_interrupt_config_is_refused(config: dict[str, Any], words: str) -> None:
    """A bad ``interrupt`` section is refused naming the key and what was expected."""
    with pytest.raises(InvalidConfigError, match=words):
        resolve_config(config, "assistant", _assistant_engines())


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"turn": {"policy": "psychic"}}, "turn.policy: expected one of"),
        ({"turn": {"end_of_turn_s": 11}}, "turn.end_of_turn_s: expected a number from 0 to 10"),
        ({"turn": {"max_wait_s": True}}, "turn.max_wait_s: expected a number from 0 to 30"),
        ({"turn": {"respond": 0}}, "turn.respond: expected one of"),
        ({"output_modalities": ["audio", "text"]}, "output_modalities: expected one of"),
        ({"max_output_tokens": 0}, "max_output_tokens: expected an integer"),
        ({"max_output_tokens": True}, "max_output_tokens: expected an integer"),
        ({"voice": "alloy"}, "'alloy' is not a voice of this server; it speaks with"),
    ],
)
def test_reply_and_turn_keys_are_checked(config: dict[str, Any], words: str) -> None:
    """The keys the Realtime dialect maps to (turn policy manual and its waits, output
    modalities, max output tokens, voice) are checked, each refusal naming the key."""
    with pytest.raises(RefusalError, match=words):
        resolve_config({"mode": "assistant", **config}, "assistant", _assistant_engines())


def test_reply_and_turn_keys_within_bounds_are_kept() -> None:
    """Valid values are kept as given; the server's TTS model is a voice, as is default."""
    config = {
        "mode": "assistant",
        "turn": {"policy": "manual", "end_of_turn_s": 0.3, "max_wait_s": 4, "interrupt": False},
        "output_modalities": ["text"],
        "max_output_tokens": 64,
        "voice": "piper-joe",
    }
    assert resolve_config(dict(config), "assistant", _assistant_engines()) == config
    with pytest.raises(RefusalError, match="only the assistant mode replies"):
        resolve_config({"mode": "loopback", "voice": "default"}, "assistant")


@functools.cache
def _tokenizer() -> Any:
    """Whisper base's real tokenizer (its 99 languages)."""
    from tests.support import prepare_models
    from tidegate.engines import models
    from tidegate.engines.asr.tokenizer import WhisperTokenizer

    folder = models.model_dir(prepare_models("whisper-base"), "whisper-base")
    return WhisperTokenizer(folder / "tokenizer.json")


def _asr_engines(languages: tuple[str, ...] = ()) -> Any:
    """The running-engines view resolve_config reads: Whisper base's tokenizer and the
    deployment's ``asr_languages``; the assistant's other engines."""
    from tidegate.engines.tts.bank import VoiceBank

    engine = SimpleNamespace(tokenizer=_tokenizer(), languages=languages)
    return SimpleNamespace(
        schedulers={"vad": None, "asr": SimpleNamespace(engine=engine), "tts": None},
        batchers={"llm": None},
        voices=VoiceBank(None, None, espeak=True),
    )


def test_language_is_a_code_the_asr_serves_or_auto() -> None:
    """``language``: auto or a code of the model (lower-cased), within ``asr_languages`` when
    set; other values, and modes that hear no speech, are refused naming what is accepted."""
    engines = _asr_engines()
    ok = resolve_config({"mode": "transcribe", "language": "DE"}, "assistant", engines)
    assert ok["language"] == "de"
    assert resolve_config({"language": "auto"}, "assistant", engines)["language"] == "auto"
    with pytest.raises(UnsupportedError, match="not a language this server"):
        resolve_config({"mode": "transcribe", "language": "xx"}, "assistant", engines)
    with pytest.raises(InvalidConfigError, match="expected a language code"):
        resolve_config({"mode": "transcribe", "language": 7}, "assistant", engines)
    with pytest.raises(InvalidConfigError, match="recognises speech"):
        resolve_config({"mode": "loopback", "language": "de"}, "assistant", engines)
    served = _asr_engines(("en", "de"))
    with pytest.raises(UnsupportedError, match="auto, de, en"):
        resolve_config({"mode": "transcribe", "language": "fr"}, "assistant", served)


def test_voices_name_a_voice_of_the_language_or_none() -> None:
    """``voices`` maps a language to one of its voices here, or ``none`` (text only)."""
    engines = _asr_engines()
    ok = resolve_config({"voices": {"DE": "de", "fr": "none"}}, "assistant", engines)
    assert ok["voices"] == {"de": "de", "fr": "none"}
    for bad, words in [
        ({"de": "fr-fr"}, r"no voice 'fr-fr' for this language here; expected one of \['de'"),
        ({"german": "de"}, "not a language code"),
        ({"de": 3}, "expected a voice name"),
        (["de"], "expected a map"),
    ]:
        with pytest.raises(InvalidConfigError, match=words):
            resolve_config({"voices": bad}, "assistant", engines)
    with pytest.raises(InvalidConfigError, match="only the assistant mode speaks"):
        resolve_config({"mode": "transcribe", "voices": {"de": "de"}}, "assistant", engines)
