// The tidegate protocol v1 as this client uses it (docs/protocol.md is the contract): the
// messages it sends and reads, CBOR framing, and the checks that keep a malformed server
// message from reaching the UI. Lenient with the server, as the protocol asks: unknown fields
// are ignored and unknown message types pass through as `{ type }`.

import { CborError, type CborValue, decode, encode, Float64 } from "./cbor";

export const SUBPROTOCOL = "tidegate.v1.cbor";
export const BEARER_PREFIX = "tidegate.bearer.";
export const CONTROL_PATH = "/v1/control";
/** Nesting accepted in a server message: a guard against runaway input, looser than the
 * server's own `max_depth` (8, for what clients send), since metrics maps nest deeply. */
export const MAX_DEPTH = 32;

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type Config = { [key: string]: Json };

export interface Timing {
  received?: number;
  engine_start?: number;
  engine_end?: number;
  sent?: number;
}

export interface Detection {
  label: string;
  score: number;
  /** [x, y, w, h] in the frame's pixels. */
  box: number[];
}

export interface IceServer {
  urls: string[];
  username?: string;
  credential?: string;
}

// -- client to server -------------------------------------------------------------------------

export type ClientMessage =
  | { type: "session.create"; id?: string; config?: Config; session_id?: string }
  | { type: "session.update"; id?: string; config: Config }
  | { type: "session.close"; id?: string }
  | { type: "ping"; id?: string; t_client: number }
  | { type: "input.text"; id?: string; text: string }
  | { type: "response.create"; id?: string; text?: string }
  | { type: "response.cancel"; id?: string; response_id?: string }
  | { type: "function_call.output"; id?: string; call_id: string; output: string }
  | { type: "rtc.offer"; id?: string; sdp: string; echo_cancellation?: boolean; playout_delay_ms?: number }
  | {
      type: "rtc.candidate";
      id?: string;
      candidate: string;
      sdp_mid?: string;
      sdp_mline_index?: number;
    };

// -- server to client -------------------------------------------------------------------------

interface Envelope {
  seq: number;
  t: number;
  ref?: string;
}

export type ServerMessage = Envelope &
  (
    | {
        type: "session.created";
        session_id: string;
        config: Config;
        limits: Config;
        ice_servers: IceServer[];
        resumed?: boolean;
      }
    | { type: "session.updated"; config: Config }
    | { type: "session.closed"; reason: string }
    | { type: "pong"; t_client: number; t_server: number }
    | { type: "error"; code: string; message: string; retry_after_ms?: number }
    | { type: "vad.speech_started" | "vad.speech_stopped"; audio_ms: number; timing?: Timing }
    | {
        type: "turn.end";
        reason: "semantic" | "silence" | "timeout" | "commit" | "idle";
        probability?: number;
        audio_ms?: number;
      }
    | {
        type: "asr.partial" | "asr.final";
        segment_id: string;
        text: string;
        audio_start_ms: number;
        audio_end_ms: number;
        timing?: Timing;
        /** asr.partial: what is heard beyond `text` now; the next partial may change it. */
        tentative?: string;
      }
    | { type: "vision.result"; frame_ts: number; detections: Detection[]; timing?: Timing }
    | {
        type: "response.created";
        response_id: string;
        /** A reply to a spoken turn: the words it answers, from these segments (in order). */
        input_text?: string;
        segment_ids?: string[];
      }
    | { type: "response.text.delta"; response_id: string; delta: string; timing?: Timing }
    | { type: "response.audio.started"; response_id: string }
    | { type: "response.paused"; response_id: string; played_ms: number }
    | {
        type: "response.resumed";
        response_id: string;
        played_ms: number;
        paused_ms: number;
        reason: "no_words" | "backchannel" | "few_words" | "echo";
        heard?: string;
      }
    | {
        type: "response.done";
        response_id: string;
        status: "completed" | "cancelled" | "failed";
        text: string;
        timing?: Timing;
        reason?: string;
        usage?: { input_tokens: number; cached_tokens?: number; output_tokens: number };
      }
    | {
        type: "response.function_call.delta" | "response.function_call.done";
        response_id: string;
        call_id: string;
        name: string;
        arguments: string;
      }
    | { type: "rtc.answer"; sdp: string }
    | { type: "rtc.candidate"; candidate: string; sdp_mid?: string; sdp_mline_index?: number }
    | { type: "flow.credit"; messages: number; bytes: number }
    | { type: "flow.lag"; lane: string; lag_ms: number; dropped_ms: number }
    | { type: "metrics"; stats: Config }
    | {
        type: "output.audio";
        pcm: Uint8Array;
        format: string;
        sample_rate: number;
        channels: number;
        ts?: number;
        response_id?: string;
      }
  );

export type ServerType = ServerMessage["type"];

/** A server message that does not decode or does not have the shape its type promises. */
export class ProtocolError extends Error {
  override name = "ProtocolError";
}

