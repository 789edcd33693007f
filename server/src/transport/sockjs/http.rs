//! SockJS's HTTP transports, for browsers and networks where a WebSocket does not get
//! through: a session (`/ws/{server}/{session}/...`) outlives the requests that carry it.
//! Receiving requests (`xhr` polling, `xhr_streaming`, `eventsource`, `htmlfile`, `jsonp`)
//! take what the session has written, one at a time; sending requests (`xhr_send`,
//! `jsonp_send`) hand the client's messages to it. The session itself is the STOMP driver
//! of `websocket::serve`, running over an [`HttpSocket`] instead of a WebSocket.
//!
//! What a session may hold is bounded: its client's messages wait in a channel of
//! [`INBOUND`] messages (a sender waits while it is full), and what it writes waits in an
//! [`OutQueue`] of at most [`OUT_LIMIT`] bytes (the driver waits, and the broker's
//! `limits.outbound_buffer` decides when a client that does not receive is a slow
//! consumer). A session nobody receives for `sockjs.disconnect_delay_s` ends; sessions are
//! at most `limits.max_connections`.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use axum::{
    Extension,
    body::{Body, Bytes},
    extract::{ConnectInfo, Path, Query, State, ws::Message},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::{Sink, Stream, stream};
use parking_lot::Mutex;
use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};

use super::{
    Refused, SockJsWriter, close_frame, decode, merge_frames, origin_allowed, quote,
    sockjs_headers, valid_id,
};
use crate::{
    AppState,
    broker::{Broker, Session, TransportInfo},
    config::SockJsSettings,
    metrics::Transport,
    transport::websocket::serve_with,
};

/// Client messages one session buffers for its driver; a sending request waits beyond it.
pub(crate) const INBOUND: usize = 64;

/// Bytes of written frames one session holds for its next receiving request; the driver
/// waits beyond it (and the broker's outbox fills up behind it).
pub(crate) const OUT_LIMIT: usize = 64 * 1024;

/// How often ended and abandoned sessions are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The close sent to a second receiving request while one is open.
const ANOTHER_CONNECTION: (u16, &str) = (2010, "Another connection still open");

/// What a request for a session that is not there (or not this client's) hears.
const NO_SESSION: &str = "no such SockJS session (it ended or never began)";

/// The longest `c` (callback) parameter of `htmlfile` and `jsonp`.
const MAX_CALLBACK: usize = 64;

/// The SockJS sessions of the HTTP transports, by session id.
#[derive(Debug)]
pub(crate) struct SockJsSessions {
    by_id: Mutex<HashMap<String, Arc<HttpSession>>>,
    settings: SockJsSettings,
    max_sessions: usize,
}

impl SockJsSessions {
    /// An empty set, with the task that ends abandoned sessions (it stops when the set is
    /// dropped).
    pub(crate) fn start(settings: SockJsSettings, max_sessions: usize) -> Arc<SockJsSessions> {
        let sessions = Arc::new(SockJsSessions { by_id: Mutex::default(), settings, max_sessions });
        let weak = Arc::downgrade(&sessions);
        tokio::spawn(sweep(weak));
        sessions
    }

    /// The session `id`, if `peer` is the address that opened it.
    fn get(&self, id: &str, peer: Option<IpAddr>) -> Option<Arc<HttpSession>> {
        self.by_id.lock().get(id).filter(|s| s.peer == peer).cloned()
    }

