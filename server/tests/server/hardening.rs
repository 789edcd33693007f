//! What an attacker sends: inputs that used to crash the server or pin its memory, forged
//! rights and headers, requests to internal addresses, floods. Each case gets a clear
//! refusal naming its limit, and everyone else carries on.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::header, response::IntoResponse, routing::get, serve::ListenerExt};
use futures_util::SinkExt;
use serde_json::json;
use taskpulse_server::Config;
use taskpulse_shared::{TaskStatus, stomp::Command};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

use crate::fixture::{PATIENCE, StompClient, TestServer, body};

const PROGRESS: &str = "/user/queue/tasks-progress";
const BACKEND_KEY: &str = "hardening-backend-key-0123";

/// 65 bytes: a PNG declaring 1048576 x 2147483647 pixels, with an empty IDAT. Decoding it
/// used to abort the whole process ("memory allocation of ... bytes failed").
const PNG_BOMB: &str = "89504e470d0a1a0a0000000d49484452001000007fffffff0802000000c752eda7\
                        0000000849444154789c030000000001480689d20000000049454e44ae426082";

fn fast(config: &mut Config) {
    config.settings.demo.duration_ms = 100;
    config.settings.demo.steps = 2;
    config.settings.demo.size = 32;
    config.settings.tasks.progress_interval_ms = 10;
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

/// An HTTP server on `127.0.0.1:0` (or `ip`) serving `app`; counts accepted connections.
async fn web(ip: &str, app: Router) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0")).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let listener = listener.tap_io(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, accepted)
}

