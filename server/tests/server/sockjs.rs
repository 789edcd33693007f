//! SockJS under `/ws` against the real server, with the framing done by hand: `/ws/info`,
//! and STOMP inside SockJS frames over the WebSocket transport.

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
async fn info_says_websocket_and_answers_cors() {
    let server = TestServer::stomp(|_| {}).await;
    let http = reqwest::Client::new();
    let info = http
        .get(format!("http://{}/ws/info?t=1", server.addr))
        .header("origin", "http://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200);
    assert_eq!(info.headers()["access-control-allow-origin"], "http://app.example");
    assert_eq!(info.headers()["access-control-allow-credentials"], "true");
    assert!(info.headers()["cache-control"].to_str().unwrap().contains("no-store"));
    let body: Value = info.json().await.unwrap();
    assert_eq!(body["websocket"], true);
    assert_eq!(body["cookie_needed"], false);
    assert!(body["entropy"].is_u64(), "{body}");
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("http://{}/ws/info", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
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
