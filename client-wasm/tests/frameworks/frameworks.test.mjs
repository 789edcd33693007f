// The seed's React and Vue components and the package's adapters, built by Vite and served
// by the real server (which each test kills with SIGKILL and starts again), in Debian's
// Chromium; then the same app under `vite dev`, with no configuration for the package.
// The package is the one `npm pack` makes, installed as from a registry (cargo xtask test).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { freePort, serverSuite, waitIn } from "../../../frontend/tests/e2e/harness.mjs";

const HERE = fileURLToPath(new URL(".", import.meta.url));
const SHOTS = process.env.TASKPULSE_SCREENSHOTS ?? join(tmpdir(), "taskpulse-shots");

const suite = serverSuite({
  prefix: "taskpulse-frameworks",
  ui: join(HERE, "dist"),
  env: { TASKPULSE_DEMO_DURATION_MS: "3000", TASKPULSE_DEMO_SIZE: "64" },
});

// Records what the page shows: texts of the seed's toasts and of element-plus messages
// (which disappear after 3 s), each element once.
function recordToasts() {
  window.__toasts = [];
  const seen = new WeakSet();
  new MutationObserver(() => {
    for (const element of document.querySelectorAll(".toast, .el-message__content")) {
      if (seen.has(element)) continue;
      seen.add(element);
      window.__toasts.push(element.textContent.trim());
    }
  }).observe(document, { childList: true, subtree: true, characterData: true });
}

/** A page of `path` signed in as a new user (the seed reads `jwt_token` from localStorage). */
async function openAs(path, base = suite.base()) {
  const { token } = await suite.register("fw");
  const context = await suite.browser.newContext({ viewport: { width: 900, height: 700 } });
  await context.addInitScript((jwt) => localStorage.setItem("jwt_token", jwt), token);
  await context.addInitScript(recordToasts);
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(error.message));
  const sockets = [];
  page.on("websocket", (socket) => {
    sockets.push(socket);
    // A session: the server answered on it. An attempt the restarting server refused is
    // a WebSocket too, but never gets a frame.
    socket.on("framereceived", () => (socket.answered = true));
  });
  await page.goto(`${base}${path}`);
  return { page, token, problems, sockets };
}

async function submit(token, prompt) {
  const submitted = await suite.post("/api/tasks", { kind: "text-to-image", prompt }, token);
  assert.equal(submitted.status, 202, JSON.stringify(submitted.body));
  return submitted.body.taskNo;
}

/** Waits until the seed's card of `taskNo` says `状态: {status}`. */
function seedCard(page, taskNo, status) {
  return waitIn(page, "__toasts", ([no, want]) =>
    [...document.querySelectorAll(".task-card")].some((card) =>
      card.querySelector("h3")?.textContent === no && card.textContent.includes(`状态: ${want}`)),
    [taskNo, status]);
}

/** Waits until the adapter page's row of `taskNo` has `data-status` = `status`. */
function row(page, taskNo, status) {
  return waitIn(page, "__rendered", ([no, want]) =>
    document.querySelector(`li.task[data-task-no="${no}"]`)?.dataset.status === want,
    [taskNo, status]);
}

/**
 * The seed component's whole story: a task followed to `completed`, then one that is
 * processing when the server is killed and finishes after the restart; one success toast
 * each, never two.
 */
async function followAcrossRestart(path, shot, react) {
  const { page, token, problems } = await openAs(path);
  if (react) await assertReact(page, react);
  const first = await submit(token, `${shot} before`);
  await seedCard(page, first, "completed");
  const second = await submit(token, `${shot} across a restart`);
  await seedCard(page, second, "processing");
  await suite.restart();
  await seedCard(page, second, "completed");
  await page.screenshot({ path: join(SHOTS, `${shot}.png`) }).catch(() => {});
  const toasts = await page.evaluate(() => window.__toasts);
  for (const taskNo of [first, second]) {
    const done = toasts.filter((text) => text === `任务 ${taskNo} 已完成!`);
    assert.equal(done.length, 1, `one success toast for ${taskNo}: ${JSON.stringify(toasts)}`);
  }
  assert.deepEqual(problems, [], "no uncaught errors on the page");
  const links = await page.$$eval(".task-card a", (as) => as.map((a) => a.getAttribute("href")));
  assert.equal(links.length, 2, `a result link on each card: ${links}`);
  await page.context().close();
}

