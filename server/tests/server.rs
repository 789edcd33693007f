//! The real server on an ephemeral port: health, the UI with its single-page fallback,
//! clear JSON errors under `/api`, and a clean stop.

use std::{net::SocketAddr, path::Path};

use taskpulse_server::Config;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};

struct TestServer {
    /// Kept so that the directories live as long as the server.
    _dirs: Vec<tempfile::TempDir>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    async fn start(data_dir: &Path, ui_dir: &Path) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config =
            Config { listen: addr, data_dir: data_dir.to_path_buf(), ui_dir: ui_dir.to_path_buf() };
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(taskpulse_server::run(listener, config, async {
            let _ = stopped.await;
        }));
        TestServer { _dirs: Vec::new(), addr, stop: Some(stop), handle }
    }

    /// A server with a fresh data directory and a UI directory holding `index.html` and
    /// `app.js`.
    async fn with_ui() -> TestServer {
        let (data, ui) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(ui.path().join("index.html"), "<!doctype html><title>TaskPulse UI</title>")
            .unwrap();
        std::fs::write(ui.path().join("app.js"), "console.log('app')").unwrap();
        let mut server = TestServer::start(data.path(), ui.path()).await;
        server._dirs = vec![data, ui];
        server
    }

    /// Sends a GET and returns (status code, body).
    async fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let status = answer[9..12].parse().unwrap();
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.handle.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn healthz_answers_ok_with_the_version() {
    let server = TestServer::with_ui().await;
    let (status, body) = server.get("/healthz").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    server.stop().await;
}

#[tokio::test]
async fn serves_the_ui_and_falls_back_to_index_for_app_routes() {
    let server = TestServer::with_ui().await;
    let (status, body) = server.get("/").await;
    assert_eq!((status, body.contains("TaskPulse UI")), (200, true), "{body}");
    let (status, body) = server.get("/app.js").await;
    assert_eq!((status, body.as_str()), (200, "console.log('app')"));
    let (status, body) = server.get("/tasks/T-123").await;
    assert_eq!((status, body.contains("TaskPulse UI")), (200, true), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn unknown_api_paths_get_a_json_404_that_names_the_path() {
    let server = TestServer::with_ui().await;
    let (status, body) = server.get("/api/nothing/here").await;
    assert_eq!(status, 404);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "no API endpoint at /api/nothing/here");
    server.stop().await;
}

#[tokio::test]
async fn a_missing_ui_build_is_explained_not_a_blank_404() {
    let data = tempfile::tempdir().unwrap();
    let missing = data.path().join("no-ui-here");
    let server = TestServer::start(&data.path().join("state"), &missing).await;
    let (status, body) = server.get("/").await;
    assert_eq!(status, 200);
    assert!(body.contains("web UI was not found") && body.contains("cargo xtask run"), "{body}");
    assert!(data.path().join("state").is_dir(), "the data directory is created on start");
    server.stop().await;
}
