//! The WebSocket transport at `/ws`: negotiates the STOMP subprotocol, feeds received bytes
//! to a [`Session`], writes its [`Outbox`], and keeps the clocks (CONNECT deadline,
//! heart-beats) the session itself does not have.

use std::{collections::VecDeque, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Extension,
    extract::{
        ConnectInfo, Query, State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    },
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, stream::SplitSink, stream::SplitStream};
use taskpulse_shared::stomp::Version;
use tokio::time::Instant;

use crate::{
    AppError, AppState,
    broker::{Broker, Flow, Outbox, Outgoing, Session, TransportInfo},
};

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
    // The last `http_reserve` connections are for plain HTTP: /healthz and the API keep
    // answering when WebSockets take everything else.
    let open = state.open_connections();
    if open > limits.max_connections.saturating_sub(limits.http_reserve) {
        return AppError::Unavailable(format!(
            "too many connections: {open} are open (limits.max_connections = {}, of which \
             limits.http_reserve = {} are kept for HTTP requests); try again later",
            limits.max_connections, limits.http_reserve
        ))
        .into_response();
    }
    // Room for a maximal frame plus a few small ones in the same message; larger messages
    // are refused by tungstenite before they are buffered.
    let max_message = limits.frame_size.saturating_mul(4);
    let ws = ws
        .protocols(SUBPROTOCOLS)
        .read_buffer_size(limits.ws_read_buffer)
        .write_buffer_size(limits.ws_write_buffer)
        .max_message_size(max_message)
        .max_frame_size(max_message);
    let info = TransportInfo {
        subprotocol: ws
            .selected_protocol()
            .and_then(|p| p.to_str().ok())
            .and_then(Version::from_subprotocol),
        access_token: query.access_token,
        peer: peer
            .map_or_else(|| "unknown".into(), |Extension(ConnectInfo(addr))| addr.to_string()),
    };
    let broker = state.broker.clone();
    ws.on_upgrade(move |socket| serve(socket, broker, info))
}

/// Runs one STOMP session over `socket` until either side ends it.
async fn serve(socket: WebSocket, broker: Broker, info: TransportInfo) {
    let stomp = broker.settings().stomp.clone();
    let mut session = Session::new(broker, info);
    let outbox = session.outbox().clone();
    let (sink, mut stream) = socket.split();
    let mut writer = tokio::spawn(write(sink, outbox, stomp.always_binary));
    let connect_deadline = Instant::now() + Duration::from_millis(stomp.connect_timeout_ms);
    // The writer also ends sessions the broker closed (slow consumer, shutdown).
    let (flow, writer_done) = tokio::select! {
        flow = read(&mut session, &mut stream, connect_deadline) => (flow, false),
        _ = &mut writer => (Flow::Close, true),
    };
    // A finished JoinHandle must not be polled again: tokio panics if it is.
    if !writer_done {
        // Let the writer send what is left (RECEIPT, ERROR) before the socket closes.
        let flushed = flow == Flow::Close
            && tokio::time::timeout(CLOSE_GRACE, &mut writer).await.is_ok();
        if !flushed {
            writer.abort();
        }
    }
    session.end();
    if flow == Flow::Close {
        linger(&mut stream).await;
    }
}

/// After the server closed: reads (and drops) what the client still sends until it answers
/// the close, for at most [`CLOSE_GRACE`]. Closing a socket with unread input makes the
/// kernel send a reset that discards the frames not yet delivered, so a client that was
/// busy sending would never see the ERROR that says why it was closed.
async fn linger(stream: &mut SplitStream<WebSocket>) {
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
    session: &mut Session,
    stream: &mut SplitStream<WebSocket>,
    connect_deadline: Instant,
) -> Flow {
    let mut last_seen = Instant::now();
    loop {
        let connected = session.principal().is_some();
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
                            "A WebSocket message was larger than this server accepts: a STOMP \
                             frame may have at most {limit} bytes (limits.frame_size)."
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
            Some(Ok(Message::Text(text))) => session.on_bytes(text.as_bytes()),
            Some(Ok(Message::Binary(bytes))) => session.on_bytes(&bytes),
            // tungstenite answers pings itself; any traffic counts as a sign of life.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Flow::Continue,
        };
        if flow == Flow::Close {
            return Flow::Close;
        }
    }
}

/// Writes the outbox in batches (one flush per batch) and heart-beats during silence.
async fn write(mut sink: SplitSink<WebSocket, Message>, outbox: Arc<Outbox>, always_binary: bool) {
    let mut batch = VecDeque::new();
    loop {
        // Read each time: CONNECT sets it, and the CONNECTED frame wakes this loop.
        let every = outbox.heartbeat_every();
        if every.is_zero() {
            outbox.next_batch(&mut batch).await;
        } else if tokio::time::timeout(every, outbox.next_batch(&mut batch)).await.is_err() {
            let beat = Message::Text(Utf8Bytes::from_static("\n"));
            if sink.send(beat).await.is_err() {
                return;
            }
            continue;
        }
        let version = outbox.version().unwrap_or(Version::V1_2);
        for item in batch.drain(..) {
            if let Outgoing::Close(reason) = item {
                // After the client's own close this only flushes the echo tungstenite queued.
                let close = CloseFrame { code: reason.code(), reason: Utf8Bytes::from_static("") };
                let _ = sink.send(Message::Close(Some(close))).await;
                let _ = sink.close().await;
                return;
            }
            let mut buffer = Vec::with_capacity(512);
            let Some(text) = item.encode(version, &mut buffer) else {
                // Not dropped silently: the client is told and the session ends.
                outbox.fail(
                    "unrepresentable message",
                    None,
                    format!(
                        "A message for this session has a header that STOMP {version} cannot carry."
                    ),
                );
                continue;
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
