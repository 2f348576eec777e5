// Sign-in end to end: Debian's Chromium driven by Playwright (playwright-core) through the real
// client served by a real tidegate whose development login is off, signing in at the tests' OIDC
// issuer (tests/oidc_issuer.py) with the authorization code flow and PKCE, all inside the
// network namespace that tests/client_web/test_signin.py creates. What was seen goes to stdout
// as one JSON line for the pytest side to judge.
//
//   node e2e/signin.mjs '{"origin": ..., "chromium": ..., "flags": [...], "shots": ..., "deadline_s": ...}'

import { chromium } from "playwright-core";

const args = JSON.parse(process.argv[2]);
const SHORT = 20_000;
const out = { steps: [], console: [], requests: [] };
const t0 = Date.now();
const END = t0 + args.deadline_s * 1000;
const step = (name, extra = {}) => out.steps.push({ name, s: (Date.now() - t0) / 1000, ...extra });

async function waitReady(origin) {
  for (;;) {
    try {
      if ((await fetch(`${origin}/readyz`)).status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > END) throw new Error("server not ready in time");
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function main() {
  await waitReady(args.origin);
  step("server ready");
  const browser = await chromium.launch({ executablePath: args.chromium, headless: true, args: args.flags });
  const page = await (await browser.newContext()).newPage();
  let timer;
  const deadline = new Promise((_, fail) => {
    timer = setTimeout(() => fail(new Error(`over the ${args.deadline_s} s deadline`)), END - Date.now());
  });
  try {
    await Promise.race([signIn(page), deadline]);
  } catch (e) {
    await page.screenshot({ path: `${args.shots}/signin-failed.png`, fullPage: true }).catch(() => undefined);
    throw e;
  } finally {
    clearTimeout(timer);
    await browser.close();
  }
}

async function signIn(page) {
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`.slice(0, 300)));
  page.on("pageerror", (e) => out.console.push(`pageerror: ${e.message}`));
  page.on("request", (r) => out.requests.push({ method: r.method(), url: r.url().slice(0, 200), post: (r.postData() ?? "").slice(0, 400) }));

  // A return the page did not start is refused, saying so.
  await page.goto(`${args.origin}/?code=stolen&state=guess`);
  await page.waitForSelector("[role=alert]", { timeout: SHORT });
  out.forgedReturn = { alert: await page.textContent("[role=alert]"), url: page.url() };
  step("forged return refused", out.forgedReturn);

  // Before signing in, the operator's token endpoint (the issuer's SSO-proxy-style endpoint)
  // refuses: no session cookie yet.
  await page.goto(`${args.origin}/?mode=loopback`);
  const signInButton = page.getByRole("button", { name: "Sign in with Test IdP" });
  await signInButton.waitFor({ timeout: SHORT });
  await page.getByRole("button", { name: "Connect" }).click();
  await page.waitForSelector("[data-testid=link][data-link=closed]", { timeout: SHORT });
  out.before = { status: await page.textContent("[data-testid=status]") };
  step("token endpoint refused before sign-in", out.before);

  await signInButton.click();
  await page.getByLabel("User name").waitFor({ timeout: SHORT });
  out.atProvider = { url: page.url() };
  step("at the provider", out.atProvider);
  await page.getByLabel("User name").fill("carol");
  await page.getByRole("button", { name: "Sign in" }).click();

  await page.waitForSelector("[data-testid=signed-in]", { timeout: SHORT });
  out.back = {
    who: await page.textContent("[data-testid=signed-in]"),
    url: page.url(),
    session: await page.evaluate(() => ({ ...sessionStorage })),
    local: await page.evaluate(() => ({ ...localStorage })),
    cookies: await page.context().cookies(),
  };
  step("signed in", out.back);

  await page.getByRole("button", { name: "Connect" }).click();
  await page.waitForSelector("[data-testid=link][data-link=open]", { timeout: SHORT });
  out.connected = { session: await page.getAttribute("[data-testid=link]", "data-session") };
  step("connected", out.connected);
  await page.screenshot({ path: `${args.shots}/signed-in.png`, fullPage: true });
  await page.getByRole("button", { name: "Disconnect" }).click();
  await page.waitForSelector("[data-testid=link][data-link=closed]", { timeout: SHORT });
  step("closed");

  // A new page load forgets the token (memory only); the operator's token endpoint now knows
  // the user by the provider's session cookie and hands out a token that opens a session.
  await page.goto(`${args.origin}/?mode=loopback`);
  await signInButton.waitFor({ timeout: SHORT });
  out.reloaded = { signedIn: (await page.$("[data-testid=signed-in]")) !== null };
  await page.getByRole("button", { name: "Connect" }).click();
  await page.waitForSelector("[data-testid=link][data-link=open]", { timeout: SHORT });
  out.reloaded.session = await page.getAttribute("[data-testid=link]", "data-session");
  step("connected through the token endpoint", out.reloaded);
  await page.getByRole("button", { name: "Disconnect" }).click();
  await page.waitForSelector("[data-testid=link][data-link=closed]", { timeout: SHORT });
}

main().then(
  () => console.log(JSON.stringify(out)),
  (e) => {
    out.error = String(e && e.stack ? e.stack : e);
    console.log(JSON.stringify(out));
    process.exitCode = 1;
  },
);
