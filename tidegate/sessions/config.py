"""A session's config: the check ``session.create`` and ``session.update`` go through.

``session.create`` names the mode in its config (``{"mode": "loopback"}``); a config without
one gets ``default_mode``. The modes are the rows of :mod:`tidegate.pipelines.registry`
(public names: ``assistant``, ``transcribe``, ``loopback``, ``vision``); a mode whose engines
this server does not run is refused with ``unsupported``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidegate.engines.errors import RequestError
from tidegate.engines.llm.tools import validate_tool_choice, validate_tools
from tidegate.pipelines.config import SESSION_TURN_POLICIES
from tidegate.pipelines.echo import ECHO_CANCELLATION
from tidegate.pipelines.errors import InvalidConfigError, UnsupportedError
from tidegate.pipelines.interrupt import BACKCHANNEL_POLICIES, MAX_CONFIRM_S, MAX_MIN_WORDS
from tidegate.pipelines.registry import LANES, MODES

if TYPE_CHECKING:
    from tidegate.engines.service import EngineService

MODE_NAMES = tuple(MODES)


@dataclass(frozen=True, slots=True)
class Between:
    """A config value that is a number from ``low`` to ``high`` (``integer``: an int)."""

    low: float
    high: float
    integer: bool = False

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        return self.low <= value <= self.high

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        return f"{kind} from {self.low:g} to {self.high:g}"


Choices = tuple[Any, ...] | Between

#: ``turn``: how the user's turn ends (docs/assistant.md); the assistant mode only.
#: ``policy`` manual: no turn ends by itself, the client commits (the Realtime dialect's
#: ``input_audio_buffer.commit``); ``end_of_turn_s`` / ``max_wait_s`` override the settings
#: ``assistant_end_of_turn_s`` / ``turn_max_wait_s`` for this session; ``respond`` false: a
#: turn's end keeps the user's words for the next ``response.create`` instead of replying;
#: ``interrupt`` false: speech over a reply does not cut it; ``idle_timeout_s`` overrides
#: ``turn_idle_timeout_s`` (0: never).
TURN_KEYS: dict[str, Choices] = {
    "policy": SESSION_TURN_POLICIES,
    "end_of_turn_s": Between(0.0, 10.0),
    "max_wait_s": Between(0.0, 30.0),
    "idle_timeout_s": Between(0.0, 600.0),
    "respond": (True, False),
    "interrupt": (True, False),
}
#: ``audio``: the microphone's echo cancellation and noise suppression (docs/assistant.md).
AUDIO_KEYS: dict[str, Choices] = {
    "echo_cancellation": ECHO_CANCELLATION,
    "noise_suppression": (True, False),
}
#: ``interrupt``: what speech over a reply does (docs/assistant.md); the assistant mode only.
INTERRUPT_KEYS: dict[str, Choices] = {
    "backchannels": BACKCHANNEL_POLICIES,
    "min_words": Between(1, MAX_MIN_WORDS, integer=True),
    "confirm_s": Between(0.0, MAX_CONFIRM_S),
}
CONFIG_KEYS = frozenset(
    {
        "mode",
        "lanes",
        "tools",
        "tool_choice",
        "instructions",
        "turn",
        "audio",
        "interrupt",
        "output_modalities",
        "voice",
        "max_output_tokens",
        "language",
        "voices",
    }
)
#: ``language``: the modes that recognise speech (docs/languages.md)
LANGUAGE_MODES = ("assistant", "transcribe", "lanes")
#: at most this many rows in ``voices`` (one per language)
MAX_VOICES_ITEMS = 64
MAX_INSTRUCTIONS_CHARS = 16_384  # the assistant's system prompt given by the client
#: ``output_modalities``: the reply speaks (``["audio"]``, its text streams too) or only
#: writes (``["text"]``: no speech is synthesized)
OUTPUT_MODALITIES = (["audio"], ["text"])
MAX_OUTPUT_TOKENS = 4096  # a session's ``max_output_tokens`` (an integer, or "inf")
DEFAULT_VOICE = "default"  # the voice of the server's TTS engine
LANES_MODE = "lanes"  # the mode of a config that names its lanes
# Modes that run on engines: the engines each needs, by name (see server/engines.py).
ENGINE_MODES: dict[str, tuple[str, ...]] = {m.name: m.needs for m in MODES.values() if m.needs}


def _engines_named(needs: tuple[str, ...]) -> str:
    """("vad", "asr") -> "the VAD and ASR engines" (for a refusal)."""
    names = [n.upper() if len(n) <= 4 else n for n in needs]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"the {listed} engine{'s' if len(names) > 1 else ''}"


def resolve_config(
    config: dict[str, Any] | None,
    default_mode: str,
    engines: EngineService | None = None,
    *,
    max_tools_items: int = 32,
    max_tools_bytes: int = 32_768,
) -> dict[str, Any]:
    """Validate a session config and fill in defaults; raises a RefusalError naming the problem.
    ``engines`` are the running engines: an engine mode needs its engines among them. ``tools``
    (and ``tool_choice``) are for the assistant mode on an LLM that can call them."""
    config = dict(config or {})
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise InvalidConfigError(
            f"session config: unknown key {unknown[0]!r}; expected only {sorted(CONFIG_KEYS)}"
        )
    if "lanes" in config:
        config.setdefault("mode", LANES_MODE)
    mode = config.setdefault("mode", default_mode)
    if mode not in MODE_NAMES:
        raise InvalidConfigError(
            f"session config.mode: expected one of {list(MODE_NAMES)}, got {mode!r}"
        )
    if "turn" in config:
        _resolve_section(config, "turn", TURN_KEYS, ("assistant",))
    if "audio" in config:
        _resolve_section(config, "audio", AUDIO_KEYS, ("assistant", "transcribe"))
    if "interrupt" in config:
        _resolve_section(config, "interrupt", INTERRUPT_KEYS, ("assistant",))
    needs = _lanes_needs(config) if mode == LANES_MODE or "lanes" in config else MODES[mode].needs
    running = set(engines.schedulers) | set(engines.batchers) if engines is not None else set()
    if not set(needs) <= running:
        raise UnsupportedError(
            f"mode {mode!r} needs {_engines_named(needs)}, which this server does not "
            f"run (start it with engines {','.join(needs)}); use mode 'loopback'"
        )
    if "tools" in config or "tool_choice" in config:
        _resolve_tools(config, engines, max_tools_items, max_tools_bytes)
    if "instructions" in config:
        _check_instructions(config)
    _check_reply_keys(config, engines)
    if "language" in config and config["language"] is None:  # back to the engine's default
        del config["language"]
    if "language" in config:
        _check_language(config, engines)
    if "voices" in config:
        _check_voices(config, engines)
    return config


def _asr_languages(engines: EngineService | None) -> tuple[str, ...] | None:
    """The language codes the running ASR engine takes (its ``languages`` setting, else all
    its model knows; ``en`` for an English-only model); None when unknown (not loaded)."""
    asr = engines.schedulers.get("asr") if engines is not None else None
    engine = getattr(asr, "engine", None)
    served = getattr(engine, "languages", None)
    if served:
        return tuple(served)
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None:
        return None
    return tuple(tokenizer.languages) if tokenizer.multilingual else ("en",)


def _check_language(config: dict[str, Any], engines: EngineService | None) -> None:
    """``language``: the language the user speaks, a code the ASR takes, or ``auto`` (detected
    once per turn; docs/languages.md)."""
    value = config["language"]
    if config["mode"] not in LANGUAGE_MODES:
        raise InvalidConfigError(
            f"session config.language: only mode {', '.join(LANGUAGE_MODES)} recognises speech"
        )
    served = _asr_languages(engines)
    if not isinstance(value, str) or not value.strip():
        raise InvalidConfigError(
            "session config.language: expected a language code (ISO 639-1, e.g. 'de') or 'auto'"
        )
    code = value.strip().lower()
    if code != "auto" and served is not None and code not in served:
        shown = ", ".join(sorted(served)[:20]) + (", ..." if len(served) > 20 else "")
        asr = engines.schedulers.get("asr") if engines is not None else None
        tokenizer = getattr(getattr(asr, "engine", None), "tokenizer", None)
        why = (
            "the ASR model here is English-only"
            if tokenizer is not None and not tokenizer.multilingual
            else "the ASR model and asr_languages decide"
        )
        raise UnsupportedError(
            f"session config.language: {value!r} is not a language this server recognises "
            f"(auto, {shown}; {why})"
        )
    config["language"] = code


def _check_voices(config: dict[str, Any], engines: EngineService | None) -> None:
    """``voices``: the voice for each language (a map ``{"de": "de"}``; ``none``: reply in text
    only), among those this server speaks (docs/languages.md)."""
    from tidegate.engines.tts.bank import NO_VOICE

    value = config["voices"]
    if config["mode"] != "assistant":
        raise InvalidConfigError("session config.voices: only the assistant mode speaks")
    if not isinstance(value, dict) or len(value) > MAX_VOICES_ITEMS:
        raise InvalidConfigError(
            "session config.voices: expected a map of language code -> voice name "
            f"(at most {MAX_VOICES_ITEMS})"
        )
    bank = getattr(engines, "voices", None)
    out: dict[str, str] = {}
    for code, name in value.items():
        if not isinstance(code, str) or not (2 <= len(code) <= 3) or not code.isalpha():
            raise InvalidConfigError(
                f"session config.voices: key {code!r} is not a language code (ISO 639-1)"
            )
        if not isinstance(name, str) or not name:
            raise InvalidConfigError(
                f"session config.voices.{code}: expected a voice name or {NO_VOICE!r}"
            )
        known = bank.names(code.lower()) if bank is not None else None
        if name != NO_VOICE and known is not None and name not in known:
            raise InvalidConfigError(
                f"session config.voices.{code}: no voice {name!r} for this language here; "
                f"expected one of {[*known, NO_VOICE]}"
            )
        out[code.lower()] = name
    config["voices"] = out


def _check_reply_keys(config: dict[str, Any], engines: EngineService | None) -> None:
    """``output_modalities``, ``max_output_tokens`` and ``voice``: the assistant's replies."""
    keys = [k for k in ("output_modalities", "max_output_tokens", "voice") if k in config]
    if keys and config["mode"] != "assistant":
        raise InvalidConfigError(f"session config.{keys[0]}: only the assistant mode replies")
    if "output_modalities" in config:
        value = config["output_modalities"]
        if not isinstance(value, list) or value not in OUTPUT_MODALITIES:
            raise InvalidConfigError(
                f"session config.output_modalities: expected one of {list(OUTPUT_MODALITIES)}, "
                f"got {value!r}"
            )
        config["output_modalities"] = list(value)
    if "max_output_tokens" in config:
        value = config["max_output_tokens"]
        ok = value == "inf" or (
            type(value) is int and 1 <= value <= MAX_OUTPUT_TOKENS  # not a bool
        )
        if not ok:
            raise InvalidConfigError(
                f"session config.max_output_tokens: expected an integer from 1 to "
                f"{MAX_OUTPUT_TOKENS} or 'inf', got {value!r}"
            )
    if "voice" in config:
        voices = server_voices(engines)
        if config["voice"] not in voices:
            raise UnsupportedError(
                f"session config.voice: {config['voice']!r} is not a voice of this server; "
                f"it speaks with {voices}"
            )


