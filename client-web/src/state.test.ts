// The event → state reducer: what the page shows for a sequence of server events.

import { describe, expect, it } from "vitest";

import type { ServerMessage } from "./protocol";
import {
  type Action,
  initialState,
  MAX_ERRORS,
  plainError,
  reduce,
  replySilenced,
  resumedText,
  type State,
  turnEndText,
} from "./state";

let seq = 0;
const ev = (m: Record<string, unknown>, arrivedMs = 1000): Action => ({
  kind: "event",
  message: { seq: ++seq, t: arrivedMs, ...m } as unknown as ServerMessage,
  arrivedMs,
});
const run = (actions: Action[], from: State = initialState): State => actions.reduce(reduce, from);

const created = (resumed = false) =>
  ev({ type: "session.created", session_id: "s_1", config: { mode: "assistant" }, limits: {}, ice_servers: [], resumed });

describe("reduce", () => {
  it("shows how the turn ended until the user speaks again", () => {
    const s = run([created(), ev({ type: "turn.end", reason: "semantic", probability: 0.93, audio_ms: 2100 })]);
    expect(s.turnEnd).toEqual({ reason: "semantic", probability: 0.93 });
    const silence = run([ev({ type: "turn.end", reason: "silence" })], s);
    expect(silence.turnEnd).toEqual({ reason: "silence", probability: null });
    const again = run([ev({ type: "vad.speech_started", audio_ms: 5000 })], silence);
    expect(again.turnEnd).toBeNull();
    expect(turnEndText({ reason: "semantic", probability: 0.93 })).toBe("Turn ended: you sounded finished (93% sure)");
    expect(turnEndText({ reason: "silence", probability: null })).toBe("Turn ended: silence");
    expect(turnEndText({ reason: "idle", probability: null })).toBe("You were quiet: the assistant goes on");
  });

  it("says the reply is speaking once its audio starts, not after it ended", () => {
    const s = run([
      created(),
      ev({ type: "response.created", response_id: "r_1" }),
      ev({ type: "response.text.delta", response_id: "r_1", delta: "Paris" }),
      ev({ type: "response.audio.started", response_id: "r_1" }),
    ]);
    expect(s.announcement).toBe("Speaking…");
    const done = run([ev({ type: "response.done", response_id: "r_1", status: "completed", text: "Paris." })], s);
    expect(run([ev({ type: "response.audio.started", response_id: "r_1" })], done)).toEqual(done);
  });

  it("shows a reply paused by a sound, resumed when it was not an interruption", () => {
    const s = run([
      created(),
      ev({ type: "response.created", response_id: "r_1" }),
      ev({ type: "response.text.delta", response_id: "r_1", delta: "Paris is the capital" }),
      ev({ type: "response.paused", response_id: "r_1", played_ms: 1840 }),
    ]);
    expect(s.turns.at(-1)).toMatchObject({ key: "r_1", paused: true, live: true });
    expect(s.announcement).toBe("Reply paused: listening…");
    const back = run(
      [ev({ type: "response.resumed", response_id: "r_1", played_ms: 1840, paused_ms: 900, reason: "backchannel", heard: "Yeah" })],
      s,
    );
    expect(back.turns.at(-1)).toMatchObject({ paused: false, resumed: { count: 1, reason: "backchannel", heard: "Yeah" } });
    expect(back.announcement).toBe("Reply resumed: “Yeah” was taken as a backchannel.");
    const twice = run(
      [
        ev({ type: "response.paused", response_id: "r_1", played_ms: 2400 }),
        ev({ type: "response.resumed", response_id: "r_1", played_ms: 2400, paused_ms: 700, reason: "no_words" }),
        ev({ type: "response.done", response_id: "r_1", status: "completed", text: "Paris is the capital." }),
      ],
      back,
    );
    expect(twice.turns.at(-1)).toMatchObject({ status: "completed", resumed: { count: 2, reason: "no_words", heard: "" } });
    expect(twice.turns.at(-1)?.paused).toBeUndefined();
    expect(resumedText({ reason: "few_words", heard: "Stop" })).toBe("Reply resumed: “Stop” was too short to interrupt.");
    expect(resumedText({ reason: "echo", heard: "is Paris" })).toBe("Reply resumed: “is Paris” was its own voice coming back.");
    // a pause for a reply that is over is ignored
    expect(run([ev({ type: "response.paused", response_id: "r_1", played_ms: 0 })], twice)).toEqual(twice);
  });

  it("silences the reply's audio from response.paused until it resumes or ends", () => {
    const playing = run([
      created(),
      ev({ type: "response.created", response_id: "r_1" }),
      ev({ type: "response.text.delta", response_id: "r_1", delta: "Paris" }),
    ]);
    expect(replySilenced(playing)).toBe(false);
    const paused = run([ev({ type: "response.paused", response_id: "r_1", played_ms: 900 })], playing);
    expect(replySilenced(paused)).toBe(true);
    const resumed = run(
      [ev({ type: "response.resumed", response_id: "r_1", played_ms: 900, paused_ms: 500, reason: "no_words" })],
      paused,
    );
    expect(replySilenced(resumed)).toBe(false);
    const cut = run(
      [
        ev({ type: "response.paused", response_id: "r_1", played_ms: 1400 }),
        ev({ type: "response.done", response_id: "r_1", status: "cancelled", text: "Paris" }),
      ],
      resumed,
    );
    expect(replySilenced(cut)).toBe(false); // the next reply is heard
  });

  it("replaces a segment's partials by its final, in place", () => {
    const s = run([
      created(),
      ev({ type: "asr.partial", segment_id: "g1", text: "the capital", audio_start_ms: 0, audio_end_ms: 900 }),
      ev({ type: "asr.partial", segment_id: "g1", text: "the capital of", audio_start_ms: 0, audio_end_ms: 1400 }),
    ]);
    expect(s.turns).toEqual([{ key: "g1", who: "user", text: "the capital of", live: true }]);
    const f = run([ev({ type: "asr.final", segment_id: "g1", text: " The capital of France?", audio_start_ms: 0, audio_end_ms: 2000 })], s);
    expect(f.turns).toEqual([{ key: "g1", who: "user", text: "The capital of France?", live: false }]);
    const empty = run([ev({ type: "asr.final", segment_id: "g1", text: "", audio_start_ms: 0, audio_end_ms: 2000 })], s);
    expect(empty.turns).toEqual([]);
  });

  it("leaves the turns and the stage timings alone for a final without words never shown", () => {
    const timing = { received: 10_000, engine_start: 10_020, engine_end: 10_120, sent: 10_121 };
    const s = run([
      created(),
      ev({ type: "asr.final", segment_id: "g1", text: "hi", audio_start_ms: 0, audio_end_ms: 900, timing }),
    ]);
    const cough = { ...timing, engine_end: 10_400, sent: 10_401 };
    const after = run([ev({ type: "asr.final", segment_id: "g2", text: "", audio_start_ms: 1000, audio_end_ms: 1300, timing: cough })], s);
    expect(after.turns).toEqual(s.turns);
    expect(after.stages["asr.final"]).toEqual(s.stages["asr.final"]);
  });

  it("shows a partial's tentative words after its committed text until the final", () => {
    const s = run([
      created(),
      ev({ type: "asr.partial", segment_id: "g1", text: "", tentative: "the capital", audio_start_ms: 0, audio_end_ms: 900 }),
    ]);
    expect(s.turns).toEqual([{ key: "g1", who: "user", text: "", tentative: "the capital", live: true }]);
    const more = run(
      [ev({ type: "asr.partial", segment_id: "g1", text: "the", tentative: "captain of", audio_start_ms: 0, audio_end_ms: 1400 })],
      s,
    );
    expect(more.turns).toEqual([{ key: "g1", who: "user", text: "the", tentative: "captain of", live: true }]);
    const none = run([ev({ type: "asr.partial", segment_id: "g1", text: "the capital", audio_start_ms: 0, audio_end_ms: 1900 })], more);
    expect(none.turns).toEqual([{ key: "g1", who: "user", text: "the capital", live: true }]);
    const f = run([ev({ type: "asr.final", segment_id: "g1", text: "The capital of France?", audio_start_ms: 0, audio_end_ms: 2000 })], more);
    expect(f.turns).toEqual([{ key: "g1", who: "user", text: "The capital of France?", live: false }]);
  });

  it("shows a spoken turn as the reply answers it: its segments' captions as one utterance", () => {
    const final = (id: string, text: string) =>
      ev({ type: "asr.final", segment_id: id, text, audio_start_ms: 0, audio_end_ms: 1000 });
    const s = run([
      created(),
      final("g1", "Hello."),
      ev({ type: "response.created", response_id: "r_1", input_text: "Hello.", segment_ids: ["g1"] }),
      ev({ type: "response.done", response_id: "r_1", status: "completed", text: "Hi!" }),
      final("g2", "I would like to book a table for it."),
      final("g3", "4 people to hide."),
      final("g4", "mm-hmm"), // not the turn's (the server absorbed it): it stays
      ev({
        type: "response.created",
        response_id: "r_2",
        input_text: " I would like to book a table for four people tonight.",
        segment_ids: ["g2", "g3", "g9"], // g9 was never shown (a final without words)
      }),
    ]);
    expect(s.turns.map((t) => [t.who, t.key, t.text])).toEqual([
      ["user", "g1", "Hello."],
      ["assistant", "r_1", "Hi!"],
      ["user", "g2", "I would like to book a table for four people tonight."],
      ["user", "g4", "mm-hmm"],
      ["assistant", "r_2", ""],
    ]);
    // a reply that names no turn (typed, or its own text) leaves the captions as they are
    const typed = run([final("g5", "Thanks."), ev({ type: "response.created", response_id: "r_3" })], s);
    expect(typed.turns.filter((t) => t.who === "user").map((t) => t.text)).toContain("Thanks.");
  });

  it("streams a reply from its deltas and marks a cut one interrupted", () => {
    const s = run([
      created(),
      ev({ type: "response.created", response_id: "r_1" }),
      ev({ type: "response.text.delta", response_id: "r_1", delta: "Paris is" }),
      ev({ type: "response.text.delta", response_id: "r_1", delta: " the capital" }),
    ]);
    expect(s.activeResponse).toBe("r_1");
    expect(s.turns.at(-1)).toEqual({ key: "r_1", who: "assistant", text: "Paris is the capital", live: true });
    const cut = run([ev({ type: "response.done", response_id: "r_1", status: "cancelled", text: "Paris is" })], s);
    expect(cut.activeResponse).toBeNull();
    expect(cut.turns.at(-1)).toMatchObject({ text: "Paris is the capital", live: false, status: "cancelled", heard: "Paris is" });
    expect(cut.announcement).toBe("Reply interrupted.");
    const done = run([ev({ type: "response.done", response_id: "r_1", status: "completed", text: "Paris is the capital." })], s);
    expect(done.turns.at(-1)).toMatchObject({ text: "Paris is the capital.", status: "completed" });
  });

  it("maps the ping to a round trip and the clock offset of the best sample", () => {
    let s = run([{ kind: "pong", tClient: 1000, tServer: 5030, arrivedMs: 1040 }]);
    expect(s.rttMs).toBe(40);
    expect(s.offsetMs).toBe(4010);
    s = run([{ kind: "pong", tClient: 2000, tServer: 6020, arrivedMs: 2010 }], s);
    expect(s.offsetMs).toBe(4015);
    s = run([{ kind: "pong", tClient: 3000, tServer: 7100, arrivedMs: 3100 }], s);
    expect(s.rttMs).toBe(100);
    expect(s.offsetMs).toBe(4015); // a slower sample does not replace a better one
  });

  it("breaks an event's timing into stages, network through the clock offset", () => {
    const timing = { received: 10_000, engine_start: 10_020, engine_end: 10_120, sent: 10_121 };
    const s = run([
      { kind: "pong", tClient: 0, tServer: 5000, arrivedMs: 0 }, // server clock 5 s ahead
      ev({ type: "asr.final", segment_id: "g1", text: "hi", audio_start_ms: 0, audio_end_ms: 1, timing }, 5_131),
    ]);
    expect(s.stages["asr.final"]).toEqual({ label: "asr.final", queueMs: 20, engineMs: 100, sendMs: 1, networkMs: 10 });
  });

  it("takes jitter from metrics and detections from vision results", () => {
    const s = run([
      ev({ type: "metrics", stats: { lanes: { media: { audio_rtp: { jitter_buffer: { jitter_ms: 3.5 } } } } } }),
      ev({ type: "vision.result", frame_ts: 66, detections: [{ label: "face", score: 0.9, box: [1, 2, 3, 4] }] }, 777),
    ]);
    expect(s.serverJitterMs).toBe(3.5);
    expect(s.detections).toEqual({ frameTs: 66, items: [{ label: "face", score: 0.9, box: [1, 2, 3, 4] }], atMs: 777 });
    expect(run([ev({ type: "metrics", stats: { lanes: {} } })], s).serverJitterMs).toBe(3.5);
  });

  it("says errors in plain words, keeps the last few, and announces them", () => {
    const s = run([ev({ type: "error", code: "overloaded", message: "asr queue full" })]);
    expect(s.errors[0]!.text).toBe("The server is busy; try again in a moment. (asr queue full)");
    expect(s.announcement).toBe(s.errors[0]!.text);
    const many = run(Array.from({ length: 10 }, (_, i) => ({ kind: "problem", text: `p${i}` }) as Action), s);
    expect(many.errors.map((e) => e.text)).toEqual(["p6", "p7", "p8", "p9"].slice(-MAX_ERRORS));
    expect(run([{ kind: "dismiss", id: many.errors[0]!.id }], many).errors).toHaveLength(MAX_ERRORS - 1);
    expect(plainError("something_new", "")).toBe("The server refused a request.");
  });

  it("announces connection changes and a resumed session", () => {
    let s = run([{ kind: "link", link: "connecting" }, created()]);
    expect(s.link).toBe("open");
    expect(s.announcement).toBe("Connected (assistant).");
    s = run([{ kind: "link", link: "reconnecting", detail: "The connection to the server dropped." }], s);
    expect(s.announcement).toBe("Connection lost; reconnecting… The connection to the server dropped.");
    s = run([created(true)], s);
    expect(s.resumedCount).toBe(1);
    expect(s.announcement).toBe("Reconnected; the session went on.");
    s = run([{ kind: "link", link: "closed" }], s);
    expect(s.sessionId).toBeNull();
  });

  it("keeps the transcript bounded and shows typed text as the user's", () => {
    const typed = Array.from({ length: 60 }, (_, i) => ({ kind: "typed", text: `t${i}` }) as Action);
    const s = run(typed);
    expect(s.turns).toHaveLength(50);
    expect(s.turns.at(-1)).toMatchObject({ who: "user", text: "t59", live: false });
  });
});