    /// The session `id`, and whether it was just opened (and its driver started).
    fn get_or_open(
        &self,
        id: &str,
        broker: &Broker,
        peer: Option<SocketAddr>,
    ) -> Result<(Arc<HttpSession>, bool), Refused> {
        let mut by_id = self.by_id.lock();
        let ip = peer.map(|p| p.ip());
        if let Some(session) = by_id.get(id) {
            if session.peer != ip {
                return Err(refuse(StatusCode::NOT_FOUND, NO_SESSION));
            }
            return Ok((session.clone(), false));
        }
        if by_id.len() >= self.max_sessions {
            let why = format!(
                "too many SockJS sessions: {} are open (limits.max_connections); try again later",
                by_id.len()
            );
            return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, why));
        }
        let (inbound, inbound_rx) = mpsc::channel(INBOUND);
        let out = Arc::new(OutQueue::default());
        let socket = HttpSocket { inbound: inbound_rx, out: out.clone() };
        let info = TransportInfo {
            peer: peer.map_or_else(|| "unknown".into(), |p| p.to_string()),
            transport: Transport::SockJsHttp,
            ..TransportInfo::default()
        };
        tokio::spawn(serve_with::<Session, SockJsWriter>(socket, broker.clone(), info));
        let session = Arc::new(HttpSession {
            peer: ip,
            inbound,
            out,
            receiving: AtomicBool::new(false),
            last_receive: Mutex::new(Instant::now()),
        });
        by_id.insert(id.to_owned(), session.clone());
        Ok((session, true))
    }
}

/// Every [`SWEEP_EVERY`], ends the sessions nobody received for the disconnect delay.
/// Dropping a session drops its inbound channel's sender: the driver reads the end and
/// the broker session closes.
async fn sweep(sessions: Weak<SockJsSessions>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(sessions) = sessions.upgrade() else { return };
        let delay = Duration::from_secs(sessions.settings.disconnect_delay_s);
        let now = Instant::now();
        sessions.by_id.lock().retain(|_, session| {
            session.receiving.load(Ordering::Acquire) || now < *session.last_receive.lock() + delay
        });
    }
}

/// One SockJS session of the HTTP transports.
#[derive(Debug)]
struct HttpSession {
    /// The address that opened it: requests from any other are answered as if it did not
    /// exist, so that a session id seen elsewhere does not let its holder read or write.
    peer: Option<IpAddr>,
    /// The client's messages, to the driver.
    inbound: mpsc::Sender<Message>,
    /// What the driver wrote, for the receiving request.
    out: Arc<OutQueue>,
    /// A receiving request is open.
    receiving: AtomicBool,
    /// When the last receiving request ended (or the session opened).
    last_receive: Mutex<Instant>,
}

/// The right to receive a session's frames, held by one request at a time.
struct Receiving(Arc<HttpSession>);

impl Receiving {
    fn take(session: Arc<HttpSession>) -> Option<Receiving> {
        session
            .receiving
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then(|| Receiving(session))
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        *self.0.last_receive.lock() = Instant::now();
        self.0.receiving.store(false, Ordering::Release);
    }
}

/// Frames the driver wrote and no request has received yet.
#[derive(Debug, Default)]
struct OutQueue {
    state: Mutex<OutState>,
    /// Something was written (or the driver ended).
    written: Notify,
}

#[derive(Debug, Default)]
struct OutState {
    /// `a[...]` frames (one STOMP frame each, as `SockJsWriter` wrote them) not yet
    /// received.
    messages: VecDeque<String>,
    /// Their bytes.
    bytes: usize,
    /// The `c` frame the session ended with; every later receiving request gets it too.
    close: Option<String>,
    /// The driver is gone.
    ended: bool,
    /// The driver, waiting for room.
    writer: Option<Waker>,
}

impl OutQueue {
    /// The next frame to send: every frame waiting, merged into one `a[...]`, or the close.
    fn take(&self) -> Option<String> {
        let mut state = self.state.lock();
        if !state.messages.is_empty() {
            let frame = merge_frames(state.messages.drain(..));
            state.bytes = 0;
            if let Some(writer) = state.writer.take() {
                writer.wake();
            }
            return Some(frame);
        }
        if state.ended && state.close.is_none() {
            state.close = Some(close_frame(3000, "Go away!"));
        }
        state.close.clone()
    }

