//! SockJS under `/ws`, as Spring's `withSockJS()` serves it, for the seed's
//! `new SockJS('http://host/ws')` with `@stomp/stompjs`: `GET /ws/info`, and the WebSocket
//! transport at `/ws/{server}/{session}/websocket` (also the raw `/ws/websocket`). STOMP
//! flows inside SockJS frames exactly as over a plain WebSocket: the socket is wrapped in
//! [`SockJsFraming`] and driven by the same `websocket::serve`.
//!
//! Framing (SockJS protocol 0.3): the server opens with `o`, sends messages as
//! `a["...", ...]` and closes with `c[code,"reason"]`; the client sends JSON arrays of
//! strings. The HTTP transports (`xhr_streaming`, `xhr`, `eventsource`, ...) are not served
//! yet: a client limited to them gets 404 and says so.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::{
    Extension,
    extract::{
        ConnectInfo, Path, State,
        ws::{Message, Utf8Bytes, WebSocketUpgrade},
    },
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::{Sink, Stream};

use super::websocket::{admit, peer_name, serve};
use crate::{
    AppState,
    broker::{Session, TransportInfo},
};

/// Whether a SockJS server or session id is one this server accepts (the protocol: not
/// empty, no dots).
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && !id.contains('.')
}

/// Headers every SockJS HTTP answer carries: no caching, and CORS for the page's origin.
fn sockjs_headers(request: &HeaderMap, headers: &mut HeaderMap) {
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, no-transform, must-revalidate, max-age=0"),
    );
    let origin = request
        .get(header::ORIGIN)
        .filter(|o| o.as_bytes() != b"null")
        .cloned()
        .unwrap_or(HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
}

/// `GET /ws/info`: what the client needs before it picks a transport.
pub(crate) async fn info(headers: HeaderMap) -> Response {
    let mut entropy = [0u8; 4];
    // Only a hint for the client's own randomness: nothing depends on it here.
    let _ = getrandom::fill(&mut entropy);
    let entropy = u32::from_le_bytes(entropy);
    let body = serde_json::json!({
        "websocket": true,
        "origins": ["*:*"],
        "cookie_needed": false,
        "entropy": entropy,
    });
    let mut response =
        ([(header::CONTENT_TYPE, "application/json; charset=UTF-8")], body.to_string())
            .into_response();
    sockjs_headers(&headers, response.headers_mut());
    response
}

/// `OPTIONS /ws/info`: the CORS preflight.
pub(crate) async fn info_options(headers: HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    sockjs_headers(&headers, response.headers_mut());
    let answer = response.headers_mut();
    answer.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("OPTIONS, GET"));
    answer.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("31536000"));
    response
}

/// `GET /ws/{server}/{session}/websocket`: a SockJS session over a WebSocket.
pub(crate) async fn websocket(
    State(state): State<AppState>,
    Path((server, session)): Path<(String, String)>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ws: WebSocketUpgrade,
) -> Response {
    if !valid_id(&server) || !valid_id(&session) {
        return (StatusCode::NOT_FOUND, "not a SockJS session path").into_response();
    }
    raw(state, peer, ws)
}

/// `GET /ws/websocket`: the same without the session path (SockJS's raw WebSocket URL).
pub(crate) async fn raw_websocket(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ws: WebSocketUpgrade,
) -> Response {
    raw(state, peer, ws)
}

fn raw(
    state: AppState,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ws: WebSocketUpgrade,
) -> Response {
    // A SockJS message carries one STOMP frame, JSON-quoted (at most 6 bytes per byte).
    let limit = state.broker.settings().limits.frame_size.saturating_mul(6);
    let ws = match admit(&state, ws, limit) {
        Ok(ws) => ws,
        Err(refused) => return refused,
    };
    let info = TransportInfo { peer: peer_name(peer), ..TransportInfo::default() };
    let broker = state.broker.clone();
    ws.on_upgrade(move |socket| async move {
        let mut socket = socket;
        if socket.send(Message::Text(Utf8Bytes::from_static("o"))).await.is_err() {
            return;
        }
        serve::<Session>(SockJsFraming::new(socket), broker, info).await;
    })
}

