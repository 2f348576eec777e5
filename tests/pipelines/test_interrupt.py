"""The interruption policy as pure logic (pipelines/interrupt.py): which ASR texts are words
enough to cut a reply, and what each event of an interruption decides."""

from __future__ import annotations

import pytest

from tidegate.pipelines.interrupt import (
    DEFAULT_BACKCHANNELS,
    Heard,
    Interruption,
    Verdict,
    WordRule,
    echo_distance,
    echoed,
    number_words,
    sound_key,
    spoken_letters,
    words_of,
)

RULE = WordRule(DEFAULT_BACKCHANNELS)


def test_words_are_read_without_case_punctuation_or_sound_annotations() -> None:
    """Whisper's "Mm-hmm." is the words mm, hmm; "(coughs)", "[NOISE]", "*laughs*" and "♪"
    are no words at all."""
    assert words_of("Mm-hmm.") == ["mm", "hmm"]
    assert words_of(" (coughs) [NOISE] *laughs* ♪ ") == []
    assert words_of("Wait, don't!") == ["wait", "don't"]


@pytest.mark.parametrize(
    ("text", "heard"),
    [
        ("Mm-hmm.", Heard(0, 1)),
        ("Mm hmm", Heard(0, 1)),
        ("Uh-huh.", Heard(0, 1)),
        ("Yeah, okay.", Heard(0, 2)),
        ("I see.", Heard(0, 1)),
        ("(coughing)", Heard(0, 0)),
        ("Wait, stop.", Heard(2, 0)),
        ("Mm-hmm, and then what?", Heard(3, 1)),
        ("Mm-m-", Heard(0, 2)),
        ("mmm mmm", Heard(0, 2)),
        ("Hmmm. Uhh, ahh.", Heard(0, 3)),
        ("Him?", Heard(1, 0)),
    ],
)
def test_backchannel_phrases_count_once_and_other_words_each(text: str, heard: Heard) -> None:
    """A backchannel phrase (longest match first) counts once; every other word counts."""
    assert RULE.heard(text) == heard


def test_what_interrupts_depends_on_min_words_and_the_backchannel_policy() -> None:
    """ignore: backchannels are not words; interrupt: they count; min_words is a floor."""
    assert not RULE.interrupts("Mm-hmm.", min_words=1, backchannels="ignore")
    assert RULE.interrupts("Mm-hmm.", min_words=1, backchannels="interrupt")
    assert RULE.interrupts("Stop.", min_words=1, backchannels="ignore")
    assert not RULE.interrupts("Stop.", min_words=2, backchannels="ignore")
    assert RULE.interrupts("Stop that.", min_words=2, backchannels="ignore")
    assert not RULE.interrupts("", min_words=1, backchannels="interrupt")
    custom = WordRule(["sounds good", ""])
    assert not custom.interrupts("Sounds good!", min_words=1, backchannels="ignore")
    assert custom.interrupts("Yeah.", min_words=1, backchannels="ignore")  # not in its list
    assert not custom.interrupts("Mm-hmm.", min_words=1, backchannels="ignore")  # a hum


def test_a_final_without_words_resumes_once_the_user_is_silent() -> None:
    """A cough: its final has no words; the reply resumes at it (the user has stopped), and
    the interruption is over."""
    it = Interruption("r_1", paused_at=10.0, confirm_s=1.5)
    assert it.on_speech_stopped(10.3) is Verdict.WAIT  # wait for the ASR
    assert it.on_final("", words=False) is Verdict.RESUME
    it.resumed()
    assert it.closed and it.absorbed == []


def test_words_cut_at_a_partial_or_a_final_even_after_a_resume() -> None:
    """Words in a partial cut at once; a final with words cuts a reply that had resumed."""
    it = Interruption("r_1", paused_at=0.0, confirm_s=1.5)
    assert it.on_partial(False, 0.5) is Verdict.WAIT
    assert it.on_partial(True, 0.6) is Verdict.CUT
    late = Interruption("r_1", paused_at=0.0, confirm_s=1.5)
    late.on_speech_stopped(0.4)
    assert late.on_confirm_timeout(1.9) is Verdict.RESUME  # 1.5 s after the sound: no verdict
    late.resumed()
    assert late.on_final("Stop there.", words=True) is Verdict.CUT


