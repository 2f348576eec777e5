// End to end: Debian's Chromium driven by Playwright (playwright-core) through the real client
// served by a real tidegate, both inside the network namespace that
// tests/client_web/test_e2e.py creates. The fake microphone plays a recorded sentence, the fake
// camera shows a face. One session, as short as it can be; what was seen goes to stdout as one
// JSON line for the pytest side to judge, with screenshots in `shots`.
//
//   node e2e/browser.mjs '{"origin": ..., "chromium": ..., "flags": [...], "shots": ..., "deadline_s": ...}'
//
// It stops by itself at deadline_s (browser closed, a screenshot of where it was).

import { chromium } from "playwright-core";

const args = JSON.parse(process.argv[2]);
const SHORT = 30_000;
const LONG = 90_000;
const out = { steps: [], console: [] };
const t0 = Date.now();
const END = t0 + args.deadline_s * 1000;
const step = (name, extra = {}) => out.steps.push({ name, s: (Date.now() - t0) / 1000, ...extra });

async function waitReady(origin) {
  for (;;) {
    try {
      const r = await fetch(`${origin}/readyz`);
      if (r.status === 200) return;
      const body = await r.json();
      if (body.status === "failed") throw new Error(`server failed to start: ${body.error}`);
    } catch (e) {
      if (String(e).includes("failed to start")) throw e;
    }
    if (Date.now() > END) throw new Error("server not ready in time");
    await new Promise((r) => setTimeout(r, 250));
  }
}

const turns = (page, who) =>
  page.$$eval(`[data-testid=turn-${who}]`, (els) => els.map((e) => ({ state: e.dataset.state, text: e.querySelector(".text")?.textContent ?? "" })));

async function main() {
  await waitReady(args.origin);
  step("server ready");
  const browser = await chromium.launch({ executablePath: args.chromium, headless: true, args: args.flags });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  let timer;
  const deadline = new Promise((_, fail) => {
    timer = setTimeout(() => fail(new Error(`over the ${args.deadline_s} s deadline`)), END - Date.now());
  });
  try {
    await Promise.race([session(page), deadline]);
  } catch (e) {
    await page.screenshot({ path: `${args.shots}/failed.png`, fullPage: true }).catch(() => undefined);
    throw e;
  } finally {
    clearTimeout(timer);
    await browser.close();
  }
}