/** The React builds: React 19 at the root, React 18 under /react18/ (vite.react18.config.js). */
const REACTS = [["19", ""], ["18", "/react18"]];

/** Fails unless the page runs React `major` (main.jsx writes the version it imported). */
async function assertReact(page, major) {
  // Written once main.jsx runs, which is after the package's .wasm is in (its entry awaits
  // it), possibly after the load event.
  const handle = await page.waitForFunction(() => document.documentElement.dataset.react, null, { timeout: 30_000 });
  const version = await handle.jsonValue();
  assert.equal(version?.split(".")[0], major, `React ${major} expected, the page runs ${version}`);
}

for (const [major, prefix] of REACTS) {
  test(`React ${major}: the seed's React TaskMonitor, as written, follows tasks to completed across a server restart`, async () => {
    await followAcrossRestart(`${prefix}/react-seed/`, `react${major}-seed`, major);
  });
}

test("the seed's Vue 3 TaskMonitor, as written with element-plus, follows tasks across a server restart", async () => {
  await followAcrossRestart("/vue-seed/", "vue-seed");
});

/**
 * An adapter page: two components share one connection, rows follow their tasks through a
 * restart, and unmounting them closes the connection.
 */
async function adapterStory(path, shot, base, react) {
  const { page, token, problems, sockets } = await openAs(path, base);
  if (react) await assertReact(page, react);
  await waitIn(page, "__rendered", () => document.querySelector("#state")?.textContent === "connected");
  const first = await submit(token, `${shot} before`);
  await row(page, first, "completed");
  const socketsBefore = sockets.length;
  const second = await submit(token, `${shot} across a restart`);
  await row(page, second, "processing");
  await suite.restart();
  await row(page, second, "completed");
  await waitIn(page, "__rendered", () => document.querySelector("#completed")?.textContent === "2");
  await page.screenshot({ path: join(SHOTS, `${shot}.png`) }).catch(() => {});
  const pageSockets = (list) => list.filter((s) => s.url().endsWith("/ws") && s.answered);
  assert.equal(pageSockets(sockets.slice(0, socketsBefore)).length, 1,
    `one connection for both components: ${sockets.map((s) => s.url())}`);
  assert.equal(pageSockets(sockets).length, 2, "one more after the restart, not one per component");
  const rendered = await page.evaluate(() => window.__rendered);
  for (const taskNo of [first, second]) {
    const seen = rendered[taskNo] ?? [];
    assert.equal(seen.at(-1), "completed", `${taskNo}: ${seen}`);
    assert.equal(seen.filter((s) => s === "completed").length, 1, `${taskNo}: ${seen}`);
  }
  // Unmounting every user closes the connection (after a short linger).
  const live = pageSockets(sockets).at(-1);
  await page.click("#toggle");
  if (!live.isClosed()) await live.waitForEvent("close", { timeout: 10_000 });
  assert.deepEqual(problems, [], "no uncaught errors on the page");
  await page.context().close();
}

for (const [major, prefix] of REACTS) {
  test(`React ${major}: useTaskPulse and useTask share one connection, follow a restart, close on unmount`, async () => {
    await adapterStory(`${prefix}/react-hooks/`, `react${major}-hooks`, undefined, major);
  });
}

test("Vue: useTaskPulse and useTask share one connection, follow a restart, close on unmount", async () => {
  await adapterStory("/vue-composables/", "vue-composables");
});

/** `vite dev` on a free port for this app, until `stop()`. */
async function viteDev() {
  const port = await freePort();
  const child = spawn("node_modules/.bin/vite", ["--port", String(port), "--strictPort", "--host", "127.0.0.1"], {
    cwd: HERE,
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("vite dev did not start in 60 s")), 60_000);
    child.stdout.on("data", (chunk) => {
      if (chunk.toString().includes(`${port}`)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on("exit", (code) => reject(new Error(`vite dev exited with ${code}`)));
  });
  return {
    base: `http://127.0.0.1:${port}`,
    stop: () => new Promise((resolve) => {
      child.on("exit", resolve);
      child.kill("SIGTERM");
    }),
  };
}

test("vite dev, with no configuration for the package: the React hooks page in development StrictMode (double mount) opens one connection", async () => {
  const dev = await viteDev();
  try {
    await adapterStory(`/react-hooks/?server=${encodeURIComponent(suite.base())}`, "react-hooks-vite-dev", dev.base);
  } finally {
    await dev.stop();
  }
});
