//! A STOMP-over-WebSocket client for tests and the load tool: frames out through the shared
//! encoder, frames in through the shared decoder, over a real WebSocket; and the HS256 token
//! minter they sign in with.
//!
//! The `try_*` methods return errors (the load tool counts failed connections); the others
//! panic with a message saying what was expected, as a test wants.

use std::{
    collections::VecDeque,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt};
use taskpulse_shared::{
    TaskProgressDto,
    stomp::{Command, Decoder, Frame, Limits, Version},
};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

/// How long the panicking methods wait for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// An HS256 token for `user` signed with `secret`, expiring `ttl_s` seconds from now
/// (negative: already expired).
///
/// # Panics
/// Never for an HS256 key; signing cannot fail.
pub fn token(secret: &str, user: &str, ttl_s: i64) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: i64,
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims { sub: user, exp: now + ttl_s },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

/// Why a client operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StompError(pub String);

impl std::fmt::Display for StompError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StompError {}

fn failed(what: &str, error: impl std::fmt::Display) -> StompError {
    StompError(format!("{what}: {error}"))
}

/// The WebSocket under the client.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One STOMP connection.
pub struct StompClient {
    /// The WebSocket, for tests that send what no STOMP client would.
    pub socket: Socket,
    /// Frames in.
    pub decoder: Decoder,
    /// The negotiated subprotocol, if any.
    pub subprotocol: Option<String>,
    /// Kinds of WebSocket messages received: true for text.
    pub text_messages: Vec<bool>,
    /// Heart-beat EOLs received.
    pub heartbeats: usize,
    /// Frames read ahead while waiting for a RECEIPT.
    pending: VecDeque<Frame>,
}

/// A frame of `command` with `headers` and `body`.
pub fn frame(command: Command, headers: &[(&str, &str)], body: impl Into<bytes::Bytes>) -> Frame {
    let mut frame = Frame::new(command);
    for (name, value) in headers {
        frame.headers.push(name, value);
    }
    frame.with_body(body)
}

impl StompClient {
    /// Opens the WebSocket offering `subprotocols`.
    ///
    /// # Errors
    /// The handshake failed.
    pub async fn try_open(url: &str, subprotocols: &[&str]) -> Result<StompClient, StompError> {
        let mut request = url.into_client_request().map_err(|e| failed(url, e))?;
        if !subprotocols.is_empty() {
            let offer = HeaderValue::from_str(&subprotocols.join(", "))
                .map_err(|e| failed("subprotocols", e))?;
            request.headers_mut().insert("Sec-WebSocket-Protocol", offer);
        }
        let (socket, response) =
            tokio_tungstenite::connect_async(request).await.map_err(|e| failed(url, e))?;
        let subprotocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(StompClient {
            socket,
            decoder: Decoder::new(Version::V1_2, Limits::unbounded()),
            subprotocol,
            text_messages: Vec::new(),
            heartbeats: 0,
            pending: VecDeque::new(),
        })
    }

    /// [`StompClient::try_open`], panicking on failure.
    pub async fn open(url: &str, subprotocols: &[&str]) -> StompClient {
        StompClient::try_open(url, subprotocols).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Opens STOMP 1.2 over `url` and CONNECTs with `token` as a Bearer credential.
    ///
    /// # Errors
    /// The handshake failed or the server did not answer CONNECTED.
    pub async fn try_signed_in(url: &str, token: &str) -> Result<StompClient, StompError> {
        let mut client = StompClient::try_open(url, &["v12.stomp"]).await?;
        let auth = format!("Bearer {token}");
        let answer = client
            .try_connect(&[
                ("accept-version", "1.2"),
                ("heart-beat", "0,0"),
                ("Authorization", &auth),
            ])
            .await?;
        if answer.command != Command::Connected {
            return Err(StompError(format!("{}: {:?}", answer.command, answer.header("message"))));
        }
        Ok(client)
    }

    /// Sends CONNECT (accept-version 1.0-1.2 unless given) and returns the answer.
    ///
    /// # Errors
    /// The connection failed or closed before an answer.
    pub async fn try_connect(&mut self, headers: &[(&str, &str)]) -> Result<Frame, StompError> {
        let mut connect = Frame::new(Command::Connect);
        if !headers.iter().any(|(n, _)| *n == "accept-version") {
            connect.headers.push("accept-version", "1.0,1.1,1.2");
        }
        connect.headers.push("host", "localhost");
        for (name, value) in headers {
            connect.headers.push(name, value);
        }
        self.try_send(&connect).await?;
        let answer =
            self.try_recv(PATIENCE).await.ok_or(StompError("no answer to CONNECT".into()))?;
        if let Some(version) = answer.header("version").and_then(Version::parse) {
            self.decoder.set_version(version);
        }
        Ok(answer)
    }

    /// [`StompClient::try_connect`], panicking on failure.
    pub async fn connect(&mut self, headers: &[(&str, &str)]) -> Frame {
        self.try_connect(headers).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Queues `frame` (encoded as 1.2, one binary message) without flushing.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn feed(&mut self, frame: &Frame) -> Result<(), StompError> {
        let bytes = frame.to_bytes(Version::V1_2).map_err(|e| failed("encode", e))?;
        self.socket.feed(Message::Binary(bytes)).await.map_err(|e| failed("send", e))
    }

    /// Writes everything fed.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn flush(&mut self) -> Result<(), StompError> {
        self.socket.flush().await.map_err(|e| failed("send", e))
    }

    /// Sends `frame` encoded as 1.2, in one binary message.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn try_send(&mut self, frame: &Frame) -> Result<(), StompError> {
        self.feed(frame).await?;
        self.flush().await
    }

