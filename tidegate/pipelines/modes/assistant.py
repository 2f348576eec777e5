"""``assistant``: audio (VAD -> ASR), turn-taking, reply (LLM -> TTS -> audio out, barge-in),
vision when the server runs a vision engine, and semantic end of turn when it runs the turn
engine (docs/assistant.md)."""

from __future__ import annotations

from collections.abc import Sequence

from tidegate.engines.registry import ASR, TTS, TURN, VAD, VISION
from tidegate.engines.service import EngineService

from ..audio import AudioLane
from ..config import LaneConfig
from ..language import TurnLanguage
from ..media import SessionMedia
from ..mode import Mode, running
from ..own_voice import MAX_EARLY_S, OwnVoice
from ..port import Lane, SessionPort
from ..reply import ReplyLane
from ..turns import TurnTaking
from ..vision import VisionLane


def build(session: SessionPort, config: LaneConfig, engines: EngineService | None) -> Mode:
    engines = running(engines)

    def lanes(media: SessionMedia) -> Sequence[Lane]:
        vision = None
        if "vision" in engines.schedulers and config.vision.interval_s > 0:
            vision = VisionLane(session, config.vision, engines.get(VISION), engines.media)
        voice = next((x.model for x in engines.specs if x.name == "tts"), "tts")
        # the user's turn's language: the audio lane finds it, the reply lane answers in it
        language = TurnLanguage(lambda: session.config.get("language"))
        turns: TurnTaking | None = None  # built next: it answers through the reply lane

        def reply_done(played: float) -> None:  # the user's silence is timed from here
            if turns is not None:
                turns.reply_ended(played)

        reply = ReplyLane(
            session,
            config.reply,
            engines.llm(),
            engines.get(TTS),
            voice=voice,
            media=media,
            sight=vision,
            voices=engines.voices,
            language=language,
            on_done=reply_done,
        )
        turn = engines.get(TURN) if TURN.name in engines.handles else None  # None: silence
        turns = TurnTaking(session, config.turns, reply, vision=vision, turn=turn)
        # a WS-only client may play output.audio as it arrives, up to the lead early
        early_s = config.reply.audio_lead_s + MAX_EARLY_S
        judged = config.reply.interrupt_echo_likeness <= 1.0  # above 1: off
        own_voice = OwnVoice(early_s=early_s) if judged else None
        audio = AudioLane(
            session,
            config.audio,
            engines.get(VAD),
            engines.get(ASR),
            engines.media,
            listener=turns,
            speaks=True,  # its replies are the echo canceller's reference (audio.echo_*)
            own_voice=own_voice,
            language=language,
        )
        # what the reply plays is the echo canceller's reference, and what its own voice is
        # told by (pipelines/own_voice.py)
        reply.echo, reply.own_voice = audio.reference, own_voice
        return [audio, *([vision] if vision is not None else []), reply, turns]

    return Mode("assistant", session, config.media, lanes)
