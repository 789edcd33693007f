//! SockJS under `/ws` against the real server, with the framing done by hand: `/ws/info`
//! and its origin policy, STOMP inside SockJS frames over the WebSocket transport and over
//! the HTTP transports (polling, streaming, sending, the session's end).

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use taskpulse_shared::TaskProgressDto;
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

use crate::fixture::{PATIENCE, TestServer};

struct SockJs {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl SockJs {
    async fn open(server: &TestServer, path: &str) -> SockJs {
        let url = format!("ws://{}{path}", server.addr);
        let (socket, _) = tokio_tungstenite::connect_async(url).await.expect("upgrades");
        let mut client = SockJs { socket };
        assert_eq!(client.frame().await, "o", "SockJS opens with o");
        client
    }

    /// The next SockJS frame as text; "" once closed.
    async fn frame(&mut self) -> String {
        loop {
            match tokio::time::timeout(PATIENCE, self.socket.next()).await.expect("in time") {
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return String::new(),
                Some(Ok(_)) => {}
            }
        }
    }

    /// The STOMP frames of the next `a[...]` frame (heart-beats included).
    async fn messages(&mut self) -> Vec<String> {
        let frame = self.frame().await;
        let array = frame.strip_prefix('a').unwrap_or_else(|| panic!("not an a-frame: {frame:?}"));
        serde_json::from_str(array).expect("a JSON array of strings")
    }

    async fn send(&mut self, stomp: &[&str]) {
        let text = serde_json::to_string(stomp).unwrap();
        self.socket.send(Message::text(text)).await.expect("sent");
    }
}

#[tokio::test]
async fn info_says_websocket_and_answers_cors_for_allowed_origins_only() {
    let server = TestServer::stomp(|c| {
        c.settings.api.cors_origins = vec!["http://app.example".into()];
    })
    .await;
    let http = reqwest::Client::new();
    let info = |origin: &str| {
        http.get(format!("http://{}/ws/info?t=1", server.addr)).header("origin", origin).send()
    };
    let allowed = info("http://app.example").await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["access-control-allow-origin"], "http://app.example");
    assert_eq!(allowed.headers()["access-control-allow-credentials"], "true");
    assert!(allowed.headers()["cache-control"].to_str().unwrap().contains("no-store"));
    let body: Value = allowed.json().await.unwrap();
    assert_eq!(body["websocket"], true);
    assert_eq!(body["cookie_needed"], false);
    assert!(body["entropy"].is_u64(), "{body}");
    // The server's own pages may, whatever the setting.
    let own = info(&format!("http://{}", server.addr)).await.unwrap();
    assert_eq!(own.status(), 200);
    // Any other origin is refused, with the setting named.
    let other = info("http://evil.example").await.unwrap();
    assert_eq!(other.status(), 403);
    assert!(other.text().await.unwrap().contains("cors_origins"));
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("http://{}/ws/info", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    // The XHR transports' preflight allows what the page asks for.
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("http://{}/ws/1/p/xhr_send", server.addr))
        .header("origin", "http://app.example")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-headers"], "content-type");
    assert_eq!(preflight.headers()["access-control-allow-origin"], "http://app.example");
    // The iframe page loads the configured client, and is cached by its ETag.
    let page = http.get(format!("http://{}/ws/iframe.html", server.addr)).send().await.unwrap();
    let etag = page.headers()["etag"].clone();
    let html = page.text().await.unwrap();
    assert!(html.contains("SockJS.bootstrap_iframe()") && html.contains("sockjs-client@1.6.1"));
    let again = http
        .get(format!("http://{}/ws/iframe.html", server.addr))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    server.stop().await;
}

/// A client of SockJS's HTTP transports, by hand.
struct SockJsHttp {
    http: reqwest::Client,
    base: String,
}

impl SockJsHttp {
    fn new(server: &TestServer, session: &str) -> SockJsHttp {
        SockJsHttp {
            http: reqwest::Client::new(),
            base: format!("http://{}/ws/000/{session}", server.addr),
        }
    }

