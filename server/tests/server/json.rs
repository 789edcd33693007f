//! The JSON protocol at `/ws/json` (a bare `WebSocket`, one JSON object per message) against
//! the real server: authentication, subscriptions with resume, task updates in the same
//! order as a STOMP client of the same user gets them, and bad input.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use taskpulse_shared::{TaskProgressDto, TaskStatus};
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

use taskpulse_shared::stomp::Command;

use crate::fixture::{PATIENCE, TestServer, body};

const BACKEND_KEY: &str = "backend-key-0123456789";

/// A bare WebSocket speaking the JSON protocol, as a browser page would.
struct JsonClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl JsonClient {
    async fn open(server: &TestServer) -> JsonClient {
        let url = format!("ws://{}/ws/json", server.addr);
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("/ws/json upgrades");
        JsonClient { socket }
    }

    async fn authenticated(server: &TestServer, token: &str) -> JsonClient {
        let mut client = JsonClient::open(server).await;
        client.send(json!({"type": "auth", "token": token})).await;
        let answer = client.recv().await;
        assert_eq!(answer["type"], "auth_success", "{answer}");
        client
    }

    async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    async fn send_text(&mut self, text: &str) {
        self.socket.send(Message::text(text)).await.expect("sent");
    }

    /// The next JSON message; `Value::Null` once the server closed.
    async fn recv(&mut self) -> Value {
        loop {
            let next = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("the server answers in time");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return serde_json::from_str(&text).expect("one JSON object per message");
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Value::Null,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Messages until one of `kind`, which is returned; the others are returned too.
    async fn until(&mut self, kind: &str) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let message = self.recv().await;
            assert!(!message.is_null(), "closed while waiting for {kind}; got {before:#?}");
            if message["type"] == kind {
                return (message, before);
            }
            before.push(message);
        }
    }

    /// `task_progress` messages of `task_no` until it ends: `(seq, update)`.
    async fn updates_until_done(&mut self, task_no: &str) -> Vec<(i64, TaskProgressDto)> {
        let mut updates = Vec::new();
        loop {
            let (message, _) = self.until("task_progress").await;
            let update: TaskProgressDto = serde_json::from_value(message["data"].clone()).unwrap();
            if update.task_no != task_no {
                continue;
            }
            let done = update.status.is_terminal();
            updates.push((message["seq"].as_i64().expect("a seq"), update));
            if done {
                return updates;
            }
        }
    }
}

fn fast(config: &mut taskpulse_server::Config) {
    config.settings.demo.duration_ms = 200;
    config.settings.demo.steps = 4;
    config.settings.tasks.progress_interval_ms = 20;
    config.settings.api.keys = vec![BACKEND_KEY.into()];
}

#[tokio::test]
async fn a_bare_websocket_follows_a_task_like_a_stomp_client_of_the_same_user() {
    let server = TestServer::stomp(fast).await;
    let api = server.api();
    let token = api.register("alice").await;
    let mut json = JsonClient::open(&server).await;
    json.send(json!({"type": "ping"})).await;
    assert_eq!(json.recv().await, json!({"type": "pong"}));
    json.send(json!({"type": "subscribe", "channels": ["tasks"]})).await;
    let refused = json.recv().await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("not-authenticated"))
    );
    json.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(json.recv().await, json!({"type": "auth_success", "user": "alice"}));
    json.send(json!({"type": "subscribe", "channels": ["tasks", "/topic/todos"]})).await;
    let mut live = Vec::new();
    while live.len() < 2 {
        let (subscribed, _) = json.until("subscribed").await;
        live.extend(subscribed["channels"].as_array().unwrap().iter().cloned());
    }
    live.sort_by_key(|c| c.to_string());
    assert_eq!(live, [json!("/topic/todos"), json!("tasks")]);

    let mut stomp = server.client_with(&token).await;
    stomp.subscribe("tasks", "/user/queue/tasks-progress", "auto").await;
    let task_no = api.submit(&token, "a lighthouse").await;
    let seen = json.updates_until_done(&task_no).await;
    let statuses: Vec<TaskStatus> = seen.iter().map(|(_, u)| u.status).collect();
    assert_eq!(statuses.first(), Some(&TaskStatus::Created));
    assert_eq!(statuses.last(), Some(&TaskStatus::Completed));
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "seq increases: {seen:?}");
    assert!(seen.last().unwrap().1.result_url.is_some());
    let over_stomp = stomp.updates_until_done(&task_no).await;
    let json_updates: Vec<&TaskProgressDto> = seen.iter().map(|(_, u)| u).collect();
    assert_eq!(json_updates, over_stomp.iter().collect::<Vec<_>>(), "the same updates, in order");

    // A backend's publication to a topic reaches the JSON client as a notification.
    let notice = json!({"destination": "/topic/todos", "payload": {"todo": 7}});
    let (status, answer) = api.post_as_backend("/api/publish", BACKEND_KEY, notice).await;
    assert_eq!(status, 200, "{answer}");
    let (notification, _) = json.until("notification").await;
    assert_eq!(
        notification,
        json!({"type": "notification", "channel": "/topic/todos", "data": {"todo": 7}})
    );

    json.send(json!({"type": "unsubscribe", "channels": ["/topic/todos", "/topic/other"]})).await;
    assert_eq!(json.recv().await, json!({"type": "unsubscribed", "channels": ["/topic/todos"]}));
    assert_eq!(json.recv().await["code"], "unknown-subscription");
    server.stop().await;
}

