//! The STOMP broker over a real WebSocket: protocol, destinations, authentication, limits.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use taskpulse_server::broker::{AppMessage, Publication};
use taskpulse_shared::stomp::{Command, Frame, Version};
use tokio_tungstenite::tungstenite::Message;

use crate::fixture::{PATIENCE, StompClient, TEST_SECRET, TestServer, body};

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn connected_names_version_heartbeat_server_session_and_user() {
    let server = TestServer::stomp(|_| {}).await;
    let mut client =
        StompClient::open(&server.ws_url(), &["v12.stomp", "v11.stomp", "v10.stomp"]).await;
    assert_eq!(client.subprotocol.as_deref(), Some("v12.stomp"));
    let token = format!("Bearer {}", server.token("alice"));
    let connected = client
        .connect(&[("Authorization", &token), ("heart-beat", "4000,4000"), ("clientId", "tab-1")])
        .await;
    assert_eq!(connected.command, Command::Connected);
    assert_eq!(connected.header("version"), Some("1.2"));
    assert_eq!(connected.header("heart-beat"), Some("4000,4000"));
    assert!(connected.header("server").unwrap().starts_with("TaskPulse/"));
    assert!(!connected.header("session").unwrap().is_empty());
    assert_eq!(connected.header("user-name"), Some("alice"));

    // The subprotocol caps the version; without one, accept-version decides.
    let mut old = StompClient::open(&server.ws_url(), &["v11.stomp"]).await;
    assert_eq!(old.subprotocol.as_deref(), Some("v11.stomp"));
    assert_eq!(old.connect(&[("Authorization", &token)]).await.header("version"), Some("1.1"));
    let mut plain = StompClient::open(&server.ws_url(), &[]).await;
    assert_eq!(plain.subprotocol, None);
    let frame = plain.connect(&[("Authorization", &token), ("accept-version", "1.0,1.1")]).await;
    assert_eq!(frame.header("version"), Some("1.1"));
    server.stop().await;
}

#[tokio::test]
async fn heartbeats_are_clamped_to_bounds_and_zero_means_none() {
    let server = TestServer::stomp(|_| {}).await;
    let token = format!("Bearer {}", server.token("alice"));
    let mut fast = StompClient::open(&server.ws_url(), &[]).await;
    let connected = fast.connect(&[("Authorization", &token), ("heart-beat", "10,120000")]).await;
    assert_eq!(connected.header("heart-beat"), Some("60000,1000"));
    let mut none = StompClient::open(&server.ws_url(), &[]).await;
    let connected = none.connect(&[("Authorization", &token), ("heart-beat", "0,0")]).await;
    assert_eq!(connected.header("heart-beat"), Some("0,0"));
    server.stop().await;
}

#[tokio::test]
async fn server_sends_heartbeats_and_closes_a_silent_client() {
    let server = TestServer::stomp(|c| c.settings.stomp.heartbeat_min_ms = 100).await;
    let token = format!("Bearer {}", server.token("alice"));
    // Wants a heart-beat every 100 ms, promises none: the server sends, never times out.
    let mut listener = StompClient::open(&server.ws_url(), &[]).await;
    listener.connect(&[("Authorization", &token), ("heart-beat", "0,100")]).await;
    listener.expect_nothing(Duration::from_millis(550)).await;
    assert!(listener.heartbeats >= 3, "got {} heart-beats in 550 ms", listener.heartbeats);

    // Promises one every 100 ms and goes silent: ERROR after 100 ms x tolerance 2.
    let mut silent = StompClient::open(&server.ws_url(), &[]).await;
    silent.connect(&[("Authorization", &token), ("heart-beat", "100,0")]).await;
    let error = silent.expect_error().await;
    assert_eq!(error.header("message"), Some("heart-beat timeout"));

    // One that keeps sending EOLs stays.
    let mut alive = StompClient::open(&server.ws_url(), &[]).await;
    alive.connect(&[("Authorization", &token), ("heart-beat", "100,0")]).await;
    for _ in 0..6 {
        alive.send_raw(Message::text("\n")).await;
        alive.expect_nothing(Duration::from_millis(100)).await;
    }
    alive.subscribe("s", "/topic/x", "auto").await;
    server.stop().await;
}

