// What the page shows, as one pure reducer over what happened: server events (with the time
// they arrived on this client's clock) and the connection's own changes. No I/O, no clock:
// times come in with the actions, so the reducer is tested without a server.

import type { Detection, ServerMessage, Timing } from "./protocol";

export type Link = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface Turn {
  /** segment id (user), response id (assistant) or a local id (typed text). */
  key: string;
  who: "user" | "assistant";
  text: string;
  /** user: a partial still growing; assistant: still streaming. */
  live: boolean;
  /** user, live: the words heard beyond `text` so far, which the next partial may change. */
  tentative?: string;
  status?: "completed" | "cancelled" | "failed";
  /** A cut reply: the part the user heard before the cut (a prefix of `text`). */
  heard?: string;
  /** A reply paused because the user made a sound over it, while the server judges it. */
  paused?: boolean;
  /** A reply that resumed after such sounds (false interruptions): how often, and why last. */
  resumed?: { count: number; reason: string; heard: string };
}

export interface Stage {
  /** What the numbers are about (asr.final, first token, ...). */
  label: string;
  queueMs?: number;
  engineMs?: number;
  sendMs?: number;
  /** sent (server clock) to arrival (client clock), through the clock offset. */
  networkMs?: number;
}

export interface Notice {
  id: number;
  text: string;
}

export interface State {
  link: Link;
  media: string;
  sessionId: string | null;
  resumedCount: number;
  mode: string | null;
  userSpeaking: boolean;
  /** How the server decided the user's last turn had ended (turn.end), while it is current. */
  turnEnd: { reason: string; probability: number | null } | null;
  turns: Turn[];
  /** The reply being generated or spoken, if any. */
  activeResponse: string | null;
  detections: { frameTs: number; items: Detection[]; atMs: number } | null;
  rttMs: number | null;
  /** Server clock minus client clock, from the ping with the smallest round trip. */
  offsetMs: number | null;
  bestRttMs: number | null;
  stages: Record<string, Stage>;
  /** Inbound audio jitter the server measures (RFC 3550, from its jitter buffer). */
  serverJitterMs: number | null;
  /** Jitter of the reply audio as this browser receives it (getStats). */
  replyJitterMs: number | null;
  errors: Notice[];
  /** The latest status change, for the aria-live region. */
  announcement: string;
  nextId: number;
}

export const MAX_TURNS = 50;
export const MAX_ERRORS = 4;

export const initialState: State = {
  link: "idle",
  media: "none",
  sessionId: null,
  resumedCount: 0,
  mode: null,
  userSpeaking: false,
  turnEnd: null,
  turns: [],
  activeResponse: null,
  detections: null,
  rttMs: null,
  offsetMs: null,
  bestRttMs: null,
  stages: {},
  serverJitterMs: null,
  replyJitterMs: null,
  errors: [],
  announcement: "",
  nextId: 1,
};

export type Action =
  | { kind: "event"; message: ServerMessage; arrivedMs: number }
  | { kind: "link"; link: Link; detail?: string }
  | { kind: "media"; state: string }
  | { kind: "pong"; tClient: number; tServer: number; arrivedMs: number }
  | { kind: "typed"; text: string }
  | { kind: "reply-jitter"; jitterMs: number }
  | { kind: "problem"; text: string }
  | { kind: "dismiss"; id: number };

// Error codes in plain words (docs/protocol.md, "Error codes"); the server's message follows.
const PLAIN: Record<string, string> = {
  bad_message: "The server could not read a message from this page.",
  unknown_type: "The server does not know a message this page sent.",
  invalid_field: "The server refused a message from this page.",
  too_large: "A message was too large for the server.",
  unexpected_message: "The server did not expect that right now.",
  flow_violation: "This page sent faster than the server allows.",
  unauthorized: "The server did not accept the sign-in. Reconnect to get a new one.",
  forbidden: "This page is not allowed to use the server.",
  not_found: "There was nothing to act on (the session or reply is gone).",
  unsupported: "The server does not offer that (is the engine running?).",
  rate_limited: "Too many requests; wait a moment and try again.",
  overloaded: "The server is busy; try again in a moment.",
  timeout: "The server took too long to answer.",
  bad_sdp: "The camera/microphone connection could not be set up.",
  internal: "Something went wrong on the server.",
};

export function plainError(code: string, message: string): string {
  const words = PLAIN[code] ?? "The server refused a request.";
  return message ? `${words} (${message})` : words;
}

function notice(s: State, text: string): State {
  const errors = [...s.errors, { id: s.nextId, text }].slice(-MAX_ERRORS);
  return { ...s, errors, nextId: s.nextId + 1, announcement: text };
}

function upsertTurn(turns: Turn[], turn: Turn): Turn[] {
  const i = turns.findIndex((t) => t.key === turn.key && t.who === turn.who);
  if (i < 0) return [...turns, turn].slice(-MAX_TURNS);
  const next = turns.slice();
  next[i] = turn;
  return next;
}

