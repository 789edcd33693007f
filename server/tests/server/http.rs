//! HTTP: health and readiness, the UI with its single-page fallback (never for the server's
//! own paths), clear JSON errors under `/api`, and a clean stop.

use crate::fixture::{Postgres, TestServer};

/// A server with a fresh data directory and a UI directory holding `index.html` and `app.js`.
async fn with_ui() -> TestServer {
    let (data, ui) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(ui.path().join("index.html"), "<!doctype html><title>TaskPulse UI</title>")
        .unwrap();
    std::fs::write(ui.path().join("app.js"), "console.log('app')").unwrap();
    let mut server = TestServer::start(data.path(), ui.path(), |_| {}).await;
    server.dirs = vec![data, ui];
    server
}

#[tokio::test]
async fn healthz_answers_ok_with_the_version() {
    let server = with_ui().await;
    let (status, body) = server.get("/healthz").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    server.stop().await;
}

#[tokio::test]
async fn serves_the_ui_and_falls_back_to_index_for_app_routes() {
    let server = with_ui().await;
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
    let server = with_ui().await;
    let (status, body) = server.get("/api/nothing/here").await;
    assert_eq!(status, 404);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "no API endpoint at /api/nothing/here");
    server.stop().await;
}

#[tokio::test]
async fn the_servers_own_paths_never_fall_back_to_the_ui() {
    let server = with_ui().await;
    for path in ["/ws/nothing", "/sse", "/sse/other", "/metrics/x", "/healthz/x", "/readyz/y"] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"], format!("no endpoint at {path}"));
    }
    // Only whole segments: /wsx is the UI's.
    let (status, body) = server.get("/wsx").await;
    assert_eq!((status, body.contains("TaskPulse UI")), (200, true), "{body}");
    let data = tempfile::tempdir().unwrap();
    let bare = TestServer::start(data.path(), &data.path().join("no-ui"), |_| {}).await;
    assert_eq!(bare.get("/metrics/x").await.0, 404, "without a UI build too");
    bare.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn readyz_says_whether_the_database_answers() {
    let postgres = Postgres::start().unwrap();
    let url = postgres.fresh_database().unwrap();
    let server = TestServer::stomp(move |c| c.settings.storage.url = url).await;
    let (status, body) = server.get("/readyz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    drop(postgres);
    let (status, body) = server.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "not ready");
    assert!(json["reason"].as_str().unwrap().starts_with("storage: "), "{json}");
    // Alive all the same.
    assert_eq!(server.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_a_proxy_s_is_kept() {
    let server = with_ui().await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/healthz", server.addr);
    let first = http.get(&url).send().await.unwrap();
    let second = http.get(&url).send().await.unwrap();
    let id = |r: &reqwest::Response| r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(!id(&first).is_empty() && id(&first) != id(&second));
    let given = http.get(&url).header("x-request-id", "from-the-proxy").send().await.unwrap();
    assert_eq!(id(&given), "from-the-proxy");
    server.stop().await;
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line_with_the_session_and_its_user() {
    use std::io::{BufRead, BufReader};
    let data = tempfile::tempdir().unwrap();
    let secret = "log-format-test-secret-of-32-bytes!!";
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_taskpulse-server"))
        .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--data-dir"])
        .arg(data.path())
        .arg("--ui-dir")
        .arg(data.path().join("no-ui"))
        .env_clear()
        .env("TASKPULSE_JWT_SECRET", secret)
        .env("RUST_LOG", "info,taskpulse_server=debug")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, read) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let next = |what: &str| -> serde_json::Value {
        loop {
            let line =
                read.recv_timeout(crate::fixture::PATIENCE).unwrap_or_else(|_| panic!("no {what}"));
            let event: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if event["fields"]["message"].as_str().is_some_and(|m| m.contains(what)) {
                return event;
            }
        }
    };
    let start = next("listening on");
    assert_eq!(start["level"], "INFO", "{start}");
    assert!(start["timestamp"].is_string(), "{start}");
    let message = start["fields"]["message"].as_str().unwrap();
    let addr = message.rsplit("http://").next().unwrap().to_owned();
    // A session's lines name it, its peer and, once it authenticated, its user.
    let token = taskpulse_testkit::token(secret, "alice", 3600);
    let mut client =
        crate::fixture::StompClient::open(&format!("ws://{addr}/ws"), &["v12.stomp"]).await;
    client.connect(&[("Authorization", &format!("Bearer {token}"))]).await;
    client.send_raw(tokio_tungstenite::tungstenite::Message::text("NONSENSE\n\n\0")).await;
    let closing = next("closing session");
    let _ = child.kill();
    let _ = child.wait();
    let span = &closing["span"];
    assert_eq!(
        (span["name"].as_str(), span["user"].as_str()),
        (Some("session"), Some("alice")),
        "{closing}"
    );
    assert!(
        span["id"].is_u64() && span["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{closing}"
    );
}

#[tokio::test]
async fn a_missing_ui_build_is_explained_not_a_blank_404() {
    let data = tempfile::tempdir().unwrap();
    let missing = data.path().join("no-ui-here");
    let server = TestServer::start(&data.path().join("state"), &missing, |_| {}).await;
    let (status, body) = server.get("/").await;
    assert_eq!(status, 200);
    assert!(body.contains("web UI was not found") && body.contains("cargo xtask run"), "{body}");
    assert!(data.path().join("state").is_dir(), "the data directory is created on start");
    server.stop().await;
}

#[tokio::test]
async fn cors_answers_configured_origins_only() {
    let server = TestServer::stomp(|config| {
        config.settings.api.cors_origins = vec!["http://localhost:5173".into()];
    })
    .await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/tasks", server.addr);
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, &url)
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "authorization,content-type")
            .send()
    };
    let allowed = preflight("http://localhost:5173").await.unwrap();
    assert_eq!(allowed.status(), 200);
    let headers = allowed.headers();
    assert_eq!(headers["access-control-allow-origin"], "http://localhost:5173");
    let allowed_headers = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed_headers.contains("authorization"), "{allowed_headers}");
    let other = preflight("http://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // A plain request from the allowed origin carries the header too, errors included.
    let answer = http.get(&url).header("Origin", "http://localhost:5173").send().await.unwrap();
    assert_eq!(answer.status(), 401);
    assert_eq!(answer.headers()["access-control-allow-origin"], "http://localhost:5173");
    server.stop().await;
}

#[tokio::test]
async fn without_cors_origins_no_cors_headers_are_sent() {
    let server = TestServer::stomp(|_| {}).await;
    let answer = reqwest::Client::new()
        .get(format!("http://{}/healthz", server.addr))
        .header("Origin", "http://localhost:5173")
        .send()
        .await
        .unwrap();
    assert!(answer.headers().get("access-control-allow-origin").is_none());
    server.stop().await;
}
