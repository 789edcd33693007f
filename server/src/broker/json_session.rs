//! One connection of the JSON protocol (`/ws/json`, [`taskpulse_shared::json`]): a message
//! in, effects on the broker and answers queued in the [`Outbox`]. The same broker core as a
//! STOMP [`Session`](super::Session): the same authentication, destinations, authorization,
//! limits, replay and snapshots; only the client's messages differ. No sockets, no clocks.
//!
//! Unlike STOMP's ERROR, a refused request gets an `error` and the connection stays open;
//! only a refused token, a broken limit of the connection itself, and the transport's own
//! failures close it.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use taskpulse_shared::{
    json::{ClientMessage, Position, ServerMessage, TASKS_CHANNEL},
    resume::{ResumePosition, TASKS_PATH, error_code},
    stomp::AckMode,
};

use super::{Broker, Destination, Flow, Opened, Outbox, Subscriber, TransportInfo, Wire};

/// The destination the [`TASKS_CHANNEL`] short name stands for.
fn tasks_destination() -> String {
    format!("/user{TASKS_PATH}")
}

#[derive(Debug)]
struct Connected {
    principal: Arc<str>,
    /// By the channel name the client used.
    subscriptions: HashMap<String, Destination>,
    expires_at: Option<u64>,
}

/// One JSON-protocol client's session.
#[derive(Debug)]
pub struct JsonSession {
    broker: Broker,
    outbox: Arc<Outbox>,
    transport: TransportInfo,
    connected: Option<Connected>,
    closed: bool,
}

impl JsonSession {
    /// A session awaiting `auth`.
    pub fn new(broker: Broker, transport: TransportInfo) -> JsonSession {
        let limits = &broker.settings().limits;
        let outbox = Arc::new(Outbox::new(
            broker.next_session_id(),
            limits.outbound_buffer,
            limits.unacked_per_subscription,
        ));
        JsonSession { broker, outbox, transport, connected: None, closed: false }
    }

    /// The queue the transport writes from.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The largest message accepted (`limits.frame_size`).
    pub fn frame_limit(&self) -> usize {
        self.broker.settings().limits.frame_size
    }

    /// The principal, once authenticated.
    pub fn principal(&self) -> Option<&str> {
        self.connected.as_ref().map(|c| &*c.principal)
    }

    /// How long until the session's token expires; `None` if it does not.
    pub fn token_remaining(&self) -> Option<Duration> {
        let expires_at = self.connected.as_ref()?.expires_at?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Some(Duration::from_secs(expires_at.saturating_sub(now)))
    }

    /// One WebSocket message from the client: one JSON object.
    pub fn on_message(&mut self, bytes: &[u8]) -> Flow {
        if self.closed {
            return Flow::Close;
        }
        let message = match serde_json::from_slice::<ClientMessage>(bytes) {
            Ok(message) => message,
            Err(error) => {
                let text = error.to_string();
                let code = if text.contains("unknown variant") {
                    "unknown type"
                } else if text.contains("missing field `type`") {
                    "missing type"
                } else {
                    "malformed message"
                };
                self.error(
                    code,
                    format!(
                        "{text}; every message is one JSON object with a \"type\" of auth, \
                         ping, subscribe or unsubscribe"
                    ),
                );
                return Flow::Continue;
            }
        };
        match message {
            ClientMessage::Ping => self.reply(&ServerMessage::Pong),
            ClientMessage::Auth { token } => return self.authenticate(&token),
            ClientMessage::Subscribe { channels, resume } => self.subscribe(channels, resume),
            ClientMessage::Unsubscribe { channels } => self.unsubscribe(channels),
        }
        Flow::Continue
    }

    /// The client closed its side.
    pub fn on_eof(&mut self) {
        self.closed = true;
    }

    /// No `auth` arrived in time.
    pub fn connect_timeout(&mut self) -> Flow {
        let ms = self.broker.settings().stomp.connect_timeout_ms;
        self.fail("auth timeout", format!("No auth message arrived within {ms} ms."))
    }

    /// The token expired.
    pub fn token_expired(&mut self) -> Flow {
        self.fail(
            "token expired",
            "The token this connection authenticated with has expired. Connect again with a \
             fresh token."
                .into(),
        )
    }

    /// A transport-level problem the client should hear about; the session ends.
    pub fn transport_error(&mut self, message: &'static str, body: String) -> Flow {
        self.fail(message, body)
    }

    fn fail(&mut self, message: &str, body: String) -> Flow {
        tracing::debug!(peer = %self.transport.peer, error = message, detail = %body, "closing JSON session");
        self.outbox.fail(message, None, body);
        self.closed = true;
        Flow::Close
    }

    fn reply(&self, message: &ServerMessage) {
        match serde_json::to_vec(message) {
            Ok(bytes) => self.outbox.reply(Bytes::from(bytes)),
            Err(error) => tracing::error!("cannot encode a JSON reply: {error}"),
        }
    }

