//! seq/epoch on user messages, resume after a gap, snapshots and the offline queue.

use std::time::Duration;

use serde_json::json;
use taskpulse_server::Config;
use taskpulse_shared::{
    TaskProgressDto, TaskStatus,
    stomp::{Command, Frame},
};

use crate::fixture::{Postgres, StompClient, TestServer, body};

const PROGRESS: &str = "/user/queue/tasks-progress";
const BACKEND_KEY: &str = "backend-key-0123456789";

fn fast(config: &mut Config) {
    config.settings.demo.duration_ms = 100;
    config.settings.demo.steps = 4;
    config.settings.tasks.progress_interval_ms = 10;
    config.settings.api.keys = vec![BACKEND_KEY.into()];
}

fn seq(frame: &Frame) -> i64 {
    frame.header("seq").unwrap_or_else(|| panic!("no seq: {frame:?}")).parse().unwrap()
}

fn update(frame: &Frame) -> TaskProgressDto {
    serde_json::from_slice(&frame.body).unwrap()
}

/// Frames until `task_no` is terminal.
async fn until_done(client: &mut StompClient, task_no: &str) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        let frame = client.try_recv(Duration::from_secs(10)).await.expect("an update");
        assert_eq!(frame.command, Command::Message, "{frame:?}");
        let done = update(&frame).task_no == task_no && update(&frame).status.is_terminal();
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