def test_the_window_never_resumes_over_a_user_still_making_sound() -> None:
    """confirm_s after the pause: a silent user -> resume; one still sounding -> wait, then
    resume confirm_s after the sound ends (without a final), or at a partial without words
    once the window has passed, or max_pause_s after the pause at the latest; a timer armed
    for an older deadline decides nothing."""
    it = Interruption("r_1", paused_at=1.0, confirm_s=1.5)
    assert it.on_confirm_timeout(2.5) is Verdict.WAIT  # the sound goes on
    it.on_speech_stopped(3.0)
    assert it.deadline == 4.5
    assert it.on_confirm_timeout(3.5) is Verdict.WAIT  # a stale timer
    assert it.on_confirm_timeout(4.5) is Verdict.RESUME
    noise = Interruption("r_1", paused_at=1.0, confirm_s=1.5)
    assert noise.on_partial(False, 2.0) is Verdict.WAIT  # within the window
    assert noise.on_partial(False, 2.6) is Verdict.RESUME  # a long sound, no words
    stuck = Interruption("r_1", paused_at=1.0, confirm_s=1.5, max_pause_s=10.0)
    assert stuck.deadline == 11.0  # a sound without end (the stream stopped): the cap
    assert stuck.on_confirm_timeout(10.9) is Verdict.WAIT
    assert stuck.on_confirm_timeout(11.0) is Verdict.RESUME


def test_more_speech_pauses_a_resumed_reply_again_and_finals_are_counted() -> None:
    """Speech again after a resume pauses again (a new window); the interruption closes once
    the final of each of its segments is in; a backchannel final is absorbed."""
    it = Interruption("r_1", paused_at=0.0, confirm_s=1.5)
    it.on_speech_stopped(0.5)
    assert it.on_final("Mm-hmm.", words=False) is Verdict.RESUME
    it.resumed()
    assert it.absorbed == ["Mm-hmm."]
    assert it.on_speech_started(5.0) is Verdict.PAUSE
    assert it.paused and it.paused_at == 5.0 and it.deadline == 15.0 and not it.closed
    assert it.on_speech_started(5.5) is Verdict.WAIT  # already paused
    it.on_speech_stopped(6.0)
    assert it.on_final("", words=False) is Verdict.WAIT  # one final still due
    assert not it.closed
    assert it.on_final("Okay.", words=False) is Verdict.RESUME
    it.resumed()
    assert it.closed and it.absorbed == ["Mm-hmm.", "Okay."]
    two = Interruption("r_1", paused_at=0.0, confirm_s=1.5)  # "Yes." (pause) "Right."
    two.on_speech_stopped(0.4)
    two.on_speech_started(0.6)
    two.on_speech_stopped(0.9)
    assert two.on_final("Yes.", words=False) is Verdict.WAIT  # the second final is due
    assert two.on_final("Right.", words=False) is Verdict.RESUME
    assert two.absorbed == ["Yes.", "Right."]
    gone = Interruption("r_1", paused_at=0.0, confirm_s=1.5, paused=False)
    assert gone.on_speech_started(1.0, live=False) is Verdict.WAIT  # its reply has ended


def test_an_onset_pauses_and_a_sound_that_ends_short_of_speech_resumes_at_once() -> None:
    """Paused at a sound's onset (no final due yet): a sound that ends short of speech (a
    click) resumes now; one the VAD confirms as speech owes its final like any other."""
    click = Interruption("r_1", paused_at=1.0, confirm_s=1.5, finals_due=0)
    assert not click.closed
    assert click.on_onset_lost(1.2) is Verdict.RESUME
    click.resumed()
    assert click.closed
    speech = Interruption("r_1", paused_at=1.0, confirm_s=1.5, finals_due=0)
    assert speech.on_speech_started(1.15) is Verdict.WAIT  # already paused at the onset
    speech.on_speech_stopped(2.0)
    assert not speech.closed  # its final is due
    assert speech.on_final("Stop.", words=True) is Verdict.CUT
    # after a resume, a new onset pauses again; one that ends short while an earlier
    # segment's final is still due waits for that final
    again = Interruption("r_1", paused_at=0.0, confirm_s=1.5)
    again.on_speech_stopped(0.5)
    assert again.on_partial(False, 2.0) is Verdict.RESUME
    again.resumed()
    assert again.on_onset(3.0) is Verdict.PAUSE and again.paused_at == 3.0
    assert again.on_onset(3.1) is Verdict.WAIT
    assert again.on_onset_lost(3.2) is Verdict.WAIT  # the first segment's final is due
    assert again.on_final("", words=False) is Verdict.RESUME
    gone = Interruption("r_1", paused_at=0.0, confirm_s=1.5, paused=False)
    assert gone.on_onset(1.0, live=False) is Verdict.WAIT  # its reply has ended


