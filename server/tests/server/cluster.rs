//! Three nodes on loopback sharing a throw-away PostgreSQL and a throw-away redis-server:
//! what one node makes reaches the sessions of the others (task updates, notices, topics,
//! revocations, operator disconnects, share links), and a user's numbered messages from two
//! publishing nodes arrive in `seq` order, none missing, on a third.

use std::time::Duration;

use serde_json::{Value, json};
use taskpulse_shared::{TaskStatus, resume::TASKS_DESTINATION, stomp::Command};
use taskpulse_testkit::{Redis, RedisCluster};

use crate::fixture::{
    Api, PATIENCE, Postgres, Process, StompClient, TEST_SECRET, TestServer, body, spawn_with,
};

const BACKEND_KEY: &str = "cluster-tests-backend-key";

/// Three nodes on one database and one Redis (and the two kept alive as long as they are).
struct Cluster {
    nodes: Vec<TestServer>,
    redis: Redis,
    database: String,
    _postgres: Postgres,
}

async fn cluster() -> Cluster {
    cluster_with(|_| {}).await
}

async fn cluster_with(tweak: impl Fn(&mut taskpulse_server::Config)) -> Cluster {
    let redis = Redis::start().unwrap();
    let (nodes, database, postgres) = nodes_on(&redis.url(), tweak).await;
    Cluster { nodes, redis, database, _postgres: postgres }
}

/// Three nodes on the bus at `redis_url` and a fresh PostgreSQL database.
async fn nodes_on(
    redis_url: &str,
    tweak: impl Fn(&mut taskpulse_server::Config),
) -> (Vec<TestServer>, String, Postgres) {
    let postgres = Postgres::start().unwrap();
    let database = postgres.fresh_database().unwrap();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let (url, redis_url) = (database.clone(), redis_url.to_owned());
        nodes.push(
            TestServer::stomp(|config| {
                config.settings.storage.url = url;
                config.settings.cluster.redis_url = redis_url;
                config.settings.api.keys = vec![BACKEND_KEY.into()];
                config.settings.demo.duration_ms = 600;
                config.settings.demo.steps = 4;
                config.settings.tasks.progress_interval_ms = 0;
                tweak(config);
            })
            .await,
        );
    }
    (nodes, database, postgres)
}

impl Cluster {
    /// A fourth node, as a process to kill or pause, with `env` beside the cluster's own
    /// settings (and the directory it keeps its data in).
    fn process_node(&self, env: &[(&str, &str)]) -> (Process, tempfile::TempDir) {
        let data = tempfile::tempdir().unwrap();
        let redis_url = self.redis.url();
        let mut settings = vec![
            ("TASKPULSE_JWT_SECRET", TEST_SECRET),
            ("TASKPULSE_STORAGE_URL", self.database.as_str()),
            ("TASKPULSE_CLUSTER_REDIS_URL", redis_url.as_str()),
        ];
        settings.extend_from_slice(env);
        (spawn_with(data.path(), &settings), data)
    }

    async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
    }
}

