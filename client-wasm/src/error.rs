//! What can go wrong in a client, as one enum. Each variant says whether the client keeps
//! trying ([`ClientError::is_fatal`]) and maps to a stable `kind` string for JavaScript.

/// Why a connection attempt, a connection or a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The URL is neither an http(s) base URL nor a ws(s) endpoint.
    #[error("invalid server URL \"{0}\": expected http(s)://host[:port] or ws(s)://host/ws")]
    InvalidUrl(String),
    /// The server answered CONNECT with ERROR: the token (or login) was refused. The
    /// client stops; retrying the same credentials would only repeat the refusal.
    #[error("the server refused the connection: {message}")]
    Rejected {
        /// The ERROR frame's `message` header.
        message: String,
        /// The ERROR frame's body.
        body: String,
    },
    /// The server sent ERROR on an open session and closed it (kicked, token revoked,
    /// heart-beat timeout on its side, a refused frame). The client reconnects.
    #[error("the server closed the session: {message}")]
    Stomp {
        /// The ERROR frame's `message` header.
        message: String,
        /// The ERROR frame's body.
        body: String,
    },
    /// The socket could not be opened, or it closed.
    #[error("{0}")]
    Transport(String),
    /// No CONNECTED within `connectionTimeoutMs`.
    #[error("no CONNECTED from the server within {0} ms")]
    Timeout(u32),
    /// Nothing arrived for longer than the negotiated heart-beat allows.
    #[error("no data from the server for {silent_ms} ms (heart-beat every {expected_ms} ms)")]
    HeartbeatLost {
        /// How long the server was silent.
        silent_ms: u32,
        /// The negotiated incoming interval.
        expected_ms: u32,
    },
    /// The server sent bytes that are not valid STOMP.
    #[error("the server sent an invalid frame: {0}")]
    Protocol(String),
    /// `getToken` rejected or did not return a string.
    #[error("getToken failed: {0}")]
    Token(String),
    /// `publish` (or another call that needs a session) while not connected.
    #[error("not connected")]
    NotConnected,
    /// `disconnect()` was called before the connection was established.
    #[error("the client was disconnected")]
    Stopped,
}

impl ClientError {
    /// `true` when the client gives up instead of reconnecting.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ClientError::Rejected { .. } | ClientError::InvalidUrl(_))
    }

    /// A stable name for JavaScript's `error.kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::InvalidUrl(_) => "invalid-url",
            ClientError::Rejected { .. } => "rejected",
            ClientError::Stomp { .. } => "stomp",
            ClientError::Transport(_) => "transport",
            ClientError::Timeout(_) => "timeout",
            ClientError::HeartbeatLost { .. } => "heartbeat",
            ClientError::Protocol(_) => "protocol",
            ClientError::Token(_) => "token",
            ClientError::NotConnected => "not-connected",
            ClientError::Stopped => "stopped",
        }
    }
}
