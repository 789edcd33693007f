//! The WebSocket transport: at `/ws` it negotiates the STOMP subprotocol and drives a STOMP
//! [`Session`], at `/ws/json` a [`JsonSession`]; it feeds received messages to the session,
//! writes its [`Outbox`] in the session's wire format, and keeps the clocks (CONNECT or
//! `auth` deadline, heart-beats, token expiry) the session itself does not have.
//!
//! The driver ([`serve`]) takes any `Stream`/`Sink` of WebSocket messages: axum's socket in
//! production, channels in the tests below, which run its clocks with paused time.

use std::{collections::VecDeque, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Extension,
    extract::{
        ConnectInfo, Query, State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocketUpgrade},
    },
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use taskpulse_shared::stomp::Version;
use tokio::time::Instant;
use tracing::Instrument;

use super::{
    json::JsonWriter,
    stomp::{HEARTBEAT, StompWriter},
};
use crate::{
    AppError, AppState,
    broker::{Broker, Flow, JsonSession, Outbox, Outgoing, Session, TransportInfo, json_session},
    metrics::{Metrics, Transport},
};
use prometheus_client::metrics::counter::Counter;

/// A protocol's session as the driver sees it: messages in, clocks reported, and the writer
/// of its wire format. Implemented by the broker's sessions, nothing else.
pub(crate) trait Protocol: Send + 'static {
    /// Writes the outbox's events in this protocol.
    type Writer: Encode;
    /// The protocol's name in the metrics.
    const PROTOCOL: &'static str;
    /// A new session on `broker`.
    fn start(broker: Broker, info: TransportInfo) -> Self;
    /// The queue the writer drains.
    fn outbox(&self) -> &Arc<Outbox>;
    /// The largest message accepted, for the error that names it.
    fn frame_limit(&self) -> usize;
    /// Who the client authenticated as, once it did.
    fn principal(&self) -> Option<&str>;
    /// Whether the client authenticated.
    fn authenticated(&self) -> bool {
        self.principal().is_some()
    }
    /// `(send a heart-beat after, close after)` this much silence; zero means never.
    fn heartbeat(&self) -> (Duration, Duration);
    /// One received WebSocket message.
    fn on_message(&mut self, bytes: &[u8]) -> Flow;
    /// The client closed its side.
    fn on_eof(&mut self);
    /// No authentication arrived in time.
    fn connect_timeout(&mut self) -> Flow;
    /// How long until the credentials expire.
    fn token_remaining(&self) -> Option<Duration>;
    /// The credentials expired.
    fn token_expired(&mut self) -> Flow;
    /// Silence beyond the heart-beat.
    fn heartbeat_timeout(&mut self) -> Flow;
    /// A transport failure the client hears about.
    fn transport_error(&mut self, message: &'static str, body: String) -> Flow;
}

/// A wire format's writer: one event to bytes.
pub(crate) trait Encode: Default + Send + 'static {
    /// Appends `item` to `out`; says whether a text message can carry it.
    ///
    /// # Errors
    /// Why the event cannot be written faithfully; nothing was appended.
    fn encode(&mut self, item: &Outgoing, out: &mut Vec<u8>) -> Result<bool, String>;

    /// What is sent during silence, every `Outbox::heartbeat_every`.
    fn heartbeat() -> Message;
}

impl Encode for StompWriter {
    fn encode(&mut self, item: &Outgoing, out: &mut Vec<u8>) -> Result<bool, String> {
        StompWriter::encode(self, item, out)
    }

    /// STOMP's heart-beat: an EOL.
    fn heartbeat() -> Message {
        Message::Text(Utf8Bytes::from_static(HEARTBEAT))
    }
}

impl Encode for JsonWriter {
    fn encode(&mut self, item: &Outgoing, out: &mut Vec<u8>) -> Result<bool, String> {
        JsonWriter::encode(self, item, out)
    }

