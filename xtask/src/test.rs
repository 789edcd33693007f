//! `cargo xtask test`: every check the project has, in one run, with one summary line.
//!
//! Test counts come from each runner's own summary (nextest, libtest, wasm-bindgen-test);
//! a check that is not a test runner (fmt, clippy, the page smoke test) counts as one.

use std::{
    io::{BufRead, BufReader, Read},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use taskpulse_testkit::ServerProcess;

use crate::{build_frontend, cargo, install, proxy::FreezableProxy, root};

/// Tallies of one run.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
    failures: Vec<String>,
}

impl Tally {
    fn check(&mut self, name: &str, result: Result<(), String>) {
        match result {
            Ok(()) => self.passed += 1,
            Err(why) => self.fail(name, &why),
        }
    }

    fn fail(&mut self, name: &str, why: &str) {
        eprintln!("xtask: FAILED {name}: {why}");
        self.failed += 1;
        self.failures.push(name.to_owned());
    }

    /// Prints what failed and the summary line (always the last line); fails if anything did.
    fn finish(self) -> Result<(), String> {
        if !self.failures.is_empty() {
            println!("xtask: failed: {}", self.failures.join(", "));
        }
        println!("{} passed, {} failed", self.passed, self.failed);
        if self.failed == 0 && self.failures.is_empty() { Ok(()) } else { Err(String::new()) }
    }

    /// Adds a test runner's counts; a runner that failed without reporting counts as a failure.
    fn runner(&mut self, name: &str, output: Result<String, String>) {
        let (text, ok) = match output {
            Ok(text) => (text, true),
            Err(text) => (text, false),
        };
        let (passed, failed) = counts(&text);
        self.passed += passed;
        self.failed += failed;
        if failed > 0 {
            self.failures.push(name.to_owned());
        } else if !ok {
            self.fail(name, "the runner failed before reporting a failed test");
        } else if passed == 0 {
            self.fail(name, "the runner reported no test at all");
        }
    }
}

/// Sums `N passed` / `N failed` from libtest (`test result: ok. 3 passed; 0 failed`) and
/// nextest (`Summary [..] 25 tests run: 24 passed, 1 failed, 0 skipped`) summary lines, and
/// node:test's TAP totals (`# pass 9`, `# fail 0`).
fn counts(text: &str) -> (usize, usize) {
    let mut total = (0, 0);
    // nextest's output also holds the libtest summaries of the tests that failed, already
    // counted in its own summary line.
    let nextest = text.lines().any(|line| line.trim().starts_with("Summary ["));
    for line in text.lines() {
        let line = line.trim();
        let tap =
            |prefix: &str| line.strip_prefix(prefix).and_then(|n| n.trim().parse::<usize>().ok());
        if let Some(n) = tap("# pass ") {
            total.0 += n;
        }
        if let Some(n) = tap("# fail ") {
            total.1 += n;
        }
        let summary =
            if nextest { line.starts_with("Summary [") } else { line.starts_with("test result:") };
        if !summary {
            continue;
        }
        let words: Vec<&str> =
            line.split(|c: char| c.is_whitespace() || c == ';' || c == ',').collect();
        for pair in words.windows(2) {
            let number = pair[0].parse::<usize>();
            match (number, pair[1]) {
                (Ok(n), "passed") => total.0 += n,
                (Ok(n), "failed") => total.1 += n,
                _ => {}
            }
        }
    }
    total
}

/// Below this much free disk a clean run may not fit: a clean `target/` of the whole run
/// measured 2.6 GiB without incremental caches (CI), several times that with them.
const ROOMY_KIB: u64 = 6 * 1024 * 1024;

/// Warns (before an hour of building) when the disk holding `target/` is nearly full.
fn check_disk() {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| root().join("target").display().to_string());
    let dir =
        Path::new(&target).ancestors().find(|d| d.exists()).unwrap_or(Path::new("/")).to_owned();
    let Ok(output) = Command::new("df").arg("-Pk").arg(&dir).output() else { return };
    let text = String::from_utf8_lossy(&output.stdout);
    let free = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<u64>().ok());
    if let Some(free) = free.filter(|kib| *kib < ROOMY_KIB) {
        eprintln!(
            "xtask: warning: only {:.1} GiB free on the disk of {}; a clean run builds about \
             3 GiB there (CARGO_INCREMENTAL=0), more with incremental caches",
            free as f64 / 1024.0 / 1024.0,
            dir.display()
        );
    }
}

