"""Turn-taking on real engines (Silero VAD, Whisper, Smart Turn v3.2) and real speech (the
Piper voice: the turn model reads prosody, which espeak does not carry; docs/ears.md), without
a server: a FakeSession is the session side, and the reply lane's port records the turns it is
asked to answer.

Sentences with a mid-sentence pause and complete sentences are streamed at real time through
the audio lane into turn-taking, each under both policies at once (same audio, same run): the
false cut-off rate (a paused sentence whose turn ends in its pause) and the end-of-turn
latency (from the end of speech to ``turn.end``) of each policy are printed; the semantic
policy must cut off at most half as often as the silence policy, which must show the fault
(it cuts off paused sentences today)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from tests.engines.voices import piper_voice
from tests.support import prepare_models, scaled
from tidegate.bench import audio_sets
from tidegate.bench.wer import wer
from tidegate.engines.registry import ASR, TURN, VAD
from tidegate.engines.service import EngineService
from tidegate.pipelines.audio import AudioLane, Joined
from tidegate.pipelines.errors import InvalidConfigError, UnsupportedError
from tidegate.pipelines.turns import TurnTaking
from tidegate.protocol import ServerMessage
from tidegate.protocol.messages import AsrFinal, InputAudio, TurnEnd
from tidegate.protocol.realtime.commands import CommitInputAudio
from tidegate.server.modes import lane_config
from tidegate.server.settings import Settings
from tidegate.sessions.config import resolve_config

from .lanes import FakeSession, engine_settings, started_engines

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(bool(audio_sets.have_tools()), reason="needs espeak-ng and sox"),
]

MODELS = ("silero-vad", "whisper-tiny-en", "smart-turn-v3.2", "piper-joe")
CHUNK_S = 0.04
RATE = audio_sets.SAMPLE_RATE_HZ
#: how long after its audio a clip may take to end its turn (the semantic timeout and more)
SETTLE_S = 6.0


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tmp = tmp_path_factory.mktemp("turns-lane")
    # no partials: turn-taking waits for finals only, and they must not queue behind partials;
    # a long score deadline: a loaded machine must not turn the semantic policy under test
    # into its silence fallback
    return engine_settings(
        tmp,
        MODELS,
        engines=("vad", "asr", "turn"),
        asr_partial_interval_s=3600.0,
        turn_deadline_s=scaled(5.0),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines(settings: Settings) -> AsyncIterator[EngineService]:
    async for service in started_engines(settings):
        yield service


@pytest.fixture(scope="module")
def voice() -> Iterator[Callable[[str], np.ndarray]]:
    with piper_voice(prepare_models(*MODELS)) as speak:
        yield speak


SESSION_IDS = itertools.count()


class StampedSession(FakeSession):
    """A FakeSession that notes when (monotonic s) each event was emitted."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(f"s_turns{next(SESSION_IDS)}")
        self.config = config
        self.stamps: list[tuple[float, ServerMessage]] = []

    def emit(self, msg: ServerMessage) -> None:
        super().emit(msg)
        self.stamps.append((time.monotonic(), msg))


class Replies:
    """The reply lane's port as turn-taking sees it: the turns it is asked to answer."""

    def __init__(self) -> None:
        self.answers: list[tuple[float, str]] = []
        self.segments: list[tuple[str, ...]] = []  # per answer, the segments it came from
        self.barge_ins = 0

    def answer(
        self,
        text: str,
        ref: str | None,
        received_ms: float,
        *,
        spoken: bool,
        segments: tuple[str, ...] = (),
    ) -> None:
        self.answers.append((time.monotonic(), text))
        self.segments.append(segments)

    def speculate(self, text: str, received_ms: float, *, wait_s: float) -> None:
        pass  # the turn's end is what these tests look at

    def speech_started(self) -> None:
        self.barge_ins += 1

    def speech_onset(self) -> None:
        pass  # no reply runs here: nothing to pause

    def speech_onset_lost(self) -> None:
        pass

    def speech_stopped(self) -> None:
        pass

    def heard(self, text: str, *, final: bool) -> bool:
        return True  # no reply runs here: everything heard is the user's turn

    def judging(self) -> bool:
        return False  # no reply runs here: no interruption to judge

    def replying(self) -> bool:
        return False  # no reply runs here

    def hear(self, text: str, segments: tuple[str, ...] = ()) -> None:
        self.answers.append((time.monotonic(), text))  # respond false: heard, not answered
        self.segments.append(segments)


