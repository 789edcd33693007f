// The task monitor end to end: Debian's Chromium driven by playwright-core, against the real
// server binary (demo executor, SQLite) that this file starts, kills and restarts itself.
// `cargo xtask test` builds the UI and the server and passes their paths.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort, kill, launchChromium, startServer as startWith } from "./harness.mjs";

const SERVER = process.env.TASKPULSE_SERVER_BIN;
const UI = process.env.TASKPULSE_UI_DIR;
const SHOTS = process.env.TASKPULSE_SCREENSHOTS ?? join(tmpdir(), "taskpulse-shots");
const PASSWORD = "correct horse 9";
const OPS_PASSCODE = "operator passcode 42";

let port;
let data;
let server;
let browser;

/** Starts the server on `port` with `data`; resolves once it listens. */
function startServer() {
  return startWith({
    bin: SERVER,
    port,
    data,
    ui: UI,
    env: {
      TASKPULSE_DEMO_DURATION_MS: "4000",
      TASKPULSE_DEMO_SIZE: "96",
      // The "load older" test creates more tasks than one page holds.
      TASKPULSE_TASKS_MAX_ACTIVE_PER_USER: "1000",
      TASKPULSE_TASKS_SUBMISSIONS_PER_MINUTE: "1000",
      TASKPULSE_ACCOUNTS_ATTEMPTS_PER_MINUTE: "1000",
      // Live snapshots carry the newest 50 tasks, so that older ones come from the API only.
      TASKPULSE_REPLAY_SNAPSHOT_LIMIT: "50",
      // An operator for the operations page.
      TASKPULSE_AUTH_USERS: `[{login="ops",passcode="${OPS_PASSCODE}"}]`,
      TASKPULSE_AUTH_OPERATORS: '["ops"]',
    },
  });
}

const url = () => `http://127.0.0.1:${port}/`;
const shot = (page, name) => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
const uniqueName = (prefix) => `${prefix}${Math.floor(Math.random() * 1e9)}`;

before(async () => {
  assert.ok(SERVER && UI, "TASKPULSE_SERVER_BIN and TASKPULSE_UI_DIR are set by cargo xtask test");
  mkdirSync(SHOTS, { recursive: true });
  port = await freePort();
  data = mkdtempSync(join(tmpdir(), "taskpulse-e2e-"));
  server = await startServer();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  if (server) await kill(server);
  rmSync(data, { recursive: true, force: true });
});

/** A fresh page that records every status each task card shows, in order. */
async function openPage(context) {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  page.errors = errors;
  await page.addInitScript(() => {
    window.__statuses = {};
    const record = () => {
      for (const card of document.querySelectorAll("article.task-card")) {
        const seen = (window.__statuses[card.dataset.taskNo] ??= []);
        if (seen[seen.length - 1] !== card.dataset.status) seen.push(card.dataset.status);
      }
    };
    new MutationObserver(record).observe(document, { subtree: true, childList: true, attributes: true });
  });
  await page.goto(url());
  return page;
}

async function register(page, username) {
  await page.waitForSelector("#auth-title");
  await page.click("button.link"); // "Create an account"
  await page.fill("#username", username);
  await page.fill("#password", PASSWORD);
  await page.click("form button[type=submit]");
  await page.waitForSelector("#submit-title");
}

async function signIn(page, username) {
  await page.waitForSelector("#auth-title");
  await page.fill("#username", username);
  await page.fill("#password", PASSWORD);
  await page.click("form button[type=submit]");
  await page.waitForSelector("#submit-title");
}

/** Submits a prompt and returns the new card's task number. */
async function submit(page, prompt) {
  const before = await page.$$eval("article.task-card", (cards) => cards.map((c) => c.dataset.taskNo));
  await page.fill("#prompt", prompt);
  await page.click(".submit button[type=submit]");
  const handle = await page.waitForFunction(
    (known) => [...document.querySelectorAll("article.task-card")].map((c) => c.dataset.taskNo).find((n) => !known.includes(n)),
    before,
  );
  return handle.jsonValue();
}

