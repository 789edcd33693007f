//! Share links against the real server: the owner makes and revokes them; whoever holds one
//! watches that one task (REST, STOMP with the CONNECT header `share`, SSE) without an
//! account, sees nothing else of the owner's, and is disconnected when the link ends.

use std::time::Duration;

use serde_json::{Value, json};
use taskpulse_shared::{TaskProgressDto, TaskStatus, resume::TASKS_DESTINATION, stomp::Command};

use crate::{
    fixture::{StompClient, TestServer},
    sse::EventStream,
};

/// Tasks long enough to be watched while they run.
fn watchable(config: &mut taskpulse_server::Config) {
    config.settings.demo.duration_ms = 1_500;
    config.settings.demo.steps = 6;
    config.settings.demo.concurrency = 4;
    config.settings.tasks.progress_interval_ms = 0;
    config.settings.api.keys = vec![BACKEND_KEY.into()];
}

const BACKEND_KEY: &str = "share-tests-backend-key";

/// A STOMP connection that CONNECTs with a share link's token; the answer frame.
async fn watcher(
    server: &TestServer,
    token: &str,
) -> (StompClient, taskpulse_shared::stomp::Frame) {
    let mut client = StompClient::open(&server.ws_url(), &["v12.stomp"]).await;
    let answer =
        client.connect(&[("accept-version", "1.2"), ("heart-beat", "0,0"), ("share", token)]).await;
    (client, answer)
}

async fn share_stream(server: &TestServer, token: &str) -> reqwest::Response {
    let url = format!("http://{}/sse/share?token={token}", server.addr);
    reqwest::get(url).await.expect("the server answers")
}

