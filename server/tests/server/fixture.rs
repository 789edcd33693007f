//! The real server on `127.0.0.1:0`, and a STOMP-over-WebSocket test client built on the
//! `shared` codec and tokio-tungstenite.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command as ProcessCommand, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use taskpulse_server::{
    AppState, Config,
    broker::{Broker, Claims},
};
use taskpulse_shared::{
    TaskProgressDto,
    stomp::{Command, Decoder, Frame, Limits, Version},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

/// How long a test waits for something that should happen promptly.
pub(crate) const PATIENCE: Duration = Duration::from_secs(5);

/// The HS256 secret of in-process test servers (at least 32 bytes, as the server requires).
pub(crate) const TEST_SECRET: &str = "in-process-tests-secret-of-32-bytes";

pub(crate) struct TestServer {
    /// Kept so that the directories live as long as the server.
    pub(crate) dirs: Vec<tempfile::TempDir>,
    pub(crate) addr: SocketAddr,
    pub(crate) broker: Broker,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub(crate) async fn start(
        data_dir: &Path,
        ui_dir: &Path,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config::new(addr, data_dir.to_path_buf());
        config.ui_dir = ui_dir.to_path_buf();
        config.settings.jwt.secret = TEST_SECRET.into();
        // Tests register many users from one address; the limit itself has its own test.
        config.settings.accounts.attempts_per_minute = 100_000;
        config.settings.tasks.submissions_per_minute = 100_000;
        tweak(&mut config);
        let state = AppState::new(config).await.unwrap();
        let broker = state.broker.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(taskpulse_server::run(listener, state, async {
            let _ = stopped.await;
        }));
        TestServer { dirs: Vec::new(), addr, broker, stop: Some(stop), handle }
    }

    /// A broker-focused server: fresh data directory, no UI, settings adjusted by `tweak`.
    pub(crate) async fn stomp(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let data = tempfile::tempdir().unwrap();
        let mut server = TestServer::start(data.path(), &data.path().join("no-ui"), tweak).await;
        server.dirs.push(data);
        server
    }

    /// A valid HS256 token for `user`, expiring in an hour.
    pub(crate) fn token(&self, user: &str) -> String {
        self.token_expiring(user, 3600)
    }

    /// A token for `user` whose `exp` is `seconds` from now (negative: already expired).
    pub(crate) fn token_expiring(&self, user: &str, seconds: i64) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let claims = Claims {
            sub: user.into(),
            exp: (now + seconds) as u64,
            nbf: None,
            iat: None,
            jti: None,
        };
        self.broker.authenticator().issue(&claims).unwrap()
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Sends a GET and returns (status code, body).
    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let status = answer[9..12].parse().unwrap();
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    /// A STOMP 1.2 client connected as `user`.
    pub(crate) async fn client(&self, user: &str) -> StompClient {
        self.client_with(&self.token(user)).await
    }

    /// A STOMP 1.2 client connected with `token`.
    pub(crate) async fn client_with(&self, token: &str) -> StompClient {
        let mut client = StompClient::open(&self.ws_url(), &["v12.stomp"]).await;
        let connected = client.connect(&[("Authorization", &format!("Bearer {token}"))]).await;
        assert_eq!(connected.command, Command::Connected, "{connected:?}");
        client
    }

    /// The REST API of this server.
    pub(crate) fn api(&self) -> Api {
        Api::new(self.addr)
    }

    pub(crate) async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.handle.await.unwrap().unwrap();
    }
}

