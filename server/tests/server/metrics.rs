//! `GET /metrics` and `GET /api/admin/stats` after a scripted scenario: the names follow
//! Prometheus conventions and every figure matches what the script did.

use std::collections::HashMap;

use serde_json::{Value, json};
use taskpulse_server::{Config, ConfigUser};
use taskpulse_shared::{TaskProgressDto, TaskStatus, stomp::Command};

use crate::fixture::{PATIENCE, TestServer};

const PROGRESS: &str = "/user/queue/tasks-progress";
const BACKEND_KEY: &str = "backend-key-0123456789";
const SCRAPE_TOKEN: &str = "scrape-token-0123456789";

fn settings(config: &mut Config) {
    config.settings.demo.duration_ms = 200;
    config.settings.demo.steps = 4;
    config.settings.tasks.progress_interval_ms = 20;
    config.settings.api.keys = vec![BACKEND_KEY.into()];
    config.settings.metrics.token = SCRAPE_TOKEN.into();
}

/// The samples of a Prometheus text exposition: `name{labels}` -> value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(server: &TestServer) -> (u16, Option<String>, String) {
    let response = reqwest::Client::new()
        .get(server.api().url("/metrics"))
        .bearer_auth(SCRAPE_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, content_type, response.text().await.unwrap())
}