#[tokio::test]
async fn a_share_link_shows_one_task_live_to_anyone_until_it_is_revoked() {
    let server = TestServer::stomp(watchable).await;
    let api = server.api();
    let alice = api.register("alice").await;
    let bob = api.register("bob").await;
    let shared = api.submit(&alice, "a lighthouse").await;

    // Only the owner shares, and only with a token.
    let path = format!("/api/tasks/{shared}/share");
    let (status, answer) = api.post(&path, Some(&bob), json!({})).await;
    assert_eq!(status, 404, "another user's task stays invisible: {answer}");
    let (status, _) = api.post(&path, None, json!({})).await;
    assert_eq!(status, 401);
    let (status, link) = api.post(&path, Some(&alice), json!({})).await;
    assert_eq!(status, 201, "{link}");
    let token = link["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 64, "{link}");
    assert_eq!(link["url"], format!("/share#{token}"), "the token stays in the fragment");
    assert!(link["createdAt"].as_i64().is_some_and(|at| at > 0), "{link}");
    let (_, details) = api.get(&format!("/api/tasks/{shared}"), Some(&alice)).await;
    assert_eq!(details["shared"], true, "the owner's view says it is shared: {details}");

    // REST: the task's current state, no account; a wrong token is named.
    let (status, now) = api.get(&format!("/api/shared?token={token}"), None).await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(now["taskNo"], shared.as_str());
    let (status, why) = api.get("/api/shared?token=guess", None).await;
    assert_eq!(status, 404);
    assert!(why["error"].as_str().unwrap().contains("share link"), "{why}");
    let (status, why) = api.get("/api/shared", None).await;
    assert_eq!((status, why["field"].as_str()), (400, Some("token")), "{why}");
    let (status, why) = api.get("/sse/share", None).await;
    assert_eq!((status, why["field"].as_str()), (400, Some("token")), "{why}");

    // STOMP: the watcher may subscribe to its task and nothing else; it cannot SEND.
    let (mut refused, answer) = watcher(&server, &token).await;
    assert_eq!(answer.command, Command::Connected, "{answer:?}");
    refused.frame(Command::Subscribe, &[("id", "t"), ("destination", "/topic/news")], "").await;
    let error = refused.expect_error().await;
    assert_eq!(error.header("message"), Some("not allowed"), "{error:?}");
    let (mut sender, _) = watcher(&server, &token).await;
    sender.send_to("/topic/news", "hello").await;
    assert_eq!(sender.expect_error().await.header("message"), Some("not allowed"));

    let (mut stomp, _) = watcher(&server, &token).await;
    stomp.subscribe("tasks", TASKS_DESTINATION, "auto").await;
    let mut sse = EventStream::new(share_stream(&server, &token).await);
    // The owner's other work, while the watchers watch: a task and a notice.
    let mut owner = server.client_with(&alice).await;
    owner.subscribe("tasks", TASKS_DESTINATION, "auto").await;
    let private = api.submit(&alice, "a private harbour").await;
    // A backend's notice on the owner's tasks destination, even one that names the shared
    // task, is the owner's alone.
    let payload =
        json!({"taskNo": shared, "status": "processing", "progress": 1, "message": "private"});
    let notice =
        json!({"user": "alice", "destination": "/queue/tasks-progress", "payload": payload});
    let (status, answer) = api.post_as_backend("/api/publish", BACKEND_KEY, notice).await;
    assert_eq!(status, 200, "{answer}");

    let seen = stomp.updates_until_done(&shared).await;
    assert_eq!(seen.last().unwrap().status, TaskStatus::Completed, "{seen:#?}");
    assert!(seen.iter().all(|u| u.message != "private"), "{seen:#?}");
    let streamed = sse.until_done(&shared).await;
    assert_eq!(streamed.last().unwrap().1.status, TaskStatus::Completed, "{streamed:?}");
    assert!(streamed.iter().all(|(_, u)| u.message != "private"), "{streamed:?}");
    // The owner sees both tasks end and the notice; the watchers see none of it.
    owner.updates_until_done(&private).await;
    let owned = owner.updates_until_done(&shared).await;
    assert!(owned.iter().any(|u| u.message == "private"), "the owner got the notice");
    stomp.expect_nothing(Duration::from_millis(300)).await;
    let result = seen.last().unwrap().result_url.clone().expect("a result");
    let (status, content_type, _) = api.download(&result).await;
    assert_eq!(
        (status, content_type.as_deref()),
        (200, Some("image/png")),
        "the watcher sees the image"
    );

    // A reconnecting watcher starts from the task's current state.
    let (mut late, _) = watcher(&server, &token).await;
    late.subscribe("tasks", TASKS_DESTINATION, "auto").await;
    let first = late.recv().await;
    assert_eq!(first.header("x-snapshot"), Some("1/1"), "{first:?}");
    let state: TaskProgressDto = serde_json::from_slice(&first.body).unwrap();
    assert_eq!((state.task_no.as_str(), state.status), (shared.as_str(), TaskStatus::Completed));
    late.expect_nothing(Duration::from_millis(300)).await;

    // Revoking: the watchers are told and disconnected; the token opens nothing any more.
    let (status, _) = api.delete(&path, Some(&bob)).await;
    assert_eq!(status, 404, "only the owner revokes");
    let (status, _) = api.delete(&path, Some(&alice)).await;
    assert_eq!(status, 204);
    let (_, details) = api.get(&format!("/api/tasks/{shared}"), Some(&alice)).await;
    assert!(details.get("shared").is_none(), "{details}");
    let error = stomp.expect_error().await;
    assert_eq!(error.header("message"), Some("disconnected"), "{error:?}");
    assert!(String::from_utf8_lossy(&error.body).contains("revoked"), "{error:?}");
    let ended = loop {
        match sse.next().await {
            None => break None,
            Some(event) if event.event == "error" => break Some(event.data),
            Some(_) => {}
        }
    };
    assert!(ended.is_some_and(|data| data.contains("disconnected")), "the stream says why");
    assert!(sse.next().await.is_none(), "and ends");
    assert_eq!(share_stream(&server, &token).await.status(), 404);
    let (status, _) = api.get(&format!("/api/shared?token={token}"), None).await;
    assert_eq!(status, 404);
    let (_, answer) = watcher(&server, &token).await;
    assert_eq!(answer.command, Command::Error, "{answer:?}");
    let (status, why) = api.delete(&path, Some(&alice)).await;
    assert_eq!(status, 404);
    assert!(why["error"].as_str().unwrap().contains("has no share link"), "{why}");

    // Sharing again makes a new link; the one before it stops working.
    let (_, first_link) = api.post(&path, Some(&alice), json!({})).await;
    let (_, second_link) = api.post(&path, Some(&alice), json!({})).await;
    let shows = |link: &Value| format!("/api/shared?token={}", link["token"].as_str().unwrap());
    assert_eq!(api.get(&shows(&first_link), None).await.0, 404);
    assert_eq!(api.get(&shows(&second_link), None).await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn share_links_outlive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let ui = data.path().join("no-ui");
    let server = TestServer::start(data.path(), &ui, watchable).await;
    let api = server.api();
    let alice = api.register("alice").await;
    let task = api.submit(&alice, "a lighthouse").await;
    let (_, link) = api.post(&format!("/api/tasks/{task}/share"), Some(&alice), json!({})).await;
    let token = link["token"].as_str().unwrap().to_owned();
    server.stop().await;

    let server = TestServer::start(data.path(), &ui, watchable).await;
    let (mut stomp, answer) = watcher(&server, &token).await;
    assert_eq!(answer.command, Command::Connected, "{answer:?}");
    stomp.subscribe("tasks", TASKS_DESTINATION, "auto").await;
    // The task restarts after the restart (the demo executor reruns it) and ends.
    let seen = stomp.updates_until_done(&task).await;
    assert_eq!(seen.last().unwrap().status, TaskStatus::Completed, "{seen:#?}");
    server.stop().await;
}