    /// [`StompClient::try_send`], panicking on failure.
    pub async fn send(&mut self, frame: &Frame) {
        self.try_send(frame).await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Sends a WebSocket message as it is.
    pub async fn send_raw(&mut self, message: Message) {
        self.socket.send(message).await.unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// Sends a frame built from `command`, `headers` and `body`.
    pub async fn frame(&mut self, command: Command, headers: &[(&str, &str)], body: &str) {
        self.send(&frame(command, headers, body.as_bytes().to_vec())).await;
    }

    /// SUBSCRIBE with a receipt, waiting for it (a tasks subscription's snapshot or replay
    /// comes before the RECEIPT; those MESSAGEs are kept for the next reads).
    ///
    /// # Errors
    /// The connection failed, or something other than MESSAGE or the RECEIPT arrived.
    pub async fn try_subscribe(
        &mut self,
        id: &str,
        destination: &str,
        ack: &str,
        extra: &[(&str, &str)],
    ) -> Result<(), StompError> {
        let receipt = format!("sub-{id}");
        let mut headers =
            vec![("id", id), ("destination", destination), ("ack", ack), ("receipt", &receipt)];
        headers.extend_from_slice(extra);
        self.try_send(&frame(Command::Subscribe, &headers, Vec::new())).await?;
        let mut early = Vec::new();
        loop {
            let answer = self.try_recv(PATIENCE).await;
            match answer {
                Some(f)
                    if f.command == Command::Receipt
                        && f.header("receipt-id") == Some(&receipt) =>
                {
                    break;
                }
                Some(f) if f.command == Command::Message => early.push(f),
                other => {
                    return Err(StompError(format!("expected RECEIPT {receipt}, got {other:?}")));
                }
            }
        }
        self.pending.extend(early);
        Ok(())
    }

    /// [`StompClient::try_subscribe`] without extra headers, panicking on failure.
    pub async fn subscribe(&mut self, id: &str, destination: &str, ack: &str) {
        self.subscribe_with(id, destination, ack, &[]).await;
    }

    /// [`StompClient::try_subscribe`] with extra headers (e.g. a resume position), panicking
    /// on failure.
    pub async fn subscribe_with(
        &mut self,
        id: &str,
        destination: &str,
        ack: &str,
        extra: &[(&str, &str)],
    ) {
        self.try_subscribe(id, destination, ack, extra).await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// Task updates for `task_no` until its terminal status (others are kept aside).
    pub async fn updates_until_done(&mut self, task_no: &str) -> Vec<TaskProgressDto> {
        let mut updates = Vec::new();
        let mut others = Vec::new();
        loop {
            let frame = self.try_recv(Duration::from_secs(30)).await.unwrap_or_else(|| {
                panic!("task {task_no} did not end; updates so far: {updates:#?}")
            });
            assert_eq!(frame.command, Command::Message, "{frame:?}");
            let update: TaskProgressDto = serde_json::from_slice(&frame.body)
                .unwrap_or_else(|e| panic!("not a task update ({e}): {frame:?}"));
            if update.task_no != task_no {
                others.push(frame);
                continue;
            }
            let done = update.status.is_terminal();
            updates.push(update);
            if done {
                break;
            }
        }
        self.pending.extend(others);
        updates
    }

    /// SENDs `body` as text/plain to `destination`.
    pub async fn send_to(&mut self, destination: &str, body: &str) {
        let headers = [("destination", destination), ("content-type", "text/plain")];
        self.frame(Command::Send, &headers, body).await;
    }

    /// The next frame, skipping heart-beats; panics after [`PATIENCE`].
    pub async fn recv(&mut self) -> Frame {
        self.try_recv(PATIENCE).await.expect("a frame within the patience window")
    }

    /// The next frame within `wait`, or `None` (timeout, connection closed, or a frame the
    /// decoder refuses).
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Frame> {
        self.read(tokio::time::Instant::now().checked_add(wait)).await
    }

    /// The next frame, however long it takes; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<Frame> {
        self.read(None).await
    }

    /// The next frame before `deadline` (if any), skipping heart-beats.
    async fn read(&mut self, deadline: Option<tokio::time::Instant>) -> Option<Frame> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        loop {
            if let Some(frame) = self.decoder.decode().ok()? {
                return Some(frame);
            }
            let message = match deadline {
                Some(deadline) => {
                    tokio::time::timeout_at(deadline, self.socket.next()).await.ok()??
                }
                None => self.socket.next().await?,
            };
            match message.ok()? {
                Message::Text(text) => {
                    self.text_messages.push(true);
                    if matches!(text.as_bytes(), b"\n" | b"\r\n") {
                        self.heartbeats += 1;
                    }
                    self.decoder.feed(text.as_bytes());
                }
                Message::Binary(bytes) => {
                    self.text_messages.push(false);
                    self.decoder.feed(&bytes);
                }
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    /// Asserts that nothing arrives within `wait`.
    pub async fn expect_nothing(&mut self, wait: Duration) {
        if let Some(frame) = self.try_recv(wait).await {
            panic!("expected no frame, got {frame:?}");
        }
    }

    /// The next frame, which must be an ERROR, after which the connection must close.
    pub async fn expect_error(&mut self) -> Frame {
        let frame = self.recv().await;
        assert_eq!(frame.command, Command::Error, "expected ERROR, got {frame:?}");
        assert!(self.closed().await, "the connection closes after an ERROR");
        frame
    }

    /// The code of the WebSocket close the server sends within [`PATIENCE`] (frames before
    /// it are skipped); `None` if the connection ends without one.
    pub async fn close_code(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await.ok()?? {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Whether the server closes the socket within [`PATIENCE`].
    pub async fn closed(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}