#[tokio::test]
async fn websocket_ping_is_answered() {
    let server = TestServer::stomp(|_| {}).await;
    let mut client = server.client("alice").await;
    client.send_raw(Message::Ping(Bytes::from_static(b"are you there"))).await;
    let pong = tokio::time::timeout(PATIENCE, async {
        use futures_util::StreamExt;
        loop {
            if let Some(Ok(Message::Pong(data))) = client.socket.next().await {
                return data;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&pong[..], b"are you there");
    server.stop().await;
}

#[tokio::test]
async fn frames_split_byte_by_byte_and_batched_in_one_message() {
    let server = TestServer::stomp(|_| {}).await;
    let mut subscriber = server.client("bob").await;
    subscriber.subscribe("s1", "/topic/chat.general", "auto").await;

    let mut sender = StompClient::open(&server.ws_url(), &["v12.stomp"]).await;
    let connect = Frame::new(Command::Connect)
        .with_header("accept-version", "1.2")
        .with_header("Authorization", format!("Bearer {}", server.token("alice")))
        .to_bytes(Version::V1_2)
        .unwrap();
    // CONNECT one byte per WebSocket message, alternating text and binary.
    for (i, byte) in connect.iter().enumerate() {
        let message = if i % 2 == 0 {
            Message::Binary(Bytes::copy_from_slice(&[*byte]))
        } else {
            Message::text(String::from_utf8(vec![*byte]).unwrap())
        };
        sender.send_raw(message).await;
    }
    assert_eq!(sender.recv().await.command, Command::Connected);

    // Three SENDs in one message.
    let mut batch = Vec::new();
    for n in 1..=3 {
        let frame = Frame::new(Command::Send)
            .with_header("destination", "/topic/chat.general")
            .with_body(format!("hello {n}"));
        batch.extend_from_slice(&frame.to_bytes(Version::V1_2).unwrap());
    }
    sender.send_raw(Message::Binary(batch.into())).await;
    for n in 1..=3 {
        let message = subscriber.recv().await;
        assert_eq!(message.command, Command::Message);
        assert_eq!(message.header("destination"), Some("/topic/chat.general"));
        assert_eq!(message.header("subscription"), Some("s1"));
        assert!(message.header("message-id").is_some());
        assert_eq!(body(&message), format!("hello {n}"));
    }
    server.stop().await;
}

#[tokio::test]
async fn binary_bodies_with_nul_and_escaped_headers_arrive_intact() {
    let server = TestServer::stomp(|_| {}).await;
    let mut subscriber = server.client("bob").await;
    subscriber.subscribe("s1", "/queue/blobs", "auto").await;
    let mut sender = server.client("alice").await;

    let payload: Vec<u8> = vec![0, 1, 2, 0, 255, 0];
    let frame = Frame::new(Command::Send)
        .with_header("destination", "/queue/blobs")
        .with_header("content-type", "application/octet-stream")
        .with_header("x-note", "a:b\nc\\d")
        .with_header("content-length", payload.len().to_string())
        .with_body(payload.clone());
    sender.send(&frame).await;
    let message = subscriber.recv().await;
    assert_eq!(&message.body[..], &payload[..]);
    assert_eq!(message.header("content-length"), Some("6"));
    assert_eq!(message.header("content-type"), Some("application/octet-stream"));
    assert_eq!(message.header("x-note"), Some("a:b\nc\\d"), "user headers pass through, escaped");
    assert_eq!(subscriber.text_messages.last(), Some(&false), "non-UTF-8 frames go out as binary");

    sender.send_to("/queue/blobs", "plain text").await;
    let message = subscriber.recv().await;
    assert_eq!(body(&message), "plain text");
    assert_eq!(subscriber.text_messages.last(), Some(&true), "UTF-8 frames go out as text");
    server.stop().await;
}

#[tokio::test]
async fn always_binary_setting_sends_binary_messages() {
    let server = TestServer::stomp(|c| c.settings.stomp.always_binary = true).await;
    let mut client = server.client("alice").await;
    client.subscribe("s", "/topic/chat.x", "auto").await;
    client.send_to("/topic/chat.x", "hi").await;
    assert_eq!(body(&client.recv().await), "hi");
    assert!(client.text_messages.iter().all(|text| !text), "{:?}", client.text_messages);
    server.stop().await;
}

#[tokio::test]
async fn receipts_answer_every_frame_and_disconnect_closes_after_its_receipt() {
    let server = TestServer::stomp(|_| {}).await;
    let mut client = server.client("alice").await;
    client.frame(Command::Send, &[("destination", "/queue/q"), ("receipt", "r-send")], "x").await;
    assert_eq!(client.recv().await.header("receipt-id"), Some("r-send"));
    client.frame(Command::Begin, &[("transaction", "t"), ("receipt", "r-begin")], "").await;
    assert_eq!(client.recv().await.header("receipt-id"), Some("r-begin"));
    client.frame(Command::Abort, &[("transaction", "t"), ("receipt", "r-abort")], "").await;
    assert_eq!(client.recv().await.header("receipt-id"), Some("r-abort"));
    client
        .frame(
            Command::Subscribe,
            &[("id", "1"), ("destination", "/topic/a"), ("receipt", "r-sub")],
            "",
        )
        .await;
    assert_eq!(client.recv().await.header("receipt-id"), Some("r-sub"));
    client.frame(Command::Unsubscribe, &[("id", "1"), ("receipt", "r-unsub")], "").await;
    assert_eq!(client.recv().await.header("receipt-id"), Some("r-unsub"));
    client.frame(Command::Disconnect, &[("receipt", "r-bye")], "").await;
    let receipt = client.recv().await;
    assert_eq!((receipt.command, receipt.header("receipt-id")), (Command::Receipt, Some("r-bye")));
    assert!(client.closed().await);
    server.stop().await;
}

#[tokio::test]
async fn transactions_hold_sends_and_acks_until_commit() {
    let server = TestServer::stomp(|_| {}).await;
    let mut consumer = server.client("bob").await;
    consumer.subscribe("q", "/queue/work", "client-individual").await;
    let mut producer = server.client("alice").await;

    producer.frame(Command::Begin, &[("transaction", "t1")], "").await;
    producer
        .frame(Command::Send, &[("destination", "/queue/work"), ("transaction", "t1")], "one")
        .await;
    producer
        .frame(Command::Send, &[("destination", "/queue/work"), ("transaction", "t1")], "two")
        .await;
    consumer.expect_nothing(SHORT).await;
    producer.frame(Command::Commit, &[("transaction", "t1")], "").await;
    let one = consumer.recv().await;
    let two = consumer.recv().await;
    assert_eq!((body(&one), body(&two)), ("one", "two"));

    producer.frame(Command::Begin, &[("transaction", "t2")], "").await;
    producer
        .frame(Command::Send, &[("destination", "/queue/work"), ("transaction", "t2")], "never")
        .await;
    producer.frame(Command::Abort, &[("transaction", "t2")], "").await;
    consumer.expect_nothing(SHORT).await;

    // An ACK inside a transaction that is aborted leaves the message unacknowledged: it is
    // redelivered when the consumer goes away.
    consumer.frame(Command::Begin, &[("transaction", "c1")], "").await;
    consumer
        .frame(Command::Ack, &[("id", one.header("ack").unwrap()), ("transaction", "c1")], "")
        .await;
    consumer.frame(Command::Abort, &[("transaction", "c1")], "").await;
    consumer.frame(Command::Ack, &[("id", two.header("ack").unwrap()), ("receipt", "a")], "").await;
    assert_eq!(consumer.recv().await.header("receipt-id"), Some("a"));
    drop(consumer);
    let mut next = server.client("carol").await;
    next.subscribe("q", "/queue/work", "auto").await;
    let again = next.recv().await;
    assert_eq!((body(&again), again.header("redelivered")), ("one", Some("true")));
    next.expect_nothing(SHORT).await;

    producer.frame(Command::Commit, &[("transaction", "nope"), ("receipt", "r")], "").await;
    let error = producer.expect_error().await;
    assert_eq!(error.header("message"), Some("unknown transaction"));
    assert_eq!(error.header("receipt-id"), Some("r"));
    server.stop().await;
}

#[tokio::test]
async fn topics_reach_every_subscriber() {
    let server = TestServer::stomp(|_| {}).await;
    let mut a = server.client("a").await;
    let mut b = server.client("b").await;
    a.subscribe("x", "/topic/chat.room", "auto").await;
    b.subscribe("y", "/topic/chat.room", "auto").await;
    server.broker.publish("/topic/chat.room", Publication::json(r#"{"n":1}"#)).unwrap();
    for (client, sub) in [(&mut a, "x"), (&mut b, "y")] {
        let message = client.recv().await;
        assert_eq!(message.header("subscription"), Some(sub));
        assert_eq!(message.header("content-type"), Some("application/json"));
        assert_eq!(body(&message), r#"{"n":1}"#);
    }
    server.stop().await;
}

#[tokio::test]
async fn queues_round_robin_wait_for_consumers_and_redeliver_after_nack() {
    let server = TestServer::stomp(|_| {}).await;
    let mut producer = server.client("p").await;
    // Sent while nobody listens: kept.
    producer.send_to("/queue/jobs", "early").await;
    producer
        .frame(Command::Send, &[("destination", "/queue/jobs"), ("receipt", "r")], "second")
        .await;
    producer.recv().await;

    let mut c1 = server.client("c1").await;
    c1.subscribe("s", "/queue/jobs", "client-individual").await;
    let early = c1.recv().await;
    let second = c1.recv().await;
    assert_eq!((body(&early), body(&second)), ("early", "second"));
    assert!(early.header("ack").is_some(), "client-individual deliveries carry ack");

    let mut c2 = server.client("c2").await;
    c2.subscribe("s", "/queue/jobs", "client-individual").await;
    for n in 0..4 {
        producer.send_to("/queue/jobs", &format!("job {n}")).await;
    }
    let (mut got1, mut got2) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        got1.push(body(&c1.recv().await).to_owned());
        got2.push(body(&c2.recv().await).to_owned());
    }
    got1.extend(got2.clone());
    got1.sort();
    assert_eq!(got1, ["job 0", "job 1", "job 2", "job 3"], "round robin, each once");

    // NACK on c1: the message goes to c2, marked redelivered.
    c1.frame(Command::Nack, &[("id", early.header("ack").unwrap())], "").await;
    let redelivered = c2.recv().await;
    assert_eq!(body(&redelivered), "early");
    assert_eq!(redelivered.header("redelivered"), Some("true"));
    assert_eq!(redelivered.header("message-id"), early.header("message-id"));
    server.stop().await;
}

#[tokio::test]
async fn client_ack_is_cumulative_and_unacked_limit_holds_queue_messages() {
    let server = TestServer::stomp(|c| c.settings.limits.unacked_per_subscription = 2).await;
    let mut producer = server.client("p").await;
    let mut consumer = server.client("c").await;
    consumer.subscribe("s", "/queue/batch", "client").await;
    for n in 0..4 {
        producer.send_to("/queue/batch", &format!("m{n}")).await;
    }
    let m0 = consumer.recv().await;
    let m1 = consumer.recv().await;
    assert_eq!((body(&m0), body(&m1)), ("m0", "m1"));
    consumer.expect_nothing(SHORT).await; // two unacknowledged: the queue waits
    consumer.frame(Command::Ack, &[("id", m1.header("ack").unwrap())], "").await; // acks m0 too
    assert_eq!(body(&consumer.recv().await), "m2");
    assert_eq!(body(&consumer.recv().await), "m3");
    // m0 was acknowledged cumulatively: acking it again is an error.
    consumer.frame(Command::Ack, &[("id", m0.header("ack").unwrap())], "").await;
    assert_eq!(consumer.expect_error().await.header("message"), Some("unknown message"));
    server.stop().await;
}

#[tokio::test]
async fn stomp_1_1_acks_by_message_id_and_subscription() {
    let server = TestServer::stomp(|_| {}).await;
    let mut consumer = StompClient::open(&server.ws_url(), &["v11.stomp"]).await;
    consumer.connect(&[("Authorization", &format!("Bearer {}", server.token("c")))]).await;
    consumer.subscribe("s", "/queue/old", "client-individual").await;
    server.broker.publish("/queue/old", Publication::new("text/plain", "hello")).unwrap();
    let message = consumer.recv().await;
    let id = message.header("message-id").unwrap().to_owned();
    consumer
        .frame(Command::Ack, &[("message-id", &id), ("subscription", "s"), ("receipt", "r")], "")
        .await;
    assert_eq!(consumer.recv().await.header("receipt-id"), Some("r"));
    server.stop().await;
}

#[tokio::test]
async fn disconnect_with_unacked_queue_messages_redelivers_them() {
    let server = TestServer::stomp(|_| {}).await;
    let mut first = server.client("c1").await;
    first.subscribe("s", "/queue/orders", "client").await;
    server.broker.publish("/queue/orders", Publication::new("text/plain", "order-1")).unwrap();
    assert_eq!(body(&first.recv().await), "order-1");
    let mut second = server.client("c2").await;
    second.subscribe("s", "/queue/orders", "auto").await;
    second.expect_nothing(SHORT).await;
    drop(first); // no ACK, connection gone
    let message = second.recv().await;
    assert_eq!((body(&message), message.header("redelivered")), ("order-1", Some("true")));
    server.stop().await;
}

#[tokio::test]
async fn user_destinations_reach_every_session_of_that_user_only() {
    let server = TestServer::stomp(|_| {}).await;
    let mut alice_tab1 = server.client("alice").await;
    let mut alice_tab2 = server.client("alice").await;
    let mut bob = server.client("bob").await;
    alice_tab1.subscribe("t", "/user/queue/tasks-progress", "auto").await;
    alice_tab2.subscribe("t", "/user/alice/queue/tasks-progress", "auto").await;
    bob.subscribe("t", "/user/queue/tasks-progress", "auto").await;

    let json = r#"{"taskNo":"T1","status":"processing","progress":40}"#;
    let handed =
        server.broker.send_to_user("alice", "/queue/tasks-progress", Publication::json(json));
    assert_eq!(handed, 2);
    for tab in [&mut alice_tab1, &mut alice_tab2] {
        let message = tab.recv().await;
        assert_eq!(message.header("destination"), Some("/user/queue/tasks-progress"));
        assert_eq!(body(&message), json);
    }
    bob.expect_nothing(SHORT).await;

    // Subscribing to another user's private destination is refused.
    bob.frame(
        Command::Subscribe,
        &[("id", "x"), ("destination", "/user/alice/queue/tasks-progress")],
        "",
    )
    .await;
    let error = bob.expect_error().await;
    assert_eq!(error.header("message"), Some("invalid destination"));
    assert!(body(&error).contains("belongs to another user"), "{}", body(&error));
    // Alice is unaffected.
    server.broker.send_to_user("alice", "/queue/tasks-progress", Publication::json("{}"));
    assert_eq!(body(&alice_tab1.recv().await), "{}");
    server.stop().await;
}

#[tokio::test]
async fn app_destinations_go_to_handlers_and_are_never_echoed() {
    let server = TestServer::stomp(|_| {}).await;
    let seen: Arc<Mutex<Vec<AppMessage>>> = Arc::default();
    let sink = seen.clone();
    server.broker.register_app(
        "/app/tasks.*",
        Arc::new(move |message: AppMessage| {
            if message.body.is_empty() {
                return Err("an empty body is not a command".into());
            }
            sink.lock().unwrap().push(message);
            Ok(())
        }),
    );
    let mut client = server.client("alice").await;
    client.subscribe("s", "/topic/chat.all", "auto").await;
    client
        .frame(Command::Send, &[("destination", "/app/tasks.cancel"), ("receipt", "r")], "T-1")
        .await;
    assert_eq!(client.recv().await.header("receipt-id"), Some("r"));
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].principal.as_str(), &seen[0].body[..]), ("alice", &b"T-1"[..]));
    }
    client.frame(Command::Send, &[("destination", "/app/tasks.cancel")], "").await;
    let error = client.expect_error().await;
    assert_eq!(error.header("message"), Some("rejected by the application"));
    assert!(body(&error).contains("an empty body is not a command"));

    let mut other = server.client("bob").await;
    other.send_to("/app/unknown", "x").await;
    let error = other.expect_error().await;
    assert_eq!(error.header("message"), Some("unknown destination"));
    server.stop().await;
}

#[tokio::test]
async fn sends_are_authorized_by_configured_patterns_for_configured_identities_only() {
    let server = TestServer::stomp(|c| {
        c.settings.auth.users.push(taskpulse_server::ConfigUser {
            login: "backend".into(),
            passcode: "backend-passcode".into(),
        });
        c.settings.authorization.send_by_user.insert("backend".into(), vec!["/topic/**".into()]);
    })
    .await;
    let mut listener = server.client("someone").await;
    listener.subscribe("n", "/topic/news", "auto").await;
    let mut user = server.client("alice").await;
    user.frame(Command::Send, &[("destination", "/topic/news"), ("receipt", "r")], "spam").await;
    let error = user.expect_error().await;
    assert_eq!(error.header("message"), Some("not allowed"));
    assert_eq!(error.header("receipt-id"), Some("r"));
    assert!(body(&error).contains("/topic/news"));

    // A token whose principal is named like the configured one (as an account registered
    // under that name would have) gets no rights from the name.
    let mut impostor = server.client("backend").await;
    impostor.frame(Command::Send, &[("destination", "/topic/news")], "forged").await;
    assert_eq!(impostor.expect_error().await.header("message"), Some("not allowed"));
    // ... and the name cannot be registered.
    let body_json = serde_json::json!({"username": "Backend", "password": "long enough password"});
    let (status, answer) = server.api().post("/api/auth/register", None, body_json).await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("reserved"), "{answer}");

    let mut backend = StompClient::open(&server.ws_url(), &["v12.stomp"]).await;
    let connected =
        backend.connect(&[("login", "backend"), ("passcode", "backend-passcode")]).await;
    assert_eq!(connected.command, Command::Connected, "{connected:?}");
    backend.send_to("/topic/news", "news").await;
    assert_eq!(body(&listener.recv().await), "news");
    server.stop().await;
}

