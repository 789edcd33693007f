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
    resume::{ResumePosition, TASKS_DESTINATION, error_code},
    stomp::{AckMode, Headers},
};

use super::{Broker, Destination, Flow, Opened, Outbox, Subscriber, TransportInfo, Wire};

/// How often the transport pings an authenticated connection during silence (a WebSocket
/// ping, which browsers answer by themselves).
pub const PING_EVERY: Duration = Duration::from_secs(25);

/// How long an authenticated client may stay silent (no message, no pong): two unanswered
/// pings and then some.
pub const SILENCE: Duration = Duration::from_secs(60);

/// The session's own answers (they carry no message `data`).
type Reply = ServerMessage;

#[derive(Debug)]
struct Connected {
    principal: Arc<str>,
    /// A configured identity (see `Principal::configured`), for `[authorization]`.
    configured: bool,
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
        let outbox = broker.new_outbox();
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
                self.broker.metrics().received("json", "malformed");
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
        let kind = match &message {
            ClientMessage::Ping => "ping",
            ClientMessage::Auth { .. } => "auth",
            ClientMessage::Subscribe { .. } => "subscribe",
            ClientMessage::Unsubscribe { .. } => "unsubscribe",
            ClientMessage::ChatMessage { .. } => "chat_message",
        };
        self.broker.metrics().received("json", kind);
        match message {
            ClientMessage::Ping => self.reply(&Reply::Pong),
            ClientMessage::Auth { token } => return self.authenticate(&token),
            ClientMessage::Subscribe { channels, resume } => self.subscribe(channels, resume),
            ClientMessage::Unsubscribe { channels } => self.unsubscribe(channels),
            ClientMessage::ChatMessage { channel, content } => self.chat(&channel, content),
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

    /// Nothing arrived from the client for [`SILENCE`] (not even a pong); the session ends.
    pub fn silence_timeout(&mut self) -> Flow {
        self.fail(
            "heart-beat timeout",
            format!(
                "Nothing was received from the client for {} s, not even the answer to a \
                 WebSocket ping.",
                SILENCE.as_secs()
            ),
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

    fn reply(&self, message: &Reply) {
        reply(&self.outbox, message);
    }

    /// An `error` that leaves the session open.
    fn error(&self, message: &str, detail: String) {
        self.broker.metrics().error(&error_code(message));
        self.reply(&Reply::Error { code: error_code(message), message: detail });
    }

    fn authenticate(&mut self, token: &str) -> Flow {
        if self.connected.is_some() {
            self.error("already authenticated", "This connection is already authenticated.".into());
            return Flow::Continue;
        }
        let principal = match self.broker.authenticator().validate(token) {
            Ok(principal) => {
                self.broker.metrics().authentication("success");
                principal
            }
            Err(reason) => {
                self.broker.metrics().authentication(reason.outcome());
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
        // Before the opening wakes the writer, which then reads the interval.
        self.outbox.set_heartbeat(PING_EVERY);
        self.outbox.opened(Opened {
            session: self.broker.session_label(self.outbox.id),
            user_name: name.to_string(),
            wire: Wire::Json,
        });
        self.connected = Some(Connected {
            principal: name,
            configured: principal.configured,
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
            let name = if channel == TASKS_CHANNEL { TASKS_DESTINATION } else { &channel };
            let destination = match Destination::resolve(name, &connected.principal) {
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
            let subscribed = Reply::Subscribed { channels: vec![channel.clone()] };
            let Ok(subscribed) = serde_json::to_string(&subscribed) else { continue };
            let subscriber = Subscriber {
                outbox: self.outbox.clone(),
                sub: Arc::from(channel.as_str()),
                ack: AckMode::Auto,
                task: None,
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

    fn chat(&self, channel: &str, content: String) {
        let Some(connected) = self.connected.as_ref() else {
            return self.error("not authenticated", "Send auth with a token first.".into());
        };
        let sender =
            super::Sender { principal: &connected.principal, configured: connected.configured };
        let mut headers = Headers::new();
        headers.push("content-type", "text/plain;charset=utf-8");
        match self.broker.client_send(&sender, channel, headers, content.into()) {
            Err(error) => self.error(error.summary(), error.to_string()),
            Ok(super::Routed::Queuing(stored)) => {
                let metrics = self.broker.metrics().clone();
                self.outbox.after(stored, move |outbox, error: super::RouteError| {
                    let code = error_code(error.summary());
                    metrics.error(&code);
                    reply(outbox, &Reply::Error { code, message: error.to_string() });
                });
            }
            Ok(super::Routed::Delivered(_)) => {}
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
            self.reply(&Reply::Unsubscribed { channels: removed });
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

/// Queues a JSON-protocol answer on `outbox`.
fn reply(outbox: &Outbox, message: &Reply) {
    match serde_json::to_vec(message) {
        Ok(bytes) => outbox.reply(Bytes::from(bytes)),
        Err(error) => tracing::error!("cannot encode a JSON reply: {error}"),
    }
}

#[cfg(test)]
mod tests {
    //! Any script of messages, valid and not, against JSON sessions of one broker: nothing
    //! panics, every answer is one JSON object of the protocol, the broker counts exactly
    //! the authenticated sessions, and no outbox grows past its ceiling.

    use std::collections::VecDeque;

    use futures_util::FutureExt;
    use proptest::prelude::*;
    use taskpulse_shared::json::ServerMessage;

    use super::*;
    use crate::{
        broker::{Claims, Outgoing, Publication, exercise},
        transport::json::JsonWriter,
    };

    #[derive(Debug, Clone)]
    enum Op {
        Open { user: usize, good: bool },
        Send { session: usize, text: String },
        Drain { session: usize },
        End { session: usize },
        Publish { user: usize, size: usize },
    }

    const USERS: [&str; 3] = ["alice", "bob", "carol"];

    fn text() -> impl Strategy<Value = String> {
        let channel = prop::sample::select(vec![
            "tasks",
            "/user/queue/tasks-progress",
            "/user/queue/notices",
            "/user/bob/queue/x",
            "/topic/chat.x",
            "/queue/q",
            "/app/x",
            "",
            "tasks\u{0}",
        ]);
        let channels = prop::collection::vec(channel, 0..4);
        let seq = prop_oneof![Just(-1i64), 0i64..5, Just(i64::MAX)];
        let epoch = prop::sample::select(vec!["", "e", "0123456789abcdef"]);
        prop_oneof![
            Just(r#"{"type":"ping"}"#.to_owned()),
            Just(r#"{"type":"auth","token":"x"}"#.to_owned()),
            (channels.clone(), prop::option::of((epoch, seq))).prop_map(|(channels, resume)| {
                let resume = resume.map(|(epoch, seq)| serde_json::json!({"epoch": epoch, "seq": seq}));
                let mut message = serde_json::json!({"type": "subscribe", "channels": channels});
                if let Some(resume) = resume {
                    message["resume"] = resume;
                }
                message.to_string()
            }),
            channels.prop_map(|c| serde_json::json!({"type": "unsubscribe", "channels": c}).to_string()),
            (prop::sample::select(vec!["/topic/chat.x", "/topic/todos", "/queue/q", "/app/x", "x"]), "\\PC{0,20}")
                .prop_map(|(channel, content)| {
                    serde_json::json!({"type": "chat_message", "channel": channel, "content": content})
                        .to_string()
                }),
            "\\PC{0,40}",
            prop::collection::vec(any::<u8>(), 0..40)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..USERS.len(), any::<bool>()).prop_map(|(user, good)| Op::Open { user, good }),
            (0..4usize, text()).prop_map(|(session, text)| Op::Send { session, text }),
            (0..4usize).prop_map(|session| Op::Drain { session }),
            (0..4usize).prop_map(|session| Op::End { session }),
            (0..USERS.len(), 0..2000usize).prop_map(|(user, size)| Op::Publish { user, size }),
        ]
    }

    /// Writes what is queued as the transport would; every answer must parse.
    fn drain(session: &JsonSession) {
        let mut batch = VecDeque::new();
        let mut writer = JsonWriter;
        while session.outbox().next_batch(&mut batch).now_or_never().is_some() {
            for item in batch.drain(..) {
                let mut out = Vec::new();
                writer.encode(&item, &mut out).expect("every event has a JSON form");
                if !matches!(item, Outgoing::Close(_)) {
                    let parsed = serde_json::from_slice::<ServerMessage>(&out);
                    assert!(
                        parsed.is_ok(),
                        "not a protocol message: {}",
                        String::from_utf8_lossy(&out)
                    );
                }
            }
        }
    }

    fn run(ops: Vec<Op>) {
        let broker = exercise::broker();
        let mut sessions: Vec<JsonSession> = Vec::new();
        for op in ops {
            match op {
                Op::Open { user, good } if sessions.len() < 4 => {
                    let mut session = JsonSession::new(broker.clone(), TransportInfo::default());
                    let claims = Claims {
                        sub: USERS[user].into(),
                        exp: u64::MAX / 4,
                        nbf: None,
                        iat: None,
                        jti: None,
                    };
                    let token = if good {
                        broker.authenticator().issue(&claims).unwrap_or_default()
                    } else {
                        "bad".into()
                    };
                    let message = serde_json::json!({"type": "auth", "token": token}).to_string();
                    let _ = session.on_message(message.as_bytes());
                    sessions.push(session);
                }
                Op::Open { .. } => {}
                Op::Send { session, text } => {
                    if let Some(s) = sessions.get_mut(session) {
                        let _ = s.on_message(text.as_bytes());
                    }
                }
                Op::Drain { session } => {
                    if let Some(s) = sessions.get(session) {
                        drain(s);
                    }
                }
                Op::End { session } => {
                    if session < sessions.len() {
                        let mut s = sessions.remove(session);
                        drain(&s);
                        s.on_eof();
                    }
                }
                Op::Publish { user, size } => {
                    let body = if size % 2 == 0 { vec![b'x'; size] } else { b"{\"n\":1}".to_vec() };
                    broker.send_to_user(
                        USERS[user],
                        "/queue/notices",
                        Publication::json(body.clone()),
                    );
                    let _ = broker.publish("/topic/chat.x", Publication::json(body));
                }
            }
            let authenticated = sessions.iter().filter(|s| s.principal().is_some()).count();
            assert_eq!(
                broker.session_count(),
                authenticated,
                "the broker's sessions are the live ones"
            );
            for s in &sessions {
                let held = s.outbox().held_bytes();
                assert!(
                    held <= 2 * broker.settings().limits.outbound_buffer + 4096,
                    "outbox holds {held}"
                );
            }
        }
        for s in &sessions {
            drain(s);
        }
        drop(sessions);
        assert_eq!(broker.session_count(), 0, "every ended session left the broker");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn no_script_panics_or_leaves_a_session_behind(ops in prop::collection::vec(op(), 0..40)) {
            run(ops);
        }
    }
}