pub(crate) fn run() -> Result<(), String> {
    let started = Instant::now();
    check_disk();
    install::test_packages()?;
    install::wasm_target()?;
    install::nextest()?;
    install::wasm_bindgen_cli()?;
    install::node()?;

    let mut tally = Tally::default();
    tally.check("cargo fmt --check", quiet(cargo().args(["fmt", "--all", "--", "--check"])));
    tally.check(
        "clippy (native)",
        quiet(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])),
    );
    // What ships to browsers, checked for the target it ships to. shared's own tests stay
    // native: proptest does not build for wasm32.
    let wasm_clippy = |packages: &[&str], targets: &[&str]| {
        let mut command = cargo();
        command.args(["clippy", "--target", "wasm32-unknown-unknown"]);
        for package in packages {
            command.args(["-p", package]);
        }
        quiet(command.args(targets).args(["--", "-D", "warnings"]))
    };
    tally.check(
        "clippy (wasm32)",
        wasm_clippy(
            &["taskpulse-shared", "taskpulse-client", "taskpulse-frontend"],
            &["--lib", "--bins"],
        )
        .and_then(|()| wasm_clippy(&["taskpulse-client"], &["--tests"])),
    );
    tally.runner(
        "native tests (nextest)",
        captured(cargo().args(["nextest", "run", "--workspace", "--no-fail-fast"])),
    );
    tally.runner("doc tests", captured(cargo().args(["test", "--workspace", "--doc"])));
    tally.runner("client-wasm in headless Chromium (live server)", client_browser_tests());
    tally.runner("@stomp/stompjs interop (Node)", stompjs_interop());
    npm_package_tests(&mut tally);
    tally.check("UI served and rendered in headless Chromium", ui_smoke());
    tally.runner("frontend components in headless Chromium", frontend_components());
    tally.runner("task monitor end to end (playwright-core)", monitor_e2e());

    println!("xtask: finished in {} s", started.elapsed().as_secs());
    tally.finish()
}

/// `cargo xtask test-client`: only the client's browser suite, for working on the client.
pub(crate) fn client_only() -> Result<(), String> {
    install::test_packages()?;
    install::wasm_target()?;
    install::wasm_bindgen_cli()?;
    let mut tally = Tally::default();
    tally.runner("client-wasm in headless Chromium (live server)", client_browser_tests());
    npm_package_tests(&mut tally);
    tally.finish()
}

/// Runs a check, showing its output; the error is its exit status.
fn quiet(command: &mut Command) -> Result<(), String> {
    let status = command.status().map_err(|e| format!("cannot start: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("exited with {status}")) }
}

/// Runs a test runner, echoing its output as it comes and returning it for counting:
/// `Ok(output)` on success, `Err(output)` on failure.
fn captured(command: &mut Command) -> Result<String, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let pipes: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().expect("piped stdout")),
        Box::new(child.stderr.take().expect("piped stderr")),
    ];
    let readers: Vec<_> = pipes
        .into_iter()
        .map(|pipe| {
            let tx = tx.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    println!("{line}");
                    let _ = tx.send(line);
                }
            })
        })
        .collect();
    drop(tx);
    let text: Vec<String> = rx.iter().collect();
    for reader in readers {
        let _ = reader.join();
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let text = text.join("\n");
    if status.success() { Ok(text) } else { Err(text) }
}

