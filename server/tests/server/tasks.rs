//! The task service through its REST API and a STOMP subscriber: lifecycle, ownership,
//! cancel, credits, queue positions, logout, external workers, publish, bad input.

use serde_json::{Value, json};
use taskpulse_server::Config;
use taskpulse_shared::{TaskProgressDto, TaskStatus, stomp::Command};

use crate::fixture::{Postgres, StompClient, TestServer, body};

const PROGRESS: &str = "/user/queue/tasks-progress";
const BACKEND_KEY: &str = "backend-key-0123456789";

/// Demo tasks of 200 ms in 4 steps; progress pushed at most every 20 ms.
fn fast(config: &mut Config) {
    config.settings.demo.duration_ms = 200;
    config.settings.demo.steps = 4;
    config.settings.tasks.progress_interval_ms = 20;
    config.settings.api.keys = vec![BACKEND_KEY.into()];
}

async fn subscriber(server: &TestServer, token: &str) -> StompClient {
    let mut client = server.client_with(token).await;
    client.subscribe("tasks", PROGRESS, "auto").await;
    client
}

fn statuses(updates: &[TaskProgressDto]) -> Vec<TaskStatus> {
    let mut seen: Vec<TaskStatus> = Vec::new();
    for u in updates {
        if seen.last() != Some(&u.status) {
            seen.push(u.status);
        }
    }
    seen
}