    /// Waits up to `heartbeat` for the next frame; `None` when nothing came.
    async fn next(&self, heartbeat: Duration) -> Option<String> {
        let deadline = Instant::now() + heartbeat;
        loop {
            if let Some(frame) = self.take() {
                return Some(frame);
            }
            // A permit stored by a write since `take` makes this return at once.
            if tokio::time::timeout_at(deadline, self.written.notified()).await.is_err() {
                return None;
            }
        }
    }
}

/// The driver's side of a session: the client's messages in, frames out to [`OutQueue`].
struct HttpSocket {
    inbound: mpsc::Receiver<Message>,
    out: Arc<OutQueue>,
}

impl Stream for HttpSocket {
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inbound.poll_recv(cx).map(|next| next.map(Ok))
    }
}

impl Sink<Message> for HttpSocket {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let mut state = self.out.state.lock();
        if state.ended || state.close.is_some() {
            return Poll::Ready(Err(axum::Error::new("the SockJS session has ended")));
        }
        if state.bytes < OUT_LIMIT {
            return Poll::Ready(Ok(()));
        }
        state.writer = Some(cx.waker().clone());
        Poll::Pending
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        let mut state = self.out.state.lock();
        match item {
            Message::Text(text) => {
                state.bytes += text.len();
                state.messages.push_back(text.as_str().to_owned());
            }
            // `stomp.always_binary`: the writer's text, handed over as binary.
            Message::Binary(bytes) => {
                state.bytes += bytes.len();
                state.messages.push_back(String::from_utf8_lossy(&bytes).into_owned());
            }
            Message::Close(frame) => {
                let (code, reason) =
                    frame.as_ref().map_or((1000, ""), |f| (f.code, f.reason.as_str()));
                state.close = Some(close_frame(code, reason));
            }
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
        }
        drop(state);
        self.out.written.notify_one();
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.out.state.lock().ended = true;
        self.out.written.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for HttpSocket {
    /// The driver ended (or was aborted): receivers get the close instead of waiting.
    fn drop(&mut self) {
        self.out.state.lock().ended = true;
        self.out.written.notify_one();
    }
}

/// How a receiving transport carries frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Receiver {
    /// `POST .../xhr`: one frame per request.
    XhrPolling,
    /// `POST .../xhr_streaming`: frames separated by newlines, after a 2 KiB prelude.
    XhrStreaming,
    /// `GET .../eventsource`: one Server-Sent Event per frame.
    EventSource,
    /// `GET .../htmlfile?c=callback`: one `<script>` per frame in a page that never ends.
    HtmlFile,
    /// `GET .../jsonp?c=callback`: one frame per request, as a call of `callback`.
    Jsonp,
}

impl Receiver {
    fn streaming(self) -> bool {
        matches!(self, Receiver::XhrStreaming | Receiver::EventSource | Receiver::HtmlFile)
    }

    fn content_type(self) -> &'static str {
        match self {
            Receiver::XhrPolling | Receiver::XhrStreaming | Receiver::Jsonp => {
                "application/javascript; charset=UTF-8"
            }
            Receiver::EventSource => "text/event-stream; charset=UTF-8",
            Receiver::HtmlFile => "text/html; charset=UTF-8",
        }
    }

    /// What a streaming response starts with.
    fn prelude(self, callback: &str) -> String {
        match self {
            // Some browsers show nothing of a streamed XHR before 2 KiB have arrived.
            Receiver::XhrStreaming => format!("{}\n", "h".repeat(2048)),
            Receiver::EventSource => "\r\n".into(),
            Receiver::HtmlFile => {
                let page = format!(
                    "<!doctype html>\n<html><head>\n  <meta http-equiv=\"X-UA-Compatible\" \
                     content=\"IE=edge\" />\n  <meta http-equiv=\"Content-Type\" \
                     content=\"text/html; charset=UTF-8\" />\n</head><body><h2>Don't \
                     panic!</h2>\n  <script>\n    document.domain = document.domain;\n    var \
                     c = parent.{callback};\n    c.start();\n    function p(d) \
                     {{c.message(d);}};\n    window.onload = function() {{c.stop();}};\n  \
                     </script>"
                );
                // Padded to 1 KiB so that browsers start rendering (and running) it.
                format!("{page:<1024}\r\n")
            }
            Receiver::XhrPolling | Receiver::Jsonp => String::new(),
        }
    }

    /// One frame as this transport writes it.
    fn wrap(self, frame: &str, callback: &str) -> String {
        match self {
            Receiver::XhrPolling | Receiver::XhrStreaming => format!("{frame}\n"),
            Receiver::EventSource => format!("data: {frame}\r\n\r\n"),
            Receiver::HtmlFile => format!("<script>\np({});\n</script>\r\n", quote(frame)),
            Receiver::Jsonp => format!("/**/{callback}({});\r\n", quote(frame)),
        }
    }
}