pub(crate) struct Process {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        // A failed assertion must not leave a server behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `taskpulse-server` (the real binary) on an ephemeral port and waits for its "listening" line.
pub(crate) fn spawn(data: &Path) -> Process {
    spawn_with(data, &[])
}

pub(crate) fn spawn_with(data: &Path, env: &[(&str, &str)]) -> Process {
    spawn_at(data, "127.0.0.1:0", env)
}

/// Starts `taskpulse-server` listening on `listen`.
pub(crate) fn spawn_at(data: &Path, listen: &str, env: &[(&str, &str)]) -> Process {
    // Only the settings given here: inherited TASKPULSE_* variables (e.g. the chaos test's
    // own) would be refused as unknown settings. Defaults first; `env` overrides them.
    let mut command = ProcessCommand::new(env!("CARGO_BIN_EXE_taskpulse-server"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("TASKPULSE_")) {
        command.env_remove(name);
    }
    let mut child = command
        .args(["--listen", listen, "--data-dir"])
        .arg(data)
        .arg("--ui-dir")
        .arg(data.join("no-ui"))
        .env("TASKPULSE_JWT_SECRET", "restart-tests-secret-of-thirty-two-bytes")
        .env("TASKPULSE_DEMO_DURATION_MS", "1500")
        .env("TASKPULSE_DEMO_CONCURRENCY", "1")
        .env("TASKPULSE_TASKS_PROGRESS_INTERVAL_MS", "20")
        .env("TASKPULSE_ACCOUNTS_ATTEMPTS_PER_MINUTE", "100000")
        .env("TASKPULSE_TASKS_SUBMISSIONS_PER_MINUTE", "100000")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        if let Some(at) = line.find("listening on http://") {
            let rest = &line[at + "listening on http://".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                .unwrap_or(rest.len());
            break rest[..end].parse().unwrap();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Process { child, addr }
}

/// A JSON client of the REST API.
#[derive(Clone)]
pub(crate) struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub(crate) fn new(addr: SocketAddr) -> Api {
        Api { base: format!("http://{addr}"), http: reqwest::Client::new() }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// GET with an optional Bearer token.
    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    /// POST of a JSON body with an optional Bearer token.
    pub(crate) async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = self.http.post(self.url(path)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }

    /// POST with an `X-API-Key`.
    pub(crate) async fn post_as_backend(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.send(self.http.post(self.url(path)).header("x-api-key", key).json(&body)).await
    }

    /// Registers `user` (password `password-of-<user>`) and returns the token.
    pub(crate) async fn register(&self, user: &str) -> String {
        let body = json!({"username": user, "password": format!("password-of-{user}")});
        let (status, answer) = self.post("/api/auth/register", None, body).await;
        assert_eq!(status, 201, "{answer}");
        answer["token"].as_str().unwrap().to_owned()
    }

    /// Submits a text-to-image task and returns its number.
    pub(crate) async fn submit(&self, token: &str, prompt: &str) -> String {
        let body = json!({"kind": "text-to-image", "prompt": prompt, "aspectRatio": "16:9"});
        let (status, answer) = self.post("/api/tasks", Some(token), body).await;
        assert_eq!(status, 202, "{answer}");
        answer["taskNo"].as_str().unwrap().to_owned()
    }

    /// Downloads a URL (relative to the server) without credentials.
    pub(crate) async fn download(&self, url: &str) -> (u16, Option<String>, Vec<u8>) {
        let response = self.http.get(self.url(url)).send().await.unwrap();
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        (status, content_type, response.bytes().await.unwrap().to_vec())
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A minimal STOMP client: frames out through the shared encoder, frames in through the
/// shared decoder, over a real WebSocket.
pub(crate) struct StompClient {
    pub(crate) socket: Socket,
    pub(crate) decoder: Decoder,
    /// The negotiated subprotocol, if any.
    pub(crate) subprotocol: Option<String>,
    /// Kinds of WebSocket messages received: true for text.
    pub(crate) text_messages: Vec<bool>,
    /// Heart-beat EOLs received.
    pub(crate) heartbeats: usize,
    /// Frames read ahead while waiting for a RECEIPT.
    pending: std::collections::VecDeque<Frame>,
}

impl StompClient {
    /// Opens the WebSocket offering `subprotocols`.
    pub(crate) async fn open(url: &str, subprotocols: &[&str]) -> StompClient {
        let mut request = url.into_client_request().unwrap();
        if !subprotocols.is_empty() {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(&subprotocols.join(", ")).unwrap(),
            );
        }
        let (socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        let subprotocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        StompClient {
            socket,
            decoder: Decoder::new(Version::V1_2, Limits::unbounded()),
            subprotocol,
            text_messages: Vec::new(),
            heartbeats: 0,
            pending: Default::default(),
        }
    }

    /// Sends CONNECT (accept-version 1.0-1.2 unless given) and returns the answer.
    pub(crate) async fn connect(&mut self, headers: &[(&str, &str)]) -> Frame {
        let mut frame = Frame::new(Command::Connect);
        if !headers.iter().any(|(n, _)| *n == "accept-version") {
            frame.headers.push("accept-version", "1.0,1.1,1.2");
        }
        frame.headers.push("host", "localhost");
        for (name, value) in headers {
            frame.headers.push(name, value);
        }
        self.send(&frame).await;
        let answer = self.recv().await;
        if let Some(version) = answer.header("version").and_then(Version::parse) {
            self.decoder.set_version(version);
        }
        answer
    }

    /// Sends `frame` encoded as 1.2, in one text message.
    pub(crate) async fn send(&mut self, frame: &Frame) {
        let bytes = frame.to_bytes(Version::V1_2).unwrap();
        self.send_raw(Message::Binary(bytes)).await;
    }

    pub(crate) async fn send_raw(&mut self, message: Message) {
        self.socket.send(message).await.unwrap();
    }

    /// A frame built from `command` and `headers` (and `body`).
    pub(crate) async fn frame(&mut self, command: Command, headers: &[(&str, &str)], body: &str) {
        let mut frame = Frame::new(command);
        for (name, value) in headers {
            frame.headers.push(name, value);
        }
        self.send(&frame.with_body(body.as_bytes().to_vec())).await;
    }

    pub(crate) async fn subscribe(&mut self, id: &str, destination: &str, ack: &str) {
        self.subscribe_with(id, destination, ack, &[]).await;
    }

    /// SUBSCRIBE with extra headers (e.g. a resume position), waiting for its RECEIPT.
    pub(crate) async fn subscribe_with(
        &mut self,
        id: &str,
        destination: &str,
        ack: &str,
        extra: &[(&str, &str)],
    ) {
        let receipt = format!("sub-{id}");
        let mut headers =
            vec![("id", id), ("destination", destination), ("ack", ack), ("receipt", &receipt)];
        headers.extend_from_slice(extra);
        self.frame(Command::Subscribe, &headers, "").await;
        // Queued messages may be dispatched before the RECEIPT is written; keep them.
        let expected = format!("sub-{id}");
        let mut early = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame.command == Command::Receipt {
                assert_eq!(frame.header("receipt-id"), Some(expected.as_str()), "{frame:?}");
                break;
            }
            assert_eq!(frame.command, Command::Message, "{frame:?}");
            early.push(frame);
        }
        self.pending.extend(early);
    }

    /// Task updates for `task_no` until its terminal status (others are kept aside).
    pub(crate) async fn updates_until_done(&mut self, task_no: &str) -> Vec<TaskProgressDto> {
        let mut updates = Vec::new();
        let mut others = Vec::new();
        loop {
            let frame = self.try_recv(Duration::from_secs(30)).await.unwrap_or_else(|| {
                panic!("task {task_no} did not end; updates so far: {updates:#?}")
            });
            assert_eq!(frame.command, Command::Message, "{frame:?}");
            let update: TaskProgressDto = serde_json::from_slice(&frame.body).unwrap();
            if update.task_no != task_no {
                others.push(frame);
                continue;
            }
            let done = update.status.is_terminal();
            updates.push(update);
            if done {
                break;
            }
        }
        self.pending.extend(others);
        updates
    }

    pub(crate) async fn send_to(&mut self, destination: &str, body: &str) {
        self.frame(
            Command::Send,
            &[("destination", destination), ("content-type", "text/plain")],
            body,
        )
        .await;
    }

    /// The next frame, skipping heart-beats; panics after [`PATIENCE`].
    pub(crate) async fn recv(&mut self) -> Frame {
        self.try_recv(PATIENCE).await.expect("a frame within the patience window")
    }

    /// The next frame within `wait`, or `None` (timeout or connection closed).
    pub(crate) async fn try_recv(&mut self, wait: Duration) -> Option<Frame> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = self.decoder.decode().unwrap() {
                return Some(frame);
            }
            let message =
                tokio::time::timeout_at(deadline, self.socket.next()).await.ok()??.ok()?;
            match message {
                Message::Text(text) => {
                    self.text_messages.push(true);
                    self.count_heartbeats(text.as_bytes());
                    self.decoder.feed(text.as_bytes());
                }
                Message::Binary(bytes) => {
                    self.text_messages.push(false);
                    self.decoder.feed(&bytes);
                }
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    fn count_heartbeats(&mut self, bytes: &[u8]) {
        if bytes == b"\n" || bytes == b"\r\n" {
            self.heartbeats += 1;
        }
    }

    /// Asserts that nothing arrives within `wait`.
    pub(crate) async fn expect_nothing(&mut self, wait: Duration) {
        if let Some(frame) = self.try_recv(wait).await {
            panic!("expected no frame, got {frame:?}");
        }
    }

    /// Reads until the server closes the connection; returns the last frame seen.
    pub(crate) async fn expect_error(&mut self) -> Frame {
        let frame = self.recv().await;
        assert_eq!(frame.command, Command::Error, "expected ERROR, got {frame:?}");
        assert!(self.closed().await, "the connection closes after an ERROR");
        frame
    }

    /// The code of the WebSocket close the server sends within [`PATIENCE`] (frames before
    /// it are skipped); `None` if the connection ends without one.
    pub(crate) async fn close_code(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await.ok()?? {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Whether the server closes the socket within [`PATIENCE`].
    pub(crate) async fn closed(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// `message`'s body as text.
pub(crate) fn body(frame: &Frame) -> &str {
    frame.body_text().unwrap()
}

/// A throw-away PostgreSQL: a cluster `initdb` makes in a temporary directory, serving on a
/// free loopback port, stopped (and its files removed) when dropped. As root it runs as the
/// `postgres` user, which PostgreSQL requires. Needs Debian's `postgresql` package
/// (`cargo xtask test` installs it).
pub(crate) struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: std::path::PathBuf,
    databases: std::sync::atomic::AtomicUsize,
}

impl Postgres {
    pub(crate) fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (/usr/lib/postgresql); cargo xtask test installs it")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("postgres").is_file())
            .max()
            .expect("a PostgreSQL version with bin/postgres");
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let owner = std::fs::read_to_string("/etc/passwd")
                .unwrap()
                .lines()
                .find_map(|l| {
                    let fields: Vec<&str> = l.split(':').collect();
                    (fields[0] == "postgres")
                        .then(|| (fields[2].parse().unwrap(), fields[3].parse().unwrap()))
                })
                .expect("a postgres user");
            std::os::unix::fs::chown(dir.path(), Some(owner.0), Some(owner.1)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data = dir.path().join("data");
        let server = Postgres { dir, port, bin, databases: Default::default() };
        server.run(
            "initdb",
            &["-D", path(&data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"],
        );
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            path(server.dir.path())
        );
        let log = server.dir.path().join("postgres.log");
        server.run(
            "pg_ctl",
            &["start", "-w", "-t", "60", "-D", path(&data), "-l", path(&log), "-o", &options],
        );
        server
    }

    /// One of PostgreSQL's programs, to run as `postgres` when this is root.
    fn command(&self, program: &str) -> ProcessCommand {
        let program = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = ProcessCommand::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            ProcessCommand::new(&program)
        };
        command.current_dir(self.dir.path());
        command
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self.command(program).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The URL of a new, empty database on this server.
    pub(crate) async fn fresh_database(&self) -> String {
        use sqlx::Connection;
        let n = self.databases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE test{n}")).execute(&mut conn).await.unwrap();
        format!("postgres://postgres@127.0.0.1:{}/test{n}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.command("pg_ctl").args(["stop", "-m", "immediate", "-D"]).arg(&data).output();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
}
