// The first seed document's plain-HTML task monitor (fixtures/seed-000-monitor.html), verbatim
// except that its two CDN <script> tags load local copies of the same package versions
// (sockjs-client 1.6.1, @stomp/stompjs 7.0.0, from npm) and its hard-coded server address
// 'http://localhost:8081/ws' becomes the test server's. It runs in Debian's Chromium against
// the real server, which this file starts, kills and restarts: SockJS (its WebSocket
// transport) carrying STOMP, the page following a task to `completed` across the restart.
// Then sockjs-client forced to each of its transports in turn (WebSocket, the XHR ones,
// EventSource, htmlfile, JSONP and an iframe-wrapped one), with @stomp/stompjs on top,
// each following a task from `created` to `completed` across a server kill and restart.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { serverSuite, waitIn } from "./harness.mjs";

const SHOTS = process.env.TASKPULSE_SCREENSHOTS ?? join(tmpdir(), "taskpulse-shots");
const SEED_ADDRESS = "http://localhost:8081/ws";
const here = (path) => new URL(path, import.meta.url);

/** sockjs-client limited to the transport of `?transport=`, @stomp/stompjs on top. */
const TRANSPORT_PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>SockJS transport</title>
<script src="/vendor/sockjs-client@1.6.1/sockjs.min.js"></script>
<script src="/vendor/stompjs@7.0.0/stomp.umd.min.js"></script></head>
<body><ul id="tasks"></ul>
<script>
const params = new URLSearchParams(location.search);
window.__statuses = {};
window.__transports = [];
window.__connects = 0;
window.__log = [];
const client = new StompJs.Client({
  webSocketFactory: () => {
    const sock = new SockJS(location.origin + "/ws", null, { transports: [params.get("transport")] });
    sock.addEventListener("open", () => {
      window.__transports.push(sock.transport);
      window.__log.push("open " + sock.transport);
    });
    sock.addEventListener("close", (e) => window.__log.push("close " + e.code + " " + e.reason));
    return sock;
  },
  connectHeaders: { Authorization: "Bearer " + params.get("token") },
  reconnectDelay: 300,
  // STOMP heart-beats (as the seed's page has them): how a page notices a transport that
  // went quiet without an error (Chromium leaves an htmlfile iframe of a killed server
  // hanging, with no load or error event).
  heartbeatIncoming: 4000,
  heartbeatOutgoing: 4000,
  onConnect: () => {
    window.__connects += 1;
    // Live once the server's RECEIPT says the catch-up is delivered.
    const receipt = "live-" + window.__connects;
    client.watchForReceipt(receipt, () => { window.__live = window.__connects; });
    client.subscribe("/user/queue/tasks-progress", (message) => {
      const update = JSON.parse(message.body);
      const seen = (window.__statuses[update.taskNo] ??= []);
      if (seen[seen.length - 1] !== update.status) seen.push(update.status);
      window.__log.push(update.status + " " + update.progress);
      let item = document.getElementById(update.taskNo);
      if (!item) {
        item = document.createElement("li");
        item.id = update.taskNo;
        document.getElementById("tasks").append(item);
      }
      item.textContent = update.taskNo + ": " + update.status + " " + update.progress + "%";
    }, { receipt });
  },
});
client.activate();
</script></body></html>`;

const suite = serverSuite({
  prefix: "taskpulse-sockjs",
  site: (base) => {
    const seed = readFileSync(here("./fixtures/seed-000-monitor.html"), "utf8");
    assert.ok(seed.includes(SEED_ADDRESS), "the seed page as written");
    return {
      "seed.html": seed.replace(SEED_ADDRESS, `${base}/ws`),
      "vendor/sockjs-client@1.6.1/sockjs.min.js": readFileSync(
        here("./node_modules/sockjs-client/dist/sockjs.min.js"),
      ),
      "vendor/stompjs@7.0.0/stomp.umd.min.js": readFileSync(
        here("./node_modules/@stomp/stompjs/bundles/stomp.umd.min.js"),
      ),
      "transport.html": TRANSPORT_PAGE,
    };
  },
  env: {
    TASKPULSE_DEMO_DURATION_MS: "3000",
    TASKPULSE_DEMO_SIZE: "64",
    // The iframe transports' page loads the same local copy (no CDN here).
    TASKPULSE_SOCKJS_CLIENT_URL: "/vendor/sockjs-client@1.6.1/sockjs.min.js",
  },
});
const base = () => suite.base();

/** The status the seed page shows for `taskNo` ("状态: <status>"), or null. */
const shown = (page, taskNo) =>
  page.evaluate((no) => {
    for (const card of document.querySelectorAll(".task-card")) {
      if (card.querySelector("h3")?.textContent === no) {
        return card.querySelector("p")?.textContent.replace("状态: ", "") ?? null;
      }
    }
    return null;
  }, taskNo);

async function until(page, taskNo, status, timeout = 30_000) {
  const deadline = Date.now() + timeout;
  let last = null;
  while (Date.now() < deadline) {
    last = await shown(page, taskNo);
    if (last === status) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const dom = await page.evaluate(() => document.body.innerText);
  throw new Error(`task ${taskNo} never showed ${status} (last: ${last}); the page: ${dom}`);
}

test("the seed's plain-HTML monitor (SockJS + STOMP) follows a task to completed across a restart", async () => {
  const { token } = await suite.register("heidi");

  const context = await suite.browser.newContext();
  // The seed reads its token from localStorage('jwt_token'), as a login page would leave it.
  await context.addInitScript((t) => localStorage.setItem("jwt_token", t), token);
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  const sockjs = [];
  page.on("websocket", (ws) => sockjs.push(ws.url()));
  await page.goto(`${base()}/seed.html`);
  await page.waitForFunction(() => document.getElementById("connection-status").textContent.includes("已连接"));
  assert.match(sockjs[0], /\/ws\/\d+\/[^/]+\/websocket$/, "sockjs-client chose its WebSocket transport");

  const submitted = await suite.post("/api/tasks", { kind: "text-to-image", prompt: "a lighthouse" }, token);
  assert.equal(submitted.status, 202, JSON.stringify(submitted.body));
  const taskNo = submitted.body.taskNo;
  await until(page, taskNo, "processing");

  // The server dies mid-task; stompjs reconnects through a new SockJS session (its
  // reconnectDelay is 5 s) and the page ends on the true state.
  await suite.restart();
  await until(page, taskNo, "completed", 60_000);
  assert.ok(sockjs.length >= 2, `reconnected: ${sockjs.join(", ")}`);
  assert.deepEqual(errors, []);
  await page.screenshot({ path: join(SHOTS, "seed-sockjs-monitor.png"), fullPage: true });
});

for (const transport of ["websocket", "xhr-streaming", "xhr-polling", "eventsource", "htmlfile", "jsonp-polling", "iframe-eventsource"]) {
  test(`sockjs-client on ${transport} only, with stompjs, follows a task from created to completed across a restart`, async () => {
    const { token } = await suite.register("ivan");
    const page = await (await suite.browser.newContext()).newPage();
    const errors = [];
    page.on("pageerror", (error) => errors.push(error.message));
    const wait = (check, arg, timeout) => waitIn(page, "__log", check, arg, timeout);
    await page.goto(`${base()}/transport.html?transport=${transport}&token=${encodeURIComponent(token)}`);
    await wait(() => window.__live === 1);
    assert.deepEqual(await page.evaluate(() => window.__transports), [transport]);

    const submitted = await suite.post("/api/tasks", { kind: "text-to-image", prompt: "a lighthouse" }, token);
    assert.equal(submitted.status, 202, JSON.stringify(submitted.body));
    const taskNo = submitted.body.taskNo;
    await wait((no) => (window.__statuses[no] ?? []).includes("processing"), taskNo);

    await suite.restart();
    await wait((no) => (window.__statuses[no] ?? []).at(-1) === "completed", taskNo, 60_000);
    const statuses = await page.evaluate((no) => window.__statuses[no], taskNo);
    assert.equal(statuses[0], "created", `from created: ${statuses}`);
    const transports = await page.evaluate(() => window.__transports);
    assert.ok(transports.length >= 2 && transports.every((t) => t === transport), `reconnected on ${transport}: ${transports}`);
    assert.deepEqual(errors, []);
    await page.screenshot({ path: join(SHOTS, `sockjs-${transport}.png`), fullPage: true });
  });
}
