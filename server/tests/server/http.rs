//! HTTP: health, the UI with its single-page fallback, clear JSON errors under `/api`, and
//! a clean stop.

use crate::fixture::TestServer;

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