// What each field must be: s string, n number, i integer, b boolean, a list, m map, y bytes.
// Required unless marked "?". Only the fields this client reads are checked.
type Kind = "s" | "n" | "i" | "b" | "a" | "m" | "y";
const SERVER_FIELDS: Record<ServerType, Record<string, `${Kind}` | `${Kind}?`>> = {
  "session.created": { session_id: "s", config: "m", limits: "m", ice_servers: "a", resumed: "b?" },
  "session.updated": { config: "m" },
  "session.closed": { reason: "s" },
  pong: { t_client: "n", t_server: "n" },
  error: { code: "s", message: "s", retry_after_ms: "n?" },
  "vad.speech_started": { audio_ms: "n", timing: "m?" },
  "vad.speech_stopped": { audio_ms: "n", timing: "m?" },
  "turn.end": { reason: "s", probability: "n?", audio_ms: "n?" },
  "asr.partial": { segment_id: "s", text: "s", audio_start_ms: "n", audio_end_ms: "n", timing: "m?", tentative: "s?" },
  "asr.final": { segment_id: "s", text: "s", audio_start_ms: "n", audio_end_ms: "n", timing: "m?" },
  "vision.result": { frame_ts: "n", detections: "a", timing: "m?" },
  "response.created": { response_id: "s", input_text: "s?", segment_ids: "a?" },
  "response.text.delta": { response_id: "s", delta: "s", timing: "m?" },
  "response.audio.started": { response_id: "s" },
  "response.paused": { response_id: "s", played_ms: "n" },
  "response.resumed": { response_id: "s", played_ms: "n", paused_ms: "n", reason: "s", heard: "s?" },
  "response.done": { response_id: "s", status: "s", text: "s", timing: "m?", reason: "s?" },
  "response.function_call.delta": { response_id: "s", call_id: "s", name: "s", arguments: "s" },
  "response.function_call.done": { response_id: "s", call_id: "s", name: "s", arguments: "s" },
  "rtc.answer": { sdp: "s" },
  "rtc.candidate": { candidate: "s", sdp_mid: "s?", sdp_mline_index: "i?" },
  "flow.credit": { messages: "i", bytes: "i" },
  "flow.lag": { lane: "s", lag_ms: "n", dropped_ms: "n" },
  metrics: { stats: "m" },
  "output.audio": { pcm: "y", format: "s", sample_rate: "i", channels: "i", ts: "n?" },
};

/** The server message types this client reads (others pass through as unknown). */
export const SERVER_TYPES = new Set(Object.keys(SERVER_FIELDS));

// Fields whose numbers are floats on the wire even when integral (the server encodes every
// float as 64 bits). Free-form maps (config, limits, stats) are not walked: there an integral
// number is an integer.
const FLOAT_FIELDS = new Set([
  "t",
  "t_client",
  "t_server",
  "ts",
  "audio_ms",
  "playout_delay_ms",
  "played_ms",
  "paused_ms",
  "audio_start_ms",
  "audio_end_ms",
  "frame_ts",
  "lag_ms",
  "dropped_ms",
  "retry_after_ms",
  "values",
  "score",
  "box",
]);
const RECORD_FIELDS = new Set(["timing", "detections"]);

function floats(value: unknown): CborValue {
  if (typeof value === "number") return new Float64(value);
  if (Array.isArray(value)) return value.map(floats);
  return value as CborValue;
}

function toWire(record: { [key: string]: unknown }): { [key: string]: CborValue } {
  const out: { [key: string]: CborValue } = {};
  for (const [key, value] of Object.entries(record)) {
    if (FLOAT_FIELDS.has(key)) out[key] = floats(value);
    else if (key === "timing" && value && typeof value === "object")
      out[key] = Object.fromEntries(Object.entries(value).map(([k, v]) => [k, floats(v)]));
    else if (RECORD_FIELDS.has(key) && Array.isArray(value))
      out[key] = value.map((r) => toWire(r as { [key: string]: unknown }));
    else out[key] = value as CborValue;
  }
  return out;
}

/** A message as CBOR bytes, floats where the protocol has floats. */
export function encodeMessage(message: ClientMessage | ServerMessage): Uint8Array {
  return encode(toWire(message as unknown as { [key: string]: unknown }));
}

function kindOk(kind: Kind, v: unknown): boolean {
  switch (kind) {
    case "s":
      return typeof v === "string";
    case "n":
      return typeof v === "number";
    case "i":
      return typeof v === "number" && Number.isInteger(v);
    case "b":
      return typeof v === "boolean";
    case "a":
      return Array.isArray(v);
    case "m":
      return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
    case "y":
      return v instanceof Uint8Array;
  }
}

/** A server message from CBOR bytes, checked; unknown types come back as `{ type }` only. */
export function decodeMessage(data: Uint8Array): ServerMessage | { type: string; unknown: true } {
  let value: CborValue;
  try {
    value = decode(data, { maxDepth: MAX_DEPTH });
  } catch (e) {
    throw new ProtocolError(`undecodable message: ${e instanceof CborError ? e.message : e}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value) || value instanceof Uint8Array) {
    throw new ProtocolError("a message must be a map");
  }
  const type = (value as { type?: unknown }).type;
  if (typeof type !== "string") throw new ProtocolError("a message needs a text 'type'");
  const fields = SERVER_FIELDS[type as ServerType];
  if (!fields) return { type, unknown: true };
  const msg = value as { [key: string]: CborValue };
  for (const [name, spec] of Object.entries(fields)) {
    const optional = spec.endsWith("?");
    const v = msg[name];
    if (v === undefined && optional) continue;
    if (!kindOk(spec[0] as Kind, v)) {
      throw new ProtocolError(`${type}.${name}: expected ${describe(spec[0] as Kind)}`);
    }
  }
  if (type === "vision.result") {
    for (const d of msg.detections as CborValue[]) {
      const det = d as { [key: string]: unknown } | null;
      const box = det?.box;
      if (!Array.isArray(box) || box.length !== 4 || !box.every((x) => typeof x === "number")) {
        throw new ProtocolError("vision.result.detections: each needs a box of 4 numbers");
      }
    }
  }
  return msg as unknown as ServerMessage;
}

function describe(kind: Kind): string {
  return {
    s: "a string",
    n: "a number",
    i: "an integer",
    b: "true or false",
    a: "a list",
    m: "a map",
    y: "a byte string",
  }[kind];
}

