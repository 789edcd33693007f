//! The untyped STOMP frame: a command, ordered headers and a body, plus protocol versions.
//!
//! [`Frame`] is what the codec reads and writes; [`super::command`] gives it typed meaning.

use std::fmt;

use bytes::Bytes;

/// A STOMP protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// STOMP 1.0: no header escaping, no NACK, no heart-beats.
    V1_0,
    /// STOMP 1.1: `\n \c \\` escapes, heart-beats, NACK.
    V1_1,
    /// STOMP 1.2: adds the `\r` escape, `\r\n` line ends and ACK by `id`.
    V1_2,
}

impl Version {
    /// Every version, oldest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// The spelling used in `accept-version` and `version` headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// Parses `1.0`, `1.1` or `1.2`.
    pub fn parse(text: &str) -> Option<Version> {
        Version::ALL.into_iter().find(|v| v.as_str() == text.trim())
    }

    /// The WebSocket subprotocol name, e.g. `v12.stomp`.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Version::V1_0 => "v10.stomp",
            Version::V1_1 => "v11.stomp",
            Version::V1_2 => "v12.stomp",
        }
    }

    /// The version named by a WebSocket subprotocol, e.g. `v11.stomp`.
    pub fn from_subprotocol(name: &str) -> Option<Version> {
        Version::ALL.into_iter().find(|v| v.subprotocol() == name)
    }

    /// The highest version in a comma-separated `accept-version` list that this crate speaks.
    /// A CONNECT without the header is a 1.0 client, so `None` input means 1.0.
    pub fn negotiate(accept_version: Option<&str>) -> Option<Version> {
        match accept_version {
            None => Some(Version::V1_0),
            Some(list) => list.split(',').filter_map(Version::parse).max(),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Client: open a session.
    Connect,
    /// Client: open a session (1.1+ synonym of CONNECT).
    Stomp,
    /// Client: send a message to a destination.
    Send,
    /// Client: subscribe to a destination.
    Subscribe,
    /// Client: end a subscription.
    Unsubscribe,
    /// Client: acknowledge a message.
    Ack,
    /// Client: reject a message (1.1+).
    Nack,
    /// Client: start a transaction.
    Begin,
    /// Client: commit a transaction.
    Commit,
    /// Client: roll back a transaction.
    Abort,
    /// Client: close the session.
    Disconnect,
    /// Server: the session is open.
    Connected,
    /// Server: a message for a subscription.
    Message,
    /// Server: a client frame with a `receipt` header was processed.
    Receipt,
    /// Server: something went wrong; the connection closes after it.
    Error,
}

impl Command {
    /// Every command, clients' first.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command line as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Parses a command line (without its EOL); commands are case-sensitive.
    pub fn parse(line: &[u8]) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.as_str().as_bytes() == line)
    }

    /// True for frames a client sends, false for frames a server sends.
    pub fn is_client(self) -> bool {
        !matches!(self, Command::Connected | Command::Message | Command::Receipt | Command::Error)
    }

    /// CONNECT, STOMP and CONNECTED never escape header octets (for 1.0 compatibility).
    pub fn escapes_headers(self) -> bool {
        !matches!(self, Command::Connect | Command::Stomp | Command::Connected)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A frame's headers: `(name, value)` pairs in wire order, unescaped, repeats included.
///
/// Stored as one text buffer plus offsets, so that decoding a frame costs two allocations
/// however many headers it has. [`Headers::get`] returns the first of repeated names, as
/// the specification requires.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Headers {
    text: String,
    /// `(name start, value start, value end)` in `text`, one per header.
    spans: Vec<(u32, u32, u32)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Room for `headers` headers totalling `bytes` octets of text.
    pub fn with_capacity(headers: usize, bytes: usize) -> Headers {
        Headers { text: String::with_capacity(bytes), spans: Vec::with_capacity(headers) }
    }

    /// Appends a header.
    ///
    /// # Panics
    /// If the headers would exceed 4 GiB of text, far beyond any frame limit.
    pub fn push(&mut self, name: &str, value: &str) {
        let offset = |text: &String| u32::try_from(text.len()).expect("headers under 4 GiB");
        let start = offset(&self.text);
        self.text.push_str(name);
        let middle = offset(&self.text);
        self.text.push_str(value);
        self.spans.push((start, middle, offset(&self.text)));
    }

    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Every `(name, value)` in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.spans.iter().map(|&(start, middle, end)| {
            (&self.text[start as usize..middle as usize], &self.text[middle as usize..end as usize])
        })
    }

    /// How many headers, repeats included.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when there is no header.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(pairs: I) -> Headers {
        let mut headers = Headers::new();
        headers.extend(pairs);
        headers
    }
}

impl<N: AsRef<str>, V: AsRef<str>> Extend<(N, V)> for Headers {
    fn extend<I: IntoIterator<Item = (N, V)>>(&mut self, pairs: I) {
        for (name, value) in pairs {
            self.push(name.as_ref(), value.as_ref());
        }
    }
}

/// One STOMP frame: a command, [`Headers`] in wire order and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command line.
    pub command: Command,
    /// The headers, unescaped, in wire order.
    pub headers: Headers,
    /// The body, possibly empty; may contain NUL octets when `content-length` is set.
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and an empty body.
    pub fn new(command: Command) -> Frame {
        Frame { command, headers: Headers::new(), body: Bytes::new() }
    }

    /// Appends a header (builder style).
    #[must_use]
    pub fn with_header(mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Frame {
        self.headers.push(name.as_ref(), value.as_ref());
        self
    }

    /// Sets the body (builder style). Does not touch `content-length`.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Frame {
        self.body = body.into();
        self
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The body as text, if it is UTF-8.
    pub fn body_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        assert_eq!(Version::negotiate(Some("1.0,1.1,1.2")), Some(Version::V1_2));
        assert_eq!(Version::negotiate(Some("1.1, 1.0")), Some(Version::V1_1));
        assert_eq!(Version::negotiate(None), Some(Version::V1_0));
        assert_eq!(Version::negotiate(Some("2.0")), None);
    }

    #[test]
    fn subprotocols_round_trip() {
        for v in Version::ALL {
            assert_eq!(Version::from_subprotocol(v.subprotocol()), Some(v));
        }
        assert_eq!(Version::from_subprotocol("stomp"), None);
    }

    #[test]
    fn commands_parse_exactly() {
        for c in Command::ALL {
            assert_eq!(Command::parse(c.as_str().as_bytes()), Some(c));
        }
        assert_eq!(Command::parse(b"send"), None);
        assert_eq!(Command::parse(b""), None);
    }

    #[test]
    fn header_lookup_sees_the_first_of_repeats() {
        let f = Frame::new(Command::Send).with_header("a", "1").with_header("a", "2");
        assert_eq!(f.header("a"), Some("1"));
        assert_eq!(f.header("b"), None);
        let pairs: Vec<_> = f.headers.iter().collect();
        assert_eq!(pairs, [("a", "1"), ("a", "2")]);
    }

    #[test]
    fn headers_keep_empty_names_and_values_apart() {
        let headers: Headers = [("", "x"), ("y", ""), ("", "")].into_iter().collect();
        assert_eq!(headers.iter().collect::<Vec<_>>(), [("", "x"), ("y", ""), ("", "")]);
        assert_eq!(format!("{headers:?}"), r#"[("", "x"), ("y", ""), ("", "")]"#);
    }
}
