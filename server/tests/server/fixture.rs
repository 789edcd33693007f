//! The real server on `127.0.0.1:0` (in process, or the binary as a child process), and the
//! REST client. The STOMP client, the process spawner, PostgreSQL and the token minter are
//! `taskpulse-testkit`'s, shared with the load tool and xtask.

use std::{net::SocketAddr, path::Path};

use serde_json::{Value, json};
use taskpulse_server::{AppState, Config, broker::Broker};
use taskpulse_shared::stomp::{Command, Frame};
pub(crate) use taskpulse_testkit::{PATIENCE, Postgres, StompClient};
use taskpulse_testkit::{ServerProcess, token};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};

/// The HS256 secret of in-process test servers (at least 32 bytes, as the server requires).
pub(crate) const TEST_SECRET: &str = "in-process-tests-secret-of-32-bytes";

pub(crate) struct TestServer {
    /// Kept so that the directories live as long as the server.
    pub(crate) dirs: Vec<tempfile::TempDir>,
    pub(crate) addr: SocketAddr,
    pub(crate) broker: Broker,
    /// The HS256 secret the server runs with (tokens are minted with it).
    secret: String,
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
        let secret = state.config.settings.jwt.secret.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(taskpulse_server::run(listener, state, async {
            let _ = stopped.await;
        }));
        TestServer { dirs: Vec::new(), addr, broker, secret, stop: Some(stop), handle }
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
        token(&self.secret, user, seconds)
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

/// The server binary as a child process.
pub(crate) type Process = ServerProcess;

/// Starts `taskpulse-server` (the real binary) on an ephemeral port and waits for its "listening" line.
pub(crate) fn spawn(data: &Path) -> Process {
    spawn_with(data, &[])
}

pub(crate) fn spawn_with(data: &Path, env: &[(&str, &str)]) -> Process {
    spawn_at(data, "127.0.0.1:0", env)
}

/// Starts `taskpulse-server` listening on `listen`, with the defaults below overridden by
/// `env`.
pub(crate) fn spawn_at(data: &Path, listen: &str, env: &[(&str, &str)]) -> Process {
    let mut settings = vec![
        ("TASKPULSE_JWT_SECRET", "restart-tests-secret-of-thirty-two-bytes"),
        ("TASKPULSE_DEMO_DURATION_MS", "1500"),
        ("TASKPULSE_DEMO_CONCURRENCY", "1"),
        ("TASKPULSE_TASKS_PROGRESS_INTERVAL_MS", "20"),
        ("TASKPULSE_ACCOUNTS_ATTEMPTS_PER_MINUTE", "100000"),
        ("TASKPULSE_TASKS_SUBMISSIONS_PER_MINUTE", "100000"),
    ];
    settings.extend_from_slice(env);
    let binary = Path::new(env!("CARGO_BIN_EXE_taskpulse-server"));
    ServerProcess::start(binary, listen, data, &data.join("no-ui"), &settings)
        .unwrap_or_else(|e| panic!("{e}"))
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

    /// DELETE with an optional Bearer token.
    pub(crate) async fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.delete(self.url(path));
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

/// `message`'s body as text.
pub(crate) fn body(frame: &Frame) -> &str {
    frame.body_text().unwrap()
}
