//! SockJS under `/ws`, as Spring's `withSockJS()` serves it, for the seed's
//! `new SockJS('http://host/ws')` with `@stomp/stompjs`: `GET /ws/info`, `/ws/iframe.html`,
//! the WebSocket transport at `/ws/{server}/{session}/websocket` (also the raw
//! `/ws/websocket`), and the HTTP transports of [`http`]. STOMP flows inside SockJS frames
//! exactly as over a plain WebSocket: every transport ends in the same `websocket::serve`.
//!
//! Framing (SockJS protocol 0.3): the server opens with `o`, sends messages as
//! `a["...", ...]`, `h` during silence (HTTP transports) and closes with `c[code,"reason"]`;
//! the client sends JSON arrays of strings. Pages of other origins may connect when
//! `[api] cors_origins` allows them, as for the HTTP API.

pub(crate) mod http;

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

use super::{
    stomp::StompWriter,
    websocket::{Encode, admit, peer_name, serve_with},
};
use crate::{
    AppState,
    broker::{Outgoing, Session, TransportInfo},
    metrics::Transport,
};

/// Whether a SockJS server or session id is one this server accepts (the protocol: not
/// empty, no dots).
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && !id.contains('.')
}

/// Whether the page's origin may use SockJS here: no `Origin` (not a browser page), the
/// server's own origin, or one `[api] cors_origins` allows.
///
/// # Errors
/// A 403 that names the setting.
pub(crate) fn origin_allowed(state: &AppState, headers: &HeaderMap) -> Result<(), Refused> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or_default();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if permitted(origin, host, &state.config.settings.api.cors_origins) {
        return Ok(());
    }
    let why = format!(
        "origin {origin:?} may not use SockJS here: only the server's own pages and the \
         origins of [api] cors_origins may"
    );
    Err(Refused(StatusCode::FORBIDDEN, why))
}

/// Whether a page of `origin` may use SockJS on a server reached as `host`: its own origin,
/// or one of `allowed` (`*`: any).
fn permitted(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    let same = origin
        .split_once("://")
        .is_some_and(|(_, authority)| host.is_some_and(|host| authority == host));
    same || allowed.iter().any(|o| o == "*" || o == origin)
}

/// A refused SockJS request: its status and a text that names the problem.
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let Refused(status, why) = self;
        (status, [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")], why).into_response()
    }
}

/// Headers every SockJS HTTP answer carries: no caching, and CORS for the page's origin
/// (with credentials, as sockjs-client's XHRs send them).
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
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}

