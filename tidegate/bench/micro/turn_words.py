"""The words a turn with pauses is answered with: sentences paused where they are clearly
unfinished ("I would like to book a table for ... four people tonight") go through the real
audio lane (Silero VAD, streaming tiny.en) and turn-taking in process, in real time, with the
lane's joined decodes (``asr_join_max_gap_s``, pipelines/audio.py "Joined decodes") on and
off, alternated set by set on the same audio.

Per set and way: the WER of the turn's words (what turn-taking hands the reply: the client
commits each sentence, manual turns, so that no policy ends a turn at its pause) and of the
per-segment ``asr.final`` texts joined (what captions show: the same either way), the
segments and the joined finals, from the VAD's end of speech to the moment the turn's words
are known (turn-taking's ``on_final`` of the sentence's last segment: the reply could start
there), and the server-side CPU per audio second (process time of the run: VAD, ASR, lane).

Sets: espeak-ng ``en-us`` and ``en-gb-x-rp`` saying each sentence as one utterance with an
SSML break (the tail keeps the sentence's prosody), and ``en-us`` and SVOX Pico saying head
and tail apart (as ``bench turns``' paused set does), each at every pause of ``--pauses``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tidegate.bench import audio_sets
from tidegate.bench.micro import default_data_dir
from tidegate.bench.report import percentiles
from tidegate.bench.wer import wer
from tidegate.engines.registry import ASR, VAD
from tidegate.engines.service import EngineService
from tidegate.pipelines.audio import AudioLane
from tidegate.pipelines.port import LocalSession
from tidegate.pipelines.turns import TurnTaking
from tidegate.protocol.messages import AsrFinal, InputAudio, VadSpeechStopped
from tidegate.protocol.realtime.commands import CommitInputAudio
from tidegate.server.engines import engine_specs
from tidegate.server.modes import lane_config
from tidegate.server.runtime import prepare_offline
from tidegate.server.settings import Settings

SR = audio_sets.SAMPLE_RATE_HZ
CHUNK_S = 0.04
LEAD_S = 0.5
TAIL_S = 1.5  # after each sentence: the VAD ends it, its finals come, then the commit
SENTENCES = audio_sets.PAUSED_SENTENCES + audio_sets.MORE_PAUSED_SENTENCES
SETS = ("ssml/en-us", "ssml/en-gb-x-rp", "apart/en-us", "apart/pico-en-US")


def clips(
    kind: str, pause_s: float, sentences: tuple[tuple[str, str], ...] = SENTENCES
) -> list[np.ndarray[Any, np.dtype[np.float32]]]:
    """The set's ``sentences``, each paused ``pause_s`` between its head and tail."""
    how, voice = kind.split("/", 1)
    if how == "ssml":
        return [
            audio_sets.spoken_with_pause(h, t, pause_s=pause_s, voice=voice) for h, t in sentences
        ]
    return [
        audio_sets.trim_silence(
            audio_sets.paused_sentence(
                h, t, pause_s=pause_s, voice=lambda text: audio_sets.speak(text, voice=voice)
            ).audio
        )
        for h, t in sentences
    ]


class _Reply:
    """The reply side turn-taking talks to: it keeps the committed turns' words."""

    def __init__(self) -> None:
        self.turns: list[str] = []

    def answer(
        self,
        text: str,
        ref: str | None,
        received_ms: float,
        *,
        spoken: bool,
        segments: tuple[str, ...] = (),
    ) -> None:
        self.turns.append(text)

    def speculate(self, text: str, received_ms: float, *, wait_s: float) -> None:
        """Nothing: no reply is started here."""

    def speech_started(self) -> None:
        """Nothing: no reply to interrupt."""

    def speech_onset(self) -> None:
        """Nothing: no reply to pause."""

    def speech_onset_lost(self) -> None:
        """Nothing: no reply to resume."""

    def speech_stopped(self) -> None:
        """Nothing: no reply to judge."""

    def heard(self, text: str, *, final: bool) -> bool:
        return True  # no interruption to absorb it

    def judging(self) -> bool:
        return False

    def replying(self) -> bool:
        return False

    def hear(self, text: str, segments: tuple[str, ...] = ()) -> None:
        self.turns.append(text)


