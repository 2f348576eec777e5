// Sign-in: PKCE as RFC 7636 defines it, the authorization request, and the checks on return.

import { describe, expect, it } from "vitest";

import { type AuthConfig, beginSignIn, completeSignIn, PENDING_KEY, pkceChallenge, type Provider, randomString, unverifiedClaims } from "./signin";

/** sessionStorage's interface over a Map (node has no sessionStorage). */
class MemoryStorage implements Storage {
  private items = new Map<string, string>();
  get length() {
    return this.items.size;
  }
  clear() {
    this.items.clear();
  }
  getItem(k: string) {
    return this.items.get(k) ?? null;
  }
  key(i: number) {
    return [...this.items.keys()][i] ?? null;
  }
  removeItem(k: string) {
    this.items.delete(k);
  }
  setItem(k: string, v: string) {
    this.items.set(k, v);
  }
}

const provider: Provider = {
  name: "idp",
  display_name: "Test IdP",
  issuer: "https://idp.example",
  client_id: "tidegate-web",
  scope: "openid tidegate",
  authorization_endpoint: "https://idp.example/authorize?prompt=login",
  token_endpoint: "https://idp.example/token",
  params: { audience: "https://tidegate.example" },
};
const config: AuthConfig = { dev_login: false, token_url: null, providers: [provider] };
const page = new URL("https://app.example/voice?mode=loopback");

describe("PKCE", () => {
  it("computes the S256 challenge of RFC 7636's appendix B", async () => {
    expect(await pkceChallenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")).toBe("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
  });

  it("makes 43-character base64url verifiers that differ", () => {
    const a = randomString();
    expect(a).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(randomString()).not.toBe(a);
  });
});

describe("sign-in", () => {
  it("asks for a code with the S256 challenge of the verifier it keeps", async () => {
    const storage = new MemoryStorage();
    const url = new URL(await beginSignIn(provider, page, storage));
    const q = url.searchParams;
    expect(url.origin + url.pathname).toBe("https://idp.example/authorize");
    expect(q.get("prompt")).toBe("login");
    expect(q.get("audience")).toBe("https://tidegate.example");
    expect(q.get("response_type")).toBe("code");
    expect(q.get("client_id")).toBe("tidegate-web");
    expect(q.get("redirect_uri")).toBe("https://app.example/voice");
    expect(q.get("code_challenge_method")).toBe("S256");
    const pending = JSON.parse(storage.getItem(PENDING_KEY) ?? "{}");
    expect(q.get("state")).toBe(pending.state);
    expect(q.get("code_challenge")).toBe(await pkceChallenge(pending.verifier));
    expect(pending.returnTo).toBe("/voice?mode=loopback");
    expect(JSON.stringify(pending)).not.toContain("secret");
  });

  it("ignores a page load that is not a return", async () => {
    expect(await completeSignIn(page, config, new MemoryStorage())).toBeNull();
  });

  it("refuses a return with another state, and forgets the pending sign-in", async () => {
    const storage = new MemoryStorage();
    await beginSignIn(provider, page, storage);
    const back = new URL("https://app.example/voice?code=abc&state=forged");
    await expect(completeSignIn(back, config, storage)).rejects.toThrow("wrong state");
    expect(storage.getItem(PENDING_KEY)).toBeNull();
  });

  it("refuses a return it did not start", async () => {
    const back = new URL("https://app.example/voice?code=abc&state=x");
    await expect(completeSignIn(back, config, new MemoryStorage())).rejects.toThrow("did not start");
  });

  it("says when the provider refused", async () => {
    const storage = new MemoryStorage();
    const url = new URL(await beginSignIn(provider, page, storage));
    const state = url.searchParams.get("state") ?? "";
    const back = new URL(`https://app.example/voice?error=access_denied&error_description=User+cancelled&state=${state}`);
    await expect(completeSignIn(back, config, storage)).rejects.toThrow("refused the sign-in: User cancelled");
  });

  it("refuses to start while the provider's endpoints are unknown", async () => {
    const down = { ...provider, authorization_endpoint: null };
    await expect(beginSignIn(down, page, new MemoryStorage())).rejects.toThrow("cannot be reached");
  });

  it("reads a token's claims for display only", () => {
    const body = btoa(JSON.stringify({ sub: "u1", preferred_username: "alice" })).replace(/=+$/, "");
    expect(unverifiedClaims(`x.${body}.y`).preferred_username).toBe("alice");
    expect(unverifiedClaims("garbage")).toEqual({});
  });
});