/// A WebSocket seen through SockJS framing: what the STOMP driver reads are the strings of
/// the client's JSON arrays, and what it writes goes out as `a[...]` (a close as `c[...]`).
pub(crate) struct SockJsFraming<S> {
    inner: S,
    /// Messages of a received array not yet read.
    pending: VecDeque<Message>,
}

impl<S> SockJsFraming<S> {
    pub(crate) fn new(inner: S) -> SockJsFraming<S> {
        SockJsFraming { inner, pending: VecDeque::new() }
    }
}

/// The strings of a client frame: a JSON array of strings, or one JSON string.
fn decode(text: &str) -> Result<Vec<String>, serde_json::Error> {
    if text.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<String>>(text)
    } else {
        serde_json::from_str::<String>(text).map(|one| vec![one])
    }
}

impl<S> Stream for SockJsFraming<S>
where
    S: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    type Item = Result<Message, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(message)));
            }
            let next = ready!(Pin::new(&mut self.inner).poll_next(cx));
            match next {
                Some(Ok(Message::Text(text))) => {
                    if text.is_empty() {
                        continue;
                    }
                    match decode(&text) {
                        Ok(strings) => self
                            .pending
                            .extend(strings.into_iter().map(|s| Message::Text(Utf8Bytes::from(s)))),
                        Err(error) => {
                            let why =
                                format!("not a SockJS message (a JSON array of strings): {error}");
                            return Poll::Ready(Some(Err(axum::Error::new(why))));
                        }
                    }
                }
                // SockJS is text only.
                Some(Ok(Message::Binary(_))) => {
                    let why = "SockJS messages are text";
                    return Poll::Ready(Some(Err(axum::Error::new(why))));
                }
                other => return Poll::Ready(other),
            }
        }
    }
}

impl<S> Sink<Message> for SockJsFraming<S>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    type Error = axum::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        let framed = match item {
            Message::Text(text) => {
                Message::Text(Utf8Bytes::from(format!("a[{}]", quote(text.as_str()))))
            }
            // A STOMP frame that is not UTF-8 (a binary body): SockJS carries strings only.
            Message::Binary(bytes) => Message::Text(Utf8Bytes::from(format!(
                "a[{}]",
                quote(&String::from_utf8_lossy(&bytes))
            ))),
            Message::Close(frame) => {
                let (code, reason) = frame
                    .as_ref()
                    .map_or((1000, String::new()), |f| (f.code, f.reason.to_string()));
                // SockJS's own close frame first; the WebSocket close follows in poll_close.
                let close = format!("c[{},{}]", sockjs_code(code), quote(&reason));
                Pin::new(&mut self.inner).start_send(Message::Text(Utf8Bytes::from(close)))?;
                return Ok(());
            }
            other => other,
        };
        Pin::new(&mut self.inner).start_send(framed)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A JSON string.
fn quote(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// SockJS close codes: 3000 "Go away!" for a normal end, the WebSocket code otherwise.
fn sockjs_code(code: u16) -> u16 {
    if code == 1000 { 3000 } else { code }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn any_client_frame_decodes_or_is_refused_and_arrays_round_trip(
            noise in "\\PC{0,60}",
            strings in prop::collection::vec("\\PC{0,30}", 0..6),
        ) {
            let _ = decode(&noise);
            let encoded = serde_json::to_string(&strings).expect("strings encode");
            prop_assert_eq!(decode(&encoded).expect("a JSON array of strings"), strings);
        }
    }

    #[test]
    fn client_frames_are_arrays_of_strings_or_one_string() {
        assert_eq!(decode(r#"["CONNECT\n\n\u0000","x"]"#).unwrap(), ["CONNECT\n\n\0", "x"]);
        assert_eq!(decode(r#""one""#).unwrap(), ["one"]);
        assert!(decode("[1]").is_err());
        assert!(decode("not json").is_err());
        assert!(valid_id("123") && !valid_id("a.b") && !valid_id(""));
    }
}
