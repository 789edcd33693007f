// `cargo xtask bench page-load`: the time from navigation start to the first task update in
// headless Chromium (Debian's), for @taskpulse/client as it ships (no bundler: the package's
// files through an import map, dist/plain/taskpulse/) beside @stomp/stompjs with the few
// lines of resume logic a stompjs user writes for the same promise. Same server, same user,
// same task, same run; each variant loaded cold (a fresh browser context: empty HTTP and code
// caches) and then again in that context (cached: the server sends no cache headers, so the
// browser revalidates and gets 304s, and V8 reuses its compiled code). Prints a Markdown
// table for docs/BENCHMARKS.md. A benchmark: it reports, it asserts nothing.
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { launchChromium } from "../../../frontend/tests/e2e/harness.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const OUT = join(HERE, "dist", "bench");
const url = process.env.TASKPULSE_APP_URL;
const RUNS = Number(process.env.RUNS ?? 20);
if (!url) throw new Error("TASKPULSE_APP_URL is set by cargo xtask bench page-load");

const TASKPULSE_PAGE = `<!doctype html>
<meta charset="utf-8"><title>first update: @taskpulse/client</title>
<!--preload-->
<script type="importmap">{ "imports": { "@taskpulse/client": "../plain/taskpulse/index.js" } }</script>
<script type="module">
import TaskWebSocketClient from "@taskpulse/client";
window.ready = performance.now();
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const client = new TaskWebSocketClient(location.origin, token);
client.onTaskUpdate(() => { window.firstUpdate ??= performance.now(); });
client.connect();
</script>`;

// The same page telling the browser up front about the files the entry will import, so that
// they are fetched in parallel with it instead of one after the other.
const PRELOAD = `<link rel="modulepreload" href="../plain/taskpulse/index.js">
<link rel="modulepreload" href="../plain/taskpulse/taskpulse_client.js">
<link rel="preload" href="../plain/taskpulse/taskpulse_client_bg.wasm" as="fetch" type="application/wasm" crossorigin>`;

// What a stompjs user writes to get what TaskWebSocketClient promises: the last position
// sent again on every SUBSCRIBE (so a reconnect replays what was missed), messages that are
// not newer dropped, and the latest state per task kept.
const STOMPJS_SCRIPT = `
window.ready = performance.now();
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const tasks = new Map();
let position = null;
const client = new StompJs.Client({
  brokerURL: location.origin.replace(/^http/, "ws") + "/ws",
  connectHeaders: { Authorization: "Bearer " + token },
  heartbeatIncoming: 4000, heartbeatOutgoing: 4000, reconnectDelay: 1000,
});
client.onConnect = () => {
  const resume = position ? { "x-resume-epoch": position.epoch, "x-resume-seq": String(position.seq) } : {};
  client.subscribe("/user/queue/tasks-progress", (message) => {
    const h = message.headers;
    const snapshot = h["x-snapshot"] !== undefined;
    const seq = Number(snapshot ? h["x-snapshot-seq"] : h.seq);
    if (!snapshot && position && h.epoch === position.epoch && seq <= position.seq) return;
    if (h.epoch !== undefined && Number.isFinite(seq)) position = { epoch: h.epoch, seq };
    const task = JSON.parse(message.body);
    tasks.set(task.taskNo, task);
    window.firstUpdate ??= performance.now();
  }, resume);
};
client.activate();
`;

const STOMPJS_PAGE = `<!doctype html>
<meta charset="utf-8"><title>first update: @stomp/stompjs + resume</title>
<script src="./stomp.umd.min.js"></script>
<script src="./stompjs-resume.js"></script>`;

function writePages() {
  mkdirSync(OUT, { recursive: true });
  const stomp = join(dirname(createRequire(import.meta.url).resolve("@stomp/stompjs")), "..", "bundles", "stomp.umd.min.js");
  copyFileSync(stomp, join(OUT, "stomp.umd.min.js"));
  writeFileSync(join(OUT, "stompjs-resume.js"), STOMPJS_SCRIPT);
  writeFileSync(join(OUT, "stompjs.html"), STOMPJS_PAGE);
  writeFileSync(join(OUT, "taskpulse.html"), TASKPULSE_PAGE);
  writeFileSync(join(OUT, "taskpulse-preload.html"), TASKPULSE_PAGE.replace("<!--preload-->", PRELOAD));
}

