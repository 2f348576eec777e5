"""The voice bank: the voice of a reply's language (the session's choice, else the registry's;
none: text only), the running Piper voice for English, espeak-ng voices started once on first
use (concurrent callers share the start) and closed with the bank."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tidegate.bench.audio_sets import have_tools
from tidegate.engines import models
from tidegate.engines.errors import EngineError
from tidegate.engines.runtime import Array
from tidegate.engines.scheduler import Scheduler
from tidegate.engines.tts.bank import NO_VOICE, VoiceBank
from tidegate.engines.tts.piper import PiperVoice
from tidegate.engines.tts.voices import Voice

pytestmark = pytest.mark.skipif(bool(have_tools()), reason=f"missing: {have_tools()}")


def test_pick_follows_the_session_then_the_registry() -> None:
    """No Piper voice running: English and German get espeak-ng; a session's choice of
    another row of the language wins; ``none`` and an unknown language get no voice."""
    bank = VoiceBank(None, None, espeak=True)
    assert bank.pick("de") == Voice("de", "espeak-ng", "de")
    assert bank.pick("en") == Voice("en", "espeak-ng", "en-us")
    assert bank.pick("de", {"de": NO_VOICE}) is None
    assert bank.pick("xx") is None
    assert bank.pick(None) is None  # unknown language and no default voice
    assert bank.names("en") == ["en-us"]
    # a row of another language, or a Piper voice not running, is not taken
    assert bank.pick("de", {"de": "fr-fr"}) == Voice("de", "espeak-ng", "de")
    assert bank.pick("en", {"en": "piper-joe"}) == Voice("en", "espeak-ng", "en-us")


async def test_piper_for_english_and_espeak_started_once(data_dir: Path) -> None:
    """With Piper's joe running, English speaks with it; German starts its espeak-ng voice
    once for concurrent replies, speaks, and the bank closes it."""
    joe = next(f for f in models.DEFAULT_MODELS["piper-joe"].files if f.endswith(".onnx"))
    piper: Scheduler[str, Array] = Scheduler(
        PiperVoice(models.model_path(data_dir, "piper-joe", joe))
    )
    bank = VoiceBank(piper, "piper-joe")
    try:
        en = bank.pick("en")
        assert en is not None and en.name == "piper-joe"
        assert await bank.scheduler(en) is piper
        assert bank.names("en") == ["piper-joe", "en-us"]
        de = bank.pick("de")
        assert de is not None
        a, b = await asyncio.gather(bank.scheduler(de), bank.scheduler(de))
        assert a is b and a.ready and list(bank.stats()) == ["de"]
        audio = await a.submit("Guten Tag.")
        assert len(audio) > 48_000 * 0.3  # int16 at 48 kHz
        with pytest.raises(EngineError, match="not running"):
            await bank.scheduler(Voice("en", "piper", "other-voice"))
    finally:
        await bank.close()
    assert a.closed
    with pytest.raises(EngineError, match="closed"):
        await bank.scheduler(de)
