"""One valid example of every message type (used by round trips, vectors and fuzz seeds)."""

from __future__ import annotations

from tidegate.protocol.messages import (
    CLIENT_MESSAGES,
    SERVER_MESSAGES,
    AsrFinal,
    AsrPartial,
    ClientMessage,
    Detection,
    Error,
    FlowCredit,
    FlowLag,
    FunctionCallOutput,
    IceServer,
    InputAudio,
    InputFrame,
    InputSensor,
    InputText,
    Metrics,
    OutputAudio,
    Ping,
    Pong,
    ResponseAudioStarted,
    ResponseCancel,
    ResponseCreate,
    ResponseCreated,
    ResponseDone,
    ResponseFunctionCallDelta,
    ResponseFunctionCallDone,
    ResponsePaused,
    ResponseResumed,
    ResponseTextDelta,
    RtcAnswer,
    RtcCandidate,
    RtcOffer,
    SensorReading,
    SensorSubscribe,
    SensorUnsubscribe,
    ServerMessage,
    ServerRtcCandidate,
    SessionClose,
    SessionClosed,
    SessionCreate,
    SessionCreated,
    SessionUpdate,
    SessionUpdated,
    Timing,
    TurnEnd,
    VadSpeechStarted,
    VadSpeechStopped,
    VisionResult,
)

T0 = 1_795_000_000_000.5
TIMING = Timing(received=T0, engine_start=T0 + 1.25, engine_end=T0 + 9.5)
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"

CLIENT_SAMPLES: list[ClientMessage] = [
    SessionCreate(id="c1", config={"mode": "loopback"}),
    SessionCreate(id="c2", session_id="s_abc"),
    SessionUpdate(id="c3", config={"mode": "assistant", "vad": {"threshold": 0.5}}),
    SessionClose(id="c4"),
    Ping(id="c5", t_client=T0),
    InputText(id="c6", text="What is the capital of France?"),
    InputAudio(pcm=b"\x00\x01" * 160, format="s16le", sample_rate=16000, channels=1, ts=20.0),
    InputAudio(
        pcm=b"\x00\x01" * 160,
        format="s16le",
        sample_rate=16000,
        channels=1,
        ts=40.0,
        playout_delay_ms=120.0,
    ),
    InputFrame(image=b"\xff\xd8\xff\xe0", encoding="jpeg", ts=33.0),
    InputFrame(image=b"\x00" * 12, encoding="rgb24", width=2, height=2),
    InputSensor(channel="imu.accel", ts=1000.0, values=(0.1, -9.81, 0.02)),
    SensorSubscribe(id="c12", session_id="s_kiosk7", channels=("imu.accel", "temp")),
    SensorSubscribe(session_id="s_kiosk7"),
    SensorUnsubscribe(id="c13", session_id="s_kiosk7"),
    ResponseCreate(id="c7", text="Say hello"),
    ResponseCreate(),
    ResponseCancel(response_id="r_1"),
    FunctionCallOutput(id="c14", call_id="call_7", output='{"temperature_c": 21}'),
    RtcOffer(id="c8", sdp=SDP),
    RtcOffer(id="c14", sdp=SDP, echo_cancellation=False),
    RtcOffer(id="c15", sdp=SDP, echo_cancellation=False, playout_delay_ms=80.0),
    RtcCandidate(
        candidate="candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host",
        sdp_mid="0",
        sdp_mline_index=0,
    ),
    RtcCandidate(candidate=""),
]

