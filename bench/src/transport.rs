//! The subscriber's transport (`--transport`): STOMP over WebSocket (the yardstick), the
//! JSON protocol (`/ws/json`), SockJS over its WebSocket or its `xhr_streaming` transport
//! (STOMP inside SockJS frames), and Server-Sent Events (`/sse/tasks`, task updates only).
//! Each opens an authenticated subscription and yields the bodies delivered to it, so
//! every scenario measures each transport with the same code around it.

use std::{collections::VecDeque, pin::Pin, time::Duration};

use futures_util::{SinkExt, Stream, StreamExt, stream};
use serde_json::{Value, json};
use taskpulse_shared::{resume::TASKS_DESTINATION, stomp::Command};
use taskpulse_testkit::{Socket, StompClient};
use tokio_tungstenite::tungstenite::Message;

/// How long opening one subscription may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A subscriber's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Transport {
    /// STOMP over WebSocket at `/ws`.
    Stomp,
    /// The JSON protocol at `/ws/json`.
    Json,
    /// STOMP in SockJS frames over `/ws/{server}/{session}/websocket`.
    SockjsWebsocket,
    /// STOMP in SockJS frames over `xhr_streaming` (receiving) and `xhr_send` (sending).
    SockjsXhrStreaming,
    /// STOMP in SockJS frames over `xhr` polling (receiving) and `xhr_send` (sending).
    SockjsXhrPolling,
    /// `GET /sse/tasks` with a ticket: the user's task updates only.
    Sse,
}

/// The bodies a subscription receives, in order; it ends when the connection does.
pub(crate) type Bodies = Pin<Box<dyn Stream<Item = String> + Send>>;

/// Where the server is: `ws_url` is `--url` (`ws://host/ws`).
#[derive(Debug, Clone)]
pub(crate) struct Server {
    ws_url: String,
    http_base: String,
    http: reqwest::Client,
}

impl Server {
    pub(crate) fn new(ws_url: &str) -> Server {
        let http_base = ws_url
            .replacen("ws://", "http://", 1)
            .trim_end_matches("/ws")
            .trim_end_matches('/')
            .into();
        // Streaming responses each hold a connection; sends share a few.
        let http =
            reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("an HTTP client");
        Server { ws_url: ws_url.into(), http_base, http }
    }
}

impl Transport {
    /// Opens a connection for `token` and subscribes it to `destination` (for SSE, which
    /// streams task updates only, it must be the tasks destination); resolves once the
    /// server confirmed the subscription.
    pub(crate) async fn subscribe(
        self,
        server: &Server,
        token: &str,
        destination: &str,
    ) -> Result<Bodies, String> {
        let open = async {
            match self {
                Transport::Stomp => stomp(server, token, destination).await,
                Transport::Json => json_protocol(server, token, destination).await,
                Transport::SockjsWebsocket => sockjs_websocket(server, token, destination).await,
                Transport::SockjsXhrStreaming => {
                    sockjs_xhr(server, "xhr_streaming", token, destination).await
                }
                Transport::SockjsXhrPolling => sockjs_xhr(server, "xhr", token, destination).await,
                Transport::Sse => sse(server, token, destination).await,
            }
        };
        tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .map_err(|_| format!("{self:?}: no subscription within {OPEN_TIMEOUT:?}"))?
    }
}

async fn stomp(server: &Server, token: &str, destination: &str) -> Result<Bodies, String> {
    let mut conn = StompClient::try_signed_in(&server.ws_url, token).await.map_err(|e| e.0)?;
    conn.try_subscribe("0", destination, "auto", &[]).await.map_err(|e| e.0)?;
    Ok(Box::pin(stream::unfold(conn, |mut conn| async move {
        loop {
            let frame = conn.next().await?;
            if frame.command == Command::Message {
                return Some((String::from_utf8_lossy(&frame.body).into_owned(), conn));
            }
        }
    })))
}

