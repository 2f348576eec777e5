// Sign-in: where the page gets the token it opens the control channel with.
//
// The server says what it offers at GET /v1/auth/config (docs/security.md):
// - providers: OIDC issuers the page signs in with itself, by the authorization code flow with
//   PKCE (RFC 7636, S256) as a public client: no secret in the browser. The page goes to the
//   provider; the provider sends the browser back here with a code; the page exchanges it, with
//   the verifier only it knows, for an access token. Across that round trip only the verifier,
//   the state and where to return are kept, in sessionStorage (this tab), and removed on return.
// - token_url: an endpoint the operator provides (e.g. an SSO proxy's), asked with the page's
//   cookies; it answers {"token": ...} (or {"access_token": ...}).
// - dev_login: the server's development login (loopback only, unless the operator opens it).
// Tokens live in memory only: never localStorage, never a cookie of ours.

export interface Provider {
  name: string;
  display_name: string;
  issuer: string;
  client_id: string;
  scope: string;
  authorization_endpoint: string | null;
  token_endpoint: string | null;
  params: Record<string, string>;
}

export interface AuthConfig {
  dev_login: boolean;
  token_url: string | null;
  providers: Provider[];
}

export interface SignedIn {
  token: string;
  /** Wall-clock ms after which the token is not used again (a little before its exp). */
  expiresAtMs: number;
  /** Who the token says it is, for the page to show (not checked here: the server checks). */
  who: string;
  provider: string;
}

export type TokenSource = () => Promise<string>;

export const PENDING_KEY = "tidegate.signin.pending";
/** A token is not used in its last seconds: the connection would be refused or closed soon. */
const EXPIRY_MARGIN_MS = 10_000;
/** What a server from before sign-in options offers (or what to try when they cannot be read). */
export const DEV_CONFIG: AuthConfig = { dev_login: true, token_url: null, providers: [] };

interface Pending {
  provider: string;
  verifier: string;
  state: string;
  redirectUri: string;
  returnTo: string;
}

export async function loadAuthConfig(origin: string): Promise<AuthConfig> {
  const r = await fetch(`${origin}/v1/auth/config`, { cache: "no-store" });
  if (r.status === 404) return DEV_CONFIG; // a server from before sign-in options
  if (!r.ok) throw new Error(`Could not load the sign-in options (HTTP ${r.status}).`);
  return (await r.json()) as AuthConfig;
}

export function base64url(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** 32 random bytes, base64url: 43 characters (a PKCE verifier must be 43 to 128). */
export function randomString(bytes = 32): string {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

/** The S256 code challenge of a verifier: base64url(SHA-256(verifier)). */
export async function pkceChallenge(verifier: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

/** Where to send the browser to sign in with `p`; remembers what the return needs. */
export async function beginSignIn(p: Provider, here: URL, storage: Storage): Promise<string> {
  if (!p.authorization_endpoint || !p.token_endpoint) {
    throw new Error(`${p.display_name} cannot be reached by the server yet; try again shortly.`);
  }
  const verifier = randomString();
  const state = randomString(16);
  const redirectUri = here.origin + here.pathname;
  const pending: Pending = { provider: p.name, verifier, state, redirectUri, returnTo: here.pathname + here.search };
  storage.setItem(PENDING_KEY, JSON.stringify(pending));
  const url = new URL(p.authorization_endpoint);
  const q = url.searchParams;
  for (const [k, v] of Object.entries(p.params)) q.set(k, v);
  q.set("response_type", "code");
  q.set("client_id", p.client_id);
  q.set("redirect_uri", redirectUri);
  q.set("scope", p.scope);
  q.set("state", state);
  q.set("code_challenge", await pkceChallenge(verifier));
  q.set("code_challenge_method", "S256");
  return url.toString();
}

/**
 * The end of a sign-in: `here` is the URL the provider sent the browser back to. Null when it
 * is not such a return. Throws with a sentence when the provider refused, the state does not
 * match (a return this tab did not start), or the exchange fails.
 */
export async function completeSignIn(
  here: URL,
  config: AuthConfig,
  storage: Storage,
): Promise<{ signedIn: SignedIn; returnTo: string } | null> {
  const q = here.searchParams;
  const code = q.get("code");
  const error = q.get("error");
  if (!code && !error) return null;
  const raw = storage.getItem(PENDING_KEY);
  storage.removeItem(PENDING_KEY); // good once, whatever happens next
  if (!raw) throw new Error("A sign-in came back that this page did not start; sign in again.");
  const pending = JSON.parse(raw) as Pending;
  if (q.get("state") !== pending.state) {
    throw new Error("The sign-in came back with the wrong state; sign in again.");
  }
  if (error) {
    throw new Error(`The identity provider refused the sign-in: ${q.get("error_description") || error}.`);
  }
  const p = config.providers.find((x) => x.name === pending.provider);
  if (!p?.token_endpoint) throw new Error("The identity provider of this sign-in is no longer offered.");
  const body = new URLSearchParams({
    grant_type: "authorization_code",
    code: code ?? "",
    redirect_uri: pending.redirectUri,
    client_id: p.client_id,
    code_verifier: pending.verifier,
  });
  const r = await fetch(p.token_endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body,
    cache: "no-store",
  });
  const answer = (await r.json().catch(() => ({}))) as { access_token?: unknown; expires_in?: unknown; error?: unknown };
  if (!r.ok || typeof answer.access_token !== "string") {
    const why = typeof answer.error === "string" ? answer.error : `HTTP ${r.status}`;
    throw new Error(`The identity provider did not hand out a token (${why}).`);
  }
  return { signedIn: signedIn(answer.access_token, answer.expires_in, p.display_name), returnTo: pending.returnTo };
}

function signedIn(token: string, expiresInS: unknown, provider: string): SignedIn {
  const claims = unverifiedClaims(token);
  const exp = typeof claims.exp === "number" ? claims.exp * 1000 : Date.now() + Number(expiresInS ?? 300) * 1000;
  const who = [claims.preferred_username, claims.name, claims.email, claims.sub].find((v) => typeof v === "string");
  return { token, expiresAtMs: exp - EXPIRY_MARGIN_MS, who: String(who ?? "?"), provider };
}

/** A JWT's claims, read without checking anything (for display; the server verifies). */
export function unverifiedClaims(token: string): Record<string, unknown> {
  try {
    const part = (token.split(".")[1] ?? "").replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4))) as Record<string, unknown>;
  } catch {
    return {};
  }
}

export function signedInSource(s: SignedIn): TokenSource {
  return async () => {
    if (Date.now() >= s.expiresAtMs) throw new Error("Your sign-in has expired: sign in again.");
    return s.token;
  };
}

/** POST to a token endpoint (the dev login, or the operator's), with the page's cookies. */
export function endpointSource(url: string, what: string): TokenSource {
  return async () => {
    const r = await fetch(url, { method: "POST", cache: "no-store", credentials: "include" });
    if (r.status === 404) throw new Error(`The ${what} is off; this page needs another way to sign in.`);
    if (r.status === 401 || r.status === 403) throw new Error(`The ${what} did not sign you in (HTTP ${r.status}).`);
    if (!r.ok) throw new Error(`Sign-in failed (HTTP ${r.status}).`);
    const body = (await r.json()) as { token?: unknown; access_token?: unknown };
    const token = body.token ?? body.access_token;
    if (typeof token !== "string") throw new Error("Sign-in answered without a token.");
    return token;
  };
}