/// Scrapes until `series` has `value` (connections end a moment after the client sees it).
async fn eventually(server: &TestServer, series: &str, value: f64) -> HashMap<String, f64> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let figures = samples(&scrape(server).await.2);
        if figures.get(series) == Some(&value) || tokio::time::Instant::now() > deadline {
            return figures;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_and_stats_count_what_a_scripted_session_did() {
    let server = TestServer::stomp(settings).await;
    let api = server.api();
    let token = api.register("alice").await;

    // One client follows a task to its end, then says goodbye.
    let mut client = server.client_with(&token).await;
    client.subscribe("tasks", PROGRESS, "auto").await;
    let task_no = api.submit(&token, "a lighthouse at dusk").await;
    let updates = client.updates_until_done(&task_no).await;
    client.frame(Command::Disconnect, &[("receipt", "bye")], "").await;
    assert_eq!(client.recv().await.command, Command::Receipt);
    assert!(client.closed().await);
    // Another one brings a bad token.
    let mut intruder = taskpulse_testkit::StompClient::open(&server.ws_url(), &["v12.stomp"]).await;
    let refused = intruder.try_connect(&[("Authorization", "Bearer not-a-token")]).await.unwrap();
    assert_eq!(refused.command, Command::Error);
    assert!(intruder.closed().await);
    // Gone for good: the server stops waiting for their half of the close at once.
    drop((client, intruder));

    // Scrapers need the token.
    let (status, _) = api.get("/metrics", None).await;
    assert_eq!(status, 401);
    let (status, _) = api.get("/metrics", Some("wrong-token")).await;
    assert_eq!(status, 401);

    let figures = eventually(&server, "taskpulse_connections{transport=\"stomp\"}", 0.0).await;
    let (status, content_type, _) = scrape(&server).await;
    assert_eq!(
        (status, content_type.as_deref()),
        (200, Some("text/plain; version=0.0.4; charset=utf-8"))
    );
    let n = updates.len() as f64;
    let expected = [
        ("taskpulse_connections{transport=\"stomp\"}", 0.0),
        ("taskpulse_connects_total{transport=\"stomp\"}", 2.0),
        ("taskpulse_disconnects_total{transport=\"stomp\",reason=\"disconnect\"}", 1.0),
        ("taskpulse_disconnects_total{transport=\"stomp\",reason=\"authentication-failed\"}", 1.0),
        ("taskpulse_auth_attempts_total{outcome=\"success\"}", 1.0),
        ("taskpulse_auth_attempts_total{outcome=\"invalid-token\"}", 1.0),
        ("taskpulse_errors_total{code=\"authentication-failed\"}", 1.0),
        ("taskpulse_frames_received_total{protocol=\"stomp\",kind=\"CONNECT\"}", 2.0),
        ("taskpulse_frames_received_total{protocol=\"stomp\",kind=\"SUBSCRIBE\"}", 1.0),
        ("taskpulse_frames_received_total{protocol=\"stomp\",kind=\"DISCONNECT\"}", 1.0),
        ("taskpulse_frames_sent_total{protocol=\"stomp\",kind=\"connected\"}", 1.0),
        ("taskpulse_frames_sent_total{protocol=\"stomp\",kind=\"message\"}", n),
        ("taskpulse_frames_sent_total{protocol=\"stomp\",kind=\"receipt\"}", 2.0),
        ("taskpulse_frames_sent_total{protocol=\"stomp\",kind=\"error\"}", 1.0),
        ("taskpulse_deliveries_total", n),
        ("taskpulse_messages_published_total", n),
        ("taskpulse_catch_ups_total{kind=\"snapshot\"}", 1.0),
        ("taskpulse_tasks{executor=\"demo\",status=\"created\"}", 0.0),
        ("taskpulse_tasks{executor=\"demo\",status=\"queued\"}", 0.0),
        ("taskpulse_tasks{executor=\"demo\",status=\"processing\"}", 0.0),
        ("taskpulse_tasks_ended_total{executor=\"demo\",status=\"completed\"}", 1.0),
        ("taskpulse_task_queue_wait_seconds_count{executor=\"demo\"}", 1.0),
        ("taskpulse_task_duration_seconds_count{executor=\"demo\",status=\"completed\"}", 1.0),
        ("taskpulse_slow_consumer_disconnects_total", 0.0),
    ];
    for (series, value) in expected {
        assert_eq!(figures.get(series), Some(&value), "{series} in {figures:#?}");
    }
    // A demo task takes 200 ms; its duration is measured, not made up.
    let took =
        figures["taskpulse_task_duration_seconds_sum{executor=\"demo\",status=\"completed\"}"];
    assert!((0.15..60.0).contains(&took), "{took}");
    // Every update was stored before it was pushed.
    assert!(figures["taskpulse_storage_operation_seconds_count{operation=\"append\"}"] >= n);
    assert!(figures["taskpulse_uptime_seconds"] > 0.0);

    // The same figures as JSON, for backends.
    let (status, _) = api.get("/api/admin/stats", None).await;
    assert_eq!(status, 401);
    let response = reqwest::Client::new()
        .get(api.url("/api/admin/stats"))
        .header("x-api-key", BACKEND_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let stats: Value = response.json().await.unwrap();
    assert_eq!(stats["connections"]["open"], 0, "{stats:#}");
    assert_eq!(stats["connections"]["connects"], 2, "{stats:#}");
    assert_eq!(stats["connections"]["disconnectsByReason"]["authentication-failed"], 1);
    assert_eq!(stats["authentication"]["attempts"], 2);
    assert_eq!(stats["authentication"]["successRate"], 0.5);
    assert_eq!(stats["messages"]["deliveries"], updates.len());
    assert_eq!(stats["messages"]["receivedByKind"]["stomp/SUBSCRIBE"], 1);
    assert_eq!(stats["errors"]["byCode"]["authentication-failed"], 1);
    assert_eq!(stats["catchUps"]["snapshots"], 1);
    assert_eq!(stats["tasks"]["demo"]["completed"], 1);
    assert_eq!(stats["tasks"]["demo"]["processing"], 0);
    server.stop().await;
}

#[tokio::test]
async fn metrics_can_be_switched_off() {
    let server = TestServer::stomp(|c| c.settings.metrics.enabled = false).await;
    let (status, body) = server.get("/metrics").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("[metrics] enabled"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn without_a_token_anyone_may_scrape() {
    let server = TestServer::stomp(|_| {}).await;
    let (status, body) = server.get("/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("# TYPE taskpulse_uptime_seconds gauge"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn operators_read_the_stats_and_disconnect_users_with_their_token() {
    let server = TestServer::stomp(|c| {
        settings(c);
        c.settings.demo.duration_ms = 3000;
        c.settings.auth.users =
            vec![ConfigUser { login: "ops".into(), passcode: "ops-passcode-123".into() }];
        c.settings.auth.operators = vec!["ops".into()];
    })
    .await;
    let api = server.api();
    let alice = api.register("alice").await;
    // The operator signs in with its configured passcode; nobody can register its name.
    let body = json!({"username": "ops", "password": "wrong"});
    assert_eq!(api.post("/api/auth/login", None, body).await.0, 401);
    let body = json!({"username": "ops", "password": "ops-passcode-123"});
    let (status, answer) = api.post("/api/auth/login", None, body).await;
    assert_eq!(status, 200, "{answer}");
    let ops = answer["token"].as_str().unwrap().to_owned();
    let body = json!({"username": "OPS", "password": "another password"});
    assert_eq!(api.post("/api/auth/register", None, body).await.0, 409);
    assert_eq!(api.get("/api/me", Some(&ops)).await.1["operator"], true);
    assert!(api.get("/api/me", Some(&alice)).await.1.get("operator").is_none());

    // A running task shows among the slowest.
    let mut watcher = server.client_with(&alice).await;
    watcher.subscribe("tasks", PROGRESS, "auto").await;
    let task_no = api.submit(&alice, "a long one").await;
    loop {
        let update: TaskProgressDto = serde_json::from_slice(&watcher.recv().await.body).unwrap();
        if update.task_no == task_no && update.status == TaskStatus::Processing {
            break;
        }
    }
    let (status, stats) = api.get("/api/admin/stats", Some(&ops)).await;
    assert_eq!(status, 200, "{stats}");
    let slowest = &stats["slowestTasks"][0];
    assert_eq!(
        (slowest["taskNo"].as_str(), slowest["owner"].as_str()),
        (Some(task_no.as_str()), Some("alice"))
    );
    assert_eq!(slowest["executor"], "demo");
    assert!(slowest["runningSeconds"].as_f64().unwrap() >= 0.0);
    // Others may not.
    let (status, answer) = api.get("/api/admin/stats", Some(&alice)).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("[auth] operators"), "{answer}");
    assert_eq!(api.get("/api/admin/stats", None).await.0, 401);

    // The operator closes alice's connections.
    let (status, answer) =
        api.post("/api/admin/disconnect", Some(&ops), json!({"user": "alice"})).await;
    assert_eq!((status, answer["closed"].as_u64()), (200, Some(1)), "{answer}");
    let error = watcher.expect_error().await;
    assert_eq!(error.header("message"), Some("disconnected"));
    let (status, _) = api.post("/api/admin/disconnect", Some(&alice), json!({"user": "ops"})).await;
    assert_eq!(status, 403);
    server.stop().await;
}