#[tokio::test]
async fn unknown_destinations_and_malformed_frames_get_an_error_others_carry_on() {
    let server = TestServer::stomp(|_| {}).await;
    let mut bystander = server.client("bob").await;
    bystander.subscribe("s", "/topic/chat.x", "auto").await;

    let mut a = server.client("alice").await;
    a.frame(Command::Subscribe, &[("id", "1"), ("destination", "/nowhere")], "").await;
    let error = a.expect_error().await;
    assert_eq!(error.header("message"), Some("invalid destination"));
    assert!(body(&error).contains("/nowhere"));

    let mut b = server.client("alice").await;
    b.send_raw(Message::text("SEND\ndestination:/topic/chat.x\nbad header line\n\nx\0")).await;
    let error = b.expect_error().await;
    assert_eq!(error.header("message"), Some("malformed frame"));

    let mut c = server.client("alice").await;
    c.frame(Command::Subscribe, &[("destination", "/topic/chat.x")], "").await;
    let error = c.expect_error().await;
    assert!(body(&error).contains("\"id\""), "names the missing header: {}", body(&error));

    let mut d = server.client("alice").await;
    d.send_raw(Message::text("FLY\n\n\0")).await;
    assert_eq!(d.expect_error().await.header("message"), Some("malformed frame"));

    let mut sender = server.client("carol").await;
    sender.send_to("/topic/chat.x", "still here").await;
    assert_eq!(body(&bystander.recv().await), "still here");
    server.stop().await;
}