    /// A WebSocket ping, which browsers answer by themselves: pages need no code for it.
    fn heartbeat() -> Message {
        Message::Ping(Bytes::new())
    }
}

impl Protocol for Session {
    type Writer = StompWriter;
    const PROTOCOL: &'static str = "stomp";
    fn start(broker: Broker, info: TransportInfo) -> Self {
        Session::new(broker, info)
    }
    fn outbox(&self) -> &Arc<Outbox> {
        Session::outbox(self)
    }
    fn frame_limit(&self) -> usize {
        Session::frame_limit(self)
    }
    fn principal(&self) -> Option<&str> {
        Session::principal(self)
    }
    fn heartbeat(&self) -> (Duration, Duration) {
        Session::heartbeat(self)
    }
    fn on_message(&mut self, bytes: &[u8]) -> Flow {
        self.on_bytes(bytes)
    }
    fn on_eof(&mut self) {
        Session::on_eof(self);
    }
    fn connect_timeout(&mut self) -> Flow {
        Session::connect_timeout(self)
    }
    fn token_remaining(&self) -> Option<Duration> {
        Session::token_remaining(self)
    }
    fn token_expired(&mut self) -> Flow {
        Session::token_expired(self)
    }
    fn heartbeat_timeout(&mut self) -> Flow {
        Session::heartbeat_timeout(self)
    }
    fn transport_error(&mut self, message: &'static str, body: String) -> Flow {
        Session::transport_error(self, message, body)
    }
}

impl Protocol for JsonSession {
    type Writer = JsonWriter;
    const PROTOCOL: &'static str = "json";
    fn start(broker: Broker, info: TransportInfo) -> Self {
        JsonSession::new(broker, info)
    }
    fn outbox(&self) -> &Arc<Outbox> {
        JsonSession::outbox(self)
    }
    fn frame_limit(&self) -> usize {
        JsonSession::frame_limit(self)
    }
    fn principal(&self) -> Option<&str> {
        JsonSession::principal(self)
    }
    /// Not negotiated: the server pings every `json_session::PING_EVERY` (browsers answer
    /// by themselves) and ends a session silent for `json_session::SILENCE`; anything a
    /// client sends (a `ping`, a pong) counts.
    fn heartbeat(&self) -> (Duration, Duration) {
        (json_session::PING_EVERY, json_session::SILENCE)
    }
    fn on_message(&mut self, bytes: &[u8]) -> Flow {
        JsonSession::on_message(self, bytes)
    }
    fn on_eof(&mut self) {
        JsonSession::on_eof(self);
    }
    fn connect_timeout(&mut self) -> Flow {
        JsonSession::connect_timeout(self)
    }
    fn token_remaining(&self) -> Option<Duration> {
        JsonSession::token_remaining(self)
    }
    fn token_expired(&mut self) -> Flow {
        JsonSession::token_expired(self)
    }
    fn heartbeat_timeout(&mut self) -> Flow {
        JsonSession::silence_timeout(self)
    }
    fn transport_error(&mut self, message: &'static str, body: String) -> Flow {
        JsonSession::transport_error(self, message, body)
    }
}

/// What the driver needs of a WebSocket: its messages in, messages out.
pub(crate) trait Socket:
    Stream<Item = Result<Message, axum::Error>> + Sink<Message, Error = axum::Error> + Send + 'static
{
}

impl<S> Socket for S where
    S: Stream<Item = Result<Message, axum::Error>>
        + Sink<Message, Error = axum::Error>
        + Send
        + 'static
{
}

/// Whether a WebSocket read failed because the message exceeded the size cap.
fn too_large(error: axum::Error) -> Result<(), String> {
    use tokio_tungstenite::tungstenite::Error;
    let inner = error.into_inner();
    match inner.downcast_ref::<Error>() {
        Some(Error::Capacity(_)) => Ok(()),
        _ => Err(inner.to_string()),
    }
}

/// Subprotocols in order of preference.
const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// How long a closing session's writer may take to deliver its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Query parameters of the WebSocket URL.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct WsQuery {
    access_token: Option<String>,
}