/// Builds the UI, starts the real server on an ephemeral port, and has headless Chromium
/// load `/` and run the wasm app: the rendered DOM must hold what only the app writes.
fn ui_smoke() -> Result<(), String> {
    let dist = build_frontend()?;
    let status = cargo().args(["build", "-p", "taskpulse-server"]).status();
    if !status.is_ok_and(|s| s.success()) {
        return Err("the server did not build".into());
    }
    let data = tempdir("taskpulse-smoke-data")?;
    let mut server =
        start_server(&root().join("target/debug/taskpulse-server"), &dist, &data, &[])?;
    let url = format!("http://{}/", server.addr);
    let health = http_get(&server.addr.to_string(), "/healthz")?;
    if !health.contains("\"status\":\"ok\"") {
        return Err(format!("/healthz answered {health:?}"));
    }
    let profile = tempdir("taskpulse-smoke-chromium")?;
    let shot = root().join("artifacts/ui-smoke.png");
    let _ = std::fs::create_dir_all(root().join("artifacts"));
    // One Chromium run cannot both dump the DOM and take a screenshot.
    let chromium = |output: &str| {
        Command::new("chromium")
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--virtual-time-budget=10000", "--window-size=1024,768", output])
            .arg(&url)
            .output()
            .map_err(|e| format!("cannot start chromium: {e}"))
    };
    let out = chromium("--dump-dom")?;
    let _ = chromium(&format!("--screenshot={}", shot.display()));
    server.kill();
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&out.stdout);
    // The sign-in form is produced by the wasm app, not by index.html (whose body is empty).
    if dom.contains("<h1>TaskPulse</h1>") && dom.contains("id=\"auth-title\"") {
        println!("xtask: the UI rendered in Chromium; screenshot at {}", shot.display());
        Ok(())
    } else {
        Err(format!(
            "Chromium did not render the app at {url}; DOM was:\n{dom}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The Yew components and the board's reducer, in headless Chromium.
fn frontend_components() -> Result<String, String> {
    captured(
        cargo()
            .args(["test", "-p", "taskpulse-frontend", "--target", "wasm32-unknown-unknown"])
            .args(["--test", "components"])
            .env("PATH", install::path_with_cargo_bin())
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", "wasm-bindgen-test-runner")
            .env("CHROMEDRIVER", "/usr/bin/chromedriver")
            .env("WASM_BINDGEN_TEST_TIMEOUT", "120"),
    )
}

/// The browser suites in Chromium against the real server, which each suite starts, kills
/// and restarts itself (`frontend/tests/e2e`): the task monitor, a page with only
/// `new WebSocket()` (the JSON protocol), one with only `new EventSource()` (SSE), the
/// seed's SockJS page and sockjs-client forced to each of its transports.
/// Screenshots go to `artifacts/`.
fn monitor_e2e() -> Result<String, String> {
    let dist = build_frontend()?;
    quiet(cargo().args(["build", "-p", "taskpulse-server"]))?;
    let dir = root().join("frontend/tests/e2e");
    npm_ci(&dir)?;
    let _ = std::fs::create_dir_all(root().join("artifacts"));
    captured(
        Command::new("node")
            .args(["--test", "--test-reporter=tap", "--test-concurrency=1"])
            .args(["monitor.test.mjs", "bare-websocket.test.mjs", "event-source.test.mjs"])
            .arg("sockjs.test.mjs")
            .current_dir(&dir)
            .env("TASKPULSE_SERVER_BIN", root().join("target/debug/taskpulse-server"))
            .env("TASKPULSE_UI_DIR", &dist)
            .env("TASKPULSE_SCREENSHOTS", root().join("artifacts")),
    )
}

/// Test suites sign in many users from one address; the limit has its own test.
const ATTEMPTS: &str = "TASKPULSE_ACCOUNTS_ATTEMPTS_PER_MINUTE";
const MANY: &str = "100000";

/// Settings of the server the client's browser tests run against.
const CLIENT_TEST_SECRET: &str = "client-tests-secret-of-thirty-two-bytes";
const CLIENT_TEST_API_KEY: &str = "client-tests-api-key";

/// client-wasm's `wasm-bindgen-test` suite in headless Chromium, against the real server
/// (and a freezable relay in front of it), whose addresses are compiled into the tests.
fn client_browser_tests() -> Result<String, String> {
    quiet(cargo().args(["build", "-p", "taskpulse-server"]))?;
    let data = tempdir("taskpulse-client-tests")?;
    let server = start_server(
        &root().join("target/debug/taskpulse-server"),
        &data.join("no-ui"),
        &data,
        &[
            ("TASKPULSE_JWT_SECRET", CLIENT_TEST_SECRET),
            ("TASKPULSE_JWT_LEEWAY_S", "0"),
            ("TASKPULSE_API_KEYS", &format!("[\"{CLIENT_TEST_API_KEY}\"]")),
            ("TASKPULSE_API_CORS_ORIGINS", "[\"*\"]"),
            ("TASKPULSE_DEMO_DURATION_MS", "1500"),
            ("TASKPULSE_DEMO_SIZE", "64"),
            ("TASKPULSE_STOMP_HEARTBEAT_MIN_MS", "500"),
            (ATTEMPTS, MANY),
        ],
    )?;
    let proxy = FreezableProxy::start(&server.addr.to_string())?;
    let result = captured(
        cargo()
            .args(["test", "-p", "taskpulse-client", "--target", "wasm32-unknown-unknown"])
            .env("PATH", install::path_with_cargo_bin())
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER", "wasm-bindgen-test-runner")
            .env("CHROMEDRIVER", "/usr/bin/chromedriver")
            .env("WASM_BINDGEN_TEST_TIMEOUT", "180")
            .env("TASKPULSE_TEST_HTTP", format!("http://{}", server.addr))
            .env("TASKPULSE_TEST_PROXY_WS", format!("ws://{}/ws", proxy.addr))
            .env("TASKPULSE_TEST_PROXY_CONTROL", format!("http://{}", proxy.control))
            .env("TASKPULSE_TEST_JWT_SECRET", CLIENT_TEST_SECRET)
            .env("TASKPULSE_TEST_API_KEY", CLIENT_TEST_API_KEY),
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    result
}

/// The npm package (`cargo xtask dist`, built once) in a Vite app, and in React and Vue apps.
fn npm_package_tests(tally: &mut Tally) {
    // Both suites launch Chromium (and the frameworks suite the server) through the monitor
    // suite's harness.
    let package = crate::dist::build()
        .and_then(|pkg| npm_ci(&root().join("frontend/tests/e2e")).map(|()| pkg));
    tally.runner(
        "@taskpulse/client bundled by Vite, webpack, esbuild and none, in Chromium",
        package.clone().and_then(|_| vite_packaging()),
    );
    tally.runner(
        "React and Vue: the seed's components and the adapters, in Chromium",
        package.and_then(|pkg| framework_apps(&pkg)),
    );
}

/// `npm ci` in `dir`.
fn npm_ci(dir: &Path) -> Result<(), String> {
    quiet(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(dir))
        .map_err(|e| format!("npm ci in {}: {e}", dir.display()))
}

/// The seed's React and Vue components, verbatim but for their import lines, and the
/// package's `react`/`vue` adapters, in one Vite app (`client-wasm/tests/frameworks`) that
/// installs the package from the tarball `npm pack` makes of `pkg` (so its `files` and
/// `exports` are what a registry would serve); the adapters' types checked by `tsc` against
/// typical and wrong uses; `vite build`, and again for the React pages against React 18
/// (`vite.react18.config.js`); then the suite, which serves
/// the build from the real server it kills and restarts, and runs `vite dev` too.
fn framework_apps(pkg: &Path) -> Result<String, String> {
    let app = root().join("client-wasm/tests/frameworks");
    quiet(Command::new("npm").args(["install", "--no-audit", "--no-fund"]).current_dir(&app))
        .map_err(|e| format!("npm install in {}: {e}", app.display()))?;
    let packed = tempdir("taskpulse-npm-pack")?;
    let pack = Command::new("npm")
        .args(["pack", "--pack-destination"])
        .arg(&packed)
        .current_dir(pkg)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run npm pack: {e}"))?;
    let tarball =
        String::from_utf8_lossy(&pack.stdout).lines().last().unwrap_or("").trim().to_owned();
    if !pack.status.success() || tarball.is_empty() {
        return Err(format!("npm pack in {} failed: {}", pkg.display(), pack.status));
    }
    quiet(
        Command::new("npm")
            .args(["install", "--no-save", "--no-audit", "--no-fund"])
            .arg(packed.join(&tarball))
            .current_dir(&app),
    )
    .map_err(|e| format!("installing {tarball}: {e}"))?;
    let _ = std::fs::remove_dir_all(&packed);
    quiet(Command::new("node_modules/.bin/tsc").args(["-p", "tsconfig.json"]).current_dir(&app))
        .map_err(|e| format!("the adapters' TypeScript types do not check: {e}"))?;
    // A stale pre-bundle from another build of the package would hide what `vite dev` does.
    let _ = std::fs::remove_dir_all(app.join("node_modules/.vite"));
    quiet(Command::new("node_modules/.bin/vite").arg("build").current_dir(&app))
        .map_err(|e| format!("vite build: {e}"))?;
    quiet(
        Command::new("node_modules/.bin/vite")
            .args(["build", "--config", "vite.react18.config.js"])
            .current_dir(&app),
    )
    .map_err(|e| format!("vite build of the React 18 pages: {e}"))?;
    quiet(cargo().args(["build", "-p", "taskpulse-server"]))?;
    let _ = std::fs::create_dir_all(root().join("artifacts"));
    captured(
        Command::new("node")
            .args(["--test", "--test-reporter=tap", "--test-concurrency=1", "frameworks.test.mjs"])
            .current_dir(&app)
            .env("TASKPULSE_SERVER_BIN", root().join("target/debug/taskpulse-server"))
            .env("TASKPULSE_SCREENSHOTS", root().join("artifacts")),
    )
}

/// The npm package as a frontend team uses it: `cargo xtask dist`, its TypeScript types
/// checked by `tsc` against typical and wrong uses and against values the Rust types
/// serialize (`shared`'s `typescript_samples` example), an app that imports it, bundled by
/// Vite 7, webpack 5 and esbuild and also loaded with no bundler (`build-others.mjs`), each
/// served by the real server and driven by playwright-core.
fn vite_packaging() -> Result<String, String> {
    let app = root().join("client-wasm/tests/vite-app");
    // `npm install`, not `npm ci`: this npm writes lock files that list only the platform
    // packages it installed (rollup's, esbuild's), and `npm ci` then calls the lock out of
    // sync. With the lock present, `npm install` installs exactly its versions.
    quiet(Command::new("npm").args(["install", "--no-audit", "--no-fund"]).current_dir(&app))
        .map_err(|e| format!("npm install in {}: {e}", app.display()))?;
    // Values the Rust types serialize, typed with the package's declarations.
    let samples = cargo()
        .args(["run", "-q", "-p", "taskpulse-shared", "--example", "typescript_samples"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run the typescript_samples example: {e}"))?;
    if !samples.status.success() {
        return Err(format!("the typescript_samples example failed: {}", samples.status));
    }
    std::fs::write(app.join("protocol-samples.ts"), samples.stdout)
        .map_err(|e| format!("writing protocol-samples.ts: {e}"))?;
    quiet(Command::new("node_modules/.bin/tsc").args(["-p", "tsconfig.json"]).current_dir(&app))
        .map_err(|e| format!("the package's TypeScript types do not check: {e}"))?;
    build_vite_app(&app)?;
    quiet(cargo().args(["build", "-p", "taskpulse-server"]))?;
    let data = tempdir("taskpulse-vite-data")?;
    let server = start_server(
        &root().join("target/debug/taskpulse-server"),
        &app.join("dist"),
        &data,
        &[("TASKPULSE_DEMO_DURATION_MS", "1500"), ("TASKPULSE_DEMO_SIZE", "64"), (ATTEMPTS, MANY)],
    )?;
    let _ = std::fs::create_dir_all(root().join("artifacts"));
    let result = captured(
        Command::new("node")
            .args(["--test", "--test-reporter=tap", "e2e.test.mjs"])
            .current_dir(&app)
            .env("TASKPULSE_APP_URL", format!("http://{}/", server.addr))
            .env("TASKPULSE_SCREENSHOT", root().join("artifacts/vite-app.png")),
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    result
}

/// `vite build` of `client-wasm/tests/vite-app` (installed), then its webpack, esbuild and
/// no-bundler builds, all into its `dist/`.
fn build_vite_app(app: &Path) -> Result<(), String> {
    quiet(Command::new("node_modules/.bin/vite").arg("build").current_dir(app))
        .map_err(|e| format!("vite build: {e}"))?;
    quiet(Command::new("node").arg("build-others.mjs").current_dir(app))
        .map_err(|e| format!("the webpack, esbuild and no-bundler builds: {e}"))
}

/// `cargo xtask bench page-load`: `page-load.bench.mjs` against a release server that serves
/// the Vite app's builds (the package as it ships is `dist/plain/taskpulse/`).
pub(crate) fn page_load_bench() -> Result<(), String> {
    install::test_packages()?;
    crate::dist::build()?;
    let app = root().join("client-wasm/tests/vite-app");
    npm_ci(&root().join("frontend/tests/e2e"))?;
    quiet(Command::new("npm").args(["install", "--no-audit", "--no-fund"]).current_dir(&app))
        .map_err(|e| format!("npm install in {}: {e}", app.display()))?;
    build_vite_app(&app)?;
    quiet(cargo().args(["build", "--release", "-p", "taskpulse-server"]))?;
    let data = tempdir("taskpulse-page-load-data")?;
    let server = start_server(
        &root().join("target/release/taskpulse-server"),
        &app.join("dist"),
        &data,
        &[("TASKPULSE_DEMO_DURATION_MS", "200"), ("TASKPULSE_DEMO_SIZE", "64")],
    )?;
    let result = quiet(
        Command::new("node")
            .arg("page-load.bench.mjs")
            .current_dir(&app)
            .env("TASKPULSE_APP_URL", format!("http://{}/", server.addr)),
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    result
}

/// The real `@stomp/stompjs` client from npm, on Node with `ws`, against the server binary.
fn stompjs_interop() -> Result<String, String> {
    let dir = root().join("server/tests/stompjs");
    npm_ci(&dir)?;
    quiet(cargo().args(["build", "-p", "taskpulse-server"]))?;
    let data = tempdir("taskpulse-interop-data")?;
    let secret = "interop-tests-secret-of-thirty-two-bytes";
    let passcode = "interop-backend-passcode";
    let users = format!(r#"[{{ login = "backend", passcode = "{passcode}" }}]"#);
    let server = start_server(
        &root().join("target/debug/taskpulse-server"),
        &data.join("no-ui"),
        &data,
        &[
            ("TASKPULSE_JWT_SECRET", secret),
            ("TASKPULSE_AUTH_USERS", &users),
            ("TASKPULSE_AUTHORIZATION_SEND_BY_USER", r#"{ backend = ["/user/**", "/topic/**"] }"#),
            ("TASKPULSE_DEMO_DURATION_MS", "600"),
            (ATTEMPTS, MANY),
        ],
    )?;
    let result = captured(
        Command::new("node")
            .args(["--test", "--test-reporter=tap", "interop.test.mjs"])
            .current_dir(&dir)
            .env("TASKPULSE_WS_URL", format!("ws://{}/ws", server.addr))
            .env("TASKPULSE_HTTP_URL", format!("http://{}", server.addr))
            .env("TASKPULSE_JWT_SECRET", secret)
            .env("TASKPULSE_BACKEND_PASSCODE", passcode),
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
    result
}

/// Flags Chromium needs on this machine: headless, no sandbox as root, no network chatter.
const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
];

fn tempdir(prefix: &str) -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The server binary on a free port of 127.0.0.1 with `env` as its settings (testkit's
/// spawner, shared with the server's tests).
pub(crate) fn start_server(
    binary: &Path,
    ui_dir: &Path,
    data_dir: &Path,
    env: &[(&str, &str)],
) -> Result<ServerProcess, String> {
    ServerProcess::start(binary, "127.0.0.1:0", data_dir, ui_dir, env)
}

/// A minimal HTTP/1.1 GET, enough to probe `/healthz` without an HTTP client crate.
fn http_get(addr: &str, path: &str) -> Result<String, String> {
    use std::io::Write;
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::counts;

    #[test]
    fn counts_read_libtest_summaries_and_tap_totals() {
        let text = "\
running 3 tests
test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out
test result: FAILED. 1 passed; 2 failed; 0 ignored
some line with 9 passed that is not a summary
# pass 9
# fail 1";
        assert_eq!(counts(text), (13, 3));
    }

    #[test]
    fn nextest_s_summary_is_not_counted_again_with_its_failed_tests_output() {
        let text = "\
        FAIL [   0.883s] (140/221) server sse::stream
    test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 107 filtered out
     Summary [  80.1s] 221 tests run: 220 passed, 1 failed, 0 skipped";
        assert_eq!(counts(text), (220, 1));
    }
}