/// The `c` parameter of `htmlfile` and `jsonp`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct CallbackQuery {
    c: Option<String>,
}

/// A callback name the page may have chosen: letters, digits, `_` and `.`, nothing a
/// script could be injected with.
fn valid_callback(callback: &str) -> bool {
    !callback.is_empty()
        && callback.len() <= MAX_CALLBACK
        && callback.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Refused {
    Refused(status, why.into())
}

/// A receiving request of `receiver` for session `(server, session)`.
async fn receive(
    receiver: Receiver,
    state: AppState,
    (server, session): (String, String),
    callback: Option<String>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    if !valid_id(&server) || !valid_id(&session) {
        return refuse(StatusCode::NOT_FOUND, "not a SockJS session path").into_response();
    }
    if let Err(refused) = origin_allowed(&state, &headers) {
        return refused.into_response();
    }
    let callback = match receiver {
        Receiver::HtmlFile | Receiver::Jsonp => match callback {
            Some(c) if valid_callback(&c) => c,
            _ => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "\"callback\" parameter required: c=<name> of letters, digits, '_' and \
                     '.', at most 64",
                )
                .into_response();
            }
        },
        _ => String::new(),
    };
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let sessions = state.sockjs.clone();
    let (session, opened) = match sessions.get_or_open(&session, &state.broker, peer) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let mut first = if receiver.streaming() { receiver.prelude(&callback) } else { String::new() };
    let settings = &sessions.settings;
    let body = match Receiving::take(session) {
        None => {
            let (code, reason) = ANOTHER_CONNECTION;
            first.push_str(&receiver.wrap(&close_frame(code, reason), &callback));
            Body::from(first)
        }
        Some(_) if opened && !receiver.streaming() => {
            first.push_str(&receiver.wrap("o", &callback));
            Body::from(first)
        }
        Some(receiving) => {
            if opened {
                first.push_str(&receiver.wrap("o", &callback));
            }
            let state = Streaming {
                receiving,
                receiver,
                callback,
                first: Some(first),
                sent: 0,
                limit: settings.stream_bytes,
                heartbeat: Duration::from_secs(settings.heartbeat_s),
                done: false,
            };
            Body::from_stream(stream::unfold(state, Streaming::next))
        }
    };
    let mut response = ([(header::CONTENT_TYPE, receiver.content_type())], body).into_response();
    sockjs_headers(&headers, response.headers_mut());
    response
}

/// A receiving response in progress.
struct Streaming {
    receiving: Receiving,
    receiver: Receiver,
    callback: String,
    /// The prelude and `o`, not yet sent.
    first: Option<String>,
    /// Bytes sent.
    sent: usize,
    /// A streaming response ends after this many bytes.
    limit: usize,
    heartbeat: Duration,
    /// The last chunk was sent.
    done: bool,
}