#[tokio::test]
async fn chat_lines_carry_their_sender_across_both_protocols() {
    let server = TestServer::stomp(fast).await;
    let mut alice = JsonClient::authenticated(&server, &server.token("alice")).await;
    let mut bob = JsonClient::authenticated(&server, &server.token("bob")).await;
    bob.send(json!({"type": "subscribe", "channels": ["/topic/chat.general"]})).await;
    bob.until("subscribed").await;
    let mut carol = server.client("carol").await;
    carol.subscribe("chat", "/topic/chat.general", "auto").await;

    alice
        .send(json!({"type": "chat_message", "channel": "/topic/chat.general", "content": "hi"}))
        .await;
    let expected = json!({"type": "chat_message", "channel": "/topic/chat.general", "from": "alice", "content": "hi"});
    assert_eq!(bob.until("chat_message").await.0, expected);
    let frame = carol.recv().await;
    assert_eq!((frame.header("x-sender"), body(&frame)), (Some("alice"), "hi"), "{frame:?}");

    // A STOMP client cannot pass itself off as someone else.
    carol
        .frame(
            Command::Send,
            &[("destination", "/topic/chat.general"), ("x-sender", "alice")],
            "it was me",
        )
        .await;
    let (line, _) = bob.until("chat_message").await;
    assert_eq!(
        (line["from"].as_str(), line["content"].as_str()),
        (Some("carol"), Some("it was me"))
    );

    // Where [authorization] does not let users send, the line is refused and nobody gets it.
    alice.send(json!({"type": "chat_message", "channel": "/topic/todos", "content": "x"})).await;
    let refused = alice.recv().await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("not-allowed")),
        "{refused}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_resuming_json_client_gets_exactly_what_it_missed() {
    let server = TestServer::stomp(fast).await;
    let api = server.api();
    let token = api.register("bob").await;
    let publish =
        |n: u32| json!({"user": "bob", "destination": "/queue/notices", "payload": {"n": n}});
    let mut first = JsonClient::authenticated(&server, &token).await;
    first.send(json!({"type": "subscribe", "channels": ["/user/queue/notices"]})).await;
    first.until("subscribed").await;
    api.post_as_backend("/api/publish", BACKEND_KEY, publish(1)).await;
    let (one, _) = first.until("notification").await;
    assert_eq!(one["data"], json!({"n": 1}));
    let (epoch, seq) = (one["epoch"].as_str().unwrap().to_owned(), one["seq"].as_i64().unwrap());
    drop(first);
    for n in 2..=3 {
        let (status, answer) = api.post_as_backend("/api/publish", BACKEND_KEY, publish(n)).await;
        assert_eq!(status, 200, "{answer}");
    }
    let mut again = JsonClient::authenticated(&server, &token).await;
    let resume = json!({"epoch": epoch, "seq": seq});
    again
        .send(json!({"type": "subscribe", "channels": ["/user/queue/notices"], "resume": resume}))
        .await;
    let (_, missed) = again.until("subscribed").await;
    let data: Vec<&Value> = missed.iter().map(|m| &m["data"]).collect();
    assert_eq!(data, [&json!({"n": 2}), &json!({"n": 3})], "{missed:#?}");
    assert!(missed.iter().all(|m| m["replayed"] == true && m["channel"] == "/user/queue/notices"));
    server.stop().await;
}

#[tokio::test]
async fn bad_messages_get_an_error_with_a_code_and_the_connection_carries_on() {
    let server = TestServer::stomp(|c| c.settings.limits.frame_size = 4096).await;
    let token = server.token("carol");
    let mut client = JsonClient::authenticated(&server, &token).await;
    for (text, code) in [
        ("not json", "malformed-message"),
        (r#"{"type":"shout"}"#, "unknown-type"),
        (r#"{"channels":["tasks"]}"#, "missing-type"),
        (r#"{"type":"subscribe","channels":"tasks"}"#, "malformed-message"),
        (r#"{"type":"auth","token":"x"}"#, "already-authenticated"),
        (
            r#"{"type":"subscribe","channels":["tasks"],"resume":{"epoch":"","seq":1}}"#,
            "invalid-resume-position",
        ),
    ] {
        client.send_text(text).await;
        let answer = client.recv().await;
        assert_eq!(
            (answer["type"].as_str(), answer["code"].as_str()),
            (Some("error"), Some(code)),
            "{text} -> {answer}"
        );
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()), "{answer}");
    }
    // Each refused channel gets its own error naming it.
    client.send(json!({"type": "subscribe", "channels": ["/app/x", "/user/dave/queue/p"]})).await;
    for channel in ["/app/x", "/user/dave/queue/p"] {
        let answer = client.recv().await;
        assert_eq!(answer["code"], "invalid-destination", "{answer}");
        assert!(answer["message"].as_str().unwrap().contains(channel), "{answer}");
    }
    client.send(json!({"type": "ping"})).await;
    assert_eq!(client.recv().await, json!({"type": "pong"}), "still open");

    // A message over limits.frame_size ends the session with an error naming the setting.
    client.send_text(&format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(8000))).await;
    let answer = client.recv().await;
    assert_eq!(answer["code"], "frame-too-large", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("limits.frame_size"), "{answer}");
    assert!(client.recv().await.is_null(), "closed");

    // A refused token gets auth_error, then the close.
    let mut stranger = JsonClient::open(&server).await;
    stranger.send(json!({"type": "auth", "token": "not-a-token"})).await;
    let answer = stranger.recv().await;
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str()),
        (Some("auth_error"), Some("authentication-failed")),
        "{answer}"
    );
    assert!(stranger.recv().await.is_null(), "closed after auth_error");

    // Nobody else noticed.
    let mut other = JsonClient::authenticated(&server, &server.token("dave")).await;
    other.send(json!({"type": "ping"})).await;
    assert_eq!(other.recv().await, json!({"type": "pong"}));
    server.stop().await;
}
