// One tidegate session from the browser: the control channel (CBOR over WebSocket), a token
// from the sign-in the page chose (signin.ts), clock pings, WebRTC with the microphone and
// camera, and reconnection that resumes the session. Everything the page shows goes out through `dispatch` as the
// reducer's actions (state.ts); this class holds only connection objects.

import {
  BEARER_PREFIX,
  type ClientMessage,
  CONTROL_PATH,
  type Config,
  decodeMessage,
  encodeMessage,
  ProtocolError,
  type ServerMessage,
  SUBPROTOCOL,
} from "./protocol";
import { endpointSource, type TokenSource } from "./signin";
import type { Action } from "./state";

export const PING_INTERVAL_MS = 2000;
export const STATS_INTERVAL_MS = 1000;
/** How long after a packet of the reply arrives this browser plays it, as told in rtc.offer:
 * WebRTC's jitter buffer on a good network (~40 ms) plus the audio output (~20 ms). The page
 * mutes the reply at response.paused, and the server takes back what was sent this recently
 * (it is sent again if the reply resumes): an estimate off by x ms repeats or skips x ms. */
export const PLAYOUT_DELAY_MS = 60;
/** Reconnection waits, then the last one repeats until the session's resume window ends. */
export const RECONNECT_DELAYS_MS = [250, 500, 1000, 2000, 4000];
const DEFAULT_RESUME_S = 30;
/** How long session.close waits for the server to close the socket. */
const STOP_GRACE_MS = 2000;
/** Close codes after which reconnecting cannot help (docs/protocol.md, "Close codes"). */
const FINAL_CLOSES = new Set([1000, 4400, 4403]);

export interface Devices {
  microphone?: string;
  camera?: string;
}

export interface SessionOptions {
  /** http(s) origin of the server; the page's own by default. */
  origin?: string;
  mode?: string;
  devices?: Devices;
  /** Hands-free sends the microphone all the time; push-to-talk only while talking. */
  handsFree: boolean;
  dispatch: (a: Action) => void;
  /** The camera preview and the reply's audio. */
  onLocalStream: (s: MediaStream | null) => void;
  onRemoteStream: (s: MediaStream | null) => void;
  /** Where each (re)connection gets its token (signin.ts); the development login by default. */
  getToken?: TokenSource;
}

const now = (): number => performance.timeOrigin + performance.now();

export class TidegateSession {
  private ws: WebSocket | null = null;
  private pc: RTCPeerConnection | null = null;
  private stream: MediaStream | null = null;
  private sessionId: string | null = null;
  private resumeS = DEFAULT_RESUME_S;
  private closing = false;
  private attempt = 0;
  private lostAtMs = 0;
  private timers = new Set<ReturnType<typeof setTimeout>>();
  private ping: ReturnType<typeof setInterval> | null = null;
  private stats: ReturnType<typeof setInterval> | null = null;
  private ids = 0;
  private handsFree: boolean;
  private talking = false;
  private readonly origin: string;

  constructor(private readonly opts: SessionOptions) {
    this.origin = opts.origin ?? window.location.origin;
    this.handsFree = opts.handsFree;
  }

  /** Sign in, open the control channel and create the session. */
  async start(): Promise<void> {
    this.closing = false;
    this.opts.dispatch({ kind: "link", link: "connecting" });
    await this.open();
  }

  /** Close the session for good (session.close), then everything local. */
  stop(): void {
    this.closing = true;
    this.teardownMedia();
    this.clearTimers();
    const ws = this.ws;
    if (ws?.readyState === WebSocket.OPEN && this.sessionId) {
      // The server answers session.closed and closes; if it does not, we do.
      this.send({ type: "session.close", id: this.id() });
      const timer = setTimeout(() => ws.close(1000), STOP_GRACE_MS);
      this.timers.add(timer);
    } else ws?.close(1000);
    this.sessionId = null;
  }

  sendText(text: string): void {
    this.send({ type: "input.text", id: this.id(), text });
  }

  interrupt(responseId: string | null): void {
    this.send({ type: "response.cancel", id: this.id(), ...(responseId ? { response_id: responseId } : {}) });
  }

  setHandsFree(on: boolean): void {
    this.handsFree = on;
    this.applyMic();
  }

  /** Push-to-talk: the microphone is live only while this is held. */
  setTalking(on: boolean): void {
    this.talking = on;
    this.applyMic();
  }

  /** Switch microphone or camera without renegotiating (the sender's track is replaced). */
  async useDevices(devices: Devices): Promise<void> {
    this.opts.devices = devices;
    if (!this.pc || !this.stream) return;
    const fresh = await getMedia(devices);
    for (const track of fresh.getTracks()) {
      const sender = this.pc.getSenders().find((s) => s.track?.kind === track.kind);
      await sender?.replaceTrack(track);
    }
    for (const t of this.stream.getTracks()) t.stop();
    this.stream = fresh;
    this.applyMic();
    this.opts.onLocalStream(fresh);
  }