const card = (taskNo) => `article.task-card[data-task-no="${taskNo}"]`;
const statuses = (page, taskNo) => page.evaluate((n) => window.__statuses[n] ?? [], taskNo);

function assertLifecycle(seen, label) {
  const order = ["created", "queued", "processing", "completed"];
  const ranks = seen.map((s) => order.indexOf(s));
  assert.ok(ranks.every((r) => r >= 0), `${label}: unexpected status in ${seen}`);
  assert.ok(ranks.every((r, i) => i === 0 || r > ranks[i - 1]), `${label}: out of order: ${seen}`);
  assert.equal(seen.at(-1), "completed", `${label}: ${seen}`);
}

test("register, submit, and watch a task go through every status to its image", async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await openPage(context);
  await register(page, uniqueName("alice"));
  const taskNo = await submit(page, "a lighthouse at dusk");
  await page.waitForSelector(`${card(taskNo)}[data-status="processing"]`);
  await shot(page, "monitor-processing");
  await page.waitForSelector(`${card(taskNo)}[data-status="completed"]`, { timeout: 30_000 });
  const seen = await statuses(page, taskNo);
  assertLifecycle(seen, "live");
  for (const status of ["created", "queued", "processing", "completed"]) {
    assert.ok(seen.includes(status), `${status} was never shown: ${seen}`);
  }
  const image = await page.waitForSelector(`${card(taskNo)} .result img`);
  await page.waitForFunction((img) => img.complete && img.naturalWidth > 0, image);
  assert.equal(await page.getAttribute(`${card(taskNo)} [role=progressbar]`, "aria-valuenow"), "100");
  assert.match(await page.textContent(`${card(taskNo)} .duration`), /\d/);
  await page.waitForSelector(".toast-success");
  await shot(page, "monitor-completed");

  // Keyboard: Tab reaches the controls, and the focused one is visibly marked.
  await page.focus("body");
  const reached = [];
  for (let i = 0; i < 12; i++) {
    await page.keyboard.press("Tab");
    reached.push(await page.evaluate(() => {
      const el = document.activeElement;
      const tag = el.tagName.toLowerCase();
      return { id: el.id || el.className || tag, tag, outline: getComputedStyle(el).outlineStyle };
    }));
  }
  for (const id of ["kind", "prompt", "ratio"]) {
    assert.ok(reached.some((r) => r.id === id), `Tab never reached #${id}: ${JSON.stringify(reached)}`);
  }
  // (Focus passes through the page itself when Tab wraps around.)
  const controls = reached.filter((r) => r.tag !== "body");
  assert.ok(controls.every((r) => r.outline !== "none"), `focus is visible: ${JSON.stringify(reached)}`);

  // A phone-width screen stacks the form above the list.
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, "monitor-phone");
  await page.setViewportSize({ width: 1100, height: 800 });

  // A reload keeps the session and shows the same final state, from the API and snapshot.
  await page.reload();
  await page.waitForSelector(`${card(taskNo)}[data-status="completed"]`);
  assert.equal(await page.textContent(".connection-text"), "Live");
  assert.deepEqual(page.errors, []);
  await context.close();
});

test("a second browser of the same user sees the same updates", async () => {
  const username = uniqueName("bob");
  const first = await browser.newContext();
  const second = await browser.newContext();
  const a = await openPage(first);
  await register(a, username);
  const b = await openPage(second);
  await signIn(b, username);
  await b.waitForSelector('.connection[data-state="connected"]');
  const taskNo = await submit(a, "two windows");
  await b.waitForSelector(`${card(taskNo)}[data-status="processing"]`, { timeout: 30_000 });
  await b.waitForSelector(`${card(taskNo)}[data-status="completed"]`, { timeout: 30_000 });
  await a.waitForSelector(`${card(taskNo)}[data-status="completed"]`, { timeout: 30_000 });
  assertLifecycle(await statuses(b, taskNo), "second browser");
  assert.equal(await b.textContent(`${card(taskNo)} .prompt`), "two windows");
  await shot(b, "monitor-second-browser");
  await first.close();
  await second.close();
});

