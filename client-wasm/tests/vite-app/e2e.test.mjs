// Loads the bundled app from the real server in headless Chromium (Debian's) and checks that
// the imported package shows a task's live updates through to `completed`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const url = process.env.TASKPULSE_APP_URL;
const screenshot = process.env.TASKPULSE_SCREENSHOT;

test("the Vite-bundled package shows live task updates", async () => {
  assert.ok(url, "TASKPULSE_APP_URL is set by cargo xtask test");
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--no-first-run",
    ],
  });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (error) => errors.push(error.message));
    await page.goto(url);
    await page.waitForSelector('li[data-status="completed"]', { timeout: 30_000 });
    if (screenshot) await page.screenshot({ path: screenshot });
    assert.equal(await page.textContent("#state"), "connected");
    const log = (await page.textContent("#log")).trim().split("\n");
    const statuses = log.map((line) => line.split(" ")[0]);
    for (const status of ["created", "queued", "processing", "completed"]) {
      assert.ok(statuses.includes(status), `${status} missing from ${log.join(" | ")}`);
    }
    assert.equal(statuses.filter((s) => s === "completed").length, 1, log.join(" | "));
    assert.deepEqual(errors, [], "no uncaught errors on the page");
    // The .wasm came as a bundled asset from the server, not from anywhere else.
    const wasm = await page.evaluate(() =>
      performance.getEntriesByType("resource").map((e) => e.name).filter((n) => n.endsWith(".wasm")),
    );
    assert.equal(wasm.length, 1, wasm.join(", "));
    assert.ok(wasm[0].startsWith(new URL(url).origin), wasm[0]);
  } finally {
    await browser.close();
  }
});