  // -- control channel ------------------------------------------------------------------------

  private id(): string {
    this.ids += 1;
    return `w${this.ids}`;
  }

  private send(m: ClientMessage): void {
    if (this.ws?.readyState !== WebSocket.OPEN) {
      this.opts.dispatch({ kind: "problem", text: "Not connected: that was not sent." });
      return;
    }
    this.ws.send(encodeMessage(m));
  }

  private async open(): Promise<void> {
    let token: string;
    try {
      token = await (this.opts.getToken ?? endpointSource(`${this.origin}/v1/dev/token`, "development login"))();
    } catch (e) {
      this.lost(e instanceof Error ? e.message : String(e));
      return;
    }
    if (this.closing) return;
    const url = this.origin.replace(/^http/, "ws") + CONTROL_PATH;
    const ws = new WebSocket(url, [SUBPROTOCOL, BEARER_PREFIX + token]);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      const create: ClientMessage = this.sessionId
        ? { type: "session.create", id: this.id(), session_id: this.sessionId }
        : { type: "session.create", id: this.id(), config: this.config() };
      ws.send(encodeMessage(create));
    };
    ws.onmessage = (e: MessageEvent) => {
      if (ws !== this.ws || !(e.data instanceof ArrayBuffer)) return;
      this.receive(new Uint8Array(e.data));
    };
    ws.onclose = (e: CloseEvent) => {
      if (ws !== this.ws) return;
      this.ws = null;
      if (this.ping) clearInterval(this.ping);
      this.ping = null;
      if (this.closing || FINAL_CLOSES.has(e.code) || !this.sessionId) {
        this.teardownMedia();
        this.clearTimers();
        const why = this.closing ? undefined : closeWords(e.code, e.reason);
        this.opts.dispatch({ kind: "link", link: "closed", detail: why });
        this.sessionId = null;
        return;
      }
      this.lost(closeWords(e.code, e.reason));
    };
  }

  private config(): Config {
    return { mode: this.opts.mode ?? "assistant" };
  }

  /** The connection dropped: try again until the session's resume window has passed. */
  private lost(why: string): void {
    if (this.closing) return;
    if (this.attempt === 0) this.lostAtMs = now();
    if (!this.sessionId || now() - this.lostAtMs > this.resumeS * 1000) {
      this.teardownMedia();
      this.opts.dispatch({ kind: "link", link: "closed", detail: why });
      this.sessionId = null;
      this.attempt = 0;
      return;
    }
    this.opts.dispatch({ kind: "link", link: "reconnecting", detail: why });
    const delay = RECONNECT_DELAYS_MS[Math.min(this.attempt, RECONNECT_DELAYS_MS.length - 1)]!;
    this.attempt += 1;
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      void this.open();
    }, delay);
    this.timers.add(timer);
  }

  private receive(data: Uint8Array): void {
    let m: ServerMessage | { type: string; unknown: true };
    try {
      m = decodeMessage(data);
    } catch (e) {
      const text = e instanceof ProtocolError ? e.message : String(e);
      this.opts.dispatch({ kind: "problem", text: `A message from the server was malformed: ${text}` });
      return;
    }
    if ("unknown" in m) return;
    const arrivedMs = now();
    switch (m.type) {
      case "session.created":
        void this.created(m);
        break;
      case "pong":
        this.opts.dispatch({ kind: "pong", tClient: m.t_client, tServer: m.t_server, arrivedMs });
        return;
      case "rtc.answer":
        void this.pc?.setRemoteDescription({ type: "answer", sdp: m.sdp }).catch((e: unknown) => this.mediaProblem(e));
        return;
      case "rtc.candidate":
        // The answer already carries the server's candidates; the trickle adds nothing new.
        return;
      case "error":
        if (m.code === "not_found" && this.sessionId && this.attempt > 0) {
          // The session is gone (its resume window passed on the server): start a new one.
          this.sessionId = null;
          this.teardownMedia();
          this.ws?.send(encodeMessage({ type: "session.create", id: this.id(), config: this.config() }));
        }
        break;
    }
    this.opts.dispatch({ kind: "event", message: m, arrivedMs });
  }

  private async created(m: Extract<ServerMessage, { type: "session.created" }>): Promise<void> {
    this.sessionId = m.session_id;
    this.attempt = 0;
    const resume = m.limits.session_resume_s;
    if (typeof resume === "number") this.resumeS = resume;
    this.startPings();
    const live = this.pc && (this.pc.connectionState === "connected" || this.pc.connectionState === "connecting");
    if (m.resumed && live) return; // media kept flowing while the control channel was away
    try {
      await this.startMedia(m.ice_servers);
    } catch (e) {
      this.mediaProblem(e);
    }
  }

  private startPings(): void {
    if (this.ping) clearInterval(this.ping);
    const probe = () => this.ws?.readyState === WebSocket.OPEN && this.send({ type: "ping", t_client: now() });
    probe();
    this.ping = setInterval(probe, PING_INTERVAL_MS);
  }

  // -- media ----------------------------------------------------------------------------------

  private async startMedia(iceServers: RTCIceServer[]): Promise<void> {
    this.teardownMedia();
    const stream = await getMedia(this.opts.devices ?? {});
    this.stream = stream;
    this.applyMic();
    this.opts.onLocalStream(stream);
    const pc = new RTCPeerConnection({ iceServers });
    this.pc = pc;
    for (const track of stream.getTracks()) {
      const sender = pc.addTrack(track, stream);
      if (track.kind === "video") {
        // Detection boxes are in the sent frame's pixels: keep its size what the preview shows.
        const p = sender.getParameters();
        p.degradationPreference = "maintain-resolution";
        void sender.setParameters(p).catch(() => undefined);
      }
    }
    pc.ontrack = (e) => {
      if (e.track.kind === "audio") this.opts.onRemoteStream(new MediaStream([e.track]));
    };
    pc.onconnectionstatechange = () => {
      if (pc !== this.pc) return;
      this.opts.dispatch({ kind: "media", state: pc.connectionState });
    };
    pc.onicecandidate = (e) => {
      if (pc !== this.pc) return;
      const c = e.candidate;
      this.send(
        c
          ? { type: "rtc.candidate", candidate: c.candidate, sdp_mid: c.sdpMid ?? undefined, sdp_mline_index: c.sdpMLineIndex ?? undefined }
          : { type: "rtc.candidate", candidate: "" },
      );
    };
    await pc.setLocalDescription(await pc.createOffer());
    this.send({ type: "rtc.offer", id: this.id(), sdp: pc.localDescription!.sdp, playout_delay_ms: PLAYOUT_DELAY_MS });
    this.stats = setInterval(() => void this.pollStats(), STATS_INTERVAL_MS);
  }

  private async pollStats(): Promise<void> {
    const report = await this.pc?.getStats();
    report?.forEach((s: { type: string; kind?: string; jitter?: number }) => {
      if (s.type === "inbound-rtp" && s.kind === "audio" && typeof s.jitter === "number") {
        this.opts.dispatch({ kind: "reply-jitter", jitterMs: s.jitter * 1000 });
      }
    });
  }

  private applyMic(): void {
    const live = this.handsFree || this.talking;
    for (const t of this.stream?.getAudioTracks() ?? []) t.enabled = live;
  }

  private mediaProblem(e: unknown): void {
    const name = e instanceof DOMException ? e.name : "";
    const text =
      name === "NotAllowedError"
        ? "The browser did not allow the camera or microphone."
        : name === "NotFoundError"
          ? "No camera or microphone was found."
          : `The camera/microphone connection failed: ${e instanceof Error ? e.message : String(e)}`;
    this.opts.dispatch({ kind: "problem", text });
  }

  private teardownMedia(): void {
    if (this.stats) clearInterval(this.stats);
    this.stats = null;
    this.pc?.close();
    this.pc = null;
    for (const t of this.stream?.getTracks() ?? []) t.stop();
    this.stream = null;
    this.opts.onLocalStream(null);
    this.opts.onRemoteStream(null);
    this.opts.dispatch({ kind: "media", state: "none" });
  }

  private clearTimers(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    if (this.ping) clearInterval(this.ping);
    this.ping = null;
  }
}

export async function getMedia(devices: Devices): Promise<MediaStream> {
  return navigator.mediaDevices.getUserMedia({
    audio: {
      ...(devices.microphone ? { deviceId: { exact: devices.microphone } } : {}),
      echoCancellation: true,
      noiseSuppression: true,
    },
    video: {
      ...(devices.camera ? { deviceId: { exact: devices.camera } } : {}),
      width: { ideal: 640 },
      height: { ideal: 480 },
    },
  });
}

function closeWords(code: number, reason: string): string {
  const words: Record<number, string> = {
    1000: "The session was closed (or taken over by another page).",
    1006: "The connection to the server dropped.",
    4400: "The server closed the connection: it could not understand this page.",
    4401: "The sign-in expired or was not accepted.",
    4403: "This page is not allowed to connect.",
    4408: "The connection was too slow to keep up.",
    4409: "The connection was idle too long.",
    4429: "Too many connections; waiting before trying again.",
    4503: "The server is busy.",
  };
  const w = words[code] ?? `The connection closed (code ${code}).`;
  return reason ? `${w} (${reason})` : w;
}