    /// An `error` that leaves the session open.
    fn error(&self, message: &str, detail: String) {
        self.reply(&ServerMessage::Error { code: error_code(message), message: detail });
    }

    fn authenticate(&mut self, token: &str) -> Flow {
        if self.connected.is_some() {
            self.error("already authenticated", "This connection is already authenticated.".into());
            return Flow::Continue;
        }
        let principal = match self.broker.authenticator().validate(token) {
            Ok(principal) => principal,
            Err(reason) => {
                tracing::info!(peer = %self.transport.peer, %reason, "JSON authentication failed");
                return self.fail(
                    "authentication failed",
                    "The token was not accepted: it is invalid, expired or revoked.".into(),
                );
            }
        };
        let name: Arc<str> = Arc::from(principal.name);
        if let Err(reason) = self.broker.attach(&name, principal.token_id.as_deref(), &self.outbox)
        {
            return self.fail("too many connections", reason);
        }
        self.outbox.opened(Opened {
            session: self.broker.session_label(self.outbox.id),
            user_name: name.to_string(),
            wire: Wire::Json,
        });
        self.connected = Some(Connected {
            principal: name,
            subscriptions: HashMap::new(),
            expires_at: principal.expires_at,
        });
        Flow::Continue
    }

    fn subscribe(&mut self, channels: Vec<String>, resume: Option<Position>) {
        let limit = self.broker.settings().limits.subscriptions_per_connection;
        let Some(connected) = self.connected.as_mut() else {
            return self.error("not authenticated", "Send auth with a token first.".into());
        };
        let resume = match resume {
            Some(Position { epoch, seq }) if epoch.is_empty() || seq < 0 => {
                return self.error(
                    "invalid resume position",
                    "resume needs a non-empty epoch and a non-negative seq.".into(),
                );
            }
            other => other.map(|Position { epoch, seq }| ResumePosition { epoch, seq }),
        };
        let mut refusals = Vec::new();
        for channel in channels {
            let name = if channel == TASKS_CHANNEL { tasks_destination() } else { channel.clone() };
            let destination = match Destination::resolve(&name, &connected.principal) {
                Ok(Destination::App(app)) => {
                    refusals.push((
                        "invalid destination",
                        format!("{app:?} is handled by the server and cannot be subscribed to."),
                    ));
                    continue;
                }
                Ok(destination) => destination,
                Err(e) => {
                    refusals.push(("invalid destination", format!("{channel:?}: {e}")));
                    continue;
                }
            };
            if connected.subscriptions.contains_key(&channel) {
                refusals.push(("duplicate subscription", format!("{channel:?} is subscribed.")));
                continue;
            }
            if connected.subscriptions.len() >= limit {
                refusals.push((
                    "too many subscriptions",
                    format!(
                        "This connection already has {limit} subscriptions \
                         (limits.subscriptions_per_connection)."
                    ),
                ));
                continue;
            }
            let subscribed = ServerMessage::Subscribed { channels: vec![channel.clone()] };
            let Ok(subscribed) = serde_json::to_string(&subscribed) else { continue };
            let subscriber = Subscriber {
                outbox: self.outbox.clone(),
                sub: Arc::from(channel.as_str()),
                ack: AckMode::Auto,
            };
            connected.subscriptions.insert(channel, destination.clone());
            // Private channels resume; a position means nothing on a topic or queue.
            let position =
                matches!(destination, Destination::User { .. }).then(|| resume.clone()).flatten();
            // A catch-up sends `subscribed` after what it replays (the broker's receipt);
            // otherwise the channel is live at once.
            let receipt = Some(subscribed.clone());
            if !self.broker.subscribe_with_replay(&destination, subscriber, position, receipt) {
                self.outbox.reply(Bytes::from(subscribed));
            }
        }
        for (message, detail) in refusals {
            self.error(message, detail);
        }
    }

    fn unsubscribe(&mut self, channels: Vec<String>) {
        let Some(connected) = self.connected.as_mut() else {
            return self.error("not authenticated", "Send auth with a token first.".into());
        };
        let mut removed = Vec::new();
        let mut unknown = Vec::new();
        for channel in channels {
            match connected.subscriptions.remove(&channel) {
                Some(destination) => {
                    self.broker.unsubscribe(&destination, self.outbox.id, &channel);
                    self.broker.redeliver(self.outbox.drop_subscription(&channel));
                    removed.push(channel);
                }
                None => unknown.push(channel),
            }
        }
        if !removed.is_empty() {
            self.reply(&ServerMessage::Unsubscribed { channels: removed });
        }
        if !unknown.is_empty() {
            self.error("unknown subscription", format!("Not subscribed: {unknown:?}."));
        }
    }
}

impl Drop for JsonSession {
    fn drop(&mut self) {
        if let Some(connected) = self.connected.take() {
            for (channel, destination) in &connected.subscriptions {
                self.broker.unsubscribe(destination, self.outbox.id, channel);
            }
            self.broker.detach(self.outbox.id);
        }
        self.broker.redeliver(self.outbox.finish());
    }
}