#[tokio::test]
async fn what_one_node_makes_reaches_the_sessions_of_the_others() {
    let cluster = cluster().await;
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let alice = a.api().register("alice").await;

    // Every session of the user, on every node, follows a task submitted on another.
    let mut on_a = a.client_with(&alice).await;
    on_a.subscribe("tasks", TASKS_DESTINATION, "auto").await;
    let mut on_c = c.client_with(&alice).await;
    on_c.subscribe("tasks", TASKS_DESTINATION, "auto").await;
    let task = b.api().submit(&alice, "a lighthouse").await;
    for (node, client) in [("a", &mut on_a), ("c", &mut on_c)] {
        let seen = client.updates_until_done(&task).await;
        let statuses: Vec<TaskStatus> = seen.iter().map(|u| u.status).collect();
        assert_eq!(statuses.last(), Some(&TaskStatus::Completed), "node {node}: {statuses:?}");
        let rank = |s: &TaskStatus| TaskStatus::ALL.iter().position(|a| a == s);
        assert!(
            statuses.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
            "node {node}: in order: {statuses:?}"
        );
    }

    // A backend's notice through one node reaches the user on another.
    let notice = json!({"user": "alice", "destination": "/queue/notices", "payload": {"n": 1}});
    // (Alice's channel is subscribed on node a already: her tasks subscription.)
    let mut notices = a.client_with(&alice).await;
    notices.subscribe("n", "/user/queue/notices", "auto").await;
    let (status, answer) = c.api().post_as_backend("/api/publish", BACKEND_KEY, notice).await;
    assert_eq!(status, 200, "{answer}");
    let message = notices.recv().await;
    assert_eq!(body(&message), r#"{"n":1}"#);

    // Topics: a backend's publication and a client's SEND, each from one node to the others.
    // A SUBSCRIBE's receipt comes once the node's bus subscription is in place, so what is
    // published after it arrives.
    let bob = b.token("bob");
    let mut bob_on_b = b.client_with(&bob).await;
    bob_on_b.subscribe("news", "/topic/news", "auto").await;
    let mut carol_on_c = c.client_with(&c.token("carol")).await;
    carol_on_c.subscribe("news", "/topic/news", "auto").await;
    let news = json!({"destination": "/topic/news", "payload": {"headline": "up"}});
    let (status, _) = a.api().post_as_backend("/api/publish", BACKEND_KEY, news).await;
    assert_eq!(status, 200);
    for client in [&mut bob_on_b, &mut carol_on_c] {
        assert_eq!(body(&client.recv().await), r#"{"headline":"up"}"#);
    }
    for client in [&mut bob_on_b, &mut carol_on_c] {
        client.subscribe("chat", "/topic/chat.room", "auto").await;
    }
    let mut dave_on_a = a.client_with(&a.token("dave")).await;
    dave_on_a.send_to("/topic/chat.room", "from a client on a").await;
    for client in [&mut bob_on_b, &mut carol_on_c] {
        let message = client.recv().await;
        assert_eq!(body(&message), "from a client on a");
        assert_eq!(message.header("x-sender"), Some("dave"), "{message:?}");
    }

    // A share link made on one node opens on another, and its revocation on a third ends it.
    let path = format!("/api/tasks/{task}/share");
    let (status, link) = a.api().post(&path, Some(&alice), json!({})).await;
    assert_eq!(status, 201, "{link}");
    let token = link["token"].as_str().unwrap();
    // The link reaches node c over the control channel; a moment for it to arrive.
    let mut tries = 0;
    while c.api().get(&format!("/api/shared?token={token}"), None).await.0 != 200 {
        tries += 1;
        assert!(tries < 500, "the link never reached node c");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut watcher = StompClient::open(&c.ws_url(), &["v12.stomp"]).await;
    let answer = watcher.connect(&[("accept-version", "1.2"), ("share", token)]).await;
    assert_eq!(answer.command, Command::Connected, "{answer:?}");
    watcher.subscribe("t", TASKS_DESTINATION, "auto").await;
    let state: Value = serde_json::from_slice(&watcher.recv().await.body).unwrap();
    assert_eq!(state["status"], "completed");
    let (status, _) = b.api().delete(&path, Some(&alice)).await;
    assert_eq!(status, 204);
    assert_eq!(watcher.expect_error().await.header("message"), Some("disconnected"));

    // An operator's disconnect on one node closes the user's sessions on the others.
    let (status, answer) = c
        .api()
        .post_as_backend("/api/admin/disconnect", BACKEND_KEY, json!({"user": "dave"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(dave_on_a.expect_error().await.header("message"), Some("disconnected"));

    // Signing out on one node revokes the token on all.
    let (status, _) = b.api().post("/api/auth/logout", Some(&alice), json!({})).await;
    assert_eq!(status, 204);
    for client in [&mut on_a, &mut on_c] {
        assert_eq!(client.expect_error().await.header("message"), Some("token revoked"));
    }
    let refused = StompClient::try_signed_in(&a.ws_url(), &alice).await;
    assert!(refused.is_err(), "the revoked token is refused on every node");
    cluster.stop().await;
}

#[tokio::test]
async fn a_users_numbered_messages_from_two_nodes_arrive_in_order_on_a_third() {
    let cluster = cluster().await;
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let alice = a.api().register("alice").await;
    let mut on_c = c.client_with(&alice).await;
    on_c.subscribe("tasks", TASKS_DESTINATION, "auto").await;

    // Two nodes publish for one user at once: storage numbers them in one order, and each
    // node sends what it stored as soon as it committed.
    const EACH: usize = 300;
    let batch = |node: &str| {
        Value::Array(
            (0..EACH)
                .map(|i| {
                    json!({"user": "alice", "destination": "/queue/tasks-progress",
                           "payload": {"from": node, "i": i}})
                })
                .collect(),
        )
    };
    let (api_a, api_b) = (a.api(), b.api());
    let (from_a, from_b) = (batch("a"), batch("b"));
    let publish_a = async {
        for chunk in from_a.as_array().unwrap().chunks(20) {
            let (status, answer) = api_a
                .post_as_backend("/api/publish", BACKEND_KEY, Value::Array(chunk.to_vec()))
                .await;
            assert_eq!(status, 200, "{answer}");
        }
    };
    let publish_b = async {
        for chunk in from_b.as_array().unwrap().chunks(20) {
            let (status, answer) = api_b
                .post_as_backend("/api/publish", BACKEND_KEY, Value::Array(chunk.to_vec()))
                .await;
            assert_eq!(status, 200, "{answer}");
        }
    };
    tokio::join!(publish_a, publish_b);

    let mut seqs = Vec::new();
    let mut per_node = std::collections::HashMap::<String, Vec<i64>>::new();
    while seqs.len() < 2 * EACH {
        let message = on_c.recv().await;
        assert_eq!(message.command, Command::Message, "{message:?}");
        if message.header("x-snapshot").is_some() {
            continue;
        }
        let seq: i64 = message.header("seq").and_then(|s| s.parse().ok()).expect("numbered");
        let payload: Value = serde_json::from_slice(&message.body).unwrap();
        per_node
            .entry(payload["from"].as_str().unwrap().to_owned())
            .or_default()
            .push(payload["i"].as_i64().unwrap());
        seqs.push(seq);
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "every number once, in order: {seqs:?}");
    for (node, order) in per_node {
        assert_eq!(order, (0..EACH as i64).collect::<Vec<_>>(), "node {node}'s in its order");
    }
    on_c.expect_nothing(Duration::from_millis(300)).await;
    cluster.stop().await;
}

#[tokio::test]
async fn a_redis_outage_loses_nothing_numbered() {
    let mut cluster = cluster().await;
    let alice = cluster.nodes[0].api().register("alice").await;
    let mut on_a = cluster.nodes[0].client_with(&alice).await;
    on_a.subscribe("tasks", TASKS_DESTINATION, "auto").await;
    let notice = |n: i64| json!({"user": "alice", "destination": "/queue/tasks-progress", "payload": {"n": n}});
    let publish = |node: usize, n: i64| {
        let api = cluster.nodes[node].api();
        async move {
            let (status, answer) =
                api.post_as_backend("/api/publish", BACKEND_KEY, notice(n)).await;
            assert_eq!(status, 200, "{answer}");
        }
    };
    publish(1, 1).await;
    assert_eq!(body(&on_a.recv().await), r#"{"n":1}"#);

    cluster.redis.stop();
    let readiness = |node: usize| {
        let api = cluster.nodes[node].api();
        async move { api.get("/readyz", None).await }
    };
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, answer) = readiness(0).await;
        if status == 503 {
            assert!(answer["reason"].as_str().unwrap().starts_with("bus:"), "{answer}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "readyz never noticed: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stored while the bus is down: node b cannot tell node a.
    publish(1, 2).await;
    publish(1, 3).await;
    on_a.expect_nothing(Duration::from_millis(300)).await;

    cluster.redis.start_again().unwrap();
    for n in 2..=3 {
        let message = on_a.recv().await;
        assert_eq!(body(&message), format!(r#"{{"n":{n}}}"#), "read from storage after the outage");
    }
    loop {
        if readiness(0).await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And live again, across nodes.
    publish(2, 4).await;
    assert_eq!(body(&on_a.recv().await), r#"{"n":4}"#);
    cluster.stop().await;
}

/// A new user's session following her tasks on the first node, and a task of hers
/// submitted to `node` and seen `processing`.
async fn processing_on(cluster: &Cluster, node: &Process) -> (StompClient, String) {
    let alice = cluster.nodes[0].api().register("alice").await;
    let mut on_a = cluster.nodes[0].client_with(&alice).await;
    on_a.subscribe("tasks", TASKS_DESTINATION, "auto").await;
    let task = Api::new(node.addr).submit(&alice, "a lighthouse").await;
    loop {
        let update: Value = serde_json::from_slice(&on_a.recv().await.body).unwrap();
        if update["taskNo"] == task.as_str() && update["status"] == "processing" {
            return (on_a, task);
        }
    }
}

#[tokio::test]
async fn a_dead_nodes_task_is_taken_over_by_another_and_ends() {
    let cluster = cluster_with(|config| config.settings.cluster.lease_s = 3).await;
    // A fourth node, as a process to kill: its demo tasks take 30 s.
    let (mut doomed, _data) = cluster.process_node(&[
        ("TASKPULSE_CLUSTER_LEASE_S", "3"),
        ("TASKPULSE_DEMO_DURATION_MS", "30000"),
        ("TASKPULSE_DEMO_STEPS", "30"),
    ]);
    let (mut on_a, task) = processing_on(&cluster, &doomed).await;
    doomed.kill();

    // Its lease runs out within 3 s; a node that renews every second takes the task over
    // and runs it again.
    let seen = on_a.updates_until_done(&task).await;
    assert_eq!(seen.last().unwrap().status, TaskStatus::Completed, "{seen:#?}");
    assert!(
        seen.iter().any(|u| u.message.contains("another will run it again")),
        "the take-over is told: {seen:#?}"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn cancel_and_worker_reports_reach_the_node_that_runs_the_task() {
    let cluster = cluster().await;
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let alice = a.api().register("alice").await;
    let mut on_b = b.client_with(&alice).await;
    on_b.subscribe("tasks", TASKS_DESTINATION, "auto").await;
    let submit = |node: &TestServer| {
        let (api, alice) = (node.api(), alice.clone());
        async move {
            let body = json!({"kind": "external", "description": "export"});
            let (status, answer) = api.post("/api/tasks", Some(&alice), body).await;
            assert_eq!(status, 202, "{answer}");
            answer["taskNo"].as_str().unwrap().to_owned()
        }
    };
    // An external task lives on the node it was submitted to (a); its worker reports
    // through another (c), and a bad report is refused with that node's answer.
    let task = submit(a).await;
    let progress = format!("/api/tasks/{task}/progress");
    for (report, expected) in [
        (json!({"status": "processing", "progress": 10, "message": "rows 1-100"}), 200),
        (json!({"progress": 101}), 400),
        (json!({"progress": 60, "message": "rows 101-600"}), 200),
    ] {
        let (status, answer) =
            c.api().post_as_backend(&progress, BACKEND_KEY, report.clone()).await;
        assert_eq!(status, expected, "{report} -> {answer}");
        if expected == 400 {
            assert_eq!(answer["field"], "progress", "{answer}");
        }
    }
    // Its owner cancels it through a third node (b).
    let (status, answer) =
        b.api().post(&format!("/api/tasks/{task}/cancel"), Some(&alice), json!({})).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("failed")), "{answer}");
    let seen = on_b.updates_until_done(&task).await;
    assert!(seen.iter().any(|u| u.progress == 60), "{seen:#?}");
    assert_eq!(seen.last().unwrap().error_message.as_deref(), Some("cancelled"));
    let (status, _) =
        c.api().post(&format!("/api/tasks/{task}/cancel"), Some(&alice), json!({})).await;
    assert_eq!(status, 409, "once");
    cluster.stop().await;
}

#[tokio::test]
async fn the_per_user_connection_limit_counts_every_node_and_stats_show_each() {
    let cluster = cluster_with(|config| config.settings.limits.connections_per_user = 2).await;
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let token = a.token("alice");
    let stats = || async {
        let response = reqwest::Client::new()
            .get(c.api().url("/api/admin/stats"))
            .header("x-api-key", BACKEND_KEY)
            .send()
            .await
            .unwrap();
        response.json::<Value>().await.unwrap()
    };
    // Each node hears the others' counts on the bus; wait until c sees both connections.
    let first = a.client_with(&token).await;
    let second = b.client_with(&token).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let seen = stats().await;
        let nodes = seen["cluster"]["nodes"].as_array().cloned().unwrap_or_default();
        if nodes.len() == 3 && seen["cluster"]["connections"] == 2 {
            assert_eq!(nodes[0]["node"], seen["cluster"]["node"], "this node first: {seen}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{seen}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = StompClient::try_signed_in(&c.ws_url(), &token).await;
    let error = refused.err().expect("a third connection anywhere is refused").to_string();
    assert!(error.contains("too many connections"), "{error}");

    // One closes; the room it leaves is seen on the others.
    drop(first);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if StompClient::try_signed_in(&c.ws_url(), &token).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the closed connection still counts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(second);
    cluster.stop().await;
}

/// Receives the next message of `client` and ACKs it (client-individual).
async fn take(client: &mut StompClient) -> taskpulse_shared::stomp::Frame {
    let message = client.recv().await;
    let ack = message.header("ack").expect("a client-individual delivery").to_owned();
    client.frame(Command::Ack, &[("id", &ack)], "").await;
    message
}

#[tokio::test]
async fn queues_share_their_messages_between_consumers_on_every_node() {
    let cluster = cluster_with(|config| {
        config.settings.limits.unacked_per_subscription = 1;
        config.settings.stomp.queue_pending = 8;
    })
    .await;
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let mut on_a = a.client_with(&a.token("worker-a")).await;
    on_a.subscribe("jobs", "/queue/jobs", "client-individual").await;
    let mut on_b = b.client_with(&b.token("worker-b")).await;
    on_b.subscribe("jobs", "/queue/jobs", "client-individual").await;
    let mut producer = c.client_with(&c.token("producer")).await;
    for n in 0..6 {
        producer.send_to("/queue/jobs", &format!("job {n}")).await;
    }
    // The RECEIPT of a SEND to a queue comes once the shared store has the message.
    producer
        .frame(Command::Send, &[("destination", "/queue/jobs"), ("receipt", "stored")], "job 6")
        .await;
    assert_eq!(producer.recv().await.header("receipt-id"), Some("stored"));

    // Each consumer may hold one unacknowledged message, so each node takes one at a time:
    // the two share the seven, each exactly once.
    let (first_a, first_b) = (take(&mut on_a).await, take(&mut on_b).await);
    assert_eq!(first_a.header("destination"), Some("/queue/jobs"), "{first_a:?}");
    let mut seen = vec![body(&first_a).to_owned(), body(&first_b).to_owned()];
    while seen.len() < 7 {
        for client in [&mut on_a, &mut on_b] {
            if let Some(message) = client.try_recv(Duration::from_millis(100)).await {
                let ack = message.header("ack").unwrap().to_owned();
                client.frame(Command::Ack, &[("id", &ack)], "").await;
                seen.push(body(&message).to_owned());
            }
        }
    }
    seen.sort();
    let sent: Vec<String> = (0..7).map(|n| format!("job {n}")).collect();
    assert_eq!(seen, sent, "every message once, across the nodes");
    on_a.expect_nothing(Duration::from_millis(300)).await;
    on_b.expect_nothing(Duration::from_millis(300)).await;

    // NACKed with no other consumer on its node: back to the store, and out again marked
    // redelivered, with its message-id.
    let order = json!({"destination": "/queue/jobs", "payload": {"order": 1}});
    let (status, answer) = c.api().post_as_backend("/api/publish", BACKEND_KEY, order).await;
    assert_eq!(status, 200, "{answer}");
    let mut workers = [on_a, on_b];
    let (holder, first) = either(&mut workers).await;
    assert_eq!(body(&first), r#"{"order":1}"#);
    workers[holder].frame(Command::Nack, &[("id", first.header("ack").unwrap())], "").await;
    let (holder, again) = either(&mut workers).await;
    assert_eq!(body(&again), r#"{"order":1}"#);
    assert_eq!(again.header("redelivered"), Some("true"), "{again:?}");
    assert_eq!(again.header("message-id"), first.header("message-id"));

    // Its consumer leaves without acknowledging it: the consumer on the other node gets it.
    let [x, y] = workers;
    let (mut remaining, gone) = if holder == 0 { (y, x) } else { (x, y) };
    drop(gone);
    let last = take(&mut remaining).await;
    assert_eq!(body(&last), r#"{"order":1}"#);
    assert_eq!(last.header("redelivered"), Some("true"));

    // `stomp.queue_pending` holds across the nodes: messages nobody consumes fill the queue,
    // and the one too many is refused, naming the limit.
    for n in 0..8 {
        producer.send_to("/queue/nobody", &format!("{n}")).await;
    }
    producer.frame(Command::Send, &[("destination", "/queue/nobody"), ("receipt", "r")], "9").await;
    let error = producer.expect_error().await;
    assert_eq!(error.header("message"), Some("queue full"), "{error:?}");
    assert!(body(&error).contains("stomp.queue_pending"), "{error:?}");
    // They wait in the store for a consumer on any node.
    let mut late = a.client_with(&a.token("late")).await;
    late.subscribe("n", "/queue/nobody", "auto").await;
    for n in 0..8 {
        assert_eq!(body(&late.recv().await), format!("{n}"));
    }
    cluster.stop().await;
}

/// The next message of either client, and which one got it.
async fn either(clients: &mut [StompClient; 2]) -> (usize, taskpulse_shared::stomp::Frame) {
    let [x, y] = clients;
    tokio::select! {
        message = x.recv() => (0, message),
        message = y.recv() => (1, message),
    }
}

#[tokio::test]
async fn a_dead_nodes_unacknowledged_queue_messages_go_to_a_consumer_elsewhere() {
    let cluster = cluster().await;
    let [a, b] = [&cluster.nodes[0], &cluster.nodes[1]];
    // A fourth node, as a process to kill, whose consumer holds a message unacknowledged.
    let (mut doomed, _data) = cluster.process_node(&[]);
    let url = format!("ws://{}/ws", doomed.addr);
    let mut on_doomed = StompClient::try_signed_in(&url, &a.token("worker-d")).await.unwrap();
    on_doomed.subscribe("w", "/queue/work", "client-individual").await;
    let job = json!({"destination": "/queue/work", "payload": {"job": 1}});
    let (status, answer) = b.api().post_as_backend("/api/publish", BACKEND_KEY, job).await;
    assert_eq!(status, 200, "{answer}");
    let held = on_doomed.recv().await;
    assert_eq!(body(&held), r#"{"job":1}"#);
    let mut on_a = a.client_with(&a.token("worker-a")).await;
    on_a.subscribe("w", "/queue/work", "client-individual").await;
    on_a.expect_nothing(Duration::from_millis(500)).await; // the other node holds it

    // Once the killed node is gone from presence (10 s), a node that consumes the queue
    // claims what it held.
    doomed.kill();
    let message = on_a.try_recv(Duration::from_secs(40)).await.expect("the held message");
    assert_eq!(body(&message), r#"{"job":1}"#);
    assert_eq!(message.header("redelivered"), Some("true"), "{message:?}");
    assert_eq!(message.header("message-id"), held.header("message-id"));
    cluster.stop().await;
}

#[tokio::test]
async fn a_paused_node_whose_task_was_taken_over_stops_its_part_when_it_wakes() {
    let cluster = cluster_with(|config| config.settings.cluster.lease_s = 3).await;
    let (mut paused, _data) = cluster.process_node(&[
        ("TASKPULSE_CLUSTER_LEASE_S", "3"),
        ("TASKPULSE_DEMO_DURATION_MS", "60000"),
        ("TASKPULSE_DEMO_STEPS", "60"),
    ]);
    let (mut on_a, task) = processing_on(&cluster, &paused).await;
    let signal = |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &paused.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    // Paused past its lease: another node takes the task over and finishes it.
    signal("-STOP");
    let seen = on_a.updates_until_done(&task).await;
    let ends = seen.iter().filter(|u| u.status.is_terminal()).count();
    assert_eq!((seen.last().unwrap().status, ends), (TaskStatus::Completed, 1), "{seen:#?}");

    // Awake again, the paused node learns at its next renewal that the task is not its own
    // any more, and stops running it (its demo would otherwise go on for a minute).
    signal("-CONT");
    let metrics_url = format!("http://{}/metrics", paused.addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
        let running = text
            .lines()
            .find(|l| l.starts_with("taskpulse_tasks{") && l.contains("status=\"processing\""));
        if running.is_some_and(|l| l.ends_with(" 0")) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still running: {running:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    on_a.expect_nothing(Duration::from_millis(500)).await;
    paused.kill();
    cluster.stop().await;
}

#[tokio::test]
async fn a_redis_cluster_carries_the_bus_on_sharded_pub_sub() {
    // Three shards: each user's, topic's and queue's channel (and queue stream) lives on its
    // slot's shard; the control channel is plain pub/sub, which reaches every node.
    let mut shards = RedisCluster::start().unwrap();
    let (nodes, _, _postgres) =
        nodes_on(&shards.url(), |config| config.settings.cluster.sharded = true).await;
    let [a, b, c] = [&nodes[0], &nodes[1], &nodes[2]];
    let alice = a.api().register("alice").await;
    let mut on_a = a.client_with(&alice).await;
    on_a.subscribe("tasks", TASKS_DESTINATION, "auto").await;
    let mut on_c = c.client_with(&alice).await;
    on_c.subscribe("tasks", TASKS_DESTINATION, "auto").await;
    let task = b.api().submit(&alice, "a lighthouse").await;
    for client in [&mut on_a, &mut on_c] {
        let seen = client.updates_until_done(&task).await;
        assert_eq!(seen.last().map(|u| u.status), Some(TaskStatus::Completed), "{seen:#?}");
    }

    // Topics over several shards.
    let mut bob_on_b = b.client_with(&b.token("bob")).await;
    let mut carol_on_c = c.client_with(&c.token("carol")).await;
    let topics = ["/topic/news", "/topic/sport", "/topic/weather", "/topic/chat.room"];
    for topic in topics {
        bob_on_b.subscribe(topic, topic, "auto").await;
        carol_on_c.subscribe(topic, topic, "auto").await;
    }
    for topic in topics {
        let news = json!({"destination": topic, "payload": {"on": topic}});
        let (status, _) = a.api().post_as_backend("/api/publish", BACKEND_KEY, news).await;
        assert_eq!(status, 200);
        for client in [&mut bob_on_b, &mut carol_on_c] {
            let message = client.recv().await;
            assert_eq!(message.header("destination"), Some(topic));
        }
    }

    // A queue: its stream and its notices on its shard.
    let mut worker = a.client_with(&a.token("worker")).await;
    worker.subscribe("w", "/queue/work", "client-individual").await;
    let mut producer = c.client_with(&c.token("producer")).await;
    producer
        .frame(Command::Send, &[("destination", "/queue/work"), ("receipt", "stored")], "job")
        .await;
    assert_eq!(producer.recv().await.header("receipt-id"), Some("stored"));
    assert_eq!(body(&take(&mut worker).await), "job");

    // The channels are spread over the shards, each on one.
    let channels = shards.shard_channels();
    let all: Vec<&String> = channels.iter().flatten().collect();
    assert!(all.iter().any(|c| *c == "taskpulse:user:{alice}"), "{channels:?}");
    assert!(all.iter().any(|c| *c == "taskpulse:topic:{/topic/news}"), "{channels:?}");
    assert!(all.iter().any(|c| *c == "taskpulse:queue:{/queue/work}"), "{channels:?}");
    assert!(channels.iter().filter(|c| !c.is_empty()).count() >= 2, "{channels:?}");

    // The shard that carries alice's channel dies: what is stored meanwhile reaches her
    // once it is back (the subscription comes back by itself, then the log is read).
    let notice = |n: i64| json!({"user": "alice", "destination": "/queue/tasks-progress", "payload": {"n": n}});
    let shard = channels.iter().position(|c| c.iter().any(|c| c == "taskpulse:user:{alice}"));
    let shard = shard.unwrap();
    shards.stop_shard(shard);
    for n in 1..=2 {
        let (status, answer) =
            b.api().post_as_backend("/api/publish", BACKEND_KEY, notice(n)).await;
        assert_eq!(status, 200, "{answer}");
    }
    // (Blocking: it waits for the cluster to be whole again.)
    let shards = tokio::task::spawn_blocking(move || {
        shards.start_shard_again(shard).unwrap();
        shards
    })
    .await
    .unwrap();
    for client in [&mut on_a, &mut on_c] {
        for n in 1..=2 {
            let message = client.try_recv(Duration::from_secs(30)).await.expect("after the outage");
            assert_eq!(body(&message), format!(r#"{{"n":{n}}}"#));
        }
    }

    // Queues work again too (whichever shard their stream is on).
    for queue in ["/queue/work", "/queue/other", "/queue/third"] {
        if queue != "/queue/work" {
            worker.subscribe(queue, queue, "client-individual").await;
        }
        let send = [("destination", queue), ("receipt", "again")];
        producer.frame(Command::Send, &send, "after the outage").await;
        assert_eq!(producer.recv().await.header("receipt-id"), Some("again"));
        assert_eq!(body(&take(&mut worker).await), "after the outage");
    }

    // The control channel: signing out on one node revokes the token on the others.
    let (status, _) = b.api().post("/api/auth/logout", Some(&alice), json!({})).await;
    assert_eq!(status, 204);
    for client in [&mut on_a, &mut on_c] {
        assert_eq!(client.expect_error().await.header("message"), Some("token revoked"));
    }
    for node in nodes {
        node.stop().await;
    }
    drop(shards);
}

#[tokio::test]
async fn only_a_notice_nobody_listens_to_on_any_node_waits_for_the_next_subscribe() {
    let cluster = cluster().await;
    let [a, b, c] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let alice = a.api().register("alice").await;
    let notice =
        |n: i64| json!({"user": "alice", "destination": "/queue/notices", "payload": {"n": n}});
    let mut on_a = a.client_with(&alice).await;
    on_a.subscribe("n", "/user/queue/notices", "auto").await;
    // Who listens where travels on the bus, as presence does: a moment for b to hear it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, answer) = b.api().post_as_backend("/api/publish", BACKEND_KEY, notice(1)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(body(&on_a.recv().await), r#"{"n":1}"#);
    // Delivered on a, so not queued as missed: a new session elsewhere does not get it again.
    let mut on_c = c.client_with(&alice).await;
    on_c.subscribe("n", "/user/queue/notices", "auto").await;
    on_c.expect_nothing(Duration::from_millis(300)).await;

    // Nobody listens anywhere: the notice waits for the next plain SUBSCRIBE, on any node.
    drop((on_a, on_c));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, answer) = b.api().post_as_backend("/api/publish", BACKEND_KEY, notice(2)).await;
    assert_eq!(status, 200, "{answer}");
    let mut later = c.client_with(&alice).await;
    later.subscribe("n", "/user/queue/notices", "auto").await;
    assert_eq!(body(&later.recv().await), r#"{"n":2}"#);
    later.expect_nothing(Duration::from_millis(300)).await;
    cluster.stop().await;
}