def test_a_short_sound_holds_the_pause_for_hold_s_and_more_sound_keeps_it() -> None:
    """With hold_s, a sound that ended short of speech ("Stop,") resumes hold_s after it
    ended; a new onset within the hold keeps the reply paused, and becomes the speech whose
    final decides."""
    cough = Interruption("r_1", paused_at=1.0, confirm_s=2.0, hold_s=0.4, finals_due=0)
    assert cough.on_onset_lost(1.2) is Verdict.WAIT
    assert cough.deadline == pytest.approx(1.6)
    assert cough.on_confirm_timeout(1.5) is Verdict.WAIT
    assert cough.on_confirm_timeout(1.6) is Verdict.RESUME
    stop = Interruption("r_1", paused_at=1.0, confirm_s=2.0, hold_s=0.4, finals_due=0)
    stop.on_onset_lost(1.2)  # "Stop,"
    assert stop.on_onset(1.4) is Verdict.WAIT  # "I changed my mind": still paused
    assert stop.deadline == 11.0  # sounding: no resume while it goes on
    assert stop.on_speech_started(1.55) is Verdict.WAIT
    stop.on_speech_stopped(2.5)
    assert stop.deadline == 4.5  # its final is due: confirm_s after the sound
    assert stop.on_final("I changed my mind.", words=True) is Verdict.CUT
    # "Stop," heard as no words (the echo over it): its final holds the pause as well, and
    # the rest of the sentence within hold_s keeps it
    unread = Interruption("r_1", paused_at=1.0, confirm_s=2.0, hold_s=0.4)
    unread.on_speech_stopped(1.3)
    assert unread.on_final("", words=False, now=1.5) is Verdict.WAIT
    assert unread.deadline == pytest.approx(1.7) and not unread.closed
    assert unread.on_onset(1.6) is Verdict.WAIT  # "I changed my mind"
    assert unread.on_confirm_timeout(1.7) is Verdict.WAIT
    late = Interruption("r_1", paused_at=1.0, confirm_s=2.0, hold_s=0.4)
    late.on_speech_stopped(1.3)
    assert late.on_final("(coughs)", words=False, now=1.8) is Verdict.RESUME  # quiet enough


def test_a_held_sound_lets_the_reply_play_on_until_it_is_not_its_own_voice() -> None:
    """A sound judged by its sound before any pause (hold): the reply is not paused; if it
    stops sounding like the reply, the reply pauses then and the interruption goes on as any
    other; a held sound that ends leaves nothing paused, and its final closes it (or cuts)."""
    echo = Interruption("r_1", paused_at=1.0, confirm_s=1.5, paused=False, finals_due=0, pauses=0)
    assert echo.on_onset(1.0, hold=True) is Verdict.WAIT
    assert echo.held and not echo.paused
    assert echo.on_speech_started(1.1, hold=True) is Verdict.WAIT  # still held
    assert echo.on_onset(1.2) is Verdict.WAIT  # more of the same sound: nothing new
    echo.on_speech_stopped(2.0)
    assert not echo.held and not echo.closed  # its final is due
    assert echo.on_final("the weather in London", words=False, now=2.3) is Verdict.WAIT
    assert echo.closed and echo.pauses == 0  # never paused: nothing to resume

    user = Interruption("r_1", paused_at=1.0, confirm_s=1.5, paused=False, finals_due=0, pauses=0)
    user.on_speech_started(1.0, hold=True)
    assert user.hold_lost(1.6) is Verdict.PAUSE  # a user spoke over the echo
    assert user.paused and user.paused_at == 1.6 and not user.held and user.pauses == 1
    assert user.hold_lost(1.7) is Verdict.WAIT  # only once
    assert user.on_final("Wait, what time is it", words=True) is Verdict.CUT

    gone = Interruption("r_1", paused_at=1.0, confirm_s=1.5, paused=False, finals_due=0, pauses=0)
    gone.on_onset(1.0, hold=True)
    assert gone.hold_lost(1.2, live=False) is Verdict.WAIT and not gone.held  # the reply ended
    cough = Interruption("r_1", paused_at=1.0, confirm_s=1.5, paused=False, finals_due=0, pauses=0)
    cough.on_onset(1.0, hold=True)
    assert cough.on_onset_lost(1.1) is Verdict.WAIT and cough.closed