/** `gzip -9` length of the files, as `cargo xtask dist` counts. */
function gzipped(files) {
  return files.reduce((sum, file) => sum + execFileSync("gzip", ["-9", "-n", "-c", file]).length, 0);
}

async function post(path, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(new URL(path, url), { method: "POST", headers, body: JSON.stringify(body) });
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

/**
 * Milliseconds from navigation start to the client's code being ready (the package's module
 * body runs once its .wasm is instantiated) and to the first update, and the bytes of every
 * response.
 */
async function load(page, address) {
  await page.goto(address);
  await page.waitForFunction(() => window.firstUpdate !== undefined, null, { timeout: 30_000 });
  return page.evaluate(() => {
    const entries = [...performance.getEntriesByType("navigation"), ...performance.getEntriesByType("resource")];
    const bytes = entries.reduce((sum, e) => sum + e.transferSize, 0);
    // The last of the client's files to arrive (for the package, its .wasm).
    const files = entries.filter((e) => e.entryType === "resource" && /taskpulse|stomp/.test(e.name));
    const fetched = Math.max(...files.map((e) => e.responseEnd));
    return { ready: window.ready, ms: window.firstUpdate, bytes, fetched };
  });
}

function quantile(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

writePages();
const { token } = await post("/api/auth/register", { username: `bench${Date.now()}`, password: "correct horse 9" });
await post("/api/tasks", { kind: "text-to-image", prompt: "page load" }, token);

const VARIANTS = [
  ["@taskpulse/client (no bundler)", "bench/taskpulse.html",
    ["plain/taskpulse/index.js", "plain/taskpulse/taskpulse_client.js", "plain/taskpulse/taskpulse_client_bg.wasm"]],
  ["@taskpulse/client (no bundler, preload hints)", "bench/taskpulse-preload.html",
    ["plain/taskpulse/index.js", "plain/taskpulse/taskpulse_client.js", "plain/taskpulse/taskpulse_client_bg.wasm"]],
  ["@stomp/stompjs 7.5 + resume logic", "bench/stompjs.html",
    ["bench/stomp.umd.min.js", "bench/stompjs-resume.js"]],
];
const browser = await launchChromium();
const version = browser.version();
const results = new Map(VARIANTS.map(([name]) => [name, { cold: [], cached: [], coldReady: [], cachedReady: [], coldFetched: [], cachedFetched: [], coldBytes: 0, cachedBytes: 0 }]));
try {
  for (let run = 0; run < RUNS; run++) {
    // Interleaved, so both variants see the same machine at the same moment.
    for (const [name, path] of VARIANTS) {
      const address = `${new URL(path, url).href}#token=${token}`;
      const context = await browser.newContext();
      const result = results.get(name);
      const cold = await load(await context.newPage(), address);
      const cached = await load(await context.newPage(), address);
      result.cold.push(cold.ms);
      result.cached.push(cached.ms);
      result.coldReady.push(cold.ready);
      result.coldFetched.push(cold.fetched);
      result.cachedFetched.push(cached.fetched);
      result.cachedReady.push(cached.ready);
      result.coldBytes = cold.bytes;
      result.cachedBytes = cached.bytes;
      await context.close();
    }
  }
} finally {
  await browser.close();
}

const dist = join(HERE, "dist");
const round = (ms) => ms.toFixed(1);
console.log(`Chromium ${version}, ${RUNS} runs per variant, interleaved; ms from navigation start to the first task update`);
console.log("");
console.log("| client | gzip -9 of its files | first update cold p50 / p90 | cached p50 / p90 | files in cold / cached p50 | code ready cold / cached p50 | bytes over the wire cold / cached |");
console.log("|---|---|---|---|---|---|---|");
for (const [name, , files] of VARIANTS) {
  const r = results.get(name);
  const size = gzipped(files.map((f) => join(dist, f)));
  console.log(
    `| ${name} | ${size.toLocaleString("en")} B | ${round(quantile(r.cold, 0.5))} / ${round(quantile(r.cold, 0.9))} ms ` +
      `| ${round(quantile(r.cached, 0.5))} / ${round(quantile(r.cached, 0.9))} ms ` +
      `| ${round(quantile(r.coldFetched, 0.5))} / ${round(quantile(r.cachedFetched, 0.5))} ms ` +
      `| ${round(quantile(r.coldReady, 0.5))} / ${round(quantile(r.cachedReady, 0.5))} ms ` +
      `| ${r.coldBytes.toLocaleString("en")} / ${r.cachedBytes.toLocaleString("en")} |`,
  );
}