#[tokio::test]
async fn oversize_frames_are_refused_with_the_limit() {
    let server = TestServer::stomp(|c| c.settings.limits.frame_size = 4096).await;
    let mut client = server.client("alice").await;
    client.send_to("/queue/big", &"x".repeat(5000)).await;
    let error = client.expect_error().await;
    assert_eq!(error.header("message"), Some("frame too large"));
    assert!(body(&error).contains("4096"), "{}", body(&error));

    // Far beyond: refused at the WebSocket layer, still with an ERROR where possible.
    let mut huge = server.client("alice").await;
    huge.send_raw(Message::text("x".repeat(64 * 1024))).await;
    assert!(huge.closed().await);

    let mut fine = server.client("alice").await;
    fine.subscribe("s", "/topic/ok", "auto").await;
    server.stop().await;
}

#[tokio::test]
async fn bad_expired_and_missing_credentials_fail_authentication() {
    let server = TestServer::stomp(|c| c.settings.stomp.connect_timeout_ms = 200).await;
    let other_secret = {
        let other = TestServer::stomp(|c| {
            c.settings.jwt.secret = "another-secret-of-at-least-thirty-two-bytes".into()
        })
        .await;
        other.token("alice")
    };
    let cases = [
        vec![("Authorization".to_owned(), "Bearer not.a.jwt".to_owned())],
        vec![("Authorization".to_owned(), format!("Bearer {other_secret}"))],
        vec![(
            "Authorization".to_owned(),
            format!("Bearer {}", server.token_expiring("alice", -60)),
        )],
        vec![],
    ];
    for headers in cases {
        let mut client = StompClient::open(&server.ws_url(), &[]).await;
        let headers: Vec<(&str, &str)> =
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let error = client.connect(&headers).await;
        assert_eq!(error.command, Command::Error, "{headers:?}");
        assert_eq!(error.header("message"), Some("authentication failed"));
        assert!(
            !body(&error).contains("expired") && !body(&error).contains("signature"),
            "no reason leaks"
        );
        assert!(client.closed().await);
    }

    // Silence after the WebSocket opens: closed at the CONNECT deadline.
    let mut idle = StompClient::open(&server.ws_url(), &[]).await;
    let error = idle.expect_error().await;
    assert_eq!(error.header("message"), Some("connect timeout"));

    // A frame other than CONNECT first.
    let mut eager = StompClient::open(&server.ws_url(), &[]).await;
    eager.send_to("/queue/x", "hi").await;
    assert_eq!(eager.expect_error().await.header("message"), Some("not connected"));
    server.stop().await;
}