impl Streaming {
    /// The response's next chunk; `None` ends it.
    async fn next(mut self) -> Option<(Result<Bytes, std::convert::Infallible>, Streaming)> {
        if self.done {
            return None;
        }
        if let Some(first) = self.first.take().filter(|f| !f.is_empty()) {
            self.sent += first.len();
            return Some((Ok(Bytes::from(first)), self));
        }
        let frame = self.receiving.0.out.next(self.heartbeat).await;
        let frame = frame.unwrap_or_else(|| "h".into());
        let chunk = self.receiver.wrap(&frame, &self.callback);
        self.sent += chunk.len();
        self.done = !self.receiver.streaming() || frame.starts_with('c') || self.sent >= self.limit;
        Some((Ok(Bytes::from(chunk)), self))
    }
}

/// A sending request: the client's messages, a JSON array of strings, for the session.
async fn send(
    state: AppState,
    (server, session): (String, String),
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    payload: Result<String, Refused>,
) -> Result<(), Refused> {
    if !valid_id(&server) || !valid_id(&session) {
        return Err(refuse(StatusCode::NOT_FOUND, "not a SockJS session path"));
    }
    origin_allowed(&state, &headers)?;
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    let Some(session) = state.sockjs.get(&session, peer) else {
        return Err(refuse(StatusCode::NOT_FOUND, NO_SESSION));
    };
    let payload = payload?;
    if payload.is_empty() {
        return Err(refuse(StatusCode::BAD_REQUEST, "Payload expected."));
    }
    let strings = decode(&payload).map_err(|error| {
        refuse(StatusCode::BAD_REQUEST, format!("Broken JSON encoding: {error}"))
    })?;
    for text in strings {
        if session.inbound.send(Message::Text(text.into())).await.is_err() {
            return Err(refuse(StatusCode::NOT_FOUND, "the SockJS session has ended"));
        }
    }
    Ok(())
}

/// The body of a sending request, read up to the largest a STOMP frame may take
/// JSON-quoted.
async fn payload(state: &AppState, body: Body) -> Result<String, Refused> {
    let limit = state.broker.settings().limits.frame_size.saturating_mul(6);
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a SockJS send may have at most {limit} bytes (6 x limits.frame_size, a STOMP \
                 frame JSON-quoted)"
            ),
        )
    })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| refuse(StatusCode::BAD_REQUEST, "a SockJS send must be UTF-8"))
}

/// Every transport of a session URL, `/ws/{server}/{session}/{transport}` (the WebSocket
/// one has its own route): receiving, sending and the XHR preflight, by name and method.
pub(crate) async fn transport(
    State(state): State<AppState>,
    Path((server, session, transport)): Path<(String, String, String)>,
    method: Method,
    Query(query): Query<CallbackQuery>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = (server, session);
    let receiver = match (transport.as_str(), &method) {
        ("xhr", &Method::POST) => Receiver::XhrPolling,
        ("xhr_streaming", &Method::POST) => Receiver::XhrStreaming,
        ("eventsource", &Method::GET) => Receiver::EventSource,
        ("htmlfile", &Method::GET) => Receiver::HtmlFile,
        ("jsonp", &Method::GET) => Receiver::Jsonp,
        ("xhr_send", &Method::POST) => {
            return send_request(state, path, peer, headers, body, false).await;
        }
        ("jsonp_send", &Method::POST) => {
            return send_request(state, path, peer, headers, body, true).await;
        }
        ("xhr" | "xhr_streaming" | "xhr_send", &Method::OPTIONS) => {
            return xhr_options(&state, &headers);
        }
        (
            "xhr" | "xhr_streaming" | "eventsource" | "htmlfile" | "jsonp" | "xhr_send"
            | "jsonp_send",
            _,
        ) => {
            return refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("SockJS's {transport} does not take {method}"),
            )
            .into_response();
        }
        _ => {
            return refuse(StatusCode::NOT_FOUND, format!("no SockJS transport {transport:?}"))
                .into_response();
        }
    };
    receive(receiver, state, path, query.c, peer, headers).await
}

