// Server-Sent Events from a page that uses nothing but `new EventSource()` and `fetch`, in
// Debian's Chromium against the real server, which this file starts, kills and restarts:
// the page takes a ticket, follows a task to `completed`, and after the restart (the
// server's tickets and stream passes are gone) takes a new ticket and resumes from the last
// event id it saw, losing nothing.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { serverSuite, waitIn } from "./harness.mjs";

const SHOTS = process.env.TASKPULSE_SCREENSHOTS ?? join(tmpdir(), "taskpulse-shots");

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>EventSource</title></head>
<body><h1>Tasks over Server-Sent Events</h1><ul id="tasks"></ul>
<script>
const token = new URLSearchParams(location.search).get("token");
window.__events = [];
window.__statuses = {};
window.__opened = 0;
let last = "";
async function open() {
  const answer = await fetch("/api/auth/ticket", {
    method: "POST", headers: { Authorization: "Bearer " + token },
  }).catch(() => null);
  if (!answer || !answer.ok) return setTimeout(open, 500);
  const { ticket } = await answer.json();
  window.__ticket = ticket;
  const es = new EventSource("/sse/tasks?ticket=" + ticket + (last ? "&lastEventId=" + encodeURIComponent(last) : ""));
  window.__opened += 1;
  es.addEventListener("task_progress", (e) => {
    last = e.lastEventId;
    const update = JSON.parse(e.data);
    window.__events.push({ id: e.lastEventId, update });
    const seen = (window.__statuses[update.taskNo] ??= []);
    if (seen[seen.length - 1] !== update.status) seen.push(update.status);
    let item = document.getElementById(update.taskNo);
    if (!item) {
      item = document.createElement("li");
      item.id = update.taskNo;
      document.getElementById("tasks").append(item);
    }
    item.textContent = update.taskNo + ": " + update.status + " " + update.progress + "% (event " + e.lastEventId + ")";
  });
  // The browser retries a broken connection by itself; a refused one (the server forgot
  // the stream's pass when it restarted) closes the source: take a new ticket.
  es.onerror = () => { if (es.readyState === EventSource.CLOSED) setTimeout(open, 300); };
}
open();
</script></body></html>`;

const suite = serverSuite({
  prefix: "taskpulse-sse",
  site: () => ({ "events.html": PAGE }),
  env: { TASKPULSE_DEMO_DURATION_MS: "3000", TASKPULSE_DEMO_SIZE: "64" },
});
const base = () => suite.base();
const wait = (page, check, arg, timeout) => waitIn(page, "__events", check, arg, timeout);

test("a page with only EventSource follows a task to completed across a restart, losing nothing", async () => {
  const { token } = await suite.register("grace");

  const page = await (await suite.browser.newContext()).newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  await page.goto(`${base()}/events.html?token=${encodeURIComponent(token)}`);
  await wait(page, () => window.__opened === 1 && window.__ticket);

  // A spent ticket opens nothing (without the stream's cookie).
  const spent = await page.evaluate(async () => {
    const answer = await fetch("/sse/tasks?ticket=" + window.__ticket, { credentials: "omit" });
    return answer.status;
  });
  assert.equal(spent, 401);

  const first = await suite.post("/api/tasks", { kind: "text-to-image", prompt: "a lighthouse" }, token);
  assert.equal(first.status, 202, JSON.stringify(first.body));
  await wait(page, (no) => (window.__statuses[no] ?? []).includes("processing"), first.body.taskNo);

  await suite.restart();
  // Submitted while the page is away: it must arrive through the resume, not live.
  const second = await suite.post("/api/tasks", { kind: "text-to-image", prompt: "a harbour" }, token);
  assert.equal(second.status, 202, JSON.stringify(second.body));
  for (const task of [first.body.taskNo, second.body.taskNo]) {
    await wait(page, (no) => (window.__statuses[no] ?? []).includes("completed"), task, 60_000);
  }

  const events = await page.evaluate(() => window.__events);
  const seqs = events.map((e) => Number(e.id.split(":")[1]));
  for (let i = 1; i < seqs.length; i++) {
    assert.ok(seqs[i] > seqs[i - 1] || events[i].id === events[i - 1].id, `event ids only go forward: ${seqs.join(",")}`);
  }
  const second_statuses = await page.evaluate((no) => window.__statuses[no], second.body.taskNo);
  assert.equal(second_statuses.at(-1), "completed", second_statuses.join(" > "));
  assert.ok((await page.evaluate(() => window.__opened)) >= 2, "a new ticket after the restart");
  assert.deepEqual(errors, []);
  await page.screenshot({ path: join(SHOTS, "event-source.png"), fullPage: true });
});