#[tokio::test]
async fn tokens_in_passcode_or_query_and_configured_users_authenticate() {
    let server = TestServer::stomp(|c| {
        c.settings.auth.users.push(taskpulse_server::ConfigUser {
            login: "guest".into(),
            passcode: "guest-pass".into(),
        });
    })
    .await;
    let mut by_passcode = StompClient::open(&server.ws_url(), &[]).await;
    let connected =
        by_passcode.connect(&[("login", "x"), ("passcode", &server.token("pat"))]).await;
    assert_eq!(connected.header("user-name"), Some("pat"));

    let url = format!("{}?access_token={}", server.ws_url(), server.token("quinn"));
    let mut by_query = StompClient::open(&url, &[]).await;
    assert_eq!(by_query.connect(&[]).await.header("user-name"), Some("quinn"));

    let mut guest = StompClient::open(&server.ws_url(), &[]).await;
    let connected = guest.connect(&[("login", "guest"), ("passcode", "guest-pass")]).await;
    assert_eq!(connected.header("user-name"), Some("guest"));
    let mut wrong = StompClient::open(&server.ws_url(), &[]).await;
    let error = wrong.connect(&[("login", "guest"), ("passcode", "nope")]).await;
    assert_eq!(error.header("message"), Some("authentication failed"));

    // clientId is a label, never an identity.
    let mut label_only = StompClient::open(&server.ws_url(), &[]).await;
    let error = label_only.connect(&[("clientId", "alice")]).await;
    assert_eq!(error.header("message"), Some("authentication failed"));
    server.stop().await;
}