async function session(page) {
  {
    page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`.slice(0, 300)));
    page.on("pageerror", (e) => out.console.push(`pageerror: ${e.message}`));

    // The control channel goes through Playwright, so that the test can drop it later.
    const sockets = [];
    await page.routeWebSocket(/\/v1\/control$/, (ws) => {
      sockets.push({ page: ws, server: ws.connectToServer() });
    });

    await page.goto(args.origin);
    await page.getByRole("button", { name: "Connect" }).click();
    await page.waitForSelector("[data-testid=link][data-link=open]", { timeout: SHORT });
    await page.waitForFunction(() => document.querySelector("[data-testid=link]")?.textContent?.includes("media connected"), null, { timeout: SHORT });
    out.session = await page.getAttribute("[data-testid=link]", "data-session");
    step("connected", { session: out.session });

    // The face: a box over the video, inside it.
    const box = await page.waitForSelector("[data-testid=detection-box][data-label=face] rect", { timeout: LONG });
    const [b, v] = [await box.boundingBox(), await (await page.$("video")).boundingBox()];
    out.face = { box: b, video: v, caption: await page.textContent("[data-testid=detections]") };
    step("face box");
    await page.screenshot({ path: `${args.shots}/1-face.png` });

    // The spoken sentence: a final in the transcript, then a reply streaming in.
    await page.waitForFunction(() => [...document.querySelectorAll("[data-testid=turn-user]")].some((e) => e.dataset.state === "final" && e.textContent.length > 4), null, { timeout: LONG });
    out.transcript = await turns(page, "user");
    step("final");
    await page.waitForFunction(() => [...document.querySelectorAll("[data-testid=turn-assistant]")].some((e) => (e.querySelector(".text")?.textContent ?? "").replace("…", "").length > 0), null, { timeout: LONG });
    out.replyStreaming = await turns(page, "assistant");
    step("reply streaming");
    await page.screenshot({ path: `${args.shots}/2-reply.png` });

    // The reply is spoken on the WebRTC track: listen to the <audio>'s stream.
    out.replyAudio = await page.evaluate(async () => {
      const el = document.querySelector("[data-testid=reply-audio]");
      const stream = el.srcObject;
      if (!stream) return { peak: 0, note: "no stream" };
      const ctx = new AudioContext();
      const an = ctx.createAnalyser();
      ctx.createMediaStreamSource(stream).connect(an);
      const buf = new Float32Array(an.fftSize);
      let peak = 0;
      // Until it is clearly audible (at most 4 s): the reply must still be running after.
      for (let i = 0; i < 80 && peak < 0.05; i++) {
        await new Promise((r) => setTimeout(r, 50));
        an.getFloatTimeDomainData(buf);
        for (const x of buf) peak = Math.max(peak, Math.abs(x));
      }
      await ctx.close();
      return { peak };
    });
    step("reply audio", out.replyAudio);

    // Interrupt it (still being spoken: a reply ends only when its audio has played).
    const interrupt = page.getByRole("button", { name: "Interrupt reply" });
    if (await interrupt.isEnabled()) {
      await interrupt.click();
      await page.waitForSelector("[data-testid=turn-assistant][data-state=cancelled]", { timeout: SHORT });
    }
    out.afterInterrupt = await turns(page, "assistant");
    step("interrupted");
    await page.screenshot({ path: `${args.shots}/3-interrupted.png` });

    // Drop the control channel (as a network would): the page reconnects and resumes.
    const first = sockets[0];
    await first.server.close({ code: 4000, reason: "dropped by the test" });
    await page.waitForSelector("[data-testid=link][data-resumed='1']", { timeout: SHORT });
    await page.waitForSelector("[data-testid=link][data-link=open]", { timeout: SHORT });
    out.resumed = {
      sockets: sockets.length,
      session: await page.getAttribute("[data-testid=link]", "data-session"),
      link: await page.textContent("[data-testid=link]"),
    };
    step("resumed", out.resumed);

    // Typed text on the resumed session: another reply.
    const before = (await turns(page, "assistant")).length;
    await page.getByLabel("Type a message").fill("Say hello.");
    await page.keyboard.press("Enter");
    await page.waitForFunction((n) => {
      const els = [...document.querySelectorAll("[data-testid=turn-assistant]")];
      return els.length > n && (els.at(-1).querySelector(".text")?.textContent ?? "").replace("…", "").length > 0;
    }, before, { timeout: LONG });
    out.typed = { user: (await turns(page, "user")).at(-1), reply: (await turns(page, "assistant")).at(-1) };
    step("typed reply");

    out.latency = await page.$eval("[data-testid=latency]", (e) => ({
      rtt: e.querySelector("[data-testid=rtt]")?.textContent,
      serverJitter: e.querySelector("[data-testid=server-jitter]")?.textContent,
      rows: [...e.querySelectorAll("tbody tr")].map((r) => [...r.children].map((c) => c.textContent)),
    }));
    out.status = await page.textContent("[data-testid=status]");
    out.errors = await page.$$eval(".errors li", (els) => els.map((e) => e.textContent));
    await page.screenshot({ path: `${args.shots}/4-typed.png`, fullPage: true });

    // Push to talk: the microphone track is live only while the button is held (pointer or
    // Space), hands-free it is always live.
    const micLive = () => page.evaluate(() => document.querySelector("video").srcObject.getAudioTracks().map((t) => t.enabled));
    out.ptt = { handsFree: await micLive() };
    await page.getByLabel("Push to talk").check();
    out.ptt.idle = await micLive();
    const hold = page.getByRole("button", { name: /Hold to talk/ });
    await hold.hover();
    await page.mouse.down();
    out.ptt.held = await micLive();
    await page.mouse.up();
    out.ptt.released = await micLive();
    await hold.focus();
    await page.keyboard.down(" ");
    out.ptt.space = await micLive();
    await page.keyboard.up(" ");
    out.ptt.spaceUp = await micLive();
    await page.getByLabel("Hands-free").check();
    step("push to talk", out.ptt);

    // The pickers list the (fake) devices; choosing a camera swaps the sent track in place.
    const cams = await page.$$eval("label:has-text('Camera') option", (os) => os.map((o) => ({ value: o.value, text: o.textContent })));
    const mics = await page.$$eval("label:has-text('Microphone') select option", (os) => os.map((o) => o.textContent));
    const track = await page.evaluate(() => document.querySelector("video").srcObject.getVideoTracks()[0].id);
    await page.getByRole("combobox", { name: "Camera", exact: true }).selectOption(cams.at(-1).value);
    await page.waitForFunction((id) => document.querySelector("video").srcObject?.getVideoTracks()[0]?.id !== id, track, { timeout: SHORT });
    out.devices = { cams, mics, swapped: true, link: await page.textContent("[data-testid=link]") };
    step("devices", out.devices);
    await page.getByRole("button", { name: "Disconnect" }).click();
    await page.waitForSelector("[data-testid=link][data-link=closed]", { timeout: SHORT });
    step("closed");
  }
}

main().then(
  () => console.log(JSON.stringify(out)),
  (e) => {
    out.error = String(e && e.stack ? e.stack : e);
    console.log(JSON.stringify(out));
    process.exitCode = 1;
  },
);
