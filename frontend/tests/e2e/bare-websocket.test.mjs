// The JSON protocol from a page that uses nothing but the browser's `new WebSocket()` (as
// the Spring-broadcast and Node seeds' pages do), in Debian's Chromium against the real
// server, which this file starts, kills and restarts: the page authenticates, subscribes,
// chats, and follows a task to `completed` across the restart by resuming from the last
// position it saw.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { serverSuite, waitIn } from "./harness.mjs";

const SHOTS = process.env.TASKPULSE_SCREENSHOTS ?? join(tmpdir(), "taskpulse-shots");

// The whole client: no library, only WebSocket and JSON.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>bare WebSocket</title></head>
<body><h1>Tasks over a bare WebSocket</h1><ul id="tasks"></ul><ul id="chat"></ul>
<script>
const token = new URLSearchParams(location.search).get("token");
window.__messages = [];
window.__statuses = {};
let position = null;
function connect() {
  const ws = new WebSocket("ws://" + location.host + "/ws/json");
  ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
  ws.onmessage = (event) => {
    const m = JSON.parse(event.data);
    window.__messages.push(m);
    if (m.type === "auth_success") {
      const subscribe = { type: "subscribe", channels: ["tasks", "/topic/chat.general"] };
      if (position) subscribe.resume = position;
      ws.send(JSON.stringify(subscribe));
    } else if (m.type === "subscribed" && m.channels.includes("/topic/chat.general")) {
      ws.send(JSON.stringify({ type: "chat_message", channel: "/topic/chat.general", content: "hello from a bare WebSocket" }));
    } else if (m.type === "task_progress") {
      position = { epoch: m.epoch, seq: m.seq };
      const seen = (window.__statuses[m.data.taskNo] ??= []);
      if (seen[seen.length - 1] !== m.data.status) seen.push(m.data.status);
      let item = document.getElementById(m.data.taskNo);
      if (!item) {
        item = document.createElement("li");
        item.id = m.data.taskNo;
        document.getElementById("tasks").append(item);
      }
      item.textContent = m.data.taskNo + ": " + m.data.status + " " + m.data.progress + "%";
    } else if (m.type === "chat_message") {
      const line = document.createElement("li");
      line.textContent = m.from + ": " + m.content;
      document.getElementById("chat").append(line);
    }
  };
  ws.onclose = () => setTimeout(connect, 300);
}
connect();
</script></body></html>`;

const suite = serverSuite({
  prefix: "taskpulse-bare-ws",
  site: () => ({ "bare.html": PAGE }),
  env: { TASKPULSE_DEMO_DURATION_MS: "3000", TASKPULSE_DEMO_SIZE: "64" },
});
const base = () => suite.base();
const wait = (page, check, arg, timeout) => waitIn(page, "__messages", check, arg, timeout);

test("a page with only new WebSocket() chats and follows a task to completed across a restart", async () => {
  const { username, token } = await suite.register("frank");

  const page = await (await suite.browser.newContext()).newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  await page.goto(`${base()}/bare.html?token=${encodeURIComponent(token)}`);
  await wait(page, () =>
    window.__messages.some((m) => m.type === "subscribed" && m.channels.includes("tasks")),
  );

  const submitted = await suite.post("/api/tasks", { kind: "text-to-image", prompt: "a lighthouse" }, token);
  assert.equal(submitted.status, 202, JSON.stringify(submitted.body));
  const taskNo = submitted.body.taskNo;
  await wait(page, (no) => (window.__statuses[no] ?? []).includes("processing"), taskNo);

  // The server dies mid-task and comes back; the page reconnects and resumes by itself.
  await suite.restart();
  await wait(page, (no) => (window.__statuses[no] ?? []).includes("completed"), taskNo, 60_000);

  const messages = await page.evaluate(() => window.__messages);
  const chat = messages.find((m) => m.type === "chat_message");
  assert.deepEqual(chat, {
    type: "chat_message",
    channel: "/topic/chat.general",
    from: username,
    content: "hello from a bare WebSocket",
  });
  const statuses = await page.evaluate((no) => window.__statuses[no], taskNo);
  assert.equal(statuses[0], "created", statuses.join(" > "));
  assert.equal(statuses.at(-1), "completed", statuses.join(" > "));
  assert.ok(
    messages.filter((m) => m.type === "auth_success").length >= 2,
    "authenticated again after the restart",
  );
  const last = messages.filter((m) => m.type === "task_progress" && m.data.taskNo === taskNo).at(-1);
  assert.ok(last.data.resultUrl, JSON.stringify(last));
  assert.deepEqual(errors, []);
  await page.screenshot({ path: join(SHOTS, "bare-websocket.png"), fullPage: true });
});