class Run:
    """One session streaming one clip: its audio lane feeding its turn-taking."""

    def __init__(
        self, settings: Settings, engines: EngineService, policy: str, *, turn: bool = True
    ) -> None:
        config = lane_config(settings)
        self.session = StampedSession({"turn": {"policy": policy}})
        self.replies = Replies()
        scheduler = engines.get(TURN) if turn else None
        self.turns = TurnTaking(self.session, config.turns, self.replies, turn=scheduler)
        self.audio = AudioLane(
            self.session,
            config.audio,
            engines.get(VAD),
            engines.get(ASR),
            engines.media,
            listener=self.turns,
        )

    def ends(self) -> list[tuple[float, TurnEnd]]:
        return [(t, m) for t, m in self.session.stamps if isinstance(m, TurnEnd)]

    async def close(self) -> None:
        await self.turns.close()
        await self.audio.close()
        await self.session.close()


async def stream(runs: list[tuple[Run, np.ndarray]]) -> float:
    """Send each run its audio at real time, all together; the start (monotonic s)."""
    step = int(CHUNK_S * RATE)
    handles = [(run.audio.handlers()[InputAudio], audio) for run, audio in runs]
    longest = max(len(a) for _, a in handles)
    t0 = time.monotonic()
    for n, i in enumerate(range(0, longest, step)):
        for handle, audio in handles:
            if i < len(audio):
                pcm = np.round(audio[i : i + step] * 32767).astype("<i2").tobytes()
                await handle(InputAudio(pcm=pcm, format="s16le", sample_rate=RATE, channels=1))
        await asyncio.sleep(max(0.0, t0 + (n + 1) * CHUNK_S - time.monotonic()))
    return t0


async def settle(runs: list[Run], done: Callable[[Run], bool]) -> None:
    """Wait (at most SETTLE_S, scaled) until every run is done."""
    deadline = time.monotonic() + scaled(SETTLE_S)
    while not all(done(r) for r in runs) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def answered(run: Run) -> bool:
    """The run's last turn ended and was answered (turn.end comes first, the reply when the
    turn's finals are out)."""
    ends, answers = run.ends(), run.replies.answers
    return bool(ends) and bool(answers) and answers[-1][0] >= ends[-1][0]


def percentile(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 3) if xs else None


async def test_semantic_policy_cuts_off_paused_sentences_less_than_silence(
    settings: Settings, engines: EngineService, voice: Callable[[str], np.ndarray]
) -> None:
    """Six sentences with a 0.5-0.9 s pause where they are clearly unfinished and six complete
    sentences, each streamed once per policy at the same time: the silence policy cuts off
    paused sentences (today's fault), the semantic policy at most half as many, judging at
    least half of them incomplete at a pause, and it splits no more complete sentences at an inner
    pause; each turn end carries its policy's reason and, under the semantic policy, the
    model's probability. End-of-turn latency (end of speech to the last turn.end) is
    printed, not asserted."""
    paused = audio_sets.paused_set(seed=1, voice=voice)
    complete = audio_sets.complete_set(voice=voice)
    policies = ("silence", "semantic")
    cut: dict[str, int] = dict.fromkeys(policies, 0)
    split: dict[str, int] = dict.fromkeys(policies, 0)
    waited: dict[str, int] = dict.fromkeys(policies, 0)  # judged incomplete at the pause
    scores: dict[str, list[float | None]] = {p: [] for p in policies}
    latency: dict[str, list[float]] = {p: [] for p in policies}
    reply_latency: dict[str, list[float]] = {p: [] for p in policies}
    reasons: dict[str, list[str]] = {p: [] for p in policies}
    for kind, clip in [("paused", c) for c in paused] + [("complete", c) for c in complete]:
        runs = {policy: Run(settings, engines, policy) for policy in policies}
        try:
            t0 = await stream([(run, clip.audio) for run in runs.values()])
            await settle(list(runs.values()), answered)
        finally:
            for run in runs.values():
                await run.close()
        for policy, run in runs.items():
            ends = run.ends()
            assert ends, f"{policy}: no turn end for {clip.text!r}"
            # one reply per turn, after its turn.end (a turn.end whose turn went on before
            # its finals were out has no reply of its own: the next one answers both)
            answers = run.replies.answers
            assert 1 <= len(answers) <= len(ends), (policy, clip.text, answers, ends)
            assert answers[-1][0] >= ends[-1][0]
            if kind == "paused":
                assert clip.pause_s is not None
                cut[policy] += ends[0][0] < t0 + clip.pause_s[1]
                waited[policy] += run.turns.stats()["turn_scores_incomplete"] > 0
                scores[policy].append(ends[0][1].probability)
            else:  # a complete sentence may have a pause of its own (a comma): split
                split[policy] += len(ends) > 1
                at, end = ends[-1]
                latency[policy].append(at - (t0 + clip.end_s))
                reply_latency[policy].append(answers[-1][0] - (t0 + clip.end_s))
                reasons[policy].append(end.reason)
                scores[policy].append(end.probability)
                if policy == "semantic":
                    assert end.reason in ("semantic", "timeout") and end.probability is not None
                else:
                    assert end.reason == "silence" and end.probability is None
    report = {
        policy: {
            "false_cutoffs": f"{cut[policy]}/{len(paused)}",
            "complete_split": f"{split[policy]}/{len(complete)}",
            "paused_judged_incomplete": f"{waited[policy]}/{len(paused)}",
            "end_of_turn_s_p50": percentile(latency[policy], 50),
            "end_of_turn_s_p90": percentile(latency[policy], 90),
            "reply_start_s_p50": percentile(reply_latency[policy], 50),
            "reasons": reasons[policy],
            "probabilities": [None if x is None else round(x, 2) for x in scores[policy]],
        }
        for policy in policies
    }
    print(json.dumps({"turns": report}))
    assert cut["silence"] >= 1, report  # the fault is there to be caught
    # the target: at most half the silence policy's cut-offs. What is scored is the
    # audio up to the VAD's pause (counted in samples, not in time), so the model's decisions
    # do not depend on the machine's speed; a slow score only makes a cut-off rarer.
    assert 2 * cut["semantic"] <= cut["silence"], report
    assert split["semantic"] <= split["silence"], report
    # The model judges at least half the unfinished sentences incomplete at their pause (4-5
    # of 6 score below turn_threshold 0.9 with the Piper voice: docs/ears.md).
    assert waited["semantic"] >= len(paused) / 2, report
    assert waited["silence"] == 0, report