SERVER_SAMPLES: list[ServerMessage] = [
    SessionCreated(
        seq=1,
        t=T0,
        ref="c1",
        session_id="s_abc",
        config={"mode": "loopback"},
        limits={"max_message_bytes": 1048576},
        ice_servers=(
            IceServer(urls=("turn:127.0.0.1:3478",), username="1795000000:alice", credential="x"),
        ),
    ),
    SessionUpdated(seq=2, t=T0, config={"mode": "loopback"}),
    SessionClosed(seq=3, t=T0, reason="closed by the client"),
    Pong(seq=4, t=T0, ref="c5", t_client=T0 - 0.5, t_server=T0),
    Error(
        seq=5, t=T0, ref="c6", code="invalid_field", message="input.text.text: expected a string"
    ),
    Error(seq=6, t=T0, code="overloaded", message="try later", retry_after_ms=1000.0),
    VadSpeechStarted(seq=7, t=T0, audio_ms=1200.0, timing=TIMING),
    VadSpeechStopped(seq=8, t=T0, audio_ms=3400.0),
    AsrPartial(
        seq=9,
        t=T0,
        segment_id="g1",
        text="the capital",
        audio_start_ms=1200.0,
        audio_end_ms=2000.0,
        timing=TIMING,
        tentative="of France",
    ),
    AsrFinal(
        seq=10,
        t=T0,
        segment_id="g1",
        text="the capital of France",
        audio_start_ms=1200.0,
        audio_end_ms=3400.0,
        timing=TIMING,
    ),
    VisionResult(
        seq=11,
        t=T0,
        frame_ts=33.0,
        detections=(Detection(label="face", score=0.93, box=(247.0, 68.0, 92.0, 92.0)),),
        timing=TIMING,
    ),
    VisionResult(seq=12, t=T0, frame_ts=66.0, detections=()),
    ResponseCreated(
        seq=13,
        t=T0,
        response_id="r_1",
        input_text="What is the capital of France?",
        segment_ids=("g1", "g2"),
    ),
    ResponseTextDelta(seq=14, t=T0, response_id="r_1", delta="Paris", timing=TIMING),
    ResponseAudioStarted(seq=14, t=T0, response_id="r_1"),
    ResponseDone(seq=15, t=T0, response_id="r_1", status="cancelled", text="The capital"),
    ResponseFunctionCallDelta(
        seq=23, t=T0, response_id="r_2", call_id="call_7", name="get_weather", arguments='{"city": '
    ),
    ResponseFunctionCallDone(
        seq=24,
        t=T0,
        response_id="r_2",
        call_id="call_7",
        name="get_weather",
        arguments='{"city": "Paris"}',
    ),
    ResponseDone(
        seq=25,
        t=T0,
        response_id="r_2",
        status="failed",
        text="",
        reason="no function_call.output for call_7 within 30 s",
    ),
    OutputAudio(
        seq=16,
        t=T0,
        pcm=b"\x01\x00" * 160,
        format="s16le",
        sample_rate=48000,
        channels=1,
        ts=0.0,
        response_id="r_1",
    ),
    RtcAnswer(seq=17, t=T0, sdp=SDP),
    ServerRtcCandidate(
        seq=18, t=T0, candidate="candidate:1 1 udp 2130706431 127.0.0.1 40001 typ host", sdp_mid="0"
    ),
    FlowCredit(seq=19, t=T0, messages=64, bytes=2097152),
    FlowLag(seq=20, t=T0, lane="audio", lag_ms=240.0, dropped_ms=0.0),
    Metrics(seq=21, t=T0, stats={"audio": {"packets": 100, "loss": 0.0}, "lanes": [1, 2]}),
    SensorReading(
        seq=22,
        t=T0,
        session_id="s_kiosk7",
        channel="imu.accel",
        ts=1000.0,
        values=(0.1, -9.81, 0.02),
        dropped=3,
    ),
    TurnEnd(seq=23, t=T0, reason="semantic", probability=0.93, audio_ms=3400.0),
    TurnEnd(seq=24, t=T0, reason="silence"),
    ResponsePaused(seq=26, t=T0, response_id="r_1", played_ms=1840.0),
    ResponseResumed(
        seq=27,
        t=T0,
        response_id="r_1",
        played_ms=1840.0,
        paused_ms=910.0,
        reason="backchannel",
        heard="Mm-hmm.",
    ),
]


# Both directions, client samples first.
SAMPLES: list[ClientMessage | ServerMessage] = [*CLIENT_SAMPLES, *SERVER_SAMPLES]


def test_samples_cover_the_catalogue() -> None:
    """Every message type has at least one sample."""
    assert {m.TYPE for m in CLIENT_SAMPLES} == set(CLIENT_MESSAGES)
    assert {m.TYPE for m in SERVER_SAMPLES} == set(SERVER_MESSAGES)
