"""What the reply lane tells the LLM about the user's language; the turn's language itself is
kept by :class:`tidegate.engines.asr.turn_language.TurnLanguage` (shared by the audio lane,
which finds it, and the reply lane, which answers in it), re-exported here."""

from __future__ import annotations

from tidegate.engines.asr.turn_language import AUTO, Heard, TurnLanguage

__all__ = ["AUTO", "LANGUAGE_NAMES", "Heard", "TurnLanguage", "language_name", "reply_hint"]

#: English names of the languages the voices registry and Whisper's common languages cover,
#: for the LLM's hint (a code not listed is named by its code)
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "de": "German",
    "es": "Spanish",
    "fr": "French",
    "it": "Italian",
    "pt": "Portuguese",
    "nl": "Dutch",
    "pl": "Polish",
    "sv": "Swedish",
    "ru": "Russian",
    "tr": "Turkish",
    "cs": "Czech",
    "da": "Danish",
    "fi": "Finnish",
    "el": "Greek",
    "hu": "Hungarian",
    "ro": "Romanian",
    "uk": "Ukrainian",
    "ja": "Japanese",
    "zh": "Chinese",
    "hi": "Hindi",
    "ar": "Arabic",
    "ko": "Korean",
    "no": "Norwegian",
    "ca": "Catalan",
    "he": "Hebrew",
    "id": "Indonesian",
    "vi": "Vietnamese",
    "th": "Thai",
}


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, f"the language with ISO 639-1 code {code!r}")


def reply_hint(code: str) -> str:
    """The system message that asks the LLM to answer in ``code``'s language."""
    name = language_name(code)
    return f"The user speaks {name}. Reply in {name}."