/// The JSON protocol: `auth`, `subscribe`, then `chat_message` contents (topics) or
/// `task_progress` data (the tasks channel).
async fn json_protocol(server: &Server, token: &str, destination: &str) -> Result<Bodies, String> {
    let url = format!("{}/json", server.ws_url.trim_end_matches('/'));
    let (mut socket, _) =
        tokio_tungstenite::connect_async(url).await.map_err(|e| format!("connect: {e}"))?;
    let messages = [
        json!({"type": "auth", "token": token}),
        json!({"type": "subscribe", "channels": [destination]}),
    ];
    for message in messages {
        socket.send(Message::text(message.to_string())).await.map_err(|e| e.to_string())?;
    }
    loop {
        let Some(Ok(Message::Text(text))) = socket.next().await else {
            return Err("closed before subscribed".into());
        };
        let answer: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        match answer["type"].as_str() {
            Some("subscribed") => break,
            Some("auth_success" | "task_progress") => {}
            _ => return Err(format!("refused: {answer}")),
        }
    }
    Ok(Box::pin(stream::unfold(socket, |mut socket: Socket| async move {
        loop {
            let Ok(Message::Text(text)) = socket.next().await? else { continue };
            let Ok(value) = serde_json::from_str::<Value>(&text) else { return None };
            match value["type"].as_str() {
                Some("chat_message") => {
                    let content = value["content"].as_str().unwrap_or_default().to_owned();
                    return Some((content, socket));
                }
                Some("task_progress") => return Some((value["data"].to_string(), socket)),
                _ => {}
            }
        }
    })))
}

/// The STOMP frames a SockJS client sends to connect and subscribe.
fn stomp_opening(token: &str, destination: &str) -> [String; 2] {
    [
        format!(
            "CONNECT\naccept-version:1.2\nhost:x\nAuthorization:Bearer {token}\n\
             heart-beat:0,0\n\n\0"
        ),
        format!("SUBSCRIBE\nid:0\ndestination:{destination}\nreceipt:live\n\n\0"),
    ]
}

/// The STOMP frames of one SockJS frame (`a[...]`); none for `o`, `h` and anything else.
fn sockjs_messages(frame: &str) -> Vec<String> {
    frame.strip_prefix('a').and_then(|array| serde_json::from_str(array).ok()).unwrap_or_default()
}

/// The body of a STOMP MESSAGE frame's text; `None` for any other frame.
fn message_body(frame: &str) -> Option<String> {
    let rest = frame.strip_prefix("MESSAGE\n")?;
    let (_, body) = rest.split_once("\n\n")?;
    Some(body.trim_end_matches('\0').to_owned())
}

/// A random SockJS session id.
fn session_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{:x}{:x}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn sockjs_websocket(
    server: &Server,
    token: &str,
    destination: &str,
) -> Result<Bodies, String> {
    let url = format!("{}/000/{}/websocket", server.ws_url.trim_end_matches('/'), session_id());
    let (mut socket, _) =
        tokio_tungstenite::connect_async(url).await.map_err(|e| format!("connect: {e}"))?;
    let Some(Ok(Message::Text(open))) = socket.next().await else {
        return Err("no SockJS open frame".into());
    };
    if open.as_str() != "o" {
        return Err(format!("not a SockJS open frame: {open}"));
    }
    let opening = stomp_opening(token, destination);
    let text = serde_json::to_string(&opening).map_err(|e| e.to_string())?;
    socket.send(Message::text(text)).await.map_err(|e| e.to_string())?;
    live_bodies(socket).await
}

/// Where a SockJS client reads its frames from: a WebSocket's text messages, or a streaming
/// or polled response's lines.
trait Frames: Send + Sized + 'static {
    /// The next frame; `None` once the connection ended.
    fn next_frame(&mut self) -> impl Future<Output = Option<String>> + Send;
}