#[tokio::test]
async fn connections_and_subscriptions_are_limited() {
    let server = TestServer::stomp(|c| {
        c.settings.limits.connections_per_user = 2;
        c.settings.limits.subscriptions_per_connection = 2;
    })
    .await;
    let mut first = server.client("alice").await;
    let _second = server.client("alice").await;
    let mut third = StompClient::open(&server.ws_url(), &[]).await;
    let error =
        third.connect(&[("Authorization", &format!("Bearer {}", server.token("alice")))]).await;
    assert_eq!(error.header("message"), Some("too many connections"));
    let _bob = server.client("bob").await;

    first.subscribe("1", "/topic/a", "auto").await;
    first.subscribe("2", "/topic/b", "auto").await;
    first.frame(Command::Subscribe, &[("id", "3"), ("destination", "/topic/c")], "").await;
    assert_eq!(first.expect_error().await.header("message"), Some("too many subscriptions"));
    // The closed connection frees its slot.
    tokio::time::sleep(SHORT).await;
    let _again = server.client("alice").await;
    server.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_is_cut_with_an_error_and_others_get_everything() {
    let server = TestServer::stomp(|c| c.settings.limits.outbound_buffer = 64 * 1024).await;
    let mut slow = server.client("slow").await;
    slow.subscribe("s", "/topic/feed", "auto").await;
    let mut fast = server.client("fast").await;
    fast.subscribe("s", "/topic/feed", "auto").await;
    let chunk = "y".repeat(32 * 1024);
    // `slow` does not read; `fast` does. Sockets and buffers fill, then the policy applies.
    let publisher = {
        let broker = server.broker.clone();
        let chunk = chunk.clone();
        tokio::spawn(async move {
            for n in 0..400 {
                broker
                    .publish("/topic/feed", Publication::new("text/plain", format!("{n}:{chunk}")))
                    .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    for n in 0..400 {
        let message = fast.recv().await;
        assert!(body(&message).starts_with(&format!("{n}:")), "in order, none missing");
    }
    publisher.await.unwrap();
    // The slow one finds an ERROR that says why at the end of what it was sent.
    let mut last = None;
    while let Some(frame) = slow.try_recv(PATIENCE).await {
        last = Some(frame);
    }
    let last = last.expect("the slow consumer gets frames then the ERROR");
    assert_eq!(last.command, Command::Error);
    assert_eq!(last.header("message"), Some("slow consumer"));
    assert!(body(&last).contains("limits.outbound_buffer"));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_tells_sessions_why() {
    let server = TestServer::stomp(|_| {}).await;
    let mut client = server.client("alice").await;
    let stopping = tokio::spawn(server.stop());
    let error = client.expect_error().await;
    assert_eq!(error.header("message"), Some("server is shutting down"));
    stopping.await.unwrap();
}

#[tokio::test]
async fn es256_tokens_validate_with_the_configured_public_key_and_alg_is_pinned() {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/server/keys");
    let server = TestServer::stomp(|c| {
        c.settings.jwt.algorithm = taskpulse_server::JwtAlgorithm::ES256;
        c.settings.jwt.public_key_file = keys.join("es256-public.pem");
        c.settings.jwt.issuer = "https://issuer.example".into();
    })
    .await;
    let private = std::fs::read(keys.join("es256-private.pem")).unwrap();
    let exp =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let sign = |iss: &str| {
        let claims = serde_json::json!({ "sub": "erin", "exp": exp, "iss": iss });
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&private).unwrap();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &key,
        )
        .unwrap()
    };
    let mut good = StompClient::open(&server.ws_url(), &[]).await;
    let bearer = format!("Bearer {}", sign("https://issuer.example"));
    assert_eq!(good.connect(&[("Authorization", &bearer)]).await.header("user-name"), Some("erin"));

    // Wrong issuer, and an HS256 token (alg not the pinned one), are refused.
    let hs256 = {
        let claims =
            serde_json::json!({ "sub": "erin", "exp": exp, "iss": "https://issuer.example" });
        let key = jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    for token in [sign("https://elsewhere.example"), hs256] {
        let mut client = StompClient::open(&server.ws_url(), &[]).await;
        let error = client.connect(&[("Authorization", &format!("Bearer {token}"))]).await;
        assert_eq!(error.header("message"), Some("authentication failed"));
    }
    server.stop().await;
}