/// `GET /ws`: upgrade to a STOMP session.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    Query(query): Query<WsQuery>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ws: WebSocketUpgrade,
) -> Response {
    let limits = &state.broker.settings().limits;
    // Room for a maximal frame plus a few small ones in the same message; larger messages
    // are refused by tungstenite before they are buffered.
    let ws = match admit(&state, ws.protocols(SUBPROTOCOLS), limits.frame_size.saturating_mul(4)) {
        Ok(ws) => ws,
        Err(refused) => return refused,
    };
    let info = TransportInfo {
        subprotocol: ws
            .selected_protocol()
            .and_then(|p| p.to_str().ok())
            .and_then(Version::from_subprotocol),
        access_token: query.access_token,
        peer: peer_name(peer),
        transport: Transport::Stomp,
    };
    let broker = state.broker.clone();
    ws.on_upgrade(move |socket| serve::<Session>(socket, broker, info))
}

/// `GET /ws/json`: upgrade to a session of the JSON protocol (one JSON object per message).
pub(crate) async fn upgrade_json(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = match admit(&state, ws, state.broker.settings().limits.frame_size) {
        Ok(ws) => ws,
        Err(refused) => return refused,
    };
    let info = TransportInfo {
        peer: peer_name(peer),
        transport: Transport::Json,
        ..TransportInfo::default()
    };
    let broker = state.broker.clone();
    ws.on_upgrade(move |socket| serve::<JsonSession>(socket, broker, info))
}

pub(crate) fn peer_name(peer: Option<Extension<ConnectInfo<SocketAddr>>>) -> String {
    peer.map_or_else(|| "unknown".into(), |Extension(ConnectInfo(addr))| addr.to_string())
}

/// Refuses an upgrade beyond the connection limit; sets the socket's buffers and the largest
/// message (`max_message` bytes) otherwise.
#[allow(clippy::result_large_err)]
pub(crate) fn admit(
    state: &AppState,
    ws: WebSocketUpgrade,
    max_message: usize,
) -> Result<WebSocketUpgrade, Response> {
    let limits = &state.broker.settings().limits;
    // The last `http_reserve` connections are for plain HTTP: /healthz and the API keep
    // answering when WebSockets take everything else.
    let open = state.open_connections();
    if open > limits.max_connections.saturating_sub(limits.http_reserve) {
        return Err(AppError::Unavailable(format!(
            "too many connections: {open} are open (limits.max_connections = {}, of which \
             limits.http_reserve = {} are kept for HTTP requests); try again later",
            limits.max_connections, limits.http_reserve
        ))
        .into_response());
    }
    Ok(ws
        .read_buffer_size(limits.ws_read_buffer)
        .write_buffer_size(limits.ws_write_buffer)
        .max_message_size(max_message)
        .max_frame_size(max_message))
}

/// Runs one session of protocol `P` over `socket` until either side ends it.
pub(crate) fn serve<P: Protocol>(
    socket: impl Socket,
    broker: Broker,
    info: TransportInfo,
) -> impl Future<Output = ()> + Send {
    serve_with::<P, P::Writer>(socket, broker, info)
}

/// [`serve`] with another writer for the protocol's events (SockJS writes STOMP in its own
/// frames).
///
/// Not an `async fn`, on purpose: the session is set up here, and the future returned (which
/// every open connection keeps) holds each part once. An `async fn` keeps its arguments
/// beside the locals and futures they move into, which rustc does not overlap: nested as
/// they were, they made a STOMP connection's task 3,456 bytes (`-Zprint-type-sizes`).
pub(crate) fn serve_with<P: Protocol, W: Encode>(
    socket: impl Socket,
    broker: Broker,
    info: TransportInfo,
) -> impl Future<Output = ()> + Send {
    let stomp = &broker.settings().stomp;
    let connect_deadline = Instant::now() + Duration::from_millis(stomp.connect_timeout_ms);
    let always_binary = stomp.always_binary;
    let metrics = broker.metrics().clone();
    let open = metrics.open(info.transport);
    // Every line logged for this session says which one, from where, and (once known) whose.
    let peer = info.peer.clone();
    let session = Box::new(P::start(broker, info));
    let span = tracing::info_span!(
        "session",
        id = session.outbox().id,
        %peer,
        user = tracing::field::Empty
    );
    let (sink, stream) = socket.split();
    let writer = write::<W>(
        sink,
        session.outbox().clone(),
        always_binary,
        Writer::new(&metrics, P::PROTOCOL),
    );
    let writer = tokio::spawn(writer.instrument(span.clone()));
    serve_session(session, stream, writer, connect_deadline, open).instrument(span)
}