async def test_without_the_turn_engine_turns_end_by_silence(
    settings: Settings, engines: EngineService
) -> None:
    """Asked for the semantic policy on a server without the turn engine, a session falls
    back to the silence policy: its turn ends with reason silence and no probability."""
    run = Run(settings, engines, "semantic", turn=False)
    try:
        speech = audio_sets.complete_sentence("What time is it?").audio
        await stream([(run, speech)])
        await settle([run], answered)
    finally:
        await run.close()
    (end,) = [m for _, m in run.ends()]
    assert run.turns.policy == "silence"
    assert end.reason == "silence" and end.probability is None
    ((_, text),) = run.replies.answers
    assert text.lower().startswith("what time")


async def test_the_session_config_names_a_known_policy() -> None:
    """turn.policy is semantic, silence or manual, on the assistant mode only;
    audio.echo_cancellation is auto, on or off and audio.noise_suppression a boolean, on the
    assistant and transcribe modes; other keys and values are refused (before the engines are
    looked at)."""
    # good sections pass their check; this server (none given) runs no LLM for the mode
    good = {
        "mode": "assistant",
        "turn": {"policy": "silence"},
        "audio": {"echo_cancellation": "on", "noise_suppression": True},
    }
    with pytest.raises(UnsupportedError, match="LLM"):
        resolve_config(good, "assistant")
    for bad in (
        {"mode": "assistant", "turn": {"policy": "psychic"}},
        {"mode": "assistant", "turn": {"wait": 1}},
        {"mode": "assistant", "turn": "semantic"},
        {"mode": "loopback", "turn": {"policy": "silence"}},
        {"mode": "assistant", "audio": {"echo_cancellation": "maybe"}},
        {"mode": "assistant", "audio": {"noise_suppression": 1}},
        {"mode": "loopback", "audio": {"echo_cancellation": "on"}},
    ):
        with pytest.raises(InvalidConfigError):
            resolve_config(bad, "assistant")


async def test_a_turn_is_scored_on_its_own_audio(
    settings: Settings, engines: EngineService, voice: Callable[[str], np.ndarray]
) -> None:
    """The second turn of a session is scored on its own audio (from just before its first
    speech to the pause), not on the conversation's last 8 s: as Smart Turn was trained, one
    turn, zero-padded in front."""
    first = audio_sets.complete_sentence(
        "What is the weather like in London tomorrow?", voice=voice
    )
    second = audio_sets.complete_sentence("Please set an alarm for seven.", voice=voice)
    run = Run(settings, engines, "semantic")
    try:
        await stream([(run, first.audio)])
        await settle([run], answered)
        assert len(run.replies.answers) == 1, run.session.stamps
        await stream([(run, second.audio)])
        await settle([run], lambda r: len(r.replies.answers) == 2)
    finally:
        await run.close()
    assert len(run.replies.answers) == 2 and run.turns.last_scored_s is not None
    spoken = second.end_s - 0.3  # the second sentence's speech (after its 0.3 s lead)
    # its speech, the pre-speech and the pause's tail: not the first turn's 4 s before it
    assert spoken < run.turns.last_scored_s < spoken + 1.2, (run.turns.last_scored_s, spoken)