async fn image_to_image(server: &TestServer, token: &str, url: &str) -> String {
    let body = json!({"kind": "image-to-image", "prompt": "p", "imageUrl": url});
    let (status, answer) = server.api().post("/api/tasks", Some(token), body).await;
    assert_eq!(status, 202, "{answer}");
    answer["taskNo"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_png_bomb_fails_its_task_with_a_clear_message_and_the_server_carries_on() {
    let app = Router::new().route(
        "/bomb.png",
        get(|| async { ([(header::CONTENT_TYPE, "image/png")], unhex(PNG_BOMB)).into_response() }),
    );
    let (addr, _) = web("127.0.0.1", app).await;
    let server = TestServer::stomp(|c| {
        fast(c);
        c.settings.tasks.image_fetch_allow = vec!["127.0.0.1".into()];
    })
    .await;
    let token = server.api().register("alice").await;
    let mut client = server.client_with(&token).await;
    client.subscribe("t", PROGRESS, "auto").await;

    let bomb = image_to_image(&server, &token, &format!("http://{addr}/bomb.png")).await;
    let end = client.updates_until_done(&bomb).await.pop().unwrap();
    assert_eq!(end.status, TaskStatus::Failed);
    let reason = end.error_message.unwrap();
    assert!(
        reason.contains("1048576 x 2147483647") && reason.contains("tasks.image_max_pixels"),
        "{reason}"
    );

    let next = server.api().submit(&token, "still alive").await;
    let end = client.updates_until_done(&next).await.pop().unwrap();
    assert_eq!(end.status, TaskStatus::Completed);
    server.stop().await;
}

#[tokio::test]
async fn image_urls_reach_only_public_addresses_unless_allowed() {
    let hits = Router::new().route("/in.png", get(|| async { "not an image" }));
    let (internal, internal_hits) = web("127.0.0.1", hits).await;
    // An allowed host that redirects to a refused one (127.0.0.2 is loopback too).
    let target = format!("http://{internal}/in.png");
    let redirect = Router::new().route(
        "/r",
        get(move || {
            let target = target.clone();
            async move { (axum::http::StatusCode::FOUND, [(header::LOCATION, target)]) }
        }),
    );
    let (redirector, redirector_hits) = web("127.0.0.2", redirect).await;
    let server = TestServer::stomp(|c| {
        fast(c);
        c.settings.tasks.image_fetch_allow = vec!["127.0.0.2/32".into()];
    })
    .await;
    let token = server.api().register("alice").await;
    let mut client = server.client_with(&token).await;
    client.subscribe("t", PROGRESS, "auto").await;

    let urls = [
        format!("http://{internal}/in.png"),
        format!("http://localhost:{}/in.png", internal.port()),
        format!("http://[::ffff:127.0.0.1]:{}/in.png", internal.port()),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://{redirector}/r"),
    ];
    for url in &urls {
        let task = image_to_image(&server, &token, url).await;
        let end = client.updates_until_done(&task).await.pop().unwrap();
        assert_eq!(end.status, TaskStatus::Failed, "{url}");
        // The same words whatever happened: nothing tells whether an internal port answered.
        assert_eq!(end.error_message.as_deref(), Some("could not fetch the image at imageUrl"));
    }
    assert_eq!(internal_hits.load(Ordering::SeqCst), 0, "no request reached 127.0.0.1");
    assert_eq!(redirector_hits.load(Ordering::SeqCst), 1, "the allowed host was asked");
    server.stop().await;
}

#[tokio::test]
async fn a_receipt_that_stomp_1_1_cannot_echo_gets_an_error_and_leaks_no_session() {
    let server = TestServer::stomp(|c| c.settings.limits.connections_per_user = 4).await;
    // More rounds than the per-user limit: a leaked session would lock alice out.
    for _ in 0..10 {
        let mut client = StompClient::open(&server.ws_url(), &["v11.stomp"]).await;
        let token = server.token("alice");
        let connected = client.connect(&[("Authorization", &format!("Bearer {token}"))]).await;
        assert_eq!(connected.header("version"), Some("1.1"));
        // CRLF ends the line, so the value keeps the first CR.
        let frame = "SEND\ndestination:/queue/a\nreceipt:abc\r\r\n\nx\0";
        client.send_raw(Message::binary(frame.as_bytes().to_vec())).await;
        let error = client.expect_error().await;
        assert_eq!(error.header("message"), Some("invalid receipt"));
        assert_eq!(error.header("receipt-id"), None, "a 1.1 header cannot carry it either");
    }
    // A subscription id with the same problem is refused at SUBSCRIBE.
    let mut client = StompClient::open(&server.ws_url(), &["v11.stomp"]).await;
    let token = server.token("alice");
    client.connect(&[("Authorization", &format!("Bearer {token}"))]).await;
    let frame = "SUBSCRIBE\nid:s\r\r\ndestination:/topic/chat.x\n\n\0";
    client.send_raw(Message::binary(frame.as_bytes().to_vec())).await;
    assert_eq!(client.expect_error().await.header("message"), Some("invalid subscription id"));

    let deadline = tokio::time::Instant::now() + PATIENCE;
    while server.broker.session_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.broker.session_count(), 0, "every session was removed");
    let mut fine = server.client("alice").await;
    fine.subscribe("s", "/topic/chat.x", "auto").await;
    server.stop().await;
}

#[tokio::test]
async fn clients_cannot_forge_the_delivery_guarantee_headers() {
    let server = TestServer::stomp(|_| {}).await;
    let mut listener = server.client("bob").await;
    listener.subscribe("s", "/topic/chat.x", "auto").await;
    let mut sender = server.client("mallory").await;
    let forged = [
        ("destination", "/topic/chat.x"),
        ("seq", "999999"),
        ("epoch", "forged"),
        ("x-replayed", "true"),
        ("x-snapshot", "1/1"),
        ("x-snapshot-seq", "999999"),
        ("x-resume-seq", "1"),
        ("x-custom", "kept"),
    ];
    sender.frame(Command::Send, &forged, "hello").await;
    let message = listener.recv().await;
    assert_eq!(body(&message), "hello");
    for reserved in ["seq", "epoch", "x-replayed", "x-snapshot", "x-snapshot-seq", "x-resume-seq"] {
        assert_eq!(message.header(reserved), None, "{reserved} was stripped");
    }
    assert_eq!(message.header("x-custom"), Some("kept"));
    server.stop().await;
}

#[tokio::test]
async fn a_header_an_old_subscriber_cannot_carry_is_left_out_not_fatal() {
    let server = TestServer::stomp(|_| {}).await;
    let mut old = StompClient::open(&server.ws_url(), &["v11.stomp"]).await;
    let token = server.token("bob");
    old.connect(&[("Authorization", &format!("Bearer {token}"))]).await;
    old.subscribe("s", "/topic/chat.x", "auto").await;
    let mut sender = server.client("mallory").await;
    // STOMP 1.2 escapes the CR; 1.1 cannot write it.
    sender
        .frame(Command::Send, &[("destination", "/topic/chat.x"), ("note", "abc\r")], "one")
        .await;
    sender.send_to("/topic/chat.x", "two").await;
    let first = old.recv().await;
    assert_eq!((body(&first), first.header("note")), ("one", None));
    assert_eq!(body(&old.recv().await), "two", "still connected");
    server.stop().await;
}

#[tokio::test]
async fn transactions_are_bounded_in_number_and_bytes() {
    let server = TestServer::stomp(|c| {
        c.settings.limits.transactions_per_connection = 3;
        c.settings.limits.transaction_bytes = 10_000;
    })
    .await;
    let mut many = server.client("alice").await;
    for tx in ["a", "b", "c"] {
        many.frame(Command::Begin, &[("transaction", tx)], "").await;
    }
    many.frame(Command::Begin, &[("transaction", "d")], "").await;
    let error = many.expect_error().await;
    assert_eq!(error.header("message"), Some("too many transactions"));
    assert!(body(&error).contains("limits.transactions_per_connection"), "{}", body(&error));

    let mut large = server.client("alice").await;
    large.frame(Command::Begin, &[("transaction", "t")], "").await;
    let chunk = "x".repeat(3000);
    for _ in 0..4 {
        large
            .frame(Command::Send, &[("destination", "/queue/q"), ("transaction", "t")], &chunk)
            .await;
    }
    let error = large.expect_error().await;
    assert_eq!(error.header("message"), Some("transaction too large"));
    assert!(body(&error).contains("limits.transaction_bytes"), "{}", body(&error));

    // Committed and aborted transactions give their room back.
    let mut fine = server.client("alice").await;
    for round in 0..10 {
        let tx = format!("t{round}");
        fine.frame(Command::Begin, &[("transaction", &tx)], "").await;
        fine.frame(Command::Send, &[("destination", "/queue/q"), ("transaction", &tx)], &chunk)
            .await;
        let end = if round % 2 == 0 { Command::Commit } else { Command::Abort };
        fine.frame(end, &[("transaction", &tx), ("receipt", "r")], "").await;
        assert_eq!(fine.recv().await.command, Command::Receipt);
    }
    server.stop().await;
}

#[tokio::test]
async fn queues_are_bounded_in_number_and_bytes_and_idle_ones_go() {
    let server = TestServer::stomp(|c| {
        c.settings.limits.queues = 3;
        c.settings.limits.queue_bytes = 20_000;
    })
    .await;
    let mut sender = server.client("alice").await;
    for name in ["/queue/a", "/queue/b", "/queue/c"] {
        sender.send_to(name, "waiting").await;
    }
    sender.frame(Command::Send, &[("destination", "/queue/d"), ("receipt", "r")], "x").await;
    let error = sender.expect_error().await;
    assert_eq!(error.header("message"), Some("queue full"));
    assert!(body(&error).contains("limits.queues"), "{}", body(&error));

    // Consuming a queue empties it; without consumers it is dropped, making room.
    let mut consumer = server.client("bob").await;
    for name in ["/queue/a", "/queue/b"] {
        consumer.subscribe(name, name, "auto").await;
        assert_eq!(body(&consumer.recv().await), "waiting");
        consumer.frame(Command::Unsubscribe, &[("id", name), ("receipt", "u")], "").await;
        assert_eq!(consumer.recv().await.command, Command::Receipt);
    }
    let mut bytes = server.client("alice").await;
    let chunk = "y".repeat(6000);
    bytes.send_to("/queue/d", &chunk).await;
    bytes.send_to("/queue/d", &chunk).await;
    bytes.send_to("/queue/d", &chunk).await;
    bytes.frame(Command::Send, &[("destination", "/queue/d"), ("receipt", "r")], &chunk).await;
    let error = bytes.expect_error().await;
    assert_eq!(error.header("message"), Some("queue full"));
    assert!(body(&error).contains("limits.queue_bytes"), "{}", body(&error));
    server.stop().await;
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_is_cut_off_at_the_outbound_limit() {
    let server = TestServer::stomp(|c| c.settings.limits.outbound_buffer = 256 * 1024).await;
    let mut lazy = server.client("bob").await;
    lazy.subscribe("s", "/topic/chat.big", "auto").await;
    let mut sender = server.client("alice").await;
    // Messages whose weight is in their headers (the body is one byte): they count too.
    let value = "h".repeat(7000);
    let names: Vec<String> = (0..7).map(|i| format!("x-pad-{i}")).collect();
    let mut headers: Vec<(&str, &str)> = vec![("destination", "/topic/chat.big")];
    headers.extend(names.iter().map(|n| (n.as_str(), value.as_str())));
    // Far more than the loopback socket buffers and the outbound limit together.
    for _ in 0..600 {
        sender.frame(Command::Send, &headers, "x").await;
    }
    sender.frame(Command::Send, &[("destination", "/topic/chat.x"), ("receipt", "r")], "").await;
    assert_eq!(sender.recv().await.command, Command::Receipt);
    let mut messages = 0;
    let error = loop {
        let frame = lazy.try_recv(Duration::from_secs(10)).await.expect("an ERROR arrives");
        if frame.command == Command::Error {
            break frame;
        }
        messages += 1;
    };
    assert_eq!(error.header("message"), Some("slow consumer"));
    assert!(body(&error).contains("limits.outbound_buffer"), "{}", body(&error));
    assert!(messages < 600, "cut off before everything arrived ({messages})");
    server.stop().await;
}

#[tokio::test]
async fn over_limit_bodies_get_413_naming_the_setting() {
    let server = TestServer::stomp(|c| c.settings.api.body_limit = 4096).await;
    let token = server.api().register("alice").await;
    let body = json!({"kind": "text-to-image", "prompt": "x".repeat(8000)});
    let (status, answer) = server.api().post("/api/tasks", Some(&token), body).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("api.body_limit"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn sign_in_attempts_are_rate_limited_per_name_and_address() {
    let server = TestServer::stomp(|c| c.settings.accounts.attempts_per_minute = 3).await;
    let api = server.api();
    let wrong = json!({"username": "victim", "password": "not the password"});
    for _ in 0..3 {
        assert_eq!(api.post("/api/auth/login", None, wrong.clone()).await.0, 401);
    }
    let response =
        reqwest::Client::new().post(api.url("/api/auth/login")).json(&wrong).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let answer: serde_json::Value = response.json().await.unwrap();
    assert!(answer["error"].as_str().unwrap().contains("accounts.attempts_per_minute"));
    // The same address is over its budget for any name now.
    let other = json!({"username": "someone", "password": "whatever password"});
    assert_eq!(api.post("/api/auth/register", None, other).await.0, 429);
    server.stop().await;
}

#[tokio::test]
async fn submissions_are_bounded_by_active_tasks_and_rate() {
    let server = TestServer::stomp(|c| {
        c.settings.demo.duration_ms = 60_000;
        c.settings.tasks.max_active_per_user = 2;
    })
    .await;
    let api = server.api();
    let token = api.register("alice").await;
    api.submit(&token, "one").await;
    api.submit(&token, "two").await;
    let body = json!({"kind": "text-to-image", "prompt": "three"});
    let (status, answer) = api.post("/api/tasks", Some(&token), body.clone()).await;
    assert_eq!(status, 429, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("tasks.max_active_per_user"), "{answer}");
    // Another user is not affected.
    let other = api.register("bob").await;
    api.submit(&other, "bob's").await;
    server.stop().await;

    let server = TestServer::stomp(|c| c.settings.tasks.submissions_per_minute = 2).await;
    let api = server.api();
    let token = api.register("alice").await;
    api.submit(&token, "one").await;
    api.submit(&token, "two").await;
    let (status, answer) = api.post("/api/tasks", Some(&token), body).await;
    assert_eq!(status, 429, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("tasks.submissions_per_minute"));
    server.stop().await;
}

#[tokio::test]
async fn the_client_s_close_is_echoed_and_server_closes_carry_a_code() {
    let server = TestServer::stomp(|c| c.settings.limits.frame_size = 4096).await;
    let mut client = server.client("alice").await;
    let close = CloseFrame { code: CloseCode::Normal, reason: "bye".into() };
    client.socket.send(Message::Close(Some(close))).await.unwrap();
    assert_eq!(client.close_code().await, Some(1000), "the close is echoed");

    // Past the WebSocket cap: ERROR naming the STOMP limit, then close 1009.
    let mut huge = server.client("alice").await;
    huge.send_raw(Message::text("x".repeat(64 * 1024))).await;
    let error = huge.recv().await;
    assert_eq!(error.header("message"), Some("frame too large"));
    assert!(body(&error).contains("limits.frame_size"), "{}", body(&error));
    assert!(!body(&error).to_lowercase().contains("space limit"), "no library internals");
    assert_eq!(huge.close_code().await, Some(1009));

    // DISCONNECT: a normal close.
    let mut polite = server.client("alice").await;
    polite.frame(Command::Disconnect, &[("receipt", "bye")], "").await;
    assert_eq!(polite.recv().await.command, Command::Receipt);
    assert_eq!(polite.close_code().await, Some(1000));

    // Refused credentials: policy.
    let mut stranger = StompClient::open(&server.ws_url(), &[]).await;
    stranger.connect(&[("Authorization", "Bearer nope")]).await;
    assert_eq!(stranger.close_code().await, Some(1008));
    server.stop().await;
}

#[tokio::test]
async fn short_jwt_secrets_are_refused_and_generated_secrets_are_private_and_shared() {
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().unwrap();
    let config = |secret: &str| {
        let mut config = Config::new("127.0.0.1:0".parse().unwrap(), data.path().to_path_buf());
        config.settings.jwt.secret = secret.into();
        config
    };
    let error = taskpulse_server::AppState::new(config("too-short")).await.unwrap_err().to_string();
    assert!(error.contains("jwt.secret") && error.contains("32"), "{error}");

    // An older version's generated secret, left in the data directory, is taken over.
    let legacy = "a".repeat(64);
    std::fs::write(data.path().join("jwt-secret"), &legacy).unwrap();
    let first = taskpulse_server::AppState::new(config("")).await.unwrap();
    assert_eq!(first.config.settings.jwt.secret, legacy);
    // The generated secrets live in the database, which only its owner may read.
    let mode = std::fs::metadata(data.path().join("taskpulse.db")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "taskpulse.db is {mode:o}");
    // Another server on the same database signs and verifies alike, whatever its files say.
    std::fs::remove_file(data.path().join("jwt-secret")).unwrap();
    let second = taskpulse_server::AppState::new(config("")).await.unwrap();
    assert_eq!(second.config.settings.jwt.secret, legacy);
    let done = taskpulse_shared::TaskProgressDto::completed("T1", "/api/tasks/T1/result");
    let signed = first.tasks.results().signed(&done).result_url.unwrap();
    let query = signed.split_once('?').unwrap().1;
    let (expires, signature) = query.split_once('&').unwrap();
    let expires = expires.trim_start_matches("expires=").parse().unwrap();
    let signature = signature.trim_start_matches("signature=");
    assert_eq!(second.tasks.results().verify("T1", expires, signature), Ok(()));
}

/// Sends `frame` until the server stops taking it (it cut the connection) or `times` is
/// reached, never reading; then reads everything that did arrive and returns the ERROR.
async fn flood_then_error(client: &mut StompClient, frames: &[String], times: usize) -> String {
    let mut sent = 0;
    'outer: for _ in 0..times {
        for frame in frames {
            let message = Message::binary(frame.as_bytes().to_vec());
            if client.socket.send(message).await.is_err() {
                break 'outer;
            }
            sent += 1;
            if sent % 16 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    // Still not reading while the server produces what was asked for.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut read = 0;
    loop {
        let frame = client.try_recv(Duration::from_secs(10)).await;
        let frame = frame.unwrap_or_else(|| panic!("no ERROR after {sent} sent, {read} read"));
        read += 1;
        if frame.command == Command::Error {
            assert_eq!(frame.header("message"), Some("slow consumer"));
            return body(&frame).to_owned();
        }
    }
}

#[tokio::test]
async fn receipts_and_snapshots_for_a_client_that_does_not_read_are_bounded_too() {
    let server = TestServer::stomp(|c| {
        c.settings.limits.outbound_buffer = 512 * 1024;
        c.settings.api.keys = vec![BACKEND_KEY.into()];
    })
    .await;
    let mut receipts = server.client("alice").await;
    let receipt = "r".repeat(7500);
    let send = format!("SEND\ndestination:/topic/chat.void\nreceipt:{receipt}\n\nx\0");
    let why = flood_then_error(&mut receipts, &[send], 3000).await;
    assert!(why.contains("limits.outbound_buffer") && why.contains("receipts"), "{why}");

    // 100 tasks whose documents are large (an external worker's 2000-character message).
    let api = server.api();
    let token = api.register("bob").await;
    let message = "m".repeat(2000);
    for _ in 0..100 {
        let body = json!({"kind": "external"});
        let (status, answer) = api.post("/api/tasks", Some(&token), body).await;
        assert_eq!(status, 202, "{answer}");
        let path = format!("/api/tasks/{}/progress", answer["taskNo"].as_str().unwrap());
        let report = json!({"status": "processing", "progress": 10, "message": message});
        assert_eq!(api.post_as_backend(&path, BACKEND_KEY, report).await.0, 200);
    }
    let mut snapshots = server.client_with(&token).await;
    // Every SUBSCRIBE to the tasks destination starts with a snapshot (about 230 KB here).
    let subscribes: Vec<String> =
        (0..250).map(|n| format!("SUBSCRIBE\nid:x{n}\ndestination:{PROGRESS}\n\n\0")).collect();
    let why = flood_then_error(&mut snapshots, &subscribes, 1).await;
    assert!(why.contains("limits.outbound_buffer"), "{why}");
    server.stop().await;
}

#[tokio::test]
async fn slow_headers_are_cut_and_connections_are_capped_with_room_for_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::stomp(|c| {
        c.settings.limits.header_timeout_ms = 300;
        c.settings.limits.max_connections = 12;
        c.settings.limits.http_reserve = 4;
    })
    .await;
    // Slowloris: headers that never end are cut after the deadline.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection was closed");

    // WebSockets may take all but the reserve.
    let mut sockets = Vec::new();
    for _ in 0..8 {
        sockets.push(server.client("alice").await);
    }
    let refused = tokio_tungstenite::connect_async(server.ws_url()).await.unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = refused else {
        panic!("expected an HTTP refusal, got {refused:?}")
    };
    assert_eq!(response.status().as_u16(), 503);
    let text = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
    assert!(text.contains("limits.max_connections"), "{text}");
    // ... and HTTP still answers.
    assert_eq!(server.get("/healthz").await.0, 200);

    // Past the cap itself, a connection is closed at once, and the rest carry on.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let _ = over.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, over.read_to_end(&mut answer)).await.unwrap();
    assert!(answer.is_empty(), "closed without an answer");
    drop(idle);
    let first = sockets.first_mut().unwrap();
    first.subscribe("s", "/topic/chat.x", "auto").await;
    server.stop().await;
}

#[tokio::test]
async fn a_session_ends_when_its_token_expires_unless_renewed_in_band() {
    let server = TestServer::stomp(|c| c.settings.jwt.leeway_s = 0).await;
    let mut short = server.client_with(&server.token_expiring("alice", 2)).await;
    short.subscribe("s", "/topic/chat.x", "auto").await;
    let error = short.try_recv(Duration::from_secs(5)).await.expect("closed at expiry");
    assert_eq!(error.header("message"), Some("token expired"));
    assert!(body(&error).contains("/app/auth.refresh"), "{}", body(&error));
    assert_eq!(short.close_code().await, Some(1008));

    // Renewed before expiry: the session outlives the first token.
    let mut renewed = server.client_with(&server.token_expiring("alice", 2)).await;
    let fresh = format!("Bearer {}", server.token("alice"));
    let refresh =
        [("destination", "/app/auth.refresh"), ("Authorization", &fresh), ("receipt", "r")];
    renewed.frame(Command::Send, &refresh, "").await;
    assert_eq!(renewed.recv().await.command, Command::Receipt);
    renewed.expect_nothing(Duration::from_secs(3)).await;
    renewed.subscribe("s", "/topic/chat.x", "auto").await;

    // A token for someone else does not renew anything.
    let mut other = server.client_with(&server.token_expiring("alice", 60)).await;
    let bob = server.token("bob");
    other.frame(Command::Send, &[("destination", "/app/auth.refresh")], &bob).await;
    let error = other.expect_error().await;
    assert_eq!(error.header("message"), Some("token refresh refused"));
    assert!(body(&error).contains("another principal"), "{}", body(&error));
    server.stop().await;
}

/// `VmHWM` (peak resident memory) of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn concurrent_password_hashing_is_bounded_in_memory() {
    let data = tempfile::tempdir().unwrap();
    let server = crate::fixture::spawn(data.path());
    let api = crate::fixture::Api::new(server.addr);
    api.register("alice").await;
    let before = peak_rss_kib(server.child.id());
    // One after the other: the memory is reused, not allocated per login.
    for _ in 0..6 {
        let body = json!({"username": "alice", "password": "password-of-alice"});
        assert_eq!(api.post("/api/auth/login", None, body).await.0, 200);
    }
    let sequential = peak_rss_kib(server.child.id());
    // 48 logins at once: argon2id takes 19 MiB each, so unbounded this was ~900 MiB.
    let logins = (0..48).map(|n| {
        let api = api.clone();
        async move {
            let password = if n % 2 == 0 { "password-of-alice" } else { "wrong password" };
            let body = json!({"username": "alice", "password": password});
            api.post("/api/auth/login", None, body).await.0
        }
    });
    let statuses = futures_util::future::join_all(logins).await;
    assert!(statuses.iter().all(|s| *s == 200 || *s == 401), "{statuses:?}");
    let peak = peak_rss_kib(server.child.id());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    // One hash per core at a time: 19 MiB each, plus the server itself.
    let bound = (100 + 20 * cores) * 1024;
    println!(
        "peak RSS: {before} KiB after one registration, {sequential} KiB after 6 logins, \
         {peak} KiB after 48 concurrent logins ({cores} cores)"
    );
    assert!(peak < bound, "peak RSS {peak} KiB over {bound} KiB");
}

/// Arbitrary JSON for `POST /api/publish`: mostly arrays and objects built from the fields
/// it knows, with values of every type and destinations of every kind.
fn publish_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    use serde_json::Value;
    let text = prop_oneof![
        prop::sample::select(vec![
            "/queue/n",
            "/topic/t",
            "/app/x",
            "/user/bob/queue/x",
            "",
            "al\u{7}ice",
            "bob"
        ])
        .prop_map(String::from),
        ".{0,16}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text.prop_map(Value::from),
    ];
    let name = prop::sample::select(vec!["alice", "bob", "", "al\u{7}ice"]);
    let destination = prop::sample::select(vec!["/queue/n", "/topic/t", "/app/x", "queue"]);
    leaf.prop_recursive(3, 48, 8, move |inner| {
        let key = prop::sample::select(vec!["user", "destination", "payload", "other"]);
        // Close to a real notice, so that items are taken as well as refused.
        let notice = (prop::option::of(name.clone()), destination.clone(), inner.clone()).prop_map(
            |(user, destination, payload)| {
                let mut notice =
                    serde_json::json!({"destination": destination, "payload": payload});
                if let Some(user) = user {
                    notice["user"] = Value::from(user);
                }
                notice
            },
        );
        prop_oneof![
            prop::collection::vec(prop_oneof![inner.clone(), notice.clone()], 0..8)
                .prop_map(Value::Array),
            notice,
            prop::collection::vec((key, inner), 0..4).prop_map(|fields| {
                Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

/// Whatever JSON a backend sends to `POST /api/publish`, single or batch, the answer is a
/// 200 or a 4xx that names the problem, a batch gets one result per item, and the server
/// carries on.
#[tokio::test]
async fn any_publish_body_gets_an_answer_per_item_or_a_4xx() {
    use proptest::strategy::{Strategy, ValueTree};
    let server = TestServer::stomp(|c| c.settings.api.keys = vec![BACKEND_KEY.into()]).await;
    let api = server.api();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = publish_json();
    let (mut batches, mut published) = (0, 0);
    for _ in 0..400 {
        let body = strategy.new_tree(&mut runner).unwrap().current();
        let (status, answer) = api.post_as_backend("/api/publish", BACKEND_KEY, body.clone()).await;
        match (&body, status) {
            (serde_json::Value::Array(items), 200) => {
                let results = answer.as_array().unwrap_or_else(|| panic!("{body} -> {answer}"));
                assert_eq!(results.len(), items.len(), "{body} -> {answer}");
                batches += 1;
                published += results.iter().filter(|r| r["delivered"].is_u64()).count();
                for result in results {
                    let ok = result["delivered"].is_u64() || result["error"].is_string();
                    assert!(ok, "{body} -> {result}");
                }
            }
            (_, 200) => assert!(answer["delivered"].is_u64(), "{body} -> {answer}"),
            (_, 400) => assert!(answer["error"].is_string(), "{body} -> {answer}"),
            (_, other) => panic!("{body} -> {other} {answer}"),
        }
    }
    // The generator reaches both forms and items that are taken, not only refusals.
    assert!(batches > 20 && published > 0, "{batches} batches, {published} published");
    assert_eq!(server.get("/healthz").await.0, 200);
    server.stop().await;
}
