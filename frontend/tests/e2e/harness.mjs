// What the browser suites share: a free port, the real server binary started with test
// settings (and killed with SIGKILL), and Debian's Chromium through playwright-core.
import { before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { chromium } from "playwright-core";

export async function freePort() {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** Starts `bin` on `port` with `data` (and the UI in `ui`); resolves once it listens. */
export function startServer({ bin, port, data, ui, env = {} }) {
  const child = spawn(bin, ["--listen", `127.0.0.1:${port}`, "--ui-dir", ui, "--data-dir", data], {
    env: {
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("TASKPULSE_"))),
      // The suites sign in several users from one address; the limit has its own test.
      TASKPULSE_ACCOUNTS_ATTEMPTS_PER_MINUTE: "100000",
      NO_COLOR: "1",
      ...env,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the server did not start in 30 s")), 30_000);
    child.stdout.on("data", (chunk) => {
      if (chunk.toString().includes("http://")) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.on("exit", (code) => reject(new Error(`the server exited with ${code}`)));
  });
}

export function kill(child) {
  return new Promise((resolve) => {
    child.on("exit", resolve);
    child.kill("SIGKILL");
  });
}

export function launchChromium() {
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--no-first-run",
    ],
  });
}

/**
 * One suite's server and browser: registers `before`/`after` hooks that start the server
 * binary (`TASKPULSE_SERVER_BIN`) on a free port with a fresh data directory and, as its UI
 * directory, `ui` (a built app) or else the files `site(base)` returns (name -> text or
 * bytes; an index.html is added, as the server serves a UI directory only with one), and
 * launch Chromium.
 */
export function serverSuite({ prefix, site = () => ({}), env = {}, ui }) {
  const suite = { port: 0, server: null, browser: null, data: null, dir: null };
  suite.base = () => `http://127.0.0.1:${suite.port}`;
  suite.start = async () => {
    suite.server = await startServer({
      bin: process.env.TASKPULSE_SERVER_BIN,
      port: suite.port,
      data: suite.data,
      ui: suite.dir,
      env,
    });
  };
  /** Kills the server with SIGKILL and starts it again on the same port and data. */
  suite.restart = async () => {
    await kill(suite.server);
    await suite.start();
  };
  before(async () => {
    assert.ok(process.env.TASKPULSE_SERVER_BIN, "TASKPULSE_SERVER_BIN is set by cargo xtask test");
    suite.port = await freePort();
    suite.data = mkdtempSync(join(tmpdir(), `${prefix}-data-`));
    if (ui) {
      suite.dir = ui;
    } else {
      suite.dir = mkdtempSync(join(tmpdir(), `${prefix}-site-`));
      const files = { "index.html": "<!doctype html><title>TaskPulse</title>", ...site(suite.base()) };
      for (const [name, content] of Object.entries(files)) {
        mkdirSync(dirname(join(suite.dir, name)), { recursive: true });
        writeFileSync(join(suite.dir, name), content);
      }
    }
    await suite.start();
    suite.browser = await launchChromium();
  });
  after(async () => {
    await suite.browser?.close();
    if (suite.server) await kill(suite.server);
    rmSync(suite.data, { recursive: true, force: true });
    if (!ui) rmSync(suite.dir, { recursive: true, force: true });
  });
  /** POSTs JSON to the server (with a Bearer token if given): `{status, body}`. */
  suite.post = async (path, body, token) => {
    const headers = { "content-type": "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    const answer = await fetch(`${suite.base()}${path}`, { method: "POST", headers, body: JSON.stringify(body) });
    return { status: answer.status, body: await answer.json() };
  };
  /** Registers a fresh user; its token. */
  suite.register = async (prefixName) => {
    const username = `${prefixName}${Math.floor(Math.random() * 1e9)}`;
    const registered = await suite.post("/api/auth/register", { username, password: "correct horse 9" });
    assert.equal(registered.status, 201, JSON.stringify(registered.body));
    return { username, token: registered.body.token };
  };
  return suite;
}

/** Waits for `check(arg)` in the page; a timeout shows what `window[record]` held. */
export async function waitIn(page, record, check, arg, timeout = 30_000) {
  try {
    await page.waitForFunction(check, arg, { timeout });
  } catch (error) {
    const seen = await page.evaluate((name) => window[name], record).catch(() => "unavailable");
    throw new Error(`${error.message}; the page had: ${JSON.stringify(seen)}`);
  }
}