#: sentences paused where they are clearly unfinished, whose pieces tiny.en mangles apart
#: (bench: python -m tidegate.bench.micro.turn_words)
JOINED_SENTENCES = (
    audio_sets.PAUSED_SENTENCES[1],  # the weather in ... London tomorrow morning
    audio_sets.PAUSED_SENTENCES[5],  # moved to ... Thursday afternoon
    audio_sets.MORE_PAUSED_SENTENCES[0],  # the report to ... my manager before noon
)


class JoinedTurns(TurnTaking):
    """Turn-taking that keeps the joined decodes it is given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.joined: list[Joined] = []

    def on_final(self, *args: Any, joined: Joined | None = None, **kwargs: Any) -> None:
        if joined is not None:
            self.joined.append(joined)
        super().on_final(*args, joined=joined, **kwargs)


async def _committed_turns(
    settings: Settings, engines: EngineService, clips: list[np.ndarray], **streaming: Any
) -> tuple[list[str], list[str], dict[str, int], JoinedTurns]:
    """``clips`` through an audio lane and manual turn-taking, each committed once sent (the
    client ends the turn: no policy cuts it at its pause), fed as fast as the lane takes
    them: the turns' words, the captions (``asr.final`` texts) of each, the lane's counters
    and the turn-taking."""
    config = lane_config(settings)
    audio = dataclasses.replace(
        config.audio,
        audio_max_ahead_s=0.0,
        streaming=dataclasses.replace(config.audio.streaming, **streaming),
    )
    session = FakeSession()
    session.config = {"turn": {"policy": "manual"}}
    replies = Replies()
    turns = JoinedTurns(session, config.turns, replies)
    lane = AudioLane(
        session, audio, engines.get(VAD), engines.get(ASR), engines.media, listener=turns
    )
    handle, commit = lane.handlers()[InputAudio], lane.handlers()[CommitInputAudio]
    captions = []
    step = int(CHUNK_S * RATE)
    try:
        for k, clip in enumerate(clips):
            finals = len(session.of(AsrFinal))
            pcm = np.round(np.clip(clip, -1, 1) * 32767).astype("<i2")
            for i in range(0, len(pcm), step):
                chunk = pcm[i : i + step].tobytes()
                await handle(InputAudio(pcm=chunk, format="s16le", sample_rate=RATE, channels=1))
                while lane.inbox.stats.queued_ms > 500:  # as credit would pace it
                    await asyncio.sleep(0.01)
            async with asyncio.timeout(scaled(60)):
                await commit(CommitInputAudio(id=f"c{k}"))  # waits for the clip's finals
            captions.append(" ".join(f.text for f in session.of(AsrFinal)[finals:]))
    finally:
        await lane.close()
        await turns.close()
        await session.close()
    return [text for _, text in replies.answers], captions, lane.counters, turns


async def test_a_paused_sentence_is_answered_as_one_utterance(
    settings: Settings, engines: EngineService
) -> None:
    """A sentence paused where it is unfinished ends a segment at its pause, and each piece
    decoded alone loses what the other says. The final of its second segment is also
    decoded joined with the first, and the turn is answered with that, while the captions
    (``asr.final``) stay per segment. With joined decodes off the turn's words are the
    captions; a join never reaches into the turn before (each sentence is committed: a turn
    of its own). Whether joined beats apart is the bench's to say (docs/asr.md): on these
    three, without partials, both are nearly right."""
    lead, tail = audio_sets.silence(0.5), audio_sets.silence(1.0)
    clips = [
        np.concatenate([lead, audio_sets.spoken_with_pause(h, t, pause_s=0.6), tail])
        for h, t in JOINED_SENTENCES
    ]
    reference = [f"{h} {t}" for h, t in JOINED_SENTENCES]
    answers, captions, lane, turns = await _committed_turns(settings, engines, clips)
    off, off_captions, off_lane, off_turns = await _committed_turns(
        settings, engines, clips, join_max_gap_s=0.0
    )
    joined = [(j.ids, j.text) for j in turns.joined]
    report = {"answers": answers, "captions": captions, "off": off, "joined": joined}
    print(json.dumps(report))
    assert lane["segments"] == 2 * len(clips), report  # each cut at its pause
    assert lane["joined_finals"] == turns.counters["turn_texts_joined"] == len(clips), report
    # each join is its sentence's two segments, and the turn's words are the joined text
    assert [len(j.ids) for j in turns.joined] == [2] * len(clips), report
    assert answers == [j.text for j in turns.joined], report
    # each answer names the segments its words came from: the two its captions came from
    assert isinstance(turns.reply, Replies)
    assert turns.reply.segments == [j.ids for j in turns.joined], report
    assert max(wer(r, a) for r, a in zip(reference, answers, strict=True)) <= 0.25, report
    assert off == off_captions, report
    assert off_lane["joined_finals"] == off_turns.counters["turn_texts_joined"] == 0


async def test_a_tail_unsure_alone_is_answered_with_its_sentence(
    settings: Settings, engines: EngineService
) -> None:
    """ "a loaf of bread", said after a pause in "I need to buy some milk and ...", decodes
    alone as an unsure scrap ("Atlofund Red", average log-probability -1.7 on this project's
    machines) that the quality gate calls no speech: no words of its own, so before, the turn
    lost them. Its joined decode with the head is sure, and the turn is answered with the
    whole sentence."""
    head, tail = "I need to buy some milk and", "a loaf of bread"
    clip = np.concatenate(
        [
            audio_sets.silence(0.5),
            audio_sets.spoken_with_pause(head, tail, pause_s=0.3),
            audio_sets.silence(1.5),
        ]
    )
    answers, captions, lane, _ = await _committed_turns(settings, engines, [clip])
    report = {"answers": answers, "captions": captions, "lane": lane}
    print(json.dumps(report))
    assert lane["segments"] == 2, report  # cut at its pause
    assert len(answers) == 1 and wer(f"{head} {tail}", answers[0]) <= 0.2, report
    if "bread" not in captions[0].lower():  # the tail alone had no words (as measured here)
        assert lane["empty_finals_joined"] == 1, report


async def test_a_joined_decode_replaces_only_the_turns_own_last_finals() -> None:
    """Turn-taking takes a joined decode in place of the finals it joins only when they are
    the turn's last entries: not when one of them was absorbed by an interruption (not the
    user's turn), nor after the turn was answered; it tells the lane which segments the
    turn holds."""

    class Absorbing(Replies):
        def __init__(self) -> None:
            super().__init__()
            self.absorb: set[str] = set()

        def heard(self, text: str, *, final: bool) -> bool:
            return text not in self.absorb

    session = FakeSession()
    session.config = {"turn": {"policy": "manual"}}
    replies = Absorbing()
    turns = TurnTaking(session, lane_config(Settings()).turns, replies)

    def final(seg: str, text: str, *joined: str) -> None:
        together = Joined((*joined, seg), f"[{' '.join((*joined, seg))}]") if joined else None
        turns.on_final(text, 0.0, 0, segment_id=seg, joined=together)

    try:
        final("a", "I would like a table for it.")
        final("b", "4 people to hide.", "a")
        assert turns.turn_segments() == ("a", "b") and turns._words == "[a b]"
        final("c", "tonight", "a", "b")  # a third piece joins the first two
        assert turns.turn_segments() == ("a", "b", "c") and turns._words == "[a b c]"
        replies.absorb.add("mm-hmm")
        final("d", "mm-hmm", "a", "b", "c")  # absorbed: not the turn's, its join neither
        final("e", "please", "a", "b", "c", "d")  # joins d, which the turn does not hold
        assert turns.turn_segments() == ("a", "b", "c", "e")
        assert turns._words == "[a b c] please"
        turns.on_commit(None, 0.0)  # answered: the turn is empty
        assert turns.turn_segments() == () and replies.answers[-1][1] == "[a b c] please"
        final("f", "and chips", "e")  # e was the answered turn's
        assert turns.turn_segments() == ("f",) and turns._words == "and chips"
        final("g", "", "f")  # no words alone, words joined with the turn's last: taken
        assert turns.turn_segments() == ("f", "g") and turns._words == "[f g]"
        final("h", "", "a")  # joined with what the turn does not end with: nothing taken
        final("i", "")  # no words, no join: nothing
        assert turns.turn_segments() == ("f", "g") and turns._words == "[f g]"
        assert turns.counters["turn_texts_joined"] == 3
    finally:
        await turns.close()
        await session.close()