/// `POST .../xhr_send` (answered 204) or `.../jsonp_send` (answered `ok`, its messages in
/// a form field `d` or the raw body), once the messages are with the session.
async fn send_request(
    state: AppState,
    path: (String, String),
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
    jsonp: bool,
) -> Response {
    let form = jsonp
        && headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = payload(&state, body).await.map(|text| {
        if form {
            url::form_urlencoded::parse(text.as_bytes())
                .find(|(key, _)| key == "d")
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default()
        } else {
            text
        }
    });
    let text = [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")];
    let mut response = match send(state, path, peer, headers.clone(), body).await {
        Ok(()) if jsonp => (text, "ok").into_response(),
        Ok(()) => (text, StatusCode::NO_CONTENT).into_response(),
        Err(refused) => refused.into_response(),
    };
    sockjs_headers(&headers, response.headers_mut());
    response
}

/// `OPTIONS` of the XHR transports: the CORS preflight.
fn xhr_options(state: &AppState, headers: &HeaderMap) -> Response {
    if let Err(refused) = origin_allowed(state, headers) {
        return refused.into_response();
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    sockjs_headers(headers, response.headers_mut());
    let answer = response.headers_mut();
    answer.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("OPTIONS, POST"));
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        answer.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    answer.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("31536000"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_are_names_nothing_more() {
        assert!(valid_callback("_jp.a1b2c3.onMessage"));
        for bad in ["", "alert(1)", "a b", "x</script>", "a;b", &"a".repeat(65)] {
            assert!(!valid_callback(bad), "{bad:?}");
        }
    }

    #[test]
    fn frames_are_wrapped_as_each_transport_carries_them() {
        let frame = "a[\"MESSAGE\\n\\n</script>\"]";
        assert_eq!(Receiver::XhrPolling.wrap(frame, ""), format!("{frame}\n"));
        assert_eq!(Receiver::EventSource.wrap(frame, ""), format!("data: {frame}\r\n\r\n"));
        let html = Receiver::HtmlFile.wrap(frame, "");
        assert!(!html.contains("</script>\"") && html.starts_with("<script>\np(\""), "{html}");
        assert_eq!(html.matches("</script>").count(), 1, "{html}");
        let jsonp = Receiver::Jsonp.wrap("o", "cb");
        assert_eq!(jsonp, "/**/cb(\"o\");\r\n");
        assert_eq!(Receiver::HtmlFile.prelude("cb").len(), 1026);
        assert_eq!(Receiver::XhrStreaming.prelude("").len(), 2049);
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_batches_messages_waits_for_room_and_keeps_the_close() {
        use futures_util::SinkExt;
        let out = Arc::new(OutQueue::default());
        let (_tx, inbound) = mpsc::channel(1);
        let mut socket = HttpSocket { inbound, out: out.clone() };
        socket.send(Message::Text("a[\"one\"]".into())).await.unwrap();
        socket.send(Message::Text("a[\"two\\n\"]".into())).await.unwrap();
        assert_eq!(out.next(Duration::from_secs(1)).await.unwrap(), "a[\"one\",\"two\\n\"]");
        // Nothing written: the heart-beat interval passes.
        assert_eq!(out.next(Duration::from_secs(25)).await, None);
        // Full: the writer waits until a receiver takes the frames.
        let big = format!("a[\"{}\"]", "x".repeat(OUT_LIMIT));
        socket.send(Message::Text(big.clone().into())).await.unwrap();
        let mut blocked = Box::pin(socket.send(Message::Text("a[\"after\"]".into())));
        assert!(futures_util::FutureExt::now_or_never(blocked.as_mut()).is_none());
        assert!(out.next(Duration::from_secs(1)).await.unwrap().len() > OUT_LIMIT);
        blocked.await.unwrap();
        socket.send(Message::Close(None)).await.unwrap();
        assert_eq!(out.next(Duration::from_secs(1)).await.unwrap(), "a[\"after\"]");
        assert_eq!(out.next(Duration::from_secs(1)).await.unwrap(), "c[3000,\"Go away!\"]");
        // A later receiver gets the close again.
        assert_eq!(out.next(Duration::from_secs(1)).await.unwrap(), "c[3000,\"Go away!\"]");
    }
}
