// What the browser suites share: a free port, the real server binary started with test
// settings (and killed with SIGKILL), and Debian's Chromium through playwright-core.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
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