async fn wait_completed(server: &TestServer, token: &str, task_no: &str) {
    for _ in 0..200 {
        let (_, task) = server.api().get(&format!("/api/tasks/{task_no}"), Some(token)).await;
        if task["status"] == "completed" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("task {task_no} did not complete");
}

#[tokio::test]
async fn a_resumed_subscription_gets_exactly_what_it_missed_on_sqlite() {
    resumed_subscription(TestServer::stomp(fast).await).await;
}

#[tokio::test]
async fn a_resumed_subscription_gets_exactly_what_it_missed_on_postgresql() {
    let postgres = Postgres::start().unwrap();
    let url = postgres.fresh_database().unwrap();
    resumed_subscription(TestServer::stomp(|c| on(c, url)).await).await;
}

/// The fast settings on the database at `url`.
fn on(config: &mut Config, url: String) {
    fast(config);
    config.settings.storage.url = url;
}

async fn resumed_subscription(server: TestServer) {
    let api = server.api();
    let token = api.register("alice").await;
    let mut first = server.client_with(&token).await;
    first.subscribe("tasks", PROGRESS, "auto").await;
    let a = api.submit(&token, "before the gap").await;
    let seen = until_done(&mut first, &a).await;
    let epoch = seen[0].header("epoch").unwrap().to_owned();
    let seqs: Vec<i64> = seen.iter().map(seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "contiguous: {seqs:?}");
    let last = *seqs.last().unwrap();
    drop(first);

    // Task b runs start to end while nobody listens.
    let b = api.submit(&token, "during the gap").await;
    wait_completed(&server, &token, &b).await;

    let mut again = server.client_with(&token).await;
    let position = last.to_string();
    let resume = [("x-resume-epoch", epoch.as_str()), ("x-resume-seq", position.as_str())];
    again.subscribe_with("tasks", PROGRESS, "auto", &resume).await;
    let missed = until_done(&mut again, &b).await;
    let replayed: Vec<i64> = missed.iter().map(seq).collect();
    assert_eq!(replayed[0], last + 1, "no gap: {replayed:?}");
    assert!(replayed.windows(2).all(|w| w[1] == w[0] + 1), "in order, no duplicate: {replayed:?}");
    assert!(missed.iter().all(|f| f.header("x-replayed") == Some("true")));
    let statuses: Vec<TaskStatus> = missed.iter().map(|f| update(f).status).collect();
    assert_eq!(statuses.first(), Some(&TaskStatus::Created));
    assert_eq!(statuses.last(), Some(&TaskStatus::Completed));

    // Live messages continue the same sequence.
    let c = api.submit(&token, "after the gap").await;
    let live = until_done(&mut again, &c).await;
    assert_eq!(seq(&live[0]), replayed.last().unwrap() + 1);
    assert!(live.iter().all(|f| f.header("x-replayed").is_none()));
    server.stop().await;
}

#[tokio::test]
async fn a_plain_subscribe_starts_with_a_snapshot_and_so_does_a_foreign_epoch() {
    let server = TestServer::stomp(fast).await;
    let api = server.api();
    let token = api.register("alice").await;
    let done = api.submit(&token, "finished earlier").await;
    wait_completed(&server, &token, &done).await;

    for resume in [None, Some(("another-epoch", "3"))] {
        let mut client = server.client_with(&token).await;
        match resume {
            None => client.subscribe("tasks", PROGRESS, "auto").await,
            Some((epoch, seq)) => {
                let headers = [("x-resume-epoch", epoch), ("x-resume-seq", seq)];
                client.subscribe_with("tasks", PROGRESS, "auto", &headers).await;
            }
        }
        // Oldest first: the task finished earlier, then the live tasks of earlier rounds.
        let frame = client.recv().await;
        let (index, count) = frame.header("x-snapshot").unwrap().split_once('/').unwrap();
        assert_eq!(index, "1", "{resume:?}: {frame:?}");
        assert!(frame.header("seq").is_none(), "snapshot entries are states, not log entries");
        let snapshot_seq: i64 = frame.header("x-snapshot-seq").unwrap().parse().unwrap();
        let state = update(&frame);
        assert_eq!((state.task_no.as_str(), state.status), (done.as_str(), TaskStatus::Completed));
        for n in 2..=count.parse().unwrap() {
            let rest = client.recv().await;
            assert_eq!(rest.header("x-snapshot"), Some(format!("{n}/{count}").as_str()));
        }
        // The next live message follows the snapshot's position.
        let next = api.submit(&token, "live").await;
        let live = until_done(&mut client, &next).await;
        assert!(seq(&live[0]) > snapshot_seq);
        client.expect_nothing(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn notices_for_an_offline_user_wait_in_the_log() {
    let server = TestServer::stomp(fast).await;
    let api = server.api();
    let token = api.register("alice").await;
    for n in 1..=3 {
        let notice = json!({"user": "alice", "destination": "/queue/notices", "payload": {"n": n}});
        let (status, answer) = api.post_as_backend("/api/publish", BACKEND_KEY, notice).await;
        assert_eq!((status, answer["delivered"].as_u64()), (200, Some(0)), "{answer}");
    }
    let mut client = server.client_with(&token).await;
    client.subscribe("notices", "/user/queue/notices", "auto").await;
    let bodies: Vec<String> = [client.recv().await, client.recv().await, client.recv().await]
        .iter()
        .map(|f| body(f).to_owned())
        .collect();
    assert_eq!(bodies, [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]);
    // Delivered once: a second subscriber starts with live messages only, and gets them
    // (a plain SUBSCRIBE with no mark to take once dropped every later live message).
    let mut other = server.client_with(&token).await;
    other.subscribe("notices", "/user/queue/notices", "auto").await;
    other.expect_nothing(Duration::from_millis(150)).await;
    let notice = json!({"user": "alice", "destination": "/queue/notices", "payload": {"n": 4}});
    let (status, answer) = api.post_as_backend("/api/publish", BACKEND_KEY, notice).await;
    assert_eq!((status, answer["delivered"].as_u64()), (200, Some(2)), "{answer}");
    for client in [&mut client, &mut other] {
        assert_eq!(body(&client.recv().await), r#"{"n":4}"#);
    }
    server.stop().await;
}

#[tokio::test]
async fn positions_survive_a_restart_and_bad_positions_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let ui = data.path().join("no-ui");
    let server = TestServer::start(data.path(), &ui, fast).await;
    let token = server.api().register("alice").await;
    let mut client = server.client_with(&token).await;
    client.subscribe("tasks", PROGRESS, "auto").await;
    let a = server.api().submit(&token, "one").await;
    let seen = until_done(&mut client, &a).await;
    let (epoch, last) = (seen[0].header("epoch").unwrap().to_owned(), seq(seen.last().unwrap()));
    drop(client);
    server.stop().await;

    let server = TestServer::start(data.path(), &ui, fast).await;
    let b = server.api().submit(&token, "two").await;
    wait_completed(&server, &token, &b).await;
    let mut client = server.client_with(&token).await;
    let position = last.to_string();
    let resume = [("x-resume-epoch", epoch.as_str()), ("x-resume-seq", position.as_str())];
    client.subscribe_with("tasks", PROGRESS, "auto", &resume).await;
    let missed = until_done(&mut client, &b).await;
    assert_eq!(seq(&missed[0]), last + 1, "the sequence continued across the restart");
    assert_eq!(missed[0].header("epoch"), Some(epoch.as_str()));

    let mut bad = server.client_with(&token).await;
    bad.frame(
        Command::Subscribe,
        &[("id", "x"), ("destination", PROGRESS), ("x-resume-seq", "-1"), ("x-resume-epoch", "e")],
        "",
    )
    .await;
    let error = bad.expect_error().await;
    assert_eq!(error.header("message"), Some("invalid resume position"));
    server.stop().await;
}

#[tokio::test]
async fn offline_notices_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let ui = data.path().join("no-ui");
    let server = TestServer::start(data.path(), &ui, fast).await;
    let token = server.api().register("alice").await;
    let notice =
        json!({"user": "alice", "destination": "/queue/notices", "payload": {"kept": true}});
    let (status, _) = server.api().post_as_backend("/api/publish", BACKEND_KEY, notice).await;
    assert_eq!(status, 200);
    server.stop().await;

    let server = TestServer::start(data.path(), &ui, fast).await;
    let mut client = server.client_with(&token).await;
    client.subscribe("notices", "/user/queue/notices", "auto").await;
    let frame = client.recv().await;
    assert_eq!(body(&frame), r#"{"kept":true}"#);
    assert!(frame.header("seq").is_some());
    server.stop().await;
}

/// `operation`'s count in the server's storage metrics.
async fn storage_reads(server: &TestServer, operation: &str) -> u64 {
    let (status, text) = server.api().get("/metrics", Some(SCRAPE_TOKEN)).await;
    assert_eq!(status, 200);
    let series = format!("taskpulse_storage_operation_seconds_count{{operation=\"{operation}\"}} ");
    let text = text.as_str().unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |count| count.trim().parse().unwrap())
}

const SCRAPE_TOKEN: &str = "scrape-token-0123456789";

#[tokio::test]
async fn a_subscribe_reads_storage_only_for_users_with_something_stored() {
    let data = tempfile::tempdir().unwrap();
    let ui = data.path().join("no-ui");
    let settings = |config: &mut Config| {
        fast(config);
        config.settings.metrics.token = SCRAPE_TOKEN.into();
    };
    let server = TestServer::start(data.path(), &ui, settings).await;
    let alice = server.api().register("alice").await;
    let task = server.api().submit(&alice, "kept").await;
    wait_completed(&server, &alice, &task).await;
    let notice = json!({"user": "alice", "destination": "/queue/notices", "payload": {"n": 1}});
    let (status, _) = server.api().post_as_backend("/api/publish", BACKEND_KEY, notice).await;
    assert_eq!(status, 200);
    server.stop().await;

    // After a restart, the node knows whom storage holds something for from storage itself.
    let server = TestServer::start(data.path(), &ui, settings).await;
    let bob = server.api().register("bob").await;
    let reads = || async {
        let mut total = 0;
        for operation in ["log_range", "log_after", "take_offline", "snapshot_tasks"] {
            total += storage_reads(&server, operation).await;
        }
        total
    };
    let before = reads().await;
    let mut client = server.client_with(&bob).await;
    client.subscribe("tasks", PROGRESS, "auto").await;
    client.subscribe("notices", "/user/queue/notices", "auto").await;
    assert_eq!(reads().await, before, "a user with nothing stored costs no storage read");
    // Nothing was missed either: bob's first push, after his SUBSCRIBE, comes live.
    let notice = json!({"user": "bob", "destination": "/queue/notices", "payload": {"n": 1}});
    let (status, answer) = server.api().post_as_backend("/api/publish", BACKEND_KEY, notice).await;
    assert_eq!((status, answer["delivered"].as_u64()), (200, Some(1)), "{answer}");
    let frame = client.recv().await;
    assert_eq!((body(&frame), seq(&frame)), (r#"{"n":1}"#, 1));

    // Alice's SUBSCRIBEs read storage: her snapshot and her offline notice.
    let mut client = server.client_with(&alice).await;
    client.subscribe("tasks", PROGRESS, "auto").await;
    let snapshot = client.recv().await;
    assert_eq!(snapshot.header("x-snapshot"), Some("1/1"));
    assert_eq!(update(&snapshot).task_no, task);
    client.subscribe("notices", "/user/queue/notices", "auto").await;
    assert_eq!(body(&client.recv().await), r#"{"n":1}"#);
    assert!(reads().await > before);
    server.stop().await;
}