PLAYED = "Paris has a long and storied history, marked by"
# what other replies had played at a pause (the last word begun), for echoes heard there
WEATHER = "Sure, I can help you with that. The weather today is sunny with a high of"
TRAIN = "The train to Berlin leaves at half past nine from platform four, and the journey takes"
JOKE = "Here is a joke: why did the scarecrow win an award? Because he was outstanding"


@pytest.mark.parametrize(
    ("heard", "played", "own"),
    [
        # echoes as Whisper heard them in the tests (words re-cut, misheard)
        ("is a long and storied.", PLAYED, True),
        ("along in story.", PLAYED, True),
        ("has a long instance.", PLAYED, True),
        ("has a long answer.", PLAYED, True),
        # ... the cut word at its end finished as Whisper liked (CI: a reply cut by it), where
        # the reply paused in "sto-"
        ("as a long influence,", "The city of Paris has a long and sto", True),
        # ... its sounds heard as other words (CI: a reply cut by it)
        ("on the end story.", "The city of Paris has a long and storied", True),
        # ... numbers written as digits (piper's echoes, tidegate/bench: Whisper tiny.en)
        ("It takes about 6 hours.", TRAIN + " about six hours", True),
        # what a user says over it
        ("Wait, what about Friday?", PLAYED, False),
        ("What is the capital of France?", PLAYED, False),
        ("Stop, I changed my mind.", PLAYED, False),
        ("Tell me more about the history.", PLAYED, False),
        ("No, that's wrong.", PLAYED, False),
        ("stop", PLAYED, False),  # too short to tell: never an echo
        ("no", PLAYED, False),
        ("", PLAYED, False),
        # ... where one word of it is near a word the reply said: what is left without the
        # last word is too short to be judged alone ("Cancel" ~ "can help", "How about" ~
        # "Because he"), and the sounds of a question are not the reply's
        ("Cancel that.", WEATHER, False),
        ("How about tomorrow?", JOKE, False),
        ("Excuse me.", JOKE, False),
        ("Say that again.", TRAIN, False),
        ("Hang on, wait a minute.", WEATHER, False),
        ("Is it going to rain tomorrow?", TRAIN, False),
    ],
)
def test_what_the_reply_just_played_is_its_own(heard: str, played: str, own: bool) -> None:
    """A text within ECHO_DISTANCE edits per letter of a stretch of what the reply played, or
    ECHO_SOUND_DISTANCE edits per sound of its end, is its own voice coming back; what users
    say over it is not, nor is anything under ECHO_MIN_LETTERS letters."""
    assert echoed(heard, played) is own
    assert not echoed(heard, "")


def test_texts_are_compared_as_said() -> None:
    """Numbers are their words; a sound key makes spellings that sound alike one."""
    assert (
        spoken_letters("Nearly 2000 years, 21 of them") == "nearlytwothousandyearstwentyoneofthem"
    )
    assert number_words("115") == "one hundred fifteen"
    assert number_words("999999") == "nine hundred ninety nine thousand nine hundred ninety nine"
    assert number_words("1000000") == "one zero zero zero zero zero zero"
    # any run of digits an LLM may write (int() refuses over 4300 digits)
    assert spoken_letters("9" * 5000) == "nine" * 5000
    assert sound_key("a long and storied") == "alankantstarat"
    assert sound_key("on the end story") == "antantstara"
    assert sound_key("Photograph") == sound_key("fotograf")


def test_a_partial_near_the_replys_words_waits_for_the_final() -> None:
    """A partial about that near ("the long" for "a long") may be its echo misheard: it does
    not cut (the final decides); a question far from it does."""
    assert echoed("the long", PLAYED, partial=True)
    assert not echoed("the long", PLAYED)
    assert not echoed("wait, what about Friday", PLAYED, partial=True)
    assert echo_distance("is a long and storied", PLAYED) < 0.1
