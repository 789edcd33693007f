//! The `json-broadcast` scenario: fan-out to subscribers of the JSON protocol (`/ws/json`,
//! a bare WebSocket), published by one STOMP client, beside the STOMP `broadcast` scenario
//! with the same sizes as its yardstick in the same run.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use taskpulse_testkit::{Socket, token};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    Args, Seen, TOKEN_TTL_S, join_readers, now_ns, open_many, publish, report, server_cpu,
};

const TOPIC: &str = "/topic/bench.broadcast";

/// Opens a JSON-protocol connection for `token`, subscribed to [`TOPIC`].
async fn open(url: &str, token: &str) -> Result<Socket, String> {
    let (mut socket, _) =
        tokio_tungstenite::connect_async(url).await.map_err(|e| format!("connect: {e}"))?;
    for message in
        [json!({"type": "auth", "token": token}), json!({"type": "subscribe", "channels": [TOPIC]})]
    {
        socket.send(Message::text(message.to_string())).await.map_err(|e| e.to_string())?;
    }
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .map_err(|_| "no answer to subscribe".to_owned())?;
        let Some(Ok(Message::Text(text))) = next else { return Err("closed".into()) };
        let answer: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        match answer["type"].as_str() {
            Some("subscribed") => return Ok(socket),
            Some("auth_success") => {}
            _ => return Err(format!("refused: {answer}")),
        }
    }
}

/// Reads `chat_message`s whose content is `seq:sent_ns:padding` until `expected` arrived.
async fn consume(
    mut socket: Socket,
    expected: u64,
    epoch: std::time::Instant,
    deadline: Instant,
) -> Seen {
    let mut seen = Seen::default();
    let mut last: Option<u64> = None;
    while seen.received < expected {
        let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, socket.next()).await else {
            break;
        };
        let Message::Text(text) = message else { continue };
        let arrived = now_ns(epoch);
        let Ok(value) = serde_json::from_str::<Value>(&text) else { break };
        seen.record(value["content"].as_str().unwrap_or(""), arrived, &mut last);
    }
    seen
}

/// `subscribers` JSON subscribers x `messages` publications.
pub(crate) async fn broadcast(args: &Args) {
    let url = format!("{}/json", args.url.trim_end_matches('/'));
    let (subscribers, messages) = (args.subscribers, args.messages as u64);
    let mut subs = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        match open(&url, &token(&args.secret, &format!("jsub{i}"), TOKEN_TTL_S)).await {
            Ok(socket) => subs.push(socket),
            Err(e) => eprintln!("JSON subscriber {i}: {e}"),
        }
    }
    let (mut publisher, _) = open_many(&args.url, &args.secret, |_| "bench".into(), 1, 1).await;
    let publisher = publisher.pop().expect("publisher connected");
    let epoch = std::time::Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    let readers: Vec<_> =
        subs.into_iter().map(|s| tokio::spawn(consume(s, messages, epoch, deadline))).collect();
    let started = std::time::Instant::now();
    let cpu_start = server_cpu();
    tokio::spawn(publish(publisher, messages, 0, 1, |_| TOPIC.into(), None, epoch));
    let seen = join_readers(readers).await;
    let expected = vec![messages; seen.len().max(subscribers)];
    report(
        &format!("json broadcast ({subscribers} subscribers x {messages} messages)"),
        seen,
        &expected,
        started.elapsed(),
        cpu_start,
    );
}