class _Turns(TurnTaking):
    """Turn-taking that notes when each final reached it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.final_at: list[float] = []

    def on_final(self, *args: Any, **kwargs: Any) -> None:
        self.final_at.append(time.monotonic())
        super().on_final(*args, **kwargs)


class _Session(LocalSession):
    """A local session that notes when each end of speech was emitted."""

    def __init__(self) -> None:
        super().__init__("s_turn_words")
        self.config = {"turn": {"policy": "manual"}}
        self.stopped_at: list[float] = []

    def emit(self, msg: Any) -> None:
        if isinstance(msg, VadSpeechStopped):
            self.stopped_at.append(time.monotonic())
        super().emit(msg)


async def run_set(
    settings: Settings,
    engines: EngineService,
    audio: list[np.ndarray[Any, np.dtype[np.float32]]],
    *,
    joined: bool,
) -> dict[str, Any]:
    """The sentences through one session's audio lane and turn-taking in real time, each
    committed once its finals are out: the turns' words, the captions, the timings."""
    config = lane_config(settings)
    audio_config = config.audio
    if not joined:
        streaming = dataclasses.replace(audio_config.streaming, join_max_gap_s=0.0)
        audio_config = dataclasses.replace(audio_config, streaming=streaming)
    session = _Session()
    reply = _Reply()
    turns = _Turns(session, config.turns, reply)
    lane = AudioLane(
        session, audio_config, engines.get(VAD), engines.get(ASR), engines.media, listener=turns
    )
    handle, commit = lane.handlers()[InputAudio], lane.handlers()[CommitInputAudio]
    captions: list[str] = []
    latencies: list[float] = []
    cpu0, wall0, seconds = time.process_time(), time.monotonic(), 0.0
    try:
        for k, x in enumerate(audio):
            pcm = np.concatenate(
                [np.zeros(int(LEAD_S * SR), np.float32), x, np.zeros(int(TAIL_S * SR), np.float32)]
            )
            pcm16 = (np.clip(pcm, -1, 1) * 32767).astype("<i2")
            seconds += len(pcm) / SR
            finals0, stopped0, at0 = (
                len(session.of(AsrFinal)),
                len(session.stopped_at),
                len(turns.final_at),
            )
            step = int(CHUNK_S * SR)
            start = time.monotonic()
            for i in range(0, len(pcm16), step):
                await asyncio.sleep(max(0.0, start + i / SR - time.monotonic()))  # real time
                await handle(
                    InputAudio(
                        pcm=pcm16[i : i + step].tobytes(),
                        format="s16le",
                        sample_rate=SR,
                        channels=1,
                    )
                )
            await commit(CommitInputAudio(id=f"c{k}"))  # waits for the sentence's finals
            captions.append(" ".join(f.text for f in session.of(AsrFinal)[finals0:] if f.text))
            stops, finals = session.stopped_at[stopped0:], turns.final_at[at0:]
            if stops and finals:
                latencies.append((finals[-1] - stops[-1]) * 1000)
        cpu = time.process_time() - cpu0
    finally:
        await lane.close()
        await turns.close()
        await session.close()
    return {
        "turns": reply.turns,
        "captions": captions,
        "segments": lane.counters["segments"],
        "joined_finals": lane.counters["joined_finals"],
        "turn_texts_joined": turns.counters["turn_texts_joined"],
        "stopped_to_turn_words_ms": percentiles(latencies),
        "cpu_s_per_audio_s": cpu / seconds,
        "wall_s": time.monotonic() - wall0,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tidegate-turn-words-") as tmp:
        (Path(tmp) / "models").symlink_to((args.data_dir / "models").resolve())
        settings = Settings(
            data_dir=Path(tmp),
            log_level="warning",
            metrics_interval_s=0.0,
            engines=("vad", "asr"),
        )
        service = EngineService(engine_specs(settings), settings.data_dir, prepare=prepare_offline)
        await service.start()
        try:
            return await _sets(args, settings, service)
        finally:
            await service.close()


async def _sets(
    args: argparse.Namespace, settings: Settings, engines: EngineService
) -> dict[str, Any]:
    sentences = SENTENCES[: args.sentences] if args.sentences > 0 else SENTENCES
    reference = [f"{h} {t}" for h, t in sentences]
    report: dict[str, Any] = {"cpu_count": os.cpu_count(), "sentences": len(sentences)}
    report["sets"] = {}
    order = [True, False]
    for pause in args.pauses:
        for kind in args.sets:
            audio = clips(kind, pause, sentences)
            ways: dict[str, Any] = {}
            for joined in order:  # alternated: the next set starts with the other way
                r = await run_set(settings, engines, audio, joined=joined)
                turn_errors = [wer(a, b) for a, b in zip(reference, r["turns"], strict=True)]
                r["turn_wer"] = float(np.mean(turn_errors))
                r["caption_wer"] = float(
                    np.mean([wer(a, b) for a, b in zip(reference, r["captions"], strict=True)])
                )
                ways["joined" if joined else "apart"] = r
            order.reverse()
            report["sets"][f"{kind}/{pause}"] = ways
    sets = report["sets"].values()
    report["mean"] = {
        way: {
            "turn_wer": float(np.mean([s[way]["turn_wer"] for s in sets])),
            "caption_wer": float(np.mean([s[way]["caption_wer"] for s in sets])),
            "stopped_to_turn_words_ms_p50": float(
                np.median([s[way]["stopped_to_turn_words_ms"].get("p50", np.nan) for s in sets])
            ),
            "cpu_s_per_audio_s": float(np.mean([s[way]["cpu_s_per_audio_s"] for s in sets])),
        }
        for way in ("joined", "apart")
    }
    return report


def summary(report: dict[str, Any]) -> str:
    lines = []
    for name, ways in report["sets"].items():
        for way, r in ways.items():
            lat = r["stopped_to_turn_words_ms"]
            lines.append(
                f"{name:22s} {way:6s}: turn WER {r['turn_wer']:.3f}  captions "
                f"{r['caption_wer']:.3f}  segments {r['segments']}  joined {r['joined_finals']}"
                f" (taken {r['turn_texts_joined']})  end of speech -> turn's words "
                f"{lat.get('p50', float('nan')):.0f} / {lat.get('p90', float('nan')):.0f} ms "
                f"p50/p90  CPU {r['cpu_s_per_audio_s']:.3f} s per audio-s"
            )
    for way, m in report["mean"].items():
        lines.append(
            f"mean {way:6s}: turn WER {m['turn_wer']:.3f}  captions {m['caption_wer']:.3f}  "
            f"end of speech -> turn's words {m['stopped_to_turn_words_ms_p50']:.0f} ms (median "
            f"of p50s)  CPU {m['cpu_s_per_audio_s']:.3f} s per audio-s"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tidegate.bench.micro.turn_words", description=__doc__
    )
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), help="prepared models")
    p.add_argument("--pauses", default="0.3,0.6", help="pauses inside the sentences (s)")
    p.add_argument("--sets", default=",".join(SETS), help=f"of {', '.join(SETS)}")
    p.add_argument("--sentences", type=int, default=0, help="the first N sentences (0: all)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    args = p.parse_args(argv)
    args.pauses = [float(x) for x in args.pauses.split(",")]
    args.sets = [x for x in args.sets.split(",") if x]
    unknown = set(args.sets) - set(SETS)
    if unknown:
        p.error(f"unknown sets: {', '.join(sorted(unknown))}")
    missing = audio_sets.have_tools()
    if missing:
        print(f"turn-words bench: needs {missing}", file=sys.stderr)
        return 2
    report = asyncio.run(bench(args))
    print(summary(report), file=sys.stderr)
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
