import { type FormEvent, type KeyboardEvent, useEffect, useReducer, useRef, useState } from "react";

import { Latency } from "./Latency";
import { type Devices, TidegateSession } from "./session";
import {
  type AuthConfig,
  beginSignIn,
  completeSignIn,
  DEV_CONFIG,
  endpointSource,
  loadAuthConfig,
  type Provider,
  type SignedIn,
  signedInSource,
  type TokenSource,
} from "./signin";
import { initialState, reduce, replySilenced, resumedText, turnEndText, type Turn } from "./state";
import { VideoStage } from "./VideoStage";

const LINK_LABEL = {
  idle: "not connected",
  connecting: "connecting",
  open: "connected",
  reconnecting: "reconnecting",
  closed: "disconnected",
} as const;

export function App() {
  const [state, dispatch] = useReducer(reduce, initialState);
  const session = useRef<TidegateSession | null>(null);
  const [local, setLocal] = useState<MediaStream | null>(null);
  const [remote, setRemote] = useState<MediaStream | null>(null);
  const [handsFree, setHandsFree] = useState(true);
  const [talking, setTalking] = useState(false);
  const [devices, setDevices] = useState<Devices>({});
  const [inputs, setInputs] = useState<MediaDeviceInfo[]>([]);
  const [text, setText] = useState("");
  const player = useRef<HTMLAudioElement>(null);
  const [auth, setAuth] = useState<AuthConfig | null>(null);
  const [signedIn, setSignedIn] = useState<SignedIn | null>(null);

  const connected = state.link === "open";
  const active = state.link === "open" || state.link === "connecting" || state.link === "reconnecting";

  useEffect(() => {
    if (player.current) player.current.srcObject = remote;
  }, [remote]);

  // A paused reply is silent at once: what the jitter buffer holds is not played (the server
  // took it back: rtc.offer's playout_delay_ms) and plays again if the reply resumes.
  const silenced = replySilenced(state);
  useEffect(() => {
    if (player.current) player.current.muted = silenced;
  }, [silenced]);

  // Device labels are only given once the page may use them: list again when media starts.
  useEffect(() => {
    const list = () =>
      void navigator.mediaDevices?.enumerateDevices().then((d) => setInputs(d.filter((x) => x.kind !== "audiooutput")));
    list();
    navigator.mediaDevices?.addEventListener("devicechange", list);
    return () => navigator.mediaDevices?.removeEventListener("devicechange", list);
  }, [local]);

  useEffect(() => () => session.current?.stop(), []);

  // The sign-in options, and the end of a sign-in when the provider has just sent us back.
  useEffect(() => {
    let live = true;
    const origin = window.location.origin;
    void (async () => {
      try {
        const config = await loadAuthConfig(origin);
        if (!live) return;
        setAuth(config);
        const done = await completeSignIn(new URL(window.location.href), config, window.sessionStorage);
        if (!live || !done) return;
        window.history.replaceState(null, "", done.returnTo); // the code leaves the address bar
        setSignedIn(done.signedIn);
      } catch (e) {
        if (!live) return;
        setAuth((a) => a ?? DEV_CONFIG); // the options could not be read: try the dev login
        window.history.replaceState(null, "", window.location.pathname);
        dispatch({ kind: "problem", text: e instanceof Error ? e.message : String(e) });
      }
    })();
    return () => {
      live = false;
    };
  }, []);

  function tokenSource(): TokenSource | null {
    if (signedIn) return signedInSource(signedIn);
    if (auth?.token_url) return endpointSource(new URL(auth.token_url, window.location.href).toString(), "sign-in endpoint");
    if (auth?.dev_login) return endpointSource(`${window.location.origin}/v1/dev/token`, "development login");
    return null;
  }

  async function signIn(p: Provider) {
    try {
      window.location.assign(await beginSignIn(p, new URL(window.location.href), window.sessionStorage));
    } catch (e) {
      dispatch({ kind: "problem", text: e instanceof Error ? e.message : String(e) });
    }
  }

  function connect() {
    session.current?.stop();
    const getToken = tokenSource();
    if (!getToken) return;
    const s = new TidegateSession({
      getToken,
      mode: new URLSearchParams(window.location.search).get("mode") ?? undefined,
      handsFree,
      devices,
      dispatch,
      onLocalStream: setLocal,
      onRemoteStream: setRemote,
    });
    session.current = s;
    void s.start();
  }

  function disconnect() {
    session.current?.stop();
    session.current = null;
  }

  function chooseDevice(kind: keyof Devices, id: string) {
    const next = { ...devices, [kind]: id || undefined };
    setDevices(next);
    session.current?.useDevices(next).catch((e: unknown) => dispatch({ kind: "problem", text: `Could not switch device: ${e}` }));
  }

  function chooseHandsFree(on: boolean) {
    setHandsFree(on);
    session.current?.setHandsFree(on);
  }

  function talk(on: boolean) {
    if (handsFree || on === talking) return;
    setTalking(on);
    session.current?.setTalking(on);
  }

  function talkKey(e: KeyboardEvent, on: boolean) {
    if (e.key === " " || e.key === "Enter") {
      e.preventDefault();
      if (!e.repeat) talk(on);
    }
  }

  function submit(e: FormEvent) {
    e.preventDefault();
    const t = text.trim();
    if (!t || !session.current) return;
    session.current.sendText(t);
    dispatch({ kind: "typed", text: t });
    setText("");
  }

  const mics = inputs.filter((d) => d.kind === "audioinput");
  const cams = inputs.filter((d) => d.kind === "videoinput");

  return (
    <div className="app">
      <header>
        <h1>tidegate</h1>
        <p className="link" data-link={state.link} data-session={state.sessionId ?? ""} data-resumed={state.resumedCount} data-testid="link">
          <span className="dot" aria-hidden="true" /> {LINK_LABEL[state.link]}
          {state.media !== "none" && <span className="media"> · media {state.media}</span>}
          {state.resumedCount > 0 && <span className="media"> · resumed {state.resumedCount}×</span>}
        </p>
        <SignIn auth={auth} signedIn={signedIn} active={active} onSignIn={(p) => void signIn(p)} />
        {active ? (
          <button type="button" onClick={disconnect}>
            Disconnect
          </button>
        ) : (
          <button type="button" className="primary" onClick={connect} disabled={auth === null || tokenSource() === null}>
            Connect
          </button>
        )}
      </header>

      <p className="status" role="status" aria-live="polite" data-testid="status">
        {state.announcement}
      </p>

      {state.errors.length > 0 && (
        <ul className="errors" aria-label="Problems">
          {state.errors.map((e) => (
            <li key={e.id} role="alert">
              <span>{e.text}</span>
              <button type="button" onClick={() => dispatch({ kind: "dismiss", id: e.id })} aria-label="Dismiss this message">
                ×
              </button>
            </li>
          ))}
        </ul>
      )}

      <main>
        <section className="see" aria-label="Camera view and latency">
          <VideoStage stream={local} detections={state.detections} />
          <div className="devices">
            <label>
              Microphone
              <select value={devices.microphone ?? ""} onChange={(e) => chooseDevice("microphone", e.target.value)}>
                <option value="">Default</option>
                {mics.map((d, i) => (
                  <option key={d.deviceId || i} value={d.deviceId}>
                    {d.label || `Microphone ${i + 1}`}
                  </option>
                ))}
              </select>
            </label>
            <label>
              Camera
              <select value={devices.camera ?? ""} onChange={(e) => chooseDevice("camera", e.target.value)}>
                <option value="">Default</option>
                {cams.map((d, i) => (
                  <option key={d.deviceId || i} value={d.deviceId}>
                    {d.label || `Camera ${i + 1}`}
                  </option>
                ))}
              </select>
            </label>
          </div>
          <Latency state={state} />
        </section>

        <section className="talk" aria-label="Conversation">
          <fieldset className="mode">
            <legend>Microphone</legend>
            <label>
              <input type="radio" name="talk" checked={handsFree} onChange={() => chooseHandsFree(true)} /> Hands-free
            </label>
            <label>
              <input type="radio" name="talk" checked={!handsFree} onChange={() => chooseHandsFree(false)} /> Push to talk
            </label>
            {!handsFree && (
              <button
                type="button"
                className={talking ? "ptt on" : "ptt"}
                aria-pressed={talking}
                disabled={!connected}
                onPointerDown={() => talk(true)}
                onPointerUp={() => talk(false)}
                onPointerLeave={() => talk(false)}
                onKeyDown={(e) => talkKey(e, true)}
                onKeyUp={(e) => talkKey(e, false)}
              >
                {talking ? "Listening… release to stop" : "Hold to talk (or hold Space)"}
              </button>
            )}
            <span className="speaking" data-testid="speaking">
              {state.userSpeaking ? "You are speaking" : ""}
            </span>
            <span className="turn-end" data-testid="turn-end">
              {state.turnEnd ? turnEndText(state.turnEnd) : ""}
            </span>
          </fieldset>

          <ol className="log" aria-label="Transcript and replies" data-testid="log">
            {state.turns.map((t) => (
              <TurnItem key={`${t.who}:${t.key}`} turn={t} />
            ))}
          </ol>

          <div className="actions">
            <button
              type="button"
              className="interrupt"
              onClick={() => session.current?.interrupt(state.activeResponse)}
              disabled={!connected || !state.activeResponse}
            >
              Interrupt reply
            </button>
          </div>

          <form onSubmit={submit} className="type">
            <label htmlFor="text">Type a message</label>
            <input id="text" value={text} onChange={(e) => setText(e.target.value)} maxLength={8192} disabled={!connected} autoComplete="off" />
            <button type="submit" disabled={!connected || !text.trim()}>
              Send
            </button>
          </form>
        </section>
      </main>
      <audio ref={player} autoPlay aria-label="Spoken reply" data-testid="reply-audio" />
    </div>
  );
}