/// `GET /ws/info`: what the client needs before it picks a transport.
pub(crate) async fn info(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(refused) = origin_allowed(&state, &headers) {
        return refused.into_response();
    }
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
pub(crate) async fn info_options(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(refused) = origin_allowed(&state, &headers) {
        return refused.into_response();
    }
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
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !valid_id(&server) || !valid_id(&session) {
        return (StatusCode::NOT_FOUND, "not a SockJS session path").into_response();
    }
    raw(state, peer, &headers, ws)
}

/// `GET /ws/websocket`: the same without the session path (SockJS's raw WebSocket URL).
pub(crate) async fn raw_websocket(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    raw(state, peer, &headers, ws)
}

fn raw(
    state: AppState,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(refused) = origin_allowed(&state, headers) {
        return refused.into_response();
    }
    // A SockJS message carries one STOMP frame, JSON-quoted (at most 6 bytes per byte).
    let limit = state.broker.settings().limits.frame_size.saturating_mul(6);
    let ws = match admit(&state, ws, limit) {
        Ok(ws) => ws,
        Err(refused) => return refused,
    };
    let info = TransportInfo {
        peer: peer_name(peer),
        transport: Transport::SockJsWebSocket,
        ..TransportInfo::default()
    };
    let broker = state.broker.clone();
    ws.on_upgrade(move |socket| async move {
        let mut socket = socket;
        if socket.send(Message::Text(Utf8Bytes::from_static("o"))).await.is_err() {
            return;
        }
        serve_with::<Session, SockJsWriter>(SockJsFraming::new(socket), broker, info).await;
    })
}

/// A WebSocket seen through SockJS framing: what the STOMP driver reads are the strings of
/// the client's JSON arrays; what it writes is framed by [`SockJsWriter`] already, and a
/// close goes out as `c[...]` before the WebSocket close.
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
            // The writer (`SockJsWriter`) framed it already; with `stomp.always_binary` the
            // driver hands it over as binary, but SockJS carries text.
            Message::Binary(bytes) => {
                Message::Text(Utf8Bytes::from(String::from_utf8_lossy(&bytes).into_owned()))
            }
            Message::Close(frame) => {
                let (code, reason) =
                    frame.as_ref().map_or((1000, ""), |f| (f.code, f.reason.as_str()));
                // SockJS's own close frame first; the WebSocket close follows in poll_close.
                let close = close_frame(code, reason);
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

/// A JSON string literal of `text`, escaped as SockJS escapes it: besides what JSON
/// requires, the characters some browsers mangle or treat as line ends (U+2028 and its
/// kin), and `<`, `>` and `&`, so that the `htmlfile` transport's `<script>` cannot be
/// ended by a message.
pub(crate) fn quote(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len() + 2);
    out.push(b'"');
    quote_into(text, &mut out);
    out.push(b'"');
    // Only ASCII escapes were added to UTF-8 text.
    String::from_utf8(out).unwrap_or_default()
}

/// [`quote`] without the quotes, appended to `out`.
fn quote_into(text: &str, out: &mut Vec<u8>) {
    use std::io::Write;
    let mut plain = 0;
    for (at, c) in text.char_indices() {
        let escape: &[u8] = match c {
            '"' => b"\\\"",
            '\\' => b"\\\\",
            '\n' => b"\\n",
            '\r' => b"\\r",
            '\t' => b"\\t",
            '\u{0}'..='\u{1f}'
            | '<'
            | '>'
            | '&'
            | '\u{7f}'..='\u{9f}'
            | '\u{ad}'
            | '\u{600}'..='\u{604}'
            | '\u{70f}'
            | '\u{17b4}'
            | '\u{17b5}'
            | '\u{200c}'..='\u{200f}'
            | '\u{2028}'..='\u{202f}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff0}'..='\u{ffff}' => b"",
            _ => continue,
        };
        out.extend_from_slice(&text.as_bytes()[plain..at]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.extend_from_slice(escape);
        }
        plain = at + c.len_utf8();
    }
    out.extend_from_slice(&text.as_bytes()[plain..]);
}

/// The first of the message encoding slots where SockJS keeps a MESSAGE's shared STOMP
/// tail, quoted, one per STOMP version.
const QUOTED_TAIL_SLOTS: usize = 4;
const _: () = assert!(QUOTED_TAIL_SLOTS + 3 <= crate::broker::ENCODINGS);

/// STOMP written as SockJS frames: every event one `a["..."]`. The part of a MESSAGE every
/// recipient shares is quoted once per message and version and kept on the message (as the
/// STOMP writer keeps its bytes), so a delivery quotes only its own few headers.
#[derive(Debug, Default)]
pub(crate) struct SockJsWriter {
    stomp: StompWriter,
}

impl Encode for SockJsWriter {
    fn encode(&mut self, item: &Outgoing, out: &mut Vec<u8>) -> Result<bool, String> {
        if let Outgoing::Close(_) = item {
            // The transport writes the close frame.
            return Ok(true);
        }
        let start = out.len();
        out.extend_from_slice(b"a[\"");
        let written = match item {
            Outgoing::Deliver { sub, ack, message } => self.delivery(sub, *ack, message, out),
            other => {
                let mut raw = Vec::with_capacity(256);
                self.stomp.encode(other, &mut raw).map(|_| {
                    quote_into(&String::from_utf8_lossy(&raw), out);
                })
            }
        };
        if let Err(why) = written {
            out.truncate(start);
            return Err(why);
        }
        out.extend_from_slice(b"\"]");
        Ok(true)
    }

    /// STOMP's heart-beat (an EOL) in a SockJS frame.
    fn heartbeat() -> Message {
        Message::Text(Utf8Bytes::from_static("a[\"\\n\"]"))
    }
}

impl SockJsWriter {
    fn delivery(
        &self,
        sub: &std::sync::Arc<str>,
        ack: Option<u64>,
        message: &crate::broker::Message,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let tail = self.stomp.shared_tail(message)?;
        let slot = QUOTED_TAIL_SLOTS + self.stomp.version() as usize;
        let quoted = message.encoded(slot, |_| {
            let mut quoted = Vec::with_capacity(tail.len() + 16);
            quote_into(&String::from_utf8_lossy(tail), &mut quoted);
            Some(quoted.into())
        });
        let quoted = quoted.ok_or("the SockJS encoding of a message is missing")?;
        let mut head = Vec::with_capacity(64);
        self.stomp.delivery_head(sub, ack, &mut head)?;
        quote_into(&String::from_utf8_lossy(&head), out);
        out.extend_from_slice(quoted);
        Ok(())
    }
}

/// Several `a[...]` frames as one (what a polling or streaming request carries at once).
pub(crate) fn merge_frames(frames: impl IntoIterator<Item = String>) -> String {
    let mut merged = String::from("a[");
    for frame in frames {
        let inner = frame.strip_prefix("a[").and_then(|f| f.strip_suffix(']')).unwrap_or("");
        if inner.is_empty() {
            continue;
        }
        if merged.len() > 2 {
            merged.push(',');
        }
        merged.push_str(inner);
    }
    merged.push(']');
    merged
}

/// `c[code,"reason"]`: 3000 "Go away!" for a normal WebSocket close, the code otherwise.
pub(crate) fn close_frame(code: u16, reason: &str) -> String {
    match code {
        1000 => "c[3000,\"Go away!\"]".into(),
        code => format!("c[{code},{}]", quote(reason)),
    }
}

/// `text` for a double-quoted HTML attribute.
fn html_attribute(text: &str) -> String {
    text.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;")
}

/// `GET /ws/iframe.html`: the page the iframe-based transports of old browsers load; it
/// runs sockjs-client from `[sockjs] client_url`. Cached by its ETag.
pub(crate) async fn iframe(State(state): State<AppState>, headers: HeaderMap) -> Response {
    use sha2::Digest;
    let page = format!(
        "<!DOCTYPE html>\n<html>\n<head>\n  <meta http-equiv=\"X-UA-Compatible\" \
         content=\"IE=edge\" />\n  <meta http-equiv=\"Content-Type\" content=\"text/html; \
         charset=UTF-8\" />\n  <script>\n    document.domain = document.domain;\n    _sockjs_onload \
         = function(){{SockJS.bootstrap_iframe();}};\n  </script>\n  <script src=\"{}\"></script>\n\
         </head>\n<body>\n  <h2>Don't panic!</h2>\n  <p>This is a SockJS hidden iframe. It's used \
         for cross domain magic.</p>\n</body>\n</html>",
        html_attribute(&state.config.settings.sockjs.client_url)
    );
    let digest = sha2::Sha256::digest(page.as_bytes());
    let etag = format!("\"{}\"", crate::secret::hex(&digest[..8]));
    let cached =
        headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v == etag);
    let mut response = if cached {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "text/html; charset=UTF-8")], page).into_response()
    };
    let answer = response.headers_mut();
    answer.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000"));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        answer.insert(header::ETAG, etag);
    }
    response
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

        #[test]
        fn any_origin_is_permitted_only_as_the_server_s_own_or_a_configured_one(
            origin in "\\PC{0,40}", host in "[a-z0-9.:]{1,20}", scheme in "https?",
        ) {
            let allowed = vec!["http://app.example".to_owned()];
            let expected = origin == "http://app.example"
                || origin.split_once("://").is_some_and(|(_, a)| a == host);
            prop_assert_eq!(permitted(&origin, Some(&host), &allowed), expected);
            prop_assert!(!permitted(&origin, None, &[]));
            prop_assert!(permitted(&origin, None, &["*".to_owned()]));
            let own = format!("{scheme}://{host}");
            prop_assert!(permitted(&own, Some(&host), &[]));
        }

        #[test]
        fn quoted_text_is_json_that_no_page_or_line_reader_can_misread(text in "\\PC{0,40}|[<>&\u{2028}\u{2029}\u{0}-\u{1f}\"\\\\]{0,10}") {
            let quoted = quote(&text);
            prop_assert_eq!(serde_json::from_str::<String>(&quoted).expect("JSON"), text);
            let misread = ['<', '>', '&', '\u{2028}', '\u{2029}', '\n', '\r'];
            prop_assert!(!quoted.contains(misread), "{}", quoted);
        }
    }

    #[test]
    fn the_sockjs_writer_frames_what_the_stomp_writer_writes_quoting_shared_parts_once() {
        use std::sync::Arc;

        use crate::broker::{Message as Delivered, Publication};
        let publication =
            Publication::json(r#"{"text":"</script> \u2028 ü"}"#).with_header("x-a", "<&>");
        let message = Arc::new(Delivered::new("m-1".into(), "/topic/t".into(), publication));
        let (mut stomp, mut sockjs) = (StompWriter::default(), SockJsWriter::default());
        for (sub, ack) in [("s-1", None), ("sub\"2", Some(7))] {
            let item = Outgoing::Deliver { sub: Arc::from(sub), ack, message: message.clone() };
            let (mut raw, mut framed) = (Vec::new(), Vec::new());
            stomp.encode(&item, &mut raw).unwrap();
            assert_eq!(sockjs.encode(&item, &mut framed), Ok(true));
            let framed = String::from_utf8(framed).unwrap();
            let expected = format!("a[{}]", quote(std::str::from_utf8(&raw).unwrap()));
            assert_eq!(framed, expected);
            assert!(!framed.contains("</script>"), "{framed}");
        }
        let mut receipt = Vec::new();
        sockjs.encode(&Outgoing::Receipt("r".into()), &mut receipt).unwrap();
        assert_eq!(receipt, br#"a["RECEIPT\nreceipt-id:r\n\n\u0000"]"#);
        let merged = merge_frames([String::from_utf8(receipt).unwrap(), "a[\"x\"]".into()]);
        assert_eq!(merged, r#"a["RECEIPT\nreceipt-id:r\n\n\u0000","x"]"#);
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