#[tokio::test]
async fn a_task_goes_through_every_status_to_a_png_result_on_sqlite() {
    let server = TestServer::stomp(fast).await;
    every_status_to_a_png(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_task_goes_through_every_status_to_a_png_result_on_postgresql() {
    let postgres = Postgres::start().unwrap();
    let url = postgres.fresh_database().unwrap();
    let server = TestServer::stomp(|c| {
        fast(c);
        c.settings.storage.url = url.clone();
    })
    .await;
    let (signed_url, png) = every_status_to_a_png(&server).await;
    // Another server on the same database (its own data directory) serves the result at
    // the URL the first one signed.
    let other = TestServer::stomp(|c| c.settings.storage.url = url).await;
    let (status, content_type, bytes) = other.api().download(&signed_url).await;
    assert_eq!((status, content_type.as_deref()), (200, Some("image/png")));
    assert_eq!(bytes, png);
    other.stop().await;
    server.stop().await;
}

/// Follows one task to its result; returns the signed result URL and the image.
async fn every_status_to_a_png(server: &TestServer) -> (String, Vec<u8>) {
    let api = server.api();
    let token = api.register("alice").await;
    let mut client = subscriber(server, &token).await;

    let task_no = api.submit(&token, "a lighthouse at dusk").await;
    let updates = client.updates_until_done(&task_no).await;
    use TaskStatus::*;
    assert_eq!(statuses(&updates), [Created, Queued, Processing, Completed], "{updates:#?}");
    let progress: Vec<u8> = updates.iter().map(|u| u.progress).collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "progress only grows: {progress:?}");
    assert!(updates.iter().any(|u| u.status == Processing && u.progress > 0 && u.progress < 100));
    let done = updates.last().unwrap();
    assert_eq!((done.progress, done.error_message.as_ref()), (100, None));

    // The signed resultUrl works without credentials, as an <img src> would load it.
    let url = done.result_url.as_deref().unwrap();
    let (status, content_type, png) = api.download(url).await;
    assert_eq!((status, content_type.as_deref()), (200, Some("image/png")));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // Width and height from the IHDR chunk: 16:9 with a 512 long edge.
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (512, 288));
    // Without the signature it takes the owner's token.
    let bare = format!("/api/tasks/{task_no}/result");
    assert_eq!(api.download(&bare).await.0, 401);
    let tampered = url.replace("signature=", "signature=00");
    assert_eq!(api.download(&tampered).await.0, 403);

    let (status, details) = api.get(&format!("/api/tasks/{task_no}"), Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(details["status"], "completed");
    assert_eq!(details["request"]["prompt"], "a lighthouse at dusk");
    assert!(details["finishedAt"].as_i64().unwrap() >= details["createdAt"].as_i64().unwrap());

    let (_, events) = api.get(&format!("/api/tasks/{task_no}/events"), Some(&token)).await;
    assert_eq!(events["pruned"], false, "{events}");
    let history: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(history.first(), Some(&"created"));
    assert_eq!(history.last(), Some(&"completed"));
    assert_eq!(history.len(), updates.len(), "every push is in the history: {history:?}");

    let (_, page) = api.get("/api/tasks", Some(&token)).await;
    assert_eq!(page["tasks"][0]["taskNo"], task_no.as_str());
    assert!(page.get("nextCursor").is_none());
    (url.to_owned(), png.to_vec())
}

#[tokio::test]
async fn every_session_of_the_owner_gets_updates_and_nobody_else_sees_the_task() {
    let server = TestServer::stomp(fast).await;
    let api = server.api();
    let alice = api.register("alice").await;
    let bob = api.register("bob").await;
    let mut tab1 = subscriber(&server, &alice).await;
    let mut tab2 = subscriber(&server, &alice).await;
    let mut bobs = subscriber(&server, &bob).await;

    let task_no = api.submit(&alice, "a private thing").await;
    let first = tab1.updates_until_done(&task_no).await;
    let second = tab2.updates_until_done(&task_no).await;
    assert_eq!(statuses(&first), statuses(&second));
    assert_eq!(first.last(), second.last());
    bobs.expect_nothing(std::time::Duration::from_millis(200)).await;

    for path in [
        format!("/api/tasks/{task_no}"),
        format!("/api/tasks/{task_no}/events"),
        format!("/api/tasks/{task_no}/result"),
    ] {
        let (status, answer) = api.get(&path, Some(&bob)).await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
    let (status, _) =
        api.post(&format!("/api/tasks/{task_no}/cancel"), Some(&bob), json!({})).await;
    assert_eq!(status, 404);
    let (_, page) = api.get("/api/tasks", Some(&bob)).await;
    assert_eq!(page["tasks"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn cancel_ends_a_running_task_as_failed_cancelled_once() {
    let server = TestServer::stomp(|c| {
        fast(c);
        c.settings.demo.duration_ms = 20_000;
        c.settings.demo.steps = 100;
    })
    .await;
    let api = server.api();
    let token = api.register("alice").await;
    let mut client = subscriber(&server, &token).await;
    let task_no = api.submit(&token, "slow").await;
    loop {
        let frame = client.recv().await;
        let update: TaskProgressDto = serde_json::from_slice(&frame.body).unwrap();
        if update.status == TaskStatus::Processing && update.progress > 0 {
            break;
        }
    }
    let cancel = format!("/api/tasks/{task_no}/cancel");
    let (status, answer) = api.post(&cancel, Some(&token), json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["status"].as_str(), answer["errorMessage"].as_str()),
        (Some("failed"), Some("cancelled"))
    );
    let rest = client.updates_until_done(&task_no).await;
    let end = rest.last().unwrap();
    assert_eq!(end.error_message.as_deref(), Some("cancelled"));
    // The executor was stopped: nothing follows the terminal status.
    client.expect_nothing(std::time::Duration::from_millis(400)).await;
    let (status, answer) = api.post(&cancel, Some(&token), json!({})).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("already ended"));

    // A queued task can be cancelled too (concurrency 2: the third waits).
    let a = api.submit(&token, "one").await;
    let b = api.submit(&token, "two").await;
    let c = api.submit(&token, "three").await;
    let (status, answer) =
        api.post(&format!("/api/tasks/{c}/cancel"), Some(&token), json!({})).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("failed")));
    for t in [a, b] {
        api.post(&format!("/api/tasks/{t}/cancel"), Some(&token), json!({})).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn queued_tasks_are_told_their_position_as_it_changes() {
    let server = TestServer::stomp(|c| {
        fast(c);
        c.settings.demo.concurrency = 1;
        c.settings.demo.duration_ms = 300;
    })
    .await;
    let api = server.api();
    let token = api.register("alice").await;
    let mut client = subscriber(&server, &token).await;
    let _first = api.submit(&token, "first").await;
    let _second = api.submit(&token, "second").await;
    let third = api.submit(&token, "third").await;
    let (_, details) = api.get(&format!("/api/tasks/{third}"), Some(&token)).await;
    assert_eq!(details["status"], "queued");
    assert!(details["queuePosition"].as_u64().unwrap() >= 1, "{details}");

    let updates = client.updates_until_done(&third).await;
    let positions: Vec<u32> = updates.iter().filter_map(|u| u.queue_position).collect();
    assert!(positions.len() >= 2, "{updates:#?}");
    assert!(positions.windows(2).all(|w| w[0] > w[1]), "positions count down: {positions:?}");
    assert_eq!(positions.last(), Some(&1));
    assert_eq!(updates.last().unwrap().status, TaskStatus::Completed);
    server.stop().await;
}

#[tokio::test]
async fn credits_are_reserved_spent_and_refunded() {
    let server = TestServer::stomp(|c| {
        fast(c);
        c.settings.credits.enabled = true;
        c.settings.credits.initial = 3;
        c.settings.credits.image_to_image = 2;
        c.settings.tasks.image_fetch_timeout_ms = 1000;
        // The silent listener below is on loopback, which fetches may not reach by default.
        c.settings.tasks.image_fetch_allow = vec!["127.0.0.1".into()];
    })
    .await;
    let api = server.api();
    let token = api.register("alice").await;
    let mut client = subscriber(&server, &token).await;
    let credits =
        || async { api.get("/api/me", Some(&token)).await.1["credits"].as_i64().unwrap() };
    assert_eq!(credits().await, 3);

    // A listener that never answers: the fetch times out (after the balance is checked).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/in.png", silent.local_addr().unwrap());
    let body = json!({"kind": "image-to-image", "prompt": "oil", "imageUrl": url});
    let (status, answer) = api.post("/api/tasks", Some(&token), body.clone()).await;
    assert_eq!(status, 202, "{answer}");
    let failing = answer["taskNo"].as_str().unwrap().to_owned();
    assert_eq!(credits().await, 1, "reserved on submit");
    let end = client.updates_until_done(&failing).await.pop().unwrap();
    assert_eq!(end.status, TaskStatus::Failed);
    assert!(end.error_message.as_deref().unwrap().contains("imageUrl"), "{end:?}");
    assert_eq!(credits().await, 3, "refunded on failure");

    let done = api.submit(&token, "paid").await;
    client.updates_until_done(&done).await;
    assert_eq!(credits().await, 2, "spent on completion");
    api.submit(&token, "second paid").await;
    api.submit(&token, "third paid").await;
    assert_eq!(credits().await, 0);
    let (status, answer) = api.post("/api/tasks", Some(&token), body).await;
    assert_eq!(status, 402, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("insufficient credits"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn logout_revokes_the_token_and_closes_its_connections() {
    let server = TestServer::stomp(fast).await;
    let api = server.api();
    let first = api.register("alice").await;
    let (status, login) = api
        .post(
            "/api/auth/login",
            None,
            json!({"username": "alice", "password": "password-of-alice"}),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    let second = login["token"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    let mut doomed = subscriber(&server, &first).await;
    let mut other = subscriber(&server, &second).await;

    let (status, _) = api.post("/api/auth/logout", Some(&first), json!({})).await;
    assert_eq!(status, 204);
    let error = doomed.expect_error().await;
    assert_eq!(error.header("message"), Some("token revoked"), "{error:?}");
    assert_eq!(api.get("/api/me", Some(&first)).await.0, 401);
    let mut again = StompClient::open(&server.ws_url(), &["v12.stomp"]).await;
    let refused = again.connect(&[("Authorization", &format!("Bearer {first}"))]).await;
    assert_eq!(refused.command, Command::Error);

    // The other token of the same user is untouched.
    let task_no = api.submit(&second, "still here").await;
    assert_eq!(
        other.updates_until_done(&task_no).await.last().unwrap().status,
        TaskStatus::Completed
    );
    server.stop().await;
}

#[tokio::test]
async fn revocations_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let ui = data.path().join("no-ui");
    let server = TestServer::start(data.path(), &ui, fast).await;
    let token = server.api().register("alice").await;
    assert_eq!(server.api().post("/api/auth/logout", Some(&token), json!({})).await.0, 204);
    server.stop().await;
    let server = TestServer::start(data.path(), &ui, fast).await;
    assert_eq!(server.api().get("/api/me", Some(&token)).await.0, 401);
    let (status, _) = server
        .api()
        .post(
            "/api/auth/login",
            None,
            json!({"username": "alice", "password": "password-of-alice"}),
        )
        .await;
    assert_eq!(status, 200, "the account survived too");
    server.stop().await;
}

#[tokio::test]
async fn external_workers_drive_their_tasks_and_backends_publish() {
    let server = TestServer::stomp(fast).await;
    let api = server.api();
    let token = api.register("alice").await;
    let mut client = subscriber(&server, &token).await;
    client.subscribe("notices", "/user/queue/notices", "auto").await;
    let (status, answer) = api
        .post("/api/tasks", Some(&token), json!({"kind": "external", "description": "export"}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let task_no = answer["taskNo"].as_str().unwrap().to_owned();
    let progress = format!("/api/tasks/{task_no}/progress");
    for (report, expected) in [
        (json!({"status": "processing", "progress": 10, "message": "rows 1-100"}), 200),
        (json!({"progress": 101}), 400),
        (json!({"progress": 60}), 200),
        (json!({"status": "completed", "resultUrl": "https://files.example/export.csv"}), 200),
        (json!({"progress": 70}), 409),
    ] {
        let (status, answer) = api.post_as_backend(&progress, BACKEND_KEY, report.clone()).await;
        assert_eq!(status, expected, "{report} -> {answer}");
    }
    let updates = client.updates_until_done(&task_no).await;
    let last = updates.last().unwrap();
    assert_eq!(last.result_url.as_deref(), Some("https://files.example/export.csv"));
    assert!(updates.iter().any(|u| u.progress == 60));

    // A demo task cannot be driven from outside.
    let demo = api.submit(&token, "mine").await;
    let (status, answer) = api
        .post_as_backend(
            &format!("/api/tasks/{demo}/progress"),
            BACKEND_KEY,
            json!({"progress": 5}),
        )
        .await;
    assert_eq!(status, 409, "{answer}");

    let notice = json!({"user": "alice", "destination": "/queue/notices", "payload": {"todo": 7, "action": "updated"}});
    let (status, answer) = api.post_as_backend("/api/publish", BACKEND_KEY, notice).await;
    assert_eq!((status, answer["delivered"].as_u64()), (200, Some(1)), "{answer}");
    loop {
        let frame = client.recv().await;
        if frame.header("destination") == Some("/user/queue/notices") {
            let payload: Value = serde_json::from_str(body(&frame)).unwrap();
            assert_eq!(payload, json!({"todo": 7, "action": "updated"}));
            break;
        }
    }
    let mut watcher = server.client("carol").await;
    watcher.subscribe("todos", "/topic/todos", "auto").await;
    let broadcast = json!({"destination": "/topic/todos", "payload": {"changed": true}});
    let (status, _) = api.post_as_backend("/api/publish", BACKEND_KEY, broadcast).await;
    assert_eq!(status, 200);
    assert_eq!(body(&watcher.recv().await), r#"{"changed":true}"#);
    server.stop().await;
}

/// `POST /api/publish` with a JSON array: one result per item in order, bad items refused
/// alone, each user's notices numbered and delivered in array order, offline ones kept.
#[tokio::test]
async fn a_batch_publish_answers_per_item_and_keeps_each_user_s_order() {
    let server = TestServer::stomp(fast).await;
    let api = server.api();
    let mut alice = server.client("alice").await;
    alice.subscribe("n", "/user/queue/notices", "auto").await;
    let mut items: Vec<Value> = (0..300)
        .map(|n| {
            let user = if n % 2 == 0 { "alice" } else { "bob" };
            json!({"user": user, "destination": "/queue/notices", "payload": {"n": n}})
        })
        .collect();
    items[5] = json!({"user": "alice", "destination": "/app/x", "payload": 1});
    items[7] = json!({"destination": "/queue/notices"});
    items[9] = json!({"destination": "/topic/batch", "payload": "all"});
    let (status, answer) = api.post_as_backend("/api/publish", BACKEND_KEY, json!(items)).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer.as_array().unwrap();
    assert_eq!(results.len(), 300);
    assert_eq!(results[5]["field"], "destination", "{}", results[5]);
    assert_eq!(results[7]["field"], "payload", "{}", results[7]);
    assert_eq!(results[9]["delivered"], 0, "a broadcast nobody hears");
    assert_eq!(results[0]["delivered"], 1);
    assert_eq!(results[1]["delivered"], 0, "bob is offline");
    // Alice gets hers in array order with increasing seq.
    let expected: Vec<u64> = (0..300).filter(|n| n % 2 == 0).collect();
    let mut seqs = Vec::new();
    for n in &expected {
        let frame = alice.recv().await;
        let payload: Value = serde_json::from_str(body(&frame)).unwrap();
        assert_eq!(payload["n"].as_u64(), Some(*n));
        seqs.push(frame.header("seq").unwrap().parse::<i64>().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // Bob, offline, gets all of his on his first plain SUBSCRIBE, in order.
    let mut bob = server.client("bob").await;
    bob.subscribe("n", "/user/queue/notices", "auto").await;
    let bobs: Vec<u64> = (0..300).filter(|n| n % 2 == 1 && ![5, 7, 9].contains(n)).collect();
    for n in &bobs {
        let payload: Value = serde_json::from_str(body(&bob.recv().await)).unwrap();
        assert_eq!(payload["n"].as_u64(), Some(*n));
    }
    // More than the batch limit is refused whole.
    let many: Vec<Value> =
        (0..1001).map(|_| json!({"destination": "/topic/x", "payload": 1})).collect();
    let (status, answer) = api.post_as_backend("/api/publish", BACKEND_KEY, json!(many)).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("1000"), "{answer}");
    server.stop().await;
}

/// Every endpoint refuses bad input with a status and an error that names the problem.
#[tokio::test]
async fn invalid_input_gets_a_clear_4xx_on_every_endpoint() {
    let server = TestServer::stomp(fast).await;
    let api = server.api();
    let token = api.register("alice").await;
    let task_no = api.submit(&token, "fine").await;
    let t = Some(token.as_str());
    let progress_path = format!("/api/tasks/{task_no}/progress");
    // (method, path, token, body, expected status, text the answer must contain)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Value, u16, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "POST",
            "/api/auth/register",
            None,
            json!({"username": "al", "password": "longenough"}),
            400,
            "username",
        ),
        (
            "POST",
            "/api/auth/register",
            None,
            json!({"username": "bob", "password": "short"}),
            400,
            "password",
        ),
        (
            "POST",
            "/api/auth/register",
            None,
            json!({"username": "b o b", "password": "longenough"}),
            400,
            "username",
        ),
        ("POST", "/api/auth/register", None, json!({"username": "bob"}), 400, "password"),
        (
            "POST",
            "/api/auth/register",
            None,
            json!({"username": "alice", "password": "longenough"}),
            409,
            "already taken",
        ),
        (
            "POST",
            "/api/auth/login",
            None,
            json!({"username": "alice", "password": "wrong-password"}),
            401,
            "wrong username or password",
        ),
        (
            "POST",
            "/api/auth/login",
            None,
            json!({"username": "nobody", "password": "wrong-password"}),
            401,
            "wrong username or password",
        ),
        ("POST", "/api/auth/logout", None, json!({}), 401, "Authorization"),
        ("GET", "/api/me", Some("not.a.jwt"), Value::Null, 401, "invalid"),
        (
            "POST",
            "/api/tasks",
            None,
            json!({"kind": "text-to-image", "prompt": "x"}),
            401,
            "Authorization",
        ),
        ("POST", "/api/tasks", t, json!({"kind": "video", "prompt": "x"}), 400, "video"),
        ("POST", "/api/tasks", t, json!({"kind": "text-to-image", "prompt": "  "}), 400, "prompt"),
        (
            "POST",
            "/api/tasks",
            t,
            json!({"kind": "text-to-image", "prompt": "x", "aspectRatio": "2:1"}),
            400,
            "aspectRatio",
        ),
        (
            "POST",
            "/api/tasks",
            t,
            json!({"kind": "text-to-image", "prompt": "x", "extra": 1}),
            400,
            "extra",
        ),
        (
            "POST",
            "/api/tasks",
            t,
            json!({"kind": "image-to-image", "prompt": "x", "imageUrl": "file:///etc/passwd"}),
            400,
            "imageUrl",
        ),
        (
            "POST",
            "/api/tasks",
            t,
            json!({"kind": "image-to-image", "prompt": "x"}),
            400,
            "imageUrl",
        ),
        (
            "POST",
            "/api/tasks",
            t,
            json!({"kind": "text-to-image", "prompt": "x".repeat(2001)}),
            400,
            "prompt",
        ),
        ("GET", "/api/tasks?limit=0", t, Value::Null, 400, "limit"),
        ("GET", "/api/tasks?status=running", t, Value::Null, 400, "status"),
        ("GET", "/api/tasks?before=yesterday", t, Value::Null, 400, "before"),
        ("GET", "/api/tasks?sort=asc", t, Value::Null, 400, "sort"),
        ("GET", "/api/tasks/0123456789abcdef0123456789abcdef", t, Value::Null, 404, "no task"),
        ("GET", "/api/tasks/..%2F..%2Fetc%2Fpasswd/result", t, Value::Null, 404, "no task"),
        ("GET", "/api/tasks/nonsense/events", t, Value::Null, 404, "no task"),
        ("POST", "/api/tasks/nonsense/cancel", t, json!({}), 404, "no task"),
        ("POST", &progress_path, t, json!({"progress": 1}), 401, "X-API-Key"),
        (
            "POST",
            "/api/publish",
            t,
            json!({"destination": "/topic/x", "payload": 1}),
            401,
            "X-API-Key",
        ),
    ];
    for (method, path, token, body, status, needle) in cases {
        let (got, answer) = if method == "GET" {
            api.get(path, token).await
        } else {
            api.post(path, token, body.clone()).await
        };
        assert_eq!(got, status, "{method} {path} {body} -> {answer}");
        let text = answer.to_string();
        assert!(text.contains(needle), "{method} {path} {body}: {needle:?} not in {text}");
        assert!(answer["error"].is_string(), "{method} {path}: {answer}");
    }
    // Field names are reported as such.
    let (_, answer) =
        api.post("/api/tasks", t, json!({"kind": "text-to-image", "prompt": ""})).await;
    assert_eq!(answer["field"], "prompt");
    // Backend endpoints with a wrong key, and bad bodies with the right one.
    let progress = format!("/api/tasks/{task_no}/progress");
    assert_eq!(api.post_as_backend(&progress, "wrong-key-0123456789", json!({})).await.0, 401);
    for (body, field) in [
        (json!({"destination": "/app/x", "payload": 1}), "destination"),
        (json!({"destination": "/user/alice/queue/x", "payload": 1}), "destination"),
        (json!({"payload": 1}), "destination"),
        (json!({"user": "", "destination": "/queue/x", "payload": 1}), "user"),
    ] {
        let (status, answer) = api.post_as_backend("/api/publish", BACKEND_KEY, body.clone()).await;
        assert_eq!((status, answer["field"].as_str()), (400, Some(field)), "{body} -> {answer}");
    }
    // Not JSON at all.
    let response = reqwest::Client::new()
        .post(api.url("/api/tasks"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("prompt=x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    let response = reqwest::Client::new()
        .post(api.url("/api/tasks"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{\"kind\":")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await.unwrap().contains("invalid JSON body"));
    // The server carries on.
    assert_eq!(api.get(&format!("/api/tasks/{task_no}"), t).await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn registration_can_be_disabled() {
    let server = TestServer::stomp(|c| c.settings.accounts.registration = false).await;
    let (status, answer) = server
        .api()
        .post("/api/auth/register", None, json!({"username": "alice", "password": "longenough"}))
        .await;
    assert_eq!(status, 403);
    assert!(answer["error"].as_str().unwrap().contains("accounts.registration"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn a_task_whose_worker_goes_silent_fails_as_stalled_and_is_refunded() {
    let server = TestServer::stomp(|c| {
        fast(c);
        c.settings.tasks.stall_timeout_s = 1;
        c.settings.credits.enabled = true;
        c.settings.credits.initial = 5;
        c.settings.credits.external = 2;
    })
    .await;
    let api = server.api();
    let token = api.register("alice").await;
    let mut client = subscriber(&server, &token).await;
    let credits =
        || async { api.get("/api/me", Some(&token)).await.1["credits"].as_i64().unwrap() };
    let (status, answer) = api
        .post("/api/tasks", Some(&token), json!({"kind": "external", "description": "export"}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let task_no = answer["taskNo"].as_str().unwrap().to_owned();
    assert_eq!(credits().await, 3, "reserved on submit");
    // The worker reports twice, 0.6 s apart (within the timeout), then dies.
    let progress = format!("/api/tasks/{task_no}/progress");
    for report in [json!({"status": "processing", "progress": 10}), json!({"progress": 40})] {
        let (status, answer) = api.post_as_backend(&progress, BACKEND_KEY, report).await;
        assert_eq!(status, 200, "{answer}");
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    }
    let started = std::time::Instant::now();
    let end = client.updates_until_done(&task_no).await.pop().unwrap();
    assert_eq!((end.status, end.progress), (TaskStatus::Failed, 40), "{end:?}");
    let why = end.error_message.as_deref().unwrap();
    assert!(why.starts_with("stalled: the task's worker reported no progress for 1 s"), "{why}");
    assert!(why.contains("tasks.stall_timeout_s"), "{why}");
    // Reports kept it alive: it ended about 1 s after the last one, not after the first.
    assert!(started.elapsed() >= std::time::Duration::from_millis(200), "{:?}", started.elapsed());
    assert_eq!(credits().await, 5, "refunded");
    let (status, _) = api.post_as_backend(&progress, BACKEND_KEY, json!({"progress": 50})).await;
    assert_eq!(status, 409, "a stalled task stays ended");
    let (_, details) = api.get(&format!("/api/tasks/{task_no}"), Some(&token)).await;
    assert_eq!(details["status"], "failed", "{details}");
    server.stop().await;
}

#[tokio::test]
async fn queued_tasks_wait_without_stalling() {
    let server = TestServer::stomp(|c| {
        fast(c);
        c.settings.tasks.stall_timeout_s = 1;
        c.settings.demo.duration_ms = 1500;
        c.settings.demo.steps = 6;
        c.settings.demo.concurrency = 1;
    })
    .await;
    let api = server.api();
    let token = api.register("alice").await;
    let mut client = subscriber(&server, &token).await;
    // The second waits 1.5 s in the queue, longer than the stall timeout.
    let first = api.submit(&token, "first").await;
    let second = api.submit(&token, "second").await;
    for task_no in [first, second] {
        let end = client.updates_until_done(&task_no).await.pop().unwrap();
        assert_eq!(end.status, TaskStatus::Completed, "{end:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn task_events_are_kept_for_the_retention_and_the_answer_says_when_some_went() {
    let server = TestServer::stomp(|c| {
        fast(c);
        c.settings.tasks.events_retention_s = 1;
    })
    .await;
    let api = server.api();
    let token = api.register("alice").await;
    let mut client = subscriber(&server, &token).await;
    let task_no = api.submit(&token, "short-lived history").await;
    client.updates_until_done(&task_no).await;
    let path = format!("/api/tasks/{task_no}/events");
    let (_, fresh) = api.get(&path, Some(&token)).await;
    assert_eq!(fresh["pruned"], false, "{fresh}");
    assert_eq!(fresh["events"][0]["status"], "created", "{fresh}");
    // Past the retention (pruned every half retention here), the history is gone and the
    // answer says so; the task itself stays.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let old = loop {
        let (_, old) = api.get(&path, Some(&token)).await;
        if old["events"].as_array().unwrap().is_empty() || tokio::time::Instant::now() > deadline {
            break old;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(old["pruned"], true, "{old}");
    assert_eq!(old["events"], json!([]), "{old}");
    let (status, details) = api.get(&format!("/api/tasks/{task_no}"), Some(&token)).await;
    assert_eq!((status, details["status"].as_str()), (200, Some("completed")));
    server.stop().await;
}