/// The counters a writer adds its frames to, looked up once per connection.
struct Writer {
    /// By kind: message, connected, receipt, error, reply, heartbeat.
    counters: [Counter; 6],
}

impl Writer {
    const KINDS: [&'static str; 6] =
        ["message", "connected", "receipt", "error", "reply", "heartbeat"];

    fn new(metrics: &Metrics, protocol: &'static str) -> Writer {
        Writer { counters: Writer::KINDS.map(|kind| metrics.sent_counter(protocol, kind)) }
    }

    /// Counts a batch's frames by kind (one atomic add per kind present, not per frame).
    fn batch(&self, batch: &VecDeque<Outgoing>) {
        let mut kinds = [0u64; 5];
        for item in batch {
            let slot = match item {
                Outgoing::Deliver { .. } => 0,
                Outgoing::Opened(_) => 1,
                Outgoing::Receipt(_) => 2,
                Outgoing::Error(_) => 3,
                Outgoing::Reply(_) => 4,
                Outgoing::Close(_) => continue,
            };
            kinds[slot] += 1;
        }
        for (counter, count) in self.counters.iter().zip(kinds) {
            if count > 0 {
                counter.inc_by(count);
            }
        }
    }

    fn heartbeat(&self) {
        self.counters[5].inc();
    }
}

/// Reads until the session ends, lets the writer finish, and closes.
async fn serve_session<P: Protocol>(
    mut session: Box<P>,
    mut stream: impl Stream<Item = Result<Message, axum::Error>> + Unpin,
    mut writer: tokio::task::JoinHandle<()>,
    connect_deadline: Instant,
    open: crate::metrics::OpenConnection,
) {
    // The writer also ends sessions the broker closed (slow consumer, shutdown).
    let (flow, writer_done) = tokio::select! {
        flow = read(&mut *session, &mut stream, connect_deadline) => (flow, false),
        _ = &mut writer => (Flow::Close, true),
    };
    // A finished JoinHandle must not be polled again: tokio panics if it is.
    if !writer_done {
        // Let the writer send what is left (RECEIPT, ERROR) before the socket closes.
        let flushed =
            flow == Flow::Close && tokio::time::timeout(CLOSE_GRACE, &mut writer).await.is_ok();
        if !flushed {
            writer.abort();
        }
    }
    let outbox = session.outbox().clone();
    drop(session);
    if flow == Flow::Close {
        linger(&mut stream).await;
    }
    if let Some(ending) = outbox.ending() {
        open.end(&ending.reason, ending.error);
    }
}

/// After the server closed: reads (and drops) what the client still sends until it answers
/// the close, for at most [`CLOSE_GRACE`]. Closing a socket with unread input makes the
/// kernel send a reset that discards the frames not yet delivered, so a client that was
/// busy sending would never see the ERROR that says why it was closed.
async fn linger(stream: &mut (impl Stream<Item = Result<Message, axum::Error>> + Unpin)) {
    let drain = async {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Close(_) = message {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
}

/// Reads until the session closes ([`Flow::Close`]) or the client goes away
/// ([`Flow::Continue`]: nothing more to write).
async fn read(
    session: &mut impl Protocol,
    stream: &mut (impl Stream<Item = Result<Message, axum::Error>> + Unpin),
    connect_deadline: Instant,
) -> Flow {
    let mut last_seen = Instant::now();
    loop {
        let connected = session.authenticated();
        let (_, silence) = session.heartbeat();
        let heartbeat = (connected && !silence.is_zero()).then(|| last_seen + silence);
        // Re-read every time: an in-band refresh moves it.
        let expiry = session.token_remaining().map(|left| Instant::now() + left);
        let deadline = if connected {
            [heartbeat, expiry].into_iter().flatten().min()
        } else {
            Some(connect_deadline)
        };
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(next) => next,
                Err(_) if !connected => return session.connect_timeout(),
                Err(_) if expiry.is_some_and(|e| e <= Instant::now()) => {
                    return session.token_expired();
                }
                Err(_) => return session.heartbeat_timeout(),
            },
            None => stream.next().await,
        };
        last_seen = Instant::now();
        let flow = match next {
            None => {
                session.on_eof();
                return Flow::Continue;
            }
            Some(Ok(Message::Close(_))) => {
                // RFC 6455 5.5.1: the close is echoed; the writer sends it.
                session.on_eof();
                session.outbox().closed_by_peer();
                return Flow::Close;
            }
            Some(Err(error)) => {
                let limit = session.frame_limit();
                return match too_large(error) {
                    Ok(()) => session.transport_error(
                        "frame too large",
                        format!(
                            "A WebSocket message was larger than this server accepts: a frame \
                             or message may have at most {limit} bytes (limits.frame_size)."
                        ),
                    ),
                    Err(detail) => {
                        tracing::debug!(%detail, "WebSocket read failed");
                        session.transport_error(
                            "websocket error",
                            "The WebSocket connection broke the WebSocket protocol or failed."
                                .into(),
                        )
                    }
                };
            }
            Some(Ok(Message::Text(text))) => session.on_message(text.as_bytes()),
            Some(Ok(Message::Binary(bytes))) => session.on_message(&bytes),
            // tungstenite answers pings itself; any traffic counts as a sign of life.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
        };
        if !connected && let Some(user) = session.principal() {
            tracing::Span::current().record("user", user);
        }
        if flow == Flow::Close {
            return Flow::Close;
        }
    }
}

/// Writes the outbox in batches (one flush per batch) and heart-beats during silence.
async fn write<W: Encode>(
    mut sink: impl Sink<Message, Error = axum::Error> + Unpin,
    outbox: Arc<Outbox>,
    always_binary: bool,
    counts: Writer,
) {
    let mut batch = VecDeque::new();
    let mut wire = W::default();
    loop {
        // Read each time: CONNECT sets it, and the CONNECTED frame wakes this loop.
        let every = outbox.heartbeat_every();
        if every.is_zero() {
            outbox.next_batch(&mut batch).await;
        } else if tokio::time::timeout(every, outbox.next_batch(&mut batch)).await.is_err() {
            if sink.send(W::heartbeat()).await.is_err() {
                return;
            }
            counts.heartbeat();
            continue;
        }
        counts.batch(&batch);
        for item in batch.drain(..) {
            if let Outgoing::Close(reason) = item {
                // After the client's own close this only flushes the echo tungstenite queued.
                let close = CloseFrame { code: reason.code(), reason: Utf8Bytes::from_static("") };
                let _ = sink.send(Message::Close(Some(close))).await;
                let _ = sink.close().await;
                return;
            }
            let mut buffer = Vec::with_capacity(512);
            let text = match wire.encode(&item, &mut buffer) {
                Ok(text) => text,
                Err(why) => {
                    // Not dropped silently: the client is told and the session ends.
                    outbox.fail("unrepresentable message", None, why);
                    continue;
                }
            };
            let bytes = Bytes::from(buffer);
            let message = match Utf8Bytes::try_from(bytes.clone()) {
                Ok(text_bytes) if text && !always_binary => Message::Text(text_bytes),
                _ => Message::Binary(bytes),
            };
            if sink.feed(message).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The driver over channels instead of a TCP socket, with tokio's clock paused: the
    //! CONNECT deadline, heart-beats both ways and a close the broker decides are checked at
    //! the exact instants they are due.

    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    use tokio::sync::mpsc;

    use super::*;
    use crate::{
        broker::{Authenticator, Claims},
        config::Settings,
    };

    /// The client's end of a [`Pipe`].
    struct Client {
        to_server: mpsc::UnboundedSender<Result<Message, axum::Error>>,
        from_server: mpsc::UnboundedReceiver<Message>,
    }

    /// The server's end: a WebSocket made of two channels.
    struct Pipe {
        incoming: mpsc::UnboundedReceiver<Result<Message, axum::Error>>,
        outgoing: mpsc::UnboundedSender<Message>,
    }

    impl Stream for Pipe {
        type Item = Result<Message, axum::Error>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.incoming.poll_recv(cx)
        }
    }

    impl Sink<Message> for Pipe {
        type Error = axum::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            self.outgoing.send(item).map_err(axum::Error::new)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    fn pipe() -> (Pipe, Client) {
        let (to_server, incoming) = mpsc::unbounded_channel();
        let (outgoing, from_server) = mpsc::unbounded_channel();
        (Pipe { incoming, outgoing }, Client { to_server, from_server })
    }

    fn broker() -> Broker {
        let mut settings = Settings::default();
        settings.jwt.secret = "websocket-driver-secret-of-32-bytes".into();
        let auth = Authenticator::new(&settings.jwt, &settings.auth).expect("valid test settings");
        Broker::new(settings, auth, Arc::default())
    }

    impl Client {
        fn send(&self, frame: &str) {
            let message = Message::Text(Utf8Bytes::from(frame.to_owned()));
            self.to_server.send(Ok(message)).expect("the driver reads until it ends");
        }

        fn connect(&self, broker: &Broker, heart_beat: &str) {
            let claims =
                Claims { sub: "alice".into(), exp: u64::MAX / 4, nbf: None, iat: None, jti: None };
            let token = broker.authenticator().issue(&claims).expect("token");
            self.send(&format!(
                "CONNECT\naccept-version:1.2\nheart-beat:{heart_beat}\n\
                 Authorization:Bearer {token}\n\n\0"
            ));
        }

        /// The next message's text ("heart-beat" for one, "CLOSE <code>" for a close) and
        /// the instant it arrived.
        async fn next(&mut self) -> (String, Instant) {
            let message = self.from_server.recv().await.expect("the server wrote more");
            let at = Instant::now();
            let text = match message {
                Message::Text(text) if text.as_str() == HEARTBEAT => "heart-beat".to_owned(),
                Message::Text(text) => text.as_str().to_owned(),
                Message::Close(close) => format!("CLOSE {}", close.map_or(0, |c| c.code)),
                other => format!("{other:?}"),
            };
            (text, at)
        }

        /// The `message` header of the next frame, which must be an ERROR.
        async fn error(&mut self) -> String {
            let message = self.from_server.recv().await.expect("an ERROR");
            let Message::Text(text) = message else { panic!("not text: {message:?}") };
            assert!(text.as_str().starts_with("ERROR\n"), "{}", text.as_str());
            let line = text.as_str().lines().find(|l| l.starts_with("message:"));
            line.unwrap_or_default().trim_start_matches("message:").to_owned()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_connect_is_closed_at_the_deadline() {
        let broker = broker();
        let timeout = Duration::from_millis(broker.settings().stomp.connect_timeout_ms);
        let (socket, mut client) = pipe();
        let start = Instant::now();
        let driver =
            tokio::spawn(serve::<Session>(socket, broker.clone(), TransportInfo::default()));
        assert_eq!(client.error().await, "connect timeout");
        assert_eq!(Instant::now() - start, timeout, "exactly at the deadline");
        assert_eq!(client.next().await.0, "CLOSE 1008");
        driver.await.expect("the driver ends without panicking");
        assert_eq!(broker.session_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn heart_beats_go_out_during_silence_and_a_silent_client_is_cut() {
        let broker = broker();
        let tolerance = broker.settings().stomp.heartbeat_tolerance;
        let (socket, mut client) = pipe();
        let driver =
            tokio::spawn(serve::<Session>(socket, broker.clone(), TransportInfo::default()));
        // The client sends every 4 s and wants the server's every 3 s.
        client.connect(&broker, "4000,3000");
        let (connected, start) = client.next().await;
        assert!(connected.starts_with("CONNECTED\n"), "{connected}");
        let (beat, at) = client.next().await;
        assert_eq!((beat.as_str(), at - start), ("heart-beat", Duration::from_secs(3)));
        let (beat, at) = client.next().await;
        assert_eq!((beat.as_str(), at - start), ("heart-beat", Duration::from_secs(6)));
        // One beat from the client moves its deadline.
        tokio::time::advance(Duration::from_millis(500)).await;
        client.send("\n");
        let sent = Instant::now();
        // The server keeps beating until the client's silence runs out.
        loop {
            let (text, _) = client.next().await;
            if text.starts_with("ERROR\n") {
                assert!(text.contains("\nmessage:heart-beat timeout\n"), "{text}");
                break;
            }
            assert_eq!(text, "heart-beat");
        }
        let silence = Instant::now() - sent;
        assert_eq!(silence, Duration::from_secs(4).mul_f64(tolerance), "cut at 4 s x tolerance");
        assert_eq!(client.next().await.0, "CLOSE 1008");
        driver.await.expect("the driver ends without panicking");
        assert_eq!(broker.session_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_json_client_is_pinged_during_silence_and_cut_when_nothing_answers() {
        let broker = broker();
        let (socket, mut client) = pipe();
        let driver =
            tokio::spawn(serve::<JsonSession>(socket, broker.clone(), TransportInfo::default()));
        let claims =
            Claims { sub: "alice".into(), exp: u64::MAX / 4, nbf: None, iat: None, jti: None };
        let token = broker.authenticator().issue(&claims).expect("token");
        client.send(&format!(r#"{{"type":"auth","token":"{token}"}}"#));
        let (opened, start) = client.next().await;
        assert!(opened.contains("auth_success"), "{opened}");
        let (ping, at) = client.next().await;
        assert_eq!((ping.starts_with("Ping"), at - start), (true, json_session::PING_EVERY));
        // A pong (as a browser answers) counts as a sign of life.
        client.to_server.send(Ok(Message::Pong(Bytes::new()))).expect("read");
        let answered = Instant::now();
        loop {
            let (text, _) = client.next().await;
            if text.contains("heart-beat-timeout") {
                break;
            }
            assert!(text.starts_with("Ping"), "{text}");
        }
        assert_eq!(Instant::now() - answered, json_session::SILENCE, "cut after the silence");
        assert_eq!(client.next().await.0, "CLOSE 1008");
        driver.await.expect("the driver ends without panicking");
        assert_eq!(broker.session_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_the_broker_decides_is_written_and_the_driver_ends_cleanly() {
        // The writer finishes first here (the client is silent, the reader waits): the
        // driver once polled the finished writer again and panicked.
        let broker = broker();
        let (socket, mut client) = pipe();
        let driver =
            tokio::spawn(serve::<Session>(socket, broker.clone(), TransportInfo::default()));
        client.connect(&broker, "0,0");
        assert!(client.next().await.0.starts_with("CONNECTED\n"));
        assert_eq!(broker.session_count(), 1);
        broker.disconnect_user("alice", "signed out");
        let error = client.error().await;
        assert!(!error.is_empty(), "an ERROR says why");
        assert!(client.next().await.0.starts_with("CLOSE "));
        driver.await.expect("the driver ends without panicking");
        assert_eq!(broker.session_count(), 0);
    }
}