function TurnItem({ turn }: { turn: Turn }) {
  const who = turn.who === "user" ? "You" : "Assistant";
  const state = turn.live ? (turn.who === "user" ? "hearing" : "replying") : (turn.status ?? "final");
  return (
    <li className={`turn ${turn.who}`} data-state={state} data-testid={`turn-${turn.who}`}>
      <span className="who">{who}</span>
      {turn.heard !== undefined ? (
        <span className="text">
          {turn.heard}
          <span className="unheard" title="not spoken: the reply was cut here">
            {turn.text.slice(turn.heard.length)}
          </span>
        </span>
      ) : turn.tentative ? (
        <span className="text">
          {turn.text}
          {turn.text ? " " : ""}
          <span className="tentative" title="heard so far: may still change" data-testid="tentative">
            {turn.tentative}
          </span>
        </span>
      ) : (
        <span className="text">{turn.text || (turn.live ? "…" : "")}</span>
      )}
      {turn.paused && <span className="tag" data-testid="reply-paused">paused</span>}
      {turn.resumed && (
        <span className="tag" data-testid="reply-resumed" title={resumedText(turn.resumed)}>
          resumed{turn.resumed.count > 1 ? ` ×${turn.resumed.count}` : ""}
        </span>
      )}
      {turn.status === "cancelled" && <span className="tag">interrupted</span>}
      {turn.status === "failed" && <span className="tag bad">failed</span>}
    </li>
  );
}

function SignIn(props: { auth: AuthConfig | null; signedIn: SignedIn | null; active: boolean; onSignIn: (p: Provider) => void }) {
  const { auth, signedIn, active, onSignIn } = props;
  if (signedIn) {
    return (
      <p className="who" data-testid="signed-in">
        Signed in as {signedIn.who} ({signedIn.provider})
      </p>
    );
  }
  if (!auth || active) return null;
  return (
    <>
      {auth.providers.map((p) => (
        <button type="button" key={p.name} onClick={() => onSignIn(p)}>
          Sign in with {p.display_name}
        </button>
      ))}
    </>
  );
}