impl Frames for Socket {
    async fn next_frame(&mut self) -> Option<String> {
        loop {
            match self.next().await? {
                Ok(Message::Text(frame)) => return Some(frame.as_str().to_owned()),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Frames for Lines {
    async fn next_frame(&mut self) -> Option<String> {
        self.next().await
    }
}

/// Reads `frames` until the subscription's RECEIPT, then yields the MESSAGE bodies (those
/// that came before the RECEIPT first).
async fn live_bodies(mut frames: impl Frames) -> Result<Bodies, String> {
    let mut early = VecDeque::new();
    'live: loop {
        let frame = frames.next_frame().await.ok_or("closed before the RECEIPT")?;
        for message in sockjs_messages(&frame) {
            if message.starts_with("ERROR") {
                return Err(message);
            }
            if message.starts_with("RECEIPT") {
                break 'live;
            }
            early.extend(message_body(&message));
        }
    }
    Ok(Box::pin(stream::unfold((frames, early), |(mut frames, mut pending)| async move {
        loop {
            if let Some(body) = pending.pop_front() {
                return Some((body, (frames, pending)));
            }
            let frame = frames.next_frame().await?;
            pending.extend(sockjs_messages(&frame).iter().filter_map(|m| message_body(m)));
        }
    })))
}

/// Reads the lines of a streaming response, one SockJS frame (or SSE line) each; with
/// `reopen`, a response that ends (SockJS's `sockjs.stream_bytes` cut) is followed by a
/// new POST to that URL, as sockjs-client does.
struct Lines {
    response: reqwest::Response,
    buffer: Vec<u8>,
    reopen: Option<(reqwest::Client, String)>,
}

impl Lines {
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]);
                return Some(line.trim_end_matches('\r').to_owned());
            }
            match self.response.chunk().await.ok()? {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => {
                    let (http, url) = self.reopen.as_ref()?;
                    self.response = http.post(url).send().await.ok()?;
                    self.buffer.clear();
                }
            }
        }
    }
}

/// SockJS over `xhr_streaming` (reopened after each `sockjs.stream_bytes`) or `xhr`
/// (polled again after each answer), sending with `xhr_send`.
async fn sockjs_xhr(
    server: &Server,
    receiver: &str,
    token: &str,
    destination: &str,
) -> Result<Bodies, String> {
    let base = format!("{}/ws/000/{}", server.http_base, session_id());
    let receive = format!("{base}/{receiver}");
    let response =
        server.http.post(&receive).send().await.map_err(|e| format!("{receiver}: {e}"))?;
    let reopen = Some((server.http.clone(), receive));
    let mut lines = Lines { response, buffer: Vec::new(), reopen };
    while lines.next().await.ok_or("closed before o")? != "o" {}
    let opening =
        serde_json::to_string(&stomp_opening(token, destination)).map_err(|e| e.to_string())?;
    let sent = server.http.post(format!("{base}/xhr_send")).body(opening).send().await;
    match sent {
        Ok(answer) if answer.status() == 204 => {}
        Ok(answer) => return Err(format!("xhr_send: {}", answer.status())),
        Err(e) => return Err(format!("xhr_send: {e}")),
    }
    live_bodies(lines).await
}

/// `POST /api/auth/ticket`, then `GET /sse/tasks?ticket=`: the `data` of each event.
async fn sse(server: &Server, token: &str, destination: &str) -> Result<Bodies, String> {
    if destination != TASKS_DESTINATION {
        return Err(format!("SSE streams {TASKS_DESTINATION} only, not {destination}"));
    }
    let ticket: Value = server
        .http
        .post(format!("{}/api/auth/ticket", server.http_base))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("ticket: {e}"))?
        .json()
        .await
        .map_err(|e| format!("ticket: {e}"))?;
    let ticket = ticket["ticket"].as_str().ok_or_else(|| format!("no ticket: {ticket}"))?;
    let response = server
        .http
        .get(format!("{}/sse/tasks?ticket={ticket}", server.http_base))
        .send()
        .await
        .map_err(|e| format!("sse: {e}"))?;
    if response.status() != 200 {
        return Err(format!("sse: {}", response.status()));
    }
    let lines = Lines { response, buffer: Vec::new(), reopen: None };
    Ok(Box::pin(stream::unfold(lines, |mut lines| async move {
        loop {
            let line = lines.next().await?;
            if let Some(data) = line.strip_prefix("data:") {
                return Some((data.trim_start().to_owned(), lines));
            }
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stomp_frames_come_out_of_sockjs_frames() {
        let frame = r#"a["MESSAGE\ndestination:/topic/x\n\n1:2:xx\u0000","RECEIPT\nreceipt-id:r\n\n\u0000"]"#;
        let messages = sockjs_messages(frame);
        assert_eq!(messages.len(), 2);
        assert_eq!(message_body(&messages[0]).as_deref(), Some("1:2:xx"));
        assert_eq!(message_body(&messages[1]), None);
        assert!(sockjs_messages("h").is_empty() && sockjs_messages("o").is_empty());
    }
}