def server_voices(engines: EngineService | None) -> list[str]:
    """The voices a session may name: ``default`` and the TTS model this server runs."""
    models = [x.model for x in engines.specs if x.name == "tts"] if engines is not None else []
    return [DEFAULT_VOICE, *models]


def _resolve_section(
    config: dict[str, Any], name: str, keys: dict[str, Choices], modes: tuple[str, ...]
) -> None:
    """Check a section of the config (``turn``, ``audio``, ``interrupt``) of the ``modes``
    that take it: a map of known keys, each one of its choices (of the same type: ``1`` is
    not ``true``) or in its range."""
    if config["mode"] not in modes:
        raise InvalidConfigError(f"session config.{name}: only mode {' or '.join(modes)} takes it")
    section = config[name]
    if not isinstance(section, dict):
        raise InvalidConfigError(f"session config.{name}: expected a map with {sorted(keys)}")
    for key, value in section.items():
        if key not in keys:
            raise InvalidConfigError(
                f"session config.{name}: unknown key {key!r}; expected only {sorted(keys)}"
            )
        allowed = keys[key]
        if isinstance(allowed, Between):
            if value not in allowed:
                raise InvalidConfigError(
                    f"session config.{name}.{key}: expected {allowed}, got {value!r}"
                )
        elif not any(type(value) is type(c) and value == c for c in allowed):
            raise InvalidConfigError(
                f"session config.{name}.{key}: expected one of {list(allowed)}, got {value!r}"
            )
    config[name] = dict(section)


