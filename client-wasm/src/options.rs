//! What a client is configured with: the server, the token or how to get one, reconnect
//! delays, heart-beats and the connection timeout. Plain data with the seed's defaults;
//! the JavaScript options object is read into it by `js.rs`.

use std::{fmt, future::Future, pin::Pin, rc::Rc};

use taskpulse_shared::stomp::HeartBeat;

use crate::{ClientError, backoff::Backoff};

/// A token provider's answer: the token, or why there is none.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>>>>;

/// Where the CONNECT frame's `Authorization: Bearer` token comes from.
#[derive(Clone)]
pub enum TokenSource {
    /// One token for the client's lifetime (the seed's constructor).
    Fixed(String),
    /// Called before every connection attempt, so an expired token is replaced
    /// (stompjs's `beforeConnect`).
    Provider(Rc<dyn Fn() -> TokenFuture>),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Fixed(_) => f.write_str("Fixed(..)"),
            TokenSource::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

/// Everything a client needs to know before it connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The STOMP endpoint, `ws://` or `wss://` (see [`endpoint`]).
    pub url: String,
    /// The token sent in CONNECT.
    pub token: TokenSource,
    /// Delays between reconnect attempts.
    pub reconnect: Backoff,
    /// Heart-beats offered in CONNECT: `send_ms` outgoing, `receive_ms` incoming
    /// (the seed's 4,000/4,000). 0 turns a direction off.
    pub heartbeat: HeartBeat,
    /// How long one attempt may take from opening the socket to CONNECTED.
    pub connection_timeout_ms: u32,
    /// Silence tolerated on the incoming side: the negotiated interval times this.
    pub heartbeat_tolerance: f64,
    /// Log every frame and state change to the console.
    pub debug: bool,
}

impl ClientOptions {
    /// Options with the defaults for everything but the endpoint and the token.
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`] when `url` is neither an http(s) base URL nor a ws(s)
    /// endpoint.
    pub fn new(url: &str, token: TokenSource) -> Result<ClientOptions, ClientError> {
        Ok(ClientOptions {
            url: endpoint(url)?,
            token,
            reconnect: Backoff::default(),
            heartbeat: HeartBeat { send_ms: 4000, receive_ms: 4000 },
            connection_timeout_ms: 10_000,
            heartbeat_tolerance: 2.0,
            debug: false,
        })
    }
}

/// The WebSocket URL for a base URL: `http://host:8081` (the seed's form) becomes
/// `ws://host:8081/ws`, `https://` becomes `wss://`; a `ws://`/`wss://` URL is taken as the
/// endpoint itself.
///
/// # Errors
/// [`ClientError::InvalidUrl`] for any other scheme or a URL without a host.
pub fn endpoint(url: &str) -> Result<String, ClientError> {
    let invalid = || ClientError::InvalidUrl(url.to_owned());
    let (scheme, rest) = split_scheme(url).ok_or_else(invalid)?;
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if host_end == 0 {
        return Err(invalid());
    }
    let scheme = scheme.to_ascii_lowercase();
    match scheme.as_str() {
        "ws" | "wss" => Ok(url.to_owned()),
        "http" | "https" => {
            let ws = if scheme == "https" { "wss" } else { "ws" };
            let base = rest.split(['?', '#']).next().unwrap_or(rest).trim_end_matches('/');
            let path = if base.ends_with("/ws") { "" } else { "/ws" };
            Ok(format!("{ws}://{base}{path}"))
        }
        _ => Err(invalid()),
    }
}

/// `scheme://rest` as `(scheme, rest)`, split at the first `:` when `//` follows it. (A
/// `"://"` pattern search would bring a substring searcher into the package for this.)
pub(crate) fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once(':')?;
    rest.strip_prefix("//").map(|rest| (scheme, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_become_the_ws_endpoint() {
        let cases = [
            ("http://localhost:8081", "ws://localhost:8081/ws"),
            ("http://localhost:8081/", "ws://localhost:8081/ws"),
            ("HTTPS://example.com/app", "wss://example.com/app/ws"),
            ("https://example.com/ws", "wss://example.com/ws"),
            ("ws://127.0.0.1:9/ws?x=1", "ws://127.0.0.1:9/ws?x=1"),
            ("wss://h/custom", "wss://h/custom"),
        ];
        for (input, expected) in cases {
            assert_eq!(endpoint(input).unwrap(), expected, "{input}");
        }
        for bad in ["localhost:8081", "ftp://h", "http:///ws", "", "http:/h", "a:b://h"] {
            assert!(matches!(endpoint(bad), Err(ClientError::InvalidUrl(_))), "{bad}");
        }
    }

    #[test]
    fn the_scheme_ends_at_the_first_colon_followed_by_two_slashes() {
        assert_eq!(split_scheme("ws://h/ws?next=http://x"), Some(("ws", "h/ws?next=http://x")));
        assert_eq!(split_scheme("/ws?x=a:b"), None);
        assert_eq!(split_scheme("h:8080//ws"), None);
    }
}