    /// One `xhr` poll: its frame, without the newline.
    async fn poll(&self) -> String {
        let response = self.http.post(format!("{}/xhr", self.base)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        text.strip_suffix('\n')
            .unwrap_or_else(|| panic!("a frame ends with a newline: {text:?}"))
            .into()
    }

    /// Polls until a STOMP frame starting with `prefix` arrives; every message seen.
    async fn poll_until(&self, prefix: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let frame = self.poll().await;
            if let Some(array) = frame.strip_prefix('a') {
                let messages: Vec<String> = serde_json::from_str(array).expect("strings");
                let done = messages.iter().any(|m| m.starts_with(prefix));
                seen.extend(messages);
                if done {
                    return seen;
                }
            } else {
                assert!(frame == "h", "only messages or heart-beats while open: {frame:?}");
            }
        }
    }

    async fn send(&self, stomp: &[&str]) -> reqwest::Response {
        let body = serde_json::to_string(stomp).unwrap();
        self.http.post(format!("{}/xhr_send", self.base)).body(body).send().await.unwrap()
    }
}

fn connect_frame(token: &str) -> String {
    format!(
        "CONNECT\naccept-version:1.2\nhost:x\nAuthorization:Bearer {token}\nheart-beat:0,0\n\n\0"
    )
}

