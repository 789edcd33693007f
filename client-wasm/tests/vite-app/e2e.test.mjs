// Loads the same app, bundled by Vite, webpack 5 and esbuild and with no bundler at all, from
// the real server in headless Chromium (Debian's), and checks that the imported package
// shows a task's live updates through to `completed`, with its .wasm from that server.
import { test } from "node:test";
import assert from "node:assert/strict";
// Debian's Chromium with the suites' flags, as every browser suite launches it.
import { launchChromium } from "../../../frontend/tests/e2e/harness.mjs";

const url = process.env.TASKPULSE_APP_URL;
const screenshot = process.env.TASKPULSE_SCREENSHOT;

const BUILDS = [
  ["Vite", ""],
  ["webpack 5", "webpack/"],
  ["esbuild", "esbuild/"],
  ["no bundler (import map, the package's files as they are)", "plain/"],
];

for (const [name, path] of BUILDS) {
  test(`${name}: the bundled package shows live task updates`, async () => {
    assert.ok(url, "TASKPULSE_APP_URL is set by cargo xtask test");
    const browser = await launchChromium();
    try {
      const page = await browser.newPage();
      const errors = [];
      page.on("pageerror", (error) => errors.push(error.message));
      await page.goto(new URL(path, url).href);
      try {
        await page.waitForSelector('li[data-status="completed"]', { timeout: 30_000 });
      } catch (error) {
        const log = await page.textContent("#log").catch(() => "");
        throw new Error(`${error.message}; page errors: ${errors.join(" | ")}; log: ${log}`);
      }
      if (screenshot && path === "") await page.screenshot({ path: screenshot });
      assert.equal(await page.textContent("#state"), "connected");
      const log = (await page.textContent("#log")).trim().split("\n");
      const statuses = log.map((line) => line.split(" ")[0]);
      for (const status of ["created", "queued", "processing", "completed"]) {
        assert.ok(statuses.includes(status), `${status} missing from ${log.join(" | ")}`);
      }
      assert.equal(statuses.filter((s) => s === "completed").length, 1, log.join(" | "));
      assert.deepEqual(errors, [], "no uncaught errors on the page");
      // The .wasm came from the server (as the build placed it), not from anywhere else.
      const wasm = await page.evaluate(() =>
        performance.getEntriesByType("resource").map((e) => e.name).filter((n) => n.endsWith(".wasm")),
      );
      assert.equal(wasm.length, 1, wasm.join(", "));
      assert.ok(wasm[0].startsWith(new URL(url).origin), wasm[0]);
      if (path) assert.ok(new URL(wasm[0]).pathname.startsWith(`/${path}`), wasm[0]);
    } finally {
      await browser.close();
    }
  });
}