/** The user's turn as the reply answers it: the captions of its segments (each segment
 * captioned alone) become one utterance with the words the server answered, which it may
 * have decoded whole where the user paused mid-sentence. Segments not shown are skipped. */
function spokenTurn(turns: Turn[], segmentIds: string[], text: string): Turn[] {
  const ids = new Set(segmentIds);
  const first = turns.findIndex((t) => t.who === "user" && ids.has(t.key));
  const at = turns[first];
  if (!at || !text.trim()) return turns;
  const merged: Turn = { key: at.key, who: "user", text: text.trim(), live: false };
  return turns.flatMap((t, i) => (i === first ? [merged] : t.who === "user" && ids.has(t.key) ? [] : [t]));
}

function stage(label: string, timing: Timing | undefined, arrivedMs: number, offsetMs: number | null): Stage {
  const st: Stage = { label };
  if (!timing) return st;
  const { received, engine_start: start, engine_end: end, sent } = timing;
  if (received !== undefined && start !== undefined) st.queueMs = start - received;
  if (start !== undefined && end !== undefined) st.engineMs = end - start;
  if (end !== undefined && sent !== undefined) st.sendMs = sent - end;
  if (sent !== undefined && offsetMs !== null) st.networkMs = arrivedMs + offsetMs - sent;
  return st;
}

/** metrics: lanes.media.audio_rtp.jitter_buffer.jitter_ms (docs/media.md, "Loopback"). */
function jitterFrom(stats: unknown): number | null {
  let node: unknown = stats;
  for (const key of ["lanes", "media", "audio_rtp", "jitter_buffer", "jitter_ms"]) {
    node = node && typeof node === "object" ? (node as Record<string, unknown>)[key] : undefined;
  }
  return typeof node === "number" ? node : null;
}

function onEvent(s: State, m: ServerMessage, arrivedMs: number): State {
  switch (m.type) {
    case "session.created": {
      const mode = typeof m.config.mode === "string" ? m.config.mode : null;
      const resumed = m.resumed === true;
      return {
        ...s,
        link: "open",
        sessionId: m.session_id,
        mode,
        resumedCount: s.resumedCount + (resumed ? 1 : 0),
        announcement: resumed ? "Reconnected; the session went on." : `Connected (${mode ?? "session"}).`,
      };
    }
    case "session.closed":
      return { ...s, link: "closed", activeResponse: null, announcement: `Session ended: ${m.reason || "closed"}.` };
    case "error":
      return notice(s, plainError(m.code, m.message));
    case "vad.speech_started":
      return { ...s, userSpeaking: true, turnEnd: null };
    case "turn.end":
      return { ...s, turnEnd: { reason: m.reason, probability: m.probability ?? null } };
    case "vad.speech_stopped":
      return { ...s, userSpeaking: false };
    case "asr.partial":
    case "asr.final": {
      const final = m.type === "asr.final";
      const tentative = final ? "" : (m.tentative ?? "").trim();
      const turn: Turn = { key: m.segment_id, who: "user", text: m.text.trim(), live: !final };
      // Every segment ends with a final: one with no words removes its partials (nothing was
      // said: a cough, a scrap, dropped audio) and times nothing the user said.
      if (final && !m.text.trim()) {
        return { ...s, turns: s.turns.filter((t) => !(t.who === "user" && t.key === m.segment_id)) };
      }
      const turns = upsertTurn(s.turns, tentative ? { ...turn, tentative } : turn);
      const stages = { ...s.stages, [m.type]: stage(m.type, m.timing, arrivedMs, s.offsetMs) };
      return { ...s, turns, stages };
    }
    case "vision.result":
      return {
        ...s,
        detections: { frameTs: m.frame_ts, items: m.detections, atMs: arrivedMs },
        stages: { ...s.stages, vision: stage("vision.result", m.timing, arrivedMs, s.offsetMs) },
      };
    case "response.created": {
      const heard = m.input_text !== undefined && m.segment_ids ? spokenTurn(s.turns, m.segment_ids, m.input_text) : s.turns;
      return {
        ...s,
        activeResponse: m.response_id,
        turns: upsertTurn(heard, { key: m.response_id, who: "assistant", text: "", live: true }),
        announcement: "Replying…",
      };
    }
    case "response.text.delta": {
      const prev = s.turns.find((t) => t.who === "assistant" && t.key === m.response_id);
      if (prev && !prev.live) return s; // a delta after done (never expected): ignored
      const first = !prev || prev.text === "";
      const turn = { key: m.response_id, who: "assistant" as const, text: (prev?.text ?? "") + m.delta, live: true };
      const stages = first
        ? { ...s.stages, first_token: stage("first token", m.timing, arrivedMs, s.offsetMs) }
        : s.stages;
      return { ...s, turns: upsertTurn(s.turns, turn), stages };
    }
    case "response.audio.started": {
      const prev = s.turns.find((t) => t.who === "assistant" && t.key === m.response_id);
      return prev?.live ? { ...s, announcement: "Speaking…" } : s;
    }
    case "response.paused":
    case "response.resumed": {
      const prev = s.turns.find((t) => t.who === "assistant" && t.key === m.response_id);
      if (!prev || !prev.live) return s; // after its done (never expected): ignored
      if (m.type === "response.paused")
        return { ...s, turns: upsertTurn(s.turns, { ...prev, paused: true }), announcement: "Reply paused: listening…" };
      const resumed = { count: (prev.resumed?.count ?? 0) + 1, reason: m.reason, heard: m.heard ?? "" };
      const turn = { ...prev, paused: false, resumed };
      return { ...s, turns: upsertTurn(s.turns, turn), announcement: resumedText(resumed) };
    }
    case "response.done": {
      const prev = s.turns.find((t) => t.who === "assistant" && t.key === m.response_id);
      // cancelled: `text` is what was heard before the cut; keep what was shown, and say
      // which part of it was heard.
      const cut = m.status === "cancelled";
      const text = cut ? (prev?.text ?? m.text) : m.text || (prev?.text ?? "");
      const turn: Turn = { key: m.response_id, who: "assistant", text, live: false, status: m.status };
      if (prev?.resumed) turn.resumed = prev.resumed;
      if (cut && text.startsWith(m.text)) turn.heard = m.text;
      const words = { completed: "Reply finished.", cancelled: "Reply interrupted.", failed: "The reply failed." };
      return {
        ...s,
        turns: upsertTurn(s.turns, turn),
        activeResponse: s.activeResponse === m.response_id ? null : s.activeResponse,
        stages: { ...s.stages, reply: stage("whole reply", m.timing, arrivedMs, s.offsetMs) },
        announcement: words[m.status] ?? s.announcement,
      };
    }
    case "flow.lag":
      return m.dropped_ms > 0
        ? notice(s, `The server fell behind and skipped ${Math.round(m.dropped_ms)} ms of ${m.lane}.`)
        : s;
    case "metrics": {
      const j = jitterFrom(m.stats);
      return j === null ? s : { ...s, serverJitterMs: j };
    }
    default:
      return s;
  }
}