#[tokio::test]
async fn xhr_polling_carries_stomp_to_a_completed_task_and_refuses_what_it_must() {
    let server = TestServer::stomp(|c| {
        c.settings.demo.duration_ms = 200;
        c.settings.demo.steps = 2;
        c.settings.sockjs.heartbeat_s = 1;
    })
    .await;
    let api = server.api();
    let token = api.register("alice").await;
    let client = SockJsHttp::new(&server, "polling1");
    // Sending to a session that does not exist.
    let missing = client.send(&["x"]).await;
    assert_eq!(missing.status(), 404);
    assert_eq!(client.poll().await, "o");
    assert_eq!(client.send(&[&connect_frame(&token)]).await.status(), 204);
    let connected = client.poll_until("CONNECTED\n").await;
    assert!(connected.iter().any(|m| m.contains("user-name:alice")), "{connected:?}");
    // Another address that knows the session id can neither read nor write it.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let stolen = other.post(format!("{}/xhr", client.base)).send().await.unwrap();
    assert_eq!(stolen.status(), 404);
    let stolen = other.post(format!("{}/xhr_send", client.base)).body("[\"x\"]").send().await;
    assert_eq!(stolen.unwrap().status(), 404);
    // Nothing to say: the poll ends with a heart-beat after sockjs.heartbeat_s.
    assert_eq!(client.poll().await, "h");
    let subscribe = "SUBSCRIBE\nid:t\ndestination:/user/queue/tasks-progress\nreceipt:r1\n\n\0";
    assert_eq!(client.send(&[subscribe]).await.status(), 204);
    client.poll_until("RECEIPT\nreceipt-id:r1").await;
    let task_no = api.submit(&token, "a lighthouse").await;
    let mut last = None;
    while last.as_ref().is_none_or(|u: &TaskProgressDto| !u.status.is_terminal()) {
        for message in client.poll_until("MESSAGE\n").await {
            let Some((_, body)) = message.split_once("\n\n") else { continue };
            if let Ok(update) = serde_json::from_str::<TaskProgressDto>(body.trim_end_matches('\0'))
                && update.task_no == task_no
            {
                last = Some(update);
            }
        }
    }
    assert_eq!(last.unwrap().status, taskpulse_shared::TaskStatus::Completed);

    // A second poll while one is open is told so; the first carries on.
    let first = tokio::spawn({
        let http = client.http.clone();
        let url = format!("{}/xhr", client.base);
        async move { http.post(url).send().await.unwrap().text().await.unwrap() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(client.poll().await, "c[2010,\"Another connection still open\"]");
    assert_eq!(first.await.unwrap(), "h\n");

    // Broken sends name the problem and leave the session open.
    let empty = client.http.post(format!("{}/xhr_send", client.base)).send().await.unwrap();
    assert_eq!(empty.status(), 400);
    assert!(empty.text().await.unwrap().contains("Payload expected"));
    let broken =
        client.http.post(format!("{}/xhr_send", client.base)).body("[1,").send().await.unwrap();
    assert_eq!(broken.status(), 400);
    assert!(broken.text().await.unwrap().contains("Broken JSON encoding"));
    let huge = "x".repeat(64 * 1024 * 6 + 1);
    let huge = client.http.post(format!("{}/xhr_send", client.base)).body(huge).send().await;
    assert_eq!(huge.unwrap().status(), 413);
    // A STOMP frame the broker refuses: ERROR, then the session's close, for every later poll.
    assert_eq!(client.send(&["NONSENSE\n\n\0"]).await.status(), 204);
    client.poll_until("ERROR\n").await;
    let close = client.poll().await;
    assert!(close.starts_with("c[") && !close.starts_with("c[2010"), "{close:?}");
    assert_eq!(client.poll().await, close);
    server.stop().await;
}

#[tokio::test]
async fn streaming_transports_frame_as_their_clients_expect_and_end_after_stream_bytes() {
    let server = TestServer::stomp(|c| {
        c.settings.sockjs.stream_bytes = 4096;
        c.settings.sockjs.heartbeat_s = 1;
    })
    .await;
    let api = server.api();
    let token = api.register("bob").await;
    let http = reqwest::Client::new();
    let base = format!("http://{}/ws/000", server.addr);

    // xhr_streaming: 2 KiB of h and a newline, o, then frames; ends past stream_bytes.
    let stream = SockJsHttp::new(&server, "stream1");
    let mut response = http.post(format!("{base}/stream1/xhr_streaming")).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/javascript; charset=UTF-8");
    let mut text = String::new();
    while !text.contains("\no\n") {
        text.push_str(std::str::from_utf8(&response.chunk().await.unwrap().unwrap()).unwrap());
    }
    assert!(text.starts_with(&format!("{}\no\n", "h".repeat(2048))), "{text:.40}");
    assert_eq!(stream.send(&[&connect_frame(&token)]).await.status(), 204);
    // Heart-beats and a CONNECTED; then enough RECEIPTs to pass 4 KiB end the response.
    for i in 0..100 {
        let receipt = format!("SUBSCRIBE\nid:s{i}\ndestination:/topic/t{i}\nreceipt:r{i}\n\n\0");
        stream.send(&[&receipt]).await;
    }
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.len() >= 4096, "{}", text.len());
    assert!(text.contains("CONNECTED"), "{text:.3000}");
    // The next streaming request takes over the same session: no second o.
    let next = http.post(format!("{base}/stream1/xhr_streaming")).send().await.unwrap();
    let mut more = String::new();
    let mut next = next;
    while !more.contains("RECEIPT") {
        more.push_str(std::str::from_utf8(&next.chunk().await.unwrap().unwrap()).unwrap());
    }
    assert!(!more.contains("\no\n"), "{more:.3000}");
    drop(next);

    // eventsource: one event per frame.
    let mut events = http.get(format!("{base}/events1/eventsource")).send().await.unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream; charset=UTF-8");
    let mut text = String::new();
    while !text.contains("data: h\r\n\r\n") {
        text.push_str(std::str::from_utf8(&events.chunk().await.unwrap().unwrap()).unwrap());
    }
    assert!(text.starts_with("\r\ndata: o\r\n\r\n"), "{text:?}");
    drop(events);

    // htmlfile needs a callback name, and nothing else.
    let refused = http.get(format!("{base}/html1/htmlfile")).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("callback"));
    let refused = http.get(format!("{base}/html1/htmlfile?c=alert(1)")).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let mut page = http.get(format!("{base}/html1/htmlfile?c=cb.x")).send().await.unwrap();
    let mut text = String::new();
    while !text.contains("p(\"o\")") {
        text.push_str(std::str::from_utf8(&page.chunk().await.unwrap().unwrap()).unwrap());
    }
    assert!(text.contains("var c = parent.cb.x;"), "{text}");
    drop(page);

    // jsonp: one callback call per request; jsonp_send takes a form field d.
    let jsonp = http.get(format!("{base}/jsonp1/jsonp?c=cb")).send().await.unwrap();
    assert_eq!(jsonp.text().await.unwrap(), "/**/cb(\"o\");\r\n");
    let sent = http
        .post(format!("{base}/jsonp1/jsonp_send"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "d={}",
            url::form_urlencoded::byte_serialize(
                serde_json::to_string(&[connect_frame(&token)]).unwrap().as_bytes()
            )
            .collect::<String>()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.text().await.unwrap(), "ok");
    let mut reply = String::new();
    while !reply.contains("CONNECTED") {
        reply = http
            .get(format!("{base}/jsonp1/jsonp?c=cb"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    assert!(reply.starts_with("/**/cb(\"a[\\\"CONNECTED"), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn a_session_nobody_receives_ends_after_the_disconnect_delay() {
    let server = TestServer::stomp(|c| c.settings.sockjs.disconnect_delay_s = 1).await;
    let api = server.api();
    let token = api.register("carol").await;
    let client = SockJsHttp::new(&server, "gone1");
    assert_eq!(client.poll().await, "o");
    assert_eq!(client.send(&[&connect_frame(&token)]).await.status(), 204);
    // The client stops polling; within the delay (and a sweep) the session is gone.
    let ended = async {
        while client.send(&["\n"]).await.status() == 204 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(PATIENCE, ended).await.expect("the session ends");
    // The same id opens a new session.
    assert_eq!(client.poll().await, "o");
    server.stop().await;
}

#[tokio::test]
async fn stomp_flows_inside_sockjs_frames_to_a_completed_task() {
    let server = TestServer::stomp(|c| {
        c.settings.demo.duration_ms = 200;
        c.settings.demo.steps = 2;
    })
    .await;
    let api = server.api();
    let token = api.register("alice").await;
    let mut client = SockJs::open(&server, "/ws/123/a1b2c3/websocket").await;
    let connect = format!(
        "CONNECT\naccept-version:1.2\nhost:x\nAuthorization:Bearer {token}\nheart-beat:0,0\n\n\0"
    );
    client.send(&[&connect]).await;
    let connected = client.messages().await;
    assert!(connected[0].starts_with("CONNECTED\n"), "{connected:?}");
    assert!(connected[0].contains("user-name:alice"), "{connected:?}");
    let subscribe = "SUBSCRIBE\nid:t\ndestination:/user/queue/tasks-progress\nreceipt:r1\n\n\0";
    client.send(&[subscribe]).await;
    let mut receipt = false;
    while !receipt {
        receipt = client.messages().await.iter().any(|m| m.starts_with("RECEIPT\nreceipt-id:r1"));
    }
    let task_no = api.submit(&token, "a lighthouse").await;
    let mut last = None;
    while last.as_ref().is_none_or(|u: &TaskProgressDto| !u.status.is_terminal()) {
        for message in client.messages().await {
            let Some((_, body)) = message.split_once("\n\n") else { continue };
            let body = body.trim_end_matches('\0');
            if let Ok(update) = serde_json::from_str::<TaskProgressDto>(body)
                && update.task_no == task_no
            {
                last = Some(update);
            }
        }
    }
    assert_eq!(last.unwrap().status, taskpulse_shared::TaskStatus::Completed);

    // Not a SockJS message: the session ends with an ERROR and SockJS's close frame.
    client.socket.send(Message::text("{not json")).await.unwrap();
    let error = client.messages().await;
    assert!(error[0].starts_with("ERROR\n"), "{error:?}");
    let close = client.frame().await;
    assert!(close.starts_with("c[1008,"), "{close:?}");

    // Paths with a dot or an empty id are not SockJS sessions.
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{}/ws/1.2/x/websocket", server.addr)).await;
    assert!(refused.is_err(), "a dotted server id is refused");
    // The raw WebSocket URL speaks the same framing.
    let mut raw = SockJs::open(&server, "/ws/websocket").await;
    raw.send(&[&connect]).await;
    assert!(raw.messages().await[0].starts_with("CONNECTED\n"));
    server.stop().await;
}