def _check_instructions(config: dict[str, Any]) -> None:
    """``instructions``: the assistant's system prompt for this session (a string of at most
    ``MAX_INSTRUCTIONS_CHARS``; empty: the server's ``assistant_system_prompt``)."""
    value = config["instructions"]
    if config["mode"] != "assistant":
        raise InvalidConfigError("session config.instructions: only the assistant mode has them")
    if not isinstance(value, str) or len(value) > MAX_INSTRUCTIONS_CHARS:
        raise InvalidConfigError(
            f"session config.instructions: expected a string of at most "
            f"{MAX_INSTRUCTIONS_CHARS} characters"
        )


def _lanes_needs(config: dict[str, Any]) -> tuple[str, ...]:
    """Check ``lanes`` (a config that names its lanes; the mode is then ``lanes``) and return
    the engines its lanes need."""
    if config["mode"] != LANES_MODE:
        raise InvalidConfigError(
            f"session config.lanes: names the lanes of mode {LANES_MODE!r}, not of mode "
            f"{config['mode']!r}; give 'lanes' without 'mode'"
        )
    lanes = config.get("lanes")
    known = sorted(LANES)
    if not isinstance(lanes, list) or not lanes or not all(isinstance(x, str) for x in lanes):
        raise InvalidConfigError(
            f"session config.lanes: expected a non-empty list of lane names from {known}"
        )
    unknown = sorted({x for x in lanes if x not in LANES})
    if unknown:
        raise InvalidConfigError(
            f"session config.lanes: unknown lane(s) {unknown}; expected names from {known}"
        )
    if len(set(lanes)) != len(lanes):
        raise InvalidConfigError(f"session config.lanes: a lane is named twice in {lanes}")
    needs: list[str] = []
    for name in lanes:
        needs += [n for n in LANES[name].needs if n not in needs]
    return tuple(needs)


def _resolve_tools(
    config: dict[str, Any], engines: EngineService | None, max_items: int, max_bytes: int
) -> None:
    """Validate ``tools`` / ``tool_choice`` in place (normalised to the Chat Completions
    form)."""
    if config["mode"] != "assistant":
        raise InvalidConfigError("session config.tools: only the assistant mode calls tools")
    try:
        tools = validate_tools(config.get("tools", []), max_items=max_items, max_bytes=max_bytes)
        choice = validate_tool_choice(config.get("tool_choice"), tools)
    except RequestError as e:
        raise InvalidConfigError(f"session config.{e}") from None
    config["tools"] = list(tools)
    if choice is None:
        config.pop("tool_choice", None)
    else:
        config["tool_choice"] = choice
    llm = engines.batchers.get("llm") if engines is not None else None
    if tools and llm is not None and not llm.supports_tools:
        raise UnsupportedError(
            "session config.tools: the local LLM cannot call tools (it has no grammar for "
            "them); run the LLM on OpenAI-compatible providers (llm_runtime=providers)"
        )