const LINK_WORDS: Record<Link, string> = {
  idle: "Not connected.",
  connecting: "Connecting…",
  open: "Connected.",
  reconnecting: "Connection lost; reconnecting…",
  closed: "Disconnected.",
};

export function reduce(s: State, a: Action): State {
  switch (a.kind) {
    case "event":
      return onEvent(s, a.message, a.arrivedMs);
    case "link": {
      const announcement = a.detail ? `${LINK_WORDS[a.link]} ${a.detail}` : LINK_WORDS[a.link];
      const reset = a.link === "closed" ? { sessionId: null, activeResponse: null, userSpeaking: false } : {};
      return { ...s, ...reset, link: a.link, announcement };
    }
    case "media":
      return { ...s, media: a.state, announcement: a.state === "failed" ? "Camera and microphone link failed." : s.announcement };
    case "pong": {
      const rtt = a.arrivedMs - a.tClient;
      const best = s.bestRttMs === null || rtt <= s.bestRttMs;
      return {
        ...s,
        rttMs: rtt,
        bestRttMs: best ? rtt : s.bestRttMs,
        offsetMs: best ? a.tServer - (a.tClient + rtt / 2) : s.offsetMs,
      };
    }
    case "typed":
      return {
        ...s,
        turns: upsertTurn(s.turns, { key: `typed-${s.nextId}`, who: "user", text: a.text, live: false }),
        nextId: s.nextId + 1,
      };
    case "reply-jitter":
      return { ...s, replyJitterMs: a.jitterMs };
    case "problem":
      return notice(s, a.text);
    case "dismiss":
      return { ...s, errors: s.errors.filter((e) => e.id !== a.id) };
  }
}

/** Whether the reply's audio must be silent now: it is paused (response.paused) while the
 * server judges a sound over it; it plays on at response.resumed, and ends at response.done. */
export function replySilenced(s: State): boolean {
  return s.turns.some((t) => t.who === "assistant" && t.live && t.paused === true);
}

/** Why a paused reply went on (response.resumed), in words. */
export function resumedText(r: { reason: string; heard: string }): string {
  const heard = r.heard.trim();
  if (r.reason === "backchannel") return `Reply resumed: “${heard}” was taken as a backchannel.`;
  if (r.reason === "few_words") return `Reply resumed: “${heard}” was too short to interrupt.`;
  if (r.reason === "echo") return `Reply resumed: “${heard}” was its own voice coming back.`;
  return "Reply resumed: no words were heard.";
}

/** How the server decided the user had finished (turn.end), in words. */
export function turnEndText(t: { reason: string; probability: number | null }): string {
  const score = t.probability === null ? "" : ` (${Math.round(t.probability * 100)}% sure)`;
  if (t.reason === "semantic") return `Turn ended: you sounded finished${score}`;
  if (t.reason === "timeout") return `Turn ended: waited for more${score}`;
  if (t.reason === "commit") return "Turn ended: committed";
  if (t.reason === "idle") return "You were quiet: the assistant goes on";
  return "Turn ended: silence";
}