test("the server is killed mid-task and restarted: the page reconnects and shows the true end", async () => {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await openPage(context);
  await register(page, uniqueName("carol"));
  const taskNo = await submit(page, "survives a crash");
  // Well into the run, so that the restart visibly starts it over.
  await page.waitForFunction(
    (selector) => Number(document.querySelector(selector)?.getAttribute("aria-valuenow")) >= 30,
    `${card(taskNo)}[data-status="processing"] [role=progressbar]`,
  );

  await kill(server);
  server = null;
  await page.waitForSelector('.connection[data-state="reconnecting"]', { timeout: 20_000 });
  await shot(page, "monitor-reconnecting");
  server = await startServer();

  await page.waitForSelector('.connection[data-state="connected"]', { timeout: 40_000 });
  await page.waitForSelector(`${card(taskNo)}[data-status="completed"]`, { timeout: 40_000 });
  const token = await page.evaluate(() => localStorage.getItem("taskpulse.token"));
  const answer = await fetch(`${url()}api/tasks/${taskNo}`, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal((await answer.json()).status, "completed", "the page shows what the server holds");
  const seen = await statuses(page, taskNo);
  assert.equal(seen.at(-1), "completed", `${seen}`);
  assert.deepEqual(page.errors, []);
  await shot(page, "monitor-after-restart");
  await context.close();
});

test("another user's task never appears", async () => {
  const owner = await openPage(await browser.newContext());
  await register(owner, uniqueName("dave"));
  const other = await openPage(await browser.newContext());
  await register(other, uniqueName("erin"));
  await other.waitForSelector('.connection[data-state="connected"]');
  const taskNo = await submit(owner, "private");
  await owner.waitForSelector(`${card(taskNo)}[data-status="completed"]`, { timeout: 30_000 });
  assert.equal(await other.$$eval("article.task-card", (cards) => cards.length), 0);
  assert.deepEqual(await other.evaluate(() => window.__statuses), {});
  await other.reload();
  await other.waitForSelector('.connection[data-state="connected"]');
  assert.equal(await other.$$eval("article.task-card", (cards) => cards.length), 0);
  assert.match(await other.textContent(".empty"), /No tasks yet/);
  await shot(other, "monitor-other-user");
});

test("a share link: a browser without an account watches one task live until it is revoked", async () => {
  const owner = await openPage(await browser.newContext({ viewport: { width: 1100, height: 800 } }));
  await register(owner, uniqueName("hugo"));
  await owner.waitForSelector('.connection[data-state="connected"]');
  const taskNo = await submit(owner, "a shared lighthouse");
  await owner.click(`${card(taskNo)} button.share-make`);
  const link = await owner.inputValue(`${card(taskNo)} input.share-url`);
  assert.match(link, new RegExp(`^http://127\\.0\\.0\\.1:${port}/share#[0-9a-f]{64}$`));
  await shot(owner, "share-owner");

  // A second browser context: no account, no session, only the link.
  const viewer = await openPage(await browser.newContext({ viewport: { width: 800, height: 700 } }));
  await viewer.goto(link);
  await viewer.waitForSelector(card(taskNo));
  assert.equal(await viewer.$("#auth-title"), null, "no sign-in form");
  const other = await submit(owner, "a private harbour");
  await viewer.waitForSelector(`${card(taskNo)}[data-status="completed"]`, { timeout: 30_000 });
  await viewer.waitForSelector(`${card(taskNo)} .result img`);
  assertLifecycle(await statuses(viewer, taskNo), "the shared task");
  await owner.waitForSelector(`${card(other)}[data-status="completed"]`, { timeout: 30_000 });
  assert.equal(await viewer.$$eval("article.task-card", (cards) => cards.length), 1, "only the shared task");
  assert.deepEqual(Object.keys(await viewer.evaluate(() => window.__statuses)), [taskNo]);
  for (const control of ["button.cancel", "button.share-make", "button.share-revoke"]) {
    assert.equal(await viewer.$(control), null, `${control}: read-only`);
  }
  await shot(viewer, "share-viewer");

  // Revoked: the viewer is told, and the link opens nothing any more.
  await owner.click(`${card(taskNo)} button.share-revoke`);
  await owner.waitForSelector(`${card(taskNo)} button.share-make`);
  await viewer.waitForSelector("[role=alert]", { timeout: 20_000 });
  assert.match(await viewer.textContent("[role=alert]"), /revoked/);
  await shot(viewer, "share-revoked");
  const fresh = await openPage(await browser.newContext());
  await fresh.goto(link);
  await fresh.waitForSelector("[role=alert]");
  assert.equal(await fresh.$("article.task-card"), null);
  assert.deepEqual([...owner.errors, ...viewer.errors, ...fresh.errors], []);
});

test("more tasks than one page: the oldest load behind a button", async () => {
  const username = uniqueName("frank");
  const api = (path, body, token) =>
    fetch(`${url()}${path.slice(1)}`, {
      method: "POST",
      headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: JSON.stringify(body),
    }).then(async (r) => ({ status: r.status, body: await r.json() }));
  const registered = await api("/api/auth/register", { username, password: PASSWORD });
  assert.equal(registered.status, 201, JSON.stringify(registered.body));
  const token = registered.body.token;
  const numbers = [];
  for (let i = 0; i < 105; i += 1) {
    const made = await api("/api/tasks", { kind: "external", description: `export ${i}` }, token);
    assert.equal(made.status, 202, JSON.stringify(made.body));
    numbers.push(made.body.taskNo);
  }
  const page = await openPage(await browser.newContext());
  await signIn(page, username);
  await page.waitForSelector(card(numbers[104]));
  const count = () => page.$$eval("article.task-card", (cards) => cards.length);
  assert.equal(await count(), 100, "the newest page");
  assert.equal(await page.$(card(numbers[0])), null, "the oldest is not on it");
  await page.locator("button.load-older").scrollIntoViewIfNeeded();
  await page.screenshot({ path: join(SHOTS, "monitor-load-older.png") });
  await page.click("button.load-older");
  await page.waitForSelector(card(numbers[0]));
  assert.equal(await count(), 105);
  assert.equal(await page.$("button.load-older"), null, "nothing older left");
  // Newest first, the older page below the first.
  const order = await page.$$eval("article.task-card", (cards) => cards.map((c) => c.dataset.taskNo));
  assert.deepEqual(order.slice(-5), numbers.slice(0, 5).reverse());
  assert.deepEqual(page.errors, []);
});

test("an operator sees the server's figures as charts and disconnects a user", async () => {
  const user = await openPage(await browser.newContext());
  const name = uniqueName("gina");
  await register(user, name);
  await user.waitForSelector('.connection[data-state="connected"]');

  const ops = await openPage(await browser.newContext());
  await ops.waitForSelector("#auth-title");
  await ops.fill("#username", "ops");
  await ops.fill("#password", OPS_PASSCODE);
  await ops.click("form button[type=submit]");
  await ops.click("button.view-switch");
  await ops.waitForSelector('figure.spark[data-title="Connections"]');
  const taskNo = await submit(user, "watched by the operator");
  await ops.waitForSelector(".bars.slowest li", { timeout: 20_000 });
  // A few samples, two seconds apart, make lines; the user's task runs meanwhile.
  await ops.waitForFunction(
    () => (document.querySelector('figure.spark[data-title="Connections"] polyline')?.getAttribute("points") ?? "").split(" ").length >= 3,
    null,
    { timeout: 20_000 },
  );
  assert.match(await ops.textContent(".bars.slowest"), new RegExp(name));
  await shot(ops, "operations");
  // A plain user has no such view.
  assert.equal(await user.$("button.view-switch"), null);

  await ops.fill("#disconnect-user", name);
  await ops.click("form.disconnect button[type=submit]");
  await ops.waitForSelector(".disconnect-status");
  assert.match(await ops.textContent(".disconnect-status"), new RegExp(`Closed 1 connection\\(s\\) of ${name}`));
  // The user's page reconnects by itself and still sees its task end.
  await user.waitForSelector(`${card(taskNo)}[data-status="completed"]`, { timeout: 30_000 });
  await user.waitForSelector('.connection[data-state="connected"]');
  assert.deepEqual(ops.errors, []);
  assert.deepEqual(user.errors, []);
});
