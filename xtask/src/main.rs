//! `cargo xtask`: the project's commands. `run` starts the product, `test` runs every check,
//! `fuzz` and `bench` run the long measurements. Each installs what it needs first.

mod dist;
mod install;
mod proxy;
mod test;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

const USAGE: &str = "\
usage: cargo xtask <command>

  run [SERVER ARGS...]   install what is missing, build the UI, start the server
                         (http://127.0.0.1:8080 unless --listen is given)
  test                   install test prerequisites, then fmt, clippy, every test;
                         ends with 'N passed, N failed'
  test-client            only client-wasm's browser suite against a live server
  dist                   build the npm package @taskpulse/client into client-wasm/pkg
  fuzz [SECONDS] [TARGET] fuzz the STOMP decoder (decode, the default) or whole
                         sessions (session); 300 s by default
  bench [codec | page-load]
                         codec (the default): the codec benchmarks (criterion);
                         page-load: ms from page load to the first task update in
                         Chromium, @taskpulse/client beside @stomp/stompjs (RUNS=20)
  load [--postgres | --cluster | --compare | --rabbitmq]... [LOAD ARGS...]
                         start a release server and run the broker load tool
                         (taskpulse-load --help lists scenarios and sizes); on SQLite,
                         or on a throw-away PostgreSQL with --postgres, or on the
                         database TASKPULSE_STORAGE_URL names; --cluster: three nodes on
                         a throw-away PostgreSQL and redis-server, publishing on the
                         first, subscribers on the other two; --compare: broadcast,
                         destinations, latency and connect against taskpulse-yardstick
                         (a minimal encode-once STOMP fan-out server) and TaskPulse in
                         one run, with TaskPulse's share of its rate and CPU;
                         --rabbitmq: the durable scenario (1,000 users online, pushes
                         through POST /api/publish) after RabbitMQ's persistent
                         deliveries to 1,000 durable queues (Debian's rabbitmq-server,
                         installed if missing, Web-STOMP), with the ratio
  chaos [--cluster] [TASKS]
                         the long chaos run: 6 users x 4 clients, TASKS demo tasks
                         (default 1000), 8 SIGKILL restarts, random disconnects; with
                         --cluster on three nodes sharing PostgreSQL and Redis (a random
                         node killed each time, Redis killed once)
  test-comfyui --comfyui DIR [--python PYTHON]
                         the ComfyUI executor against a real ComfyUI checkout in DIR on
                         CPU, with weights-free workflows (PYTHON: its interpreter, by
                         default DIR/.venv/bin/python); see README
";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run(&args[1..]),
        Some("test") => test::run(),
        Some("test-client") => test::client_only(),
        Some("dist") => dist::run(),
        Some("fuzz") => fuzz(args.get(1).map(String::as_str), args.get(2).map(String::as_str)),
        Some("bench") => bench(args.get(1).map(String::as_str)),
        Some("load") => load(&args[1..]),
        Some("chaos") => chaos(args.get(1..).unwrap_or_default()),
        Some("test-comfyui") => test_comfyui(&args[1..]),
        Some("help" | "--help" | "-h") => {
            print!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unknown or missing command\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // `test` has already printed its summary; it must stay the last line.
            if !message.is_empty() {
                eprintln!("xtask: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (the parent of this crate's directory).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn cargo() -> Command {
    let mut command = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

/// Runs a command to completion, failing with its description if it does not succeed.
fn status(command: &mut Command, what: &str) -> Result<(), String> {
    println!("xtask: {what}");
    match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{what} failed ({status})")),
        Err(err) => Err(format!("{what}: cannot start {:?}: {err}", command.get_program())),
    }
}

/// Builds the Yew frontend in release mode into `frontend/dist`.
fn build_frontend() -> Result<PathBuf, String> {
    install::wasm_target()?;
    install::wasm_bindgen_cli()?;
    install::trunk()?;
    let frontend = root().join("frontend");
    status(
        Command::new(install::cargo_bin("trunk"))
            .args(["build", "--release", "--offline"])
            .env("PATH", install::path_with_cargo_bin())
            .current_dir(&frontend),
        "building the web UI (trunk build --release)",
    )?;
    Ok(frontend.join("dist"))
}

fn run(server_args: &[String]) -> Result<(), String> {
    let dist = build_frontend()?;
    status(
        cargo().args(["build", "--release", "-p", "taskpulse-server"]),
        "building the server (release)",
    )?;
    let has_listen = server_args.iter().any(|a| a.starts_with("--listen"));
    let listen = if has_listen { None } else { Some("127.0.0.1:8080") };
    println!(
        "xtask: starting TaskPulse at http://{} (ctrl-c to stop)",
        listen.unwrap_or("the --listen address")
    );
    let mut server = Command::new(root().join("target/release/taskpulse-server"));
    server.current_dir(root()).arg("--ui-dir").arg(&dist);
    if let Some(addr) = listen {
        server.args(["--listen", addr]);
    }
    status(server.args(server_args), "running the server")
}

fn fuzz(seconds: Option<&str>, target: Option<&str>) -> Result<(), String> {
    let seconds: u64 =
        seconds.unwrap_or("300").parse().map_err(|_| "fuzz takes a number of seconds")?;
    // Each target lives in the fuzz workspace of the crate it exercises.
    let (crate_dir, target, what, max_len) = match target.unwrap_or("decode") {
        "decode" => ("shared", "decode", "the STOMP decoder", "4096"),
        "session" => ("server", "session", "whole STOMP sessions", "16384"),
        other => return Err(format!("unknown fuzz target {other:?}: decode or session")),
    };
    install::cargo_fuzz()?;
    let corpus = root().join(crate_dir).join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus)
        .map_err(|e| format!("cannot create {}: {e}", corpus.display()))?;
    // cargo-fuzz needs nightly flags; this machine has one stable toolchain, so
    // RUSTC_BOOTSTRAP unlocks them. No sanitizer: stable ships no ASan runtime.
    status(
        cargo()
            .current_dir(root().join(crate_dir))
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", "--sanitizer", "none", target])
            // New inputs go to the (ignored) corpus; the committed seeds are read only.
            .arg(&corpus)
            .arg(root().join(crate_dir).join("fuzz/seeds"))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-max_len={max_len}")),
        &format!("fuzzing {what} for {seconds} s"),
    )
}

fn bench(which: Option<&str>) -> Result<(), String> {
    match which.unwrap_or("codec") {
        "codec" => status(
            cargo().args(["bench", "-p", "taskpulse-shared", "--bench", "codec"]),
            "codec benchmarks",
        ),
        "page-load" => test::page_load_bench(),
        other => Err(format!("unknown benchmark {other:?}: codec or page-load\n\n{USAGE}")),
    }
}

/// The ComfyUI executor against a real ComfyUI (`server/tests/server/comfyui_real.rs`,
/// ignored by `cargo xtask test`: ComfyUI is on no registry CI reaches). Each test starts
/// its own ComfyUI from `DIR` on a free port, one test at a time.
fn test_comfyui(args: &[String]) -> Result<(), String> {
    let value = |flag: &str| {
        args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(PathBuf::from)
    };
    let usage = "usage: cargo xtask test-comfyui --comfyui DIR [--python PYTHON]";
    let dir = value("--comfyui").ok_or(usage)?;
    let dir = dir.canonicalize().map_err(|e| format!("--comfyui {}: {e}", dir.display()))?;
    if !dir.join("main.py").is_file() {
        return Err(format!("{} has no main.py: not a ComfyUI checkout", dir.display()));
    }
    let python = value("--python").unwrap_or_else(|| dir.join(".venv/bin/python"));
    if !python.is_file() {
        return Err(format!(
            "no Python at {}: give --python, or make DIR/.venv as README says",
            python.display()
        ));
    }
    install::nextest()?;
    status(
        cargo()
            .args(["nextest", "run", "-p", "taskpulse-server", "--test", "server", "--no-capture"])
            .args(["--run-ignored", "only", "-j", "1", "--no-fail-fast", "comfyui_real::"])
            .env("REAL_COMFYUI_DIR", &dir)
            .env("REAL_COMFYUI_PYTHON", &python),
        "running the ComfyUI executor against a real ComfyUI",
    )
}

/// The long form of the chaos test (`server/tests/server/chaos.rs`), on one node (SQLite and
/// PostgreSQL) or with `--cluster` on three; `cargo xtask test` runs the short one.
fn chaos(args: &[String]) -> Result<(), String> {
    let cluster = args.iter().any(|a| a == "--cluster");
    let tasks = args.iter().find(|a| *a != "--cluster").map_or("1000", String::as_str);
    tasks.parse::<u32>().map_err(|_| format!("TASKS must be a number, got {tasks:?}"))?;
    install::nextest()?;
    let filter = if cluster {
        "chaos::every_client_ends_with_the_true_final_state_through_chaos_on_a_cluster"
    } else {
        "chaos::"
    };
    status(
        cargo()
            .args(["nextest", "run", "-p", "taskpulse-server", "--test", "server", "--no-capture"])
            .args(["--run-ignored", "all", filter])
            .env("TASKPULSE_CHAOS_USERS", "6")
            .env("TASKPULSE_CHAOS_CLIENTS", "4")
            .env("TASKPULSE_CHAOS_TASKS", tasks)
            .env("TASKPULSE_CHAOS_KILLS", "8"),
        "running the long chaos test",
    )
}

/// Builds the server and the load tool in release mode, starts the server on an ephemeral
/// port with a known secret, and runs the tool against it; with `--cluster`, three nodes on
/// a throw-away PostgreSQL and redis-server, publishers on the first, subscribers on the
/// other two.
fn load(extra: &[String]) -> Result<(), String> {
    status(
        cargo().args(["build", "--release", "-p", "taskpulse-server", "-p", "taskpulse-load"]),
        "building the server and the load tool (release)",
    )?;
    let data = env::temp_dir().join(format!("taskpulse-load-{}", std::process::id()));
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    let secret = "load-tests-secret-of-at-least-thirty-two-bytes";
    // Leading flags choose what runs beside the server: a throw-away PostgreSQL as the
    // database under test (--postgres, --cluster; else SQLite in the temporary data
    // directory unless TASKPULSE_STORAGE_URL names another), three nodes on redis-server
    // (--cluster), the yardstick server (--compare), RabbitMQ (--rabbitmq).
    const MODES: [&str; 4] = ["--postgres", "--cluster", "--compare", "--rabbitmq"];
    let given = extra.iter().take_while(|a| MODES.contains(&a.as_str())).count();
    let (modes, extra) = extra.split_at(given);
    let mode = |name: &str| modes.iter().any(|m| m == name);
    let postgres = (mode("--postgres") || mode("--cluster"))
        .then(taskpulse_testkit::Postgres::start)
        .transpose()?;
    let yardstick = mode("--compare")
        .then(|| {
            taskpulse_testkit::ServerProcess::spawn(Command::new(
                root().join("target/release/taskpulse-yardstick"),
            ))
        })
        .transpose()?;
    let rabbitmq = mode("--rabbitmq")
        .then(|| install::rabbitmq().and_then(|()| taskpulse_testkit::RabbitMq::start()))
        .transpose()?;
    let redis = mode("--cluster").then(taskpulse_testkit::Redis::start).transpose()?;
    let storage = match &postgres {
        Some(postgres) => postgres.fresh_database()?,
        None => env::var("TASKPULSE_STORAGE_URL").unwrap_or_default(),
    };
    let redis_url = redis.as_ref().map(taskpulse_testkit::Redis::url).unwrap_or_default();
    let settings = [
        ("TASKPULSE_STORAGE_URL", storage.as_str()),
        ("TASKPULSE_CLUSTER_REDIS_URL", redis_url.as_str()),
        ("TASKPULSE_JWT_SECRET", secret),
        // The broker scenarios publish to topics as ordinary token holders.
        ("TASKPULSE_AUTHORIZATION_SEND", r#"["/queue/**", "/topic/**"]"#),
        ("TASKPULSE_ACCOUNTS_ATTEMPTS_PER_MINUTE", "1000000"),
        ("TASKPULSE_TASKS_SUBMISSIONS_PER_MINUTE", "1000000"),
        ("TASKPULSE_TASKS_MAX_ACTIVE_PER_USER", "1000000"),
        ("TASKPULSE_LIMITS_CONNECTIONS_PER_USER", "100000"),
        // The tasks scenario measures the service, not the renderer: no pacing, small PNGs.
        ("TASKPULSE_DEMO_DURATION_MS", "0"),
        ("TASKPULSE_DEMO_SIZE", "64"),
        ("TASKPULSE_API_KEYS", r#"["load-key-0123456789abcdef"]"#),
    ];
    let nodes = if redis.is_some() { 3 } else { 1 };
    let mut servers = Vec::new();
    for n in 0..nodes {
        let dir = data.join(format!("node{n}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let binary = root().join("target/release/taskpulse-server");
        servers.push(test::start_server(&binary, &dir.join("no-ui"), &dir, &settings)?);
    }
    let server = &servers[0];
    let mut command = Command::new(root().join("target/release/taskpulse-load"));
    command.args(["--url", &format!("ws://{}/ws", server.addr)]);
    if nodes > 1 {
        let others: Vec<String> =
            servers[1..].iter().map(|s| format!("ws://{}/ws", s.addr)).collect();
        command.args(["--subscriber-urls", &others.join(",")]);
        if !extra.iter().any(|a| a.starts_with("--scenarios")) {
            command.args(["--scenarios", "broadcast,destinations,latency,publish,queue"]);
        }
    } else {
        command.args(["--server-pid", &server.pid().to_string()]);
    }
    if let Some(yardstick) = &yardstick {
        command.args(["--compare-url", &format!("ws://{}/ws", yardstick.addr)]);
        command.args(["--compare-pid", &yardstick.pid().to_string()]);
        if !extra.iter().any(|a| a.starts_with("--scenarios")) {
            command.args(["--scenarios", "broadcast,destinations,latency,connect"]);
        }
    }
    if let Some(rabbitmq) = &rabbitmq {
        command.args(["--rabbitmq-url", &rabbitmq.web_stomp_url()]);
        command.args(["--rabbitmq-pid", &rabbitmq.pid().to_string()]);
        if !extra.iter().any(|a| a.starts_with("--scenarios")) {
            command.args(["--scenarios", "durable"]);
        }
    }
    let result = status(
        command
            .env("TASKPULSE_JWT_SECRET", secret)
            .env("TASKPULSE_LOAD_API_KEY", "load-key-0123456789abcdef")
            .args(extra),
        "running taskpulse-load",
    );
    drop(servers);
    drop(yardstick);
    drop(rabbitmq);
    drop(redis);
    drop(postgres);
    let _ = std::fs::remove_dir_all(&data);
    result
}
