//! One STOMP connection's state machine: bytes in, effects on the broker and frames queued
//! in the [`Outbox`]. No sockets and no clocks here; the transport owns both and reports
//! timeouts, so this is testable by feeding bytes.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use taskpulse_shared::stomp::{
    AckMode, Acknowledge, ClientCommand, ClientFrame, Command, Connect, DecodeError, Decoder,
    Frame, Headers, HeartBeat, Limits, Send, Subscribe, Version, can_encode_header,
};

use taskpulse_shared::resume::{ResumePosition, TASKS_DESTINATION, TASKS_PATH};

use super::{Broker, Destination, Opened, Outbox, RouteError, SharedTask, Subscriber, Wire};

/// What the transport knows about the connection before CONNECT.
#[derive(Debug, Clone, Default)]
pub struct TransportInfo {
    /// The negotiated WebSocket subprotocol's version (`v12.stomp` -> 1.2), if any.
    pub subprotocol: Option<Version>,
    /// An `access_token` query parameter, for clients that cannot set headers.
    pub access_token: Option<String>,
    /// The peer, for logs.
    pub peer: String,
    /// Which door it came through, for the metrics.
    pub transport: crate::metrics::Transport,
}

/// Whether the transport should keep reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// The session is over: stop reading, let the writer finish the outbox, close.
    Close,
}

#[derive(Debug)]
struct Subscription {
    destination: Destination,
    ack: AckMode,
}

/// A SEND or ACK/NACK held back until its transaction commits.
#[derive(Debug)]
enum Deferred {
    Send(Send),
    Settle(Acknowledge, bool),
}

#[derive(Debug)]
struct Connected {
    principal: Arc<str>,
    /// Authenticated as a configured identity, so `[authorization] send_by_user` applies.
    configured: bool,
    version: Version,
    send_every: Duration,
    expect_within: Duration,
    subscriptions: HashMap<String, Subscription>,
    transactions: HashMap<String, Vec<Deferred>>,
    /// Bytes of the frames deferred in `transactions`.
    transaction_bytes: usize,
    /// When the credentials expire (seconds since the epoch); the session ends then unless
    /// renewed through [`AUTH_REFRESH`].
    expires_at: Option<u64>,
    /// A share link's watcher: it may subscribe to its one task, and do nothing else.
    watches: Option<Arc<SharedTask>>,
}

/// Where a client SENDs a fresh token (in `Authorization: Bearer`, or as the body) to keep
/// its session past the current token's expiry. Never routed: the session handles it.
pub const AUTH_REFRESH: &str = "/app/auth.refresh";

impl Deferred {
    /// What the deferred frame holds in memory, for `limits.transaction_bytes`.
    fn size(&self) -> usize {
        let headers = |h: &Headers| h.iter().map(|(n, v)| n.len() + v.len() + 2).sum::<usize>();
        match self {
            Deferred::Send(send) => {
                send.destination.len() + headers(&send.headers) + send.body.len() + 64
            }
            Deferred::Settle(ack, _) => {
                ack.id.len() + ack.subscription.as_ref().map_or(0, String::len) + 64
            }
        }
    }
}

/// The resume position of a SUBSCRIBE, both headers or neither.
fn resume_position(headers: &Headers) -> Result<Option<ResumePosition>, Refusal> {
    ResumePosition::from_headers(headers)
        .map_err(|e| refuse("invalid resume position", format!("{e}.")))
}

/// One client's session.
#[derive(Debug)]
pub struct Session {
    broker: Broker,
    outbox: Arc<Outbox>,
    decoder: Decoder,
    transport: TransportInfo,
    connected: Option<Connected>,
    closed: bool,
    /// Set by a SUBSCRIBE whose RECEIPT is sent after its replay.
    receipt_taken: bool,
}

/// A problem with a client frame: ERROR `message`, and the body explaining it.
struct Refusal {
    message: &'static str,
    body: String,
}

fn refuse(message: &'static str, body: impl Into<String>) -> Refusal {
    Refusal { message, body: body.into() }
}

impl From<RouteError> for Refusal {
    fn from(error: RouteError) -> Refusal {
        refuse(error.summary(), error.to_string())
    }
}

impl Session {
    /// A session awaiting CONNECT.
    pub fn new(broker: Broker, transport: TransportInfo) -> Session {
        let limits = &broker.settings().limits;
        let decoder = Decoder::new(
            Version::V1_2,
            Limits {
                max_frame_bytes: limits.frame_size,
                max_headers: limits.headers,
                max_header_line_bytes: limits.header_line,
            },
        );
        let outbox = broker.new_outbox();
        Session {
            broker,
            outbox,
            decoder,
            transport,
            connected: None,
            closed: false,
            receipt_taken: false,
        }
    }

    /// The queue the transport writes from.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// The largest frame accepted (`limits.frame_size`).
    pub fn frame_limit(&self) -> usize {
        self.broker.settings().limits.frame_size
    }

    /// The principal, once connected.
    pub fn principal(&self) -> Option<&str> {
        self.connected.as_ref().map(|c| &*c.principal)
    }

    /// `(send a heart-beat after this much silence, close after this much silence)`; zero
    /// durations mean never. Known after CONNECT.
    pub fn heartbeat(&self) -> (Duration, Duration) {
        self.connected.as_ref().map_or((Duration::ZERO, Duration::ZERO), |c| {
            let tolerance = self.broker.settings().stomp.heartbeat_tolerance;
            (c.send_every, c.expect_within.mul_f64(tolerance))
        })
    }

    /// Feeds bytes received from the client.
    pub fn on_bytes(&mut self, bytes: &[u8]) -> Flow {
        if self.closed {
            return Flow::Close;
        }
        self.decoder.feed(bytes);
        loop {
            match self.decoder.decode() {
                Ok(Some(frame)) => {
                    if self.on_frame(frame) == Flow::Close {
                        return Flow::Close;
                    }
                }
                Ok(None) => return Flow::Continue,
                Err(error) => return self.malformed(&error),
            }
        }
    }

    /// The client closed its side; an incomplete frame is reported in the log.
    pub fn on_eof(&mut self) {
        if let Err(error) = self.decoder.finish() {
            tracing::debug!(peer = %self.transport.peer, %error, "connection ended mid-frame");
        }
        self.closed = true;
    }

    /// No CONNECT arrived in time.
    pub fn connect_timeout(&mut self) -> Flow {
        let ms = self.broker.settings().stomp.connect_timeout_ms;
        self.fail(
            refuse("connect timeout", format!("No CONNECT frame arrived within {ms} ms.")),
            None,
        )
    }

    /// How long until the session's credentials expire; `None` if they do not.
    pub fn token_remaining(&self) -> Option<Duration> {
        let expires_at = self.connected.as_ref()?.expires_at?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Some(Duration::from_secs(expires_at.saturating_sub(now)))
    }

    /// The credentials expired without a refresh.
    pub fn token_expired(&mut self) -> Flow {
        self.fail(
            refuse(
                "token expired",
                format!(
                    "The token this connection authenticated with has expired. Connect again \
                     with a fresh token, or send one to {AUTH_REFRESH} before it expires."
                ),
            ),
            None,
        )
    }

    /// Nothing arrived for longer than the negotiated heart-beat allows.
    pub fn heartbeat_timeout(&mut self) -> Flow {
        let (_, within) = self.heartbeat();
        self.fail(
            refuse(
                "heart-beat timeout",
                format!("Nothing was received from the client for {} ms.", within.as_millis()),
            ),
            None,
        )
    }

    /// A transport-level problem the client should hear about (e.g. an oversize WebSocket
    /// message).
    pub fn transport_error(&mut self, message: &'static str, body: String) -> Flow {
        self.fail(refuse(message, body), None)
    }

    fn malformed(&mut self, error: &DecodeError) -> Flow {
        let (message, setting) = match error {
            DecodeError::FrameTooLarge { .. } => ("frame too large", Some("limits.frame_size")),
            DecodeError::TooManyHeaders { .. } => ("too many headers", Some("limits.headers")),
            DecodeError::HeaderLineTooLong { .. } => {
                ("header line too long", Some("limits.header_line"))
            }
            _ => ("malformed frame", None),
        };
        let body = match setting {
            Some(setting) => format!("{error} ({setting})."),
            None => error.to_string(),
        };
        self.fail(refuse(message, body), None)
    }

    fn fail(&mut self, refusal: Refusal, receipt: Option<String>) -> Flow {
        tracing::debug!(peer = %self.transport.peer, error = refusal.message, detail = %refusal.body, "closing session");
        self.outbox.fail(refusal.message, receipt, refusal.body);
        self.closed = true;
        Flow::Close
    }

    fn on_frame(&mut self, frame: Frame) -> Flow {
        self.broker.metrics().received_stomp(frame.command);
        let receipt = frame.header("receipt").map(str::to_owned);
        if let Some(id) = &receipt
            && let Some(connected) = &self.connected
            && !can_encode_header("receipt-id", id, Command::Receipt, connected.version)
        {
            let version = connected.version;
            return self.fail(
                refuse(
                    "invalid receipt",
                    format!(
                        "The receipt header {id:?} cannot be echoed in a STOMP {version} RECEIPT \
                         (a value ending in a carriage return needs STOMP 1.2)."
                    ),
                ),
                None,
            );
        }
        let result = match self.connected.as_ref().map(|c| c.version) {
            None => self.on_connect(frame),
            Some(version) => match ClientFrame::parse(frame, version) {
                Err(error) => Err(refuse("malformed frame", error.to_string())),
                Ok(parsed) => self.on_command(parsed.command),
            },
        };
        match result {
            Err(refusal) => self.fail(refusal, receipt),
            Ok(flow) => {
                // A replayed SUBSCRIBE's receipt follows its catch-up instead.
                let taken = std::mem::take(&mut self.receipt_taken);
                if let Some(receipt_id) = receipt.filter(|_| !taken) {
                    self.outbox.receipt(receipt_id);
                }
                if flow == Flow::Close {
                    self.outbox.close();
                    self.closed = true;
                }
                flow
            }
        }
    }

    fn on_connect(&mut self, frame: Frame) -> Result<Flow, Refusal> {
        let command = frame.command;
        let parsed = ClientFrame::parse(frame, Version::V1_2)
            .map_err(|e| refuse("malformed frame", e.to_string()))?;
        let ClientCommand::Connect(connect) = parsed.command else {
            return Err(refuse(
                "not connected",
                format!("The first frame must be CONNECT or STOMP, not {command}."),
            ));
        };
        let version = self.negotiate_version(&connect)?;
        let principal = match self
            .broker
            .authenticator()
            .authenticate(&connect, self.transport.access_token.as_deref())
        {
            Ok(principal) => {
                self.broker.metrics().authentication("success");
                principal
            }
            Err(reason) => {
                self.broker.metrics().authentication(reason.outcome());
                tracing::info!(peer = %self.transport.peer, %reason, "STOMP authentication failed");
                return Err(refuse("authentication failed", "The credentials were not accepted."));
            }
        };
        let token_id = principal.token_id;
        let configured = principal.configured;
        let expires_at = principal.expires_at;
        let watches = principal.watches;
        let principal: Arc<str> = Arc::from(principal.name);
        self.broker
            .attach(&principal, token_id.as_deref(), &self.outbox)
            .map_err(|reason| refuse("too many connections", reason))?;

        let stomp = &self.broker.settings().stomp;
        let clamp = |ms: u32| {
            if ms == 0 { 0 } else { ms.clamp(stomp.heartbeat_min_ms, stomp.heartbeat_max_ms) }
        };
        let offer = connect.heart_beat;
        let local =
            HeartBeat { send_ms: clamp(offer.receive_ms), receive_ms: clamp(offer.send_ms) };
        let (send_every, expect_within) =
            if version == Version::V1_0 { (0, 0) } else { HeartBeat::negotiate(local, offer) };
        self.decoder.set_version(version);
        self.outbox.set_heartbeat(Duration::from_millis(send_every.into()));
        let label = connect.header("clientId").map(str::to_owned);
        tracing::debug!(peer = %self.transport.peer, user = %principal, client_id = ?label, %version, "STOMP session opened");
        self.outbox.opened(Opened {
            session: self.broker.session_label(self.outbox.id),
            user_name: principal.to_string(),
            wire: Wire::Stomp {
                version,
                heart_beat: if version == Version::V1_0 { HeartBeat::default() } else { local },
            },
        });
        self.connected = Some(Connected {
            principal,
            configured,
            version,
            send_every: Duration::from_millis(send_every.into()),
            expect_within: Duration::from_millis(expect_within.into()),
            subscriptions: HashMap::new(),
            transactions: HashMap::new(),
            transaction_bytes: 0,
            expires_at,
            watches,
        });
        Ok(Flow::Continue)
    }

    /// The highest version both accept; a WebSocket subprotocol caps it.
    fn negotiate_version(&self, connect: &Connect) -> Result<Version, Refusal> {
        let cap = self.transport.subprotocol.unwrap_or(Version::V1_2);
        connect.accept_version.iter().copied().filter(|v| *v <= cap).max().ok_or_else(|| {
            let offered: Vec<&str> = connect.accept_version.iter().map(|v| v.as_str()).collect();
            refuse(
                "unsupported version",
                format!(
                    "None of the offered versions [{}] is supported at most {cap}; this server speaks 1.0, 1.1 and 1.2.",
                    offered.join(",")
                ),
            )
        })
    }

    fn on_command(&mut self, command: ClientCommand) -> Result<Flow, Refusal> {
        let limits = &self.broker.settings().limits;
        let (max_transactions, max_transaction_bytes) =
            (limits.transactions_per_connection, limits.transaction_bytes);
        let Some(connected) = self.connected.as_mut() else {
            return Err(refuse("not connected", "The first frame must be CONNECT or STOMP."));
        };
        match command {
            ClientCommand::Connect(_) => {
                return Err(refuse("already connected", "This session is already connected."));
            }
            ClientCommand::Send(send) => match send.transaction.clone() {
                Some(tx) => defer(connected, &tx, Deferred::Send(send), max_transaction_bytes)?,
                None => self.apply_send(send)?,
            },
            ClientCommand::Subscribe(subscribe) => self.subscribe(subscribe)?,
            ClientCommand::Unsubscribe { id } => {
                let Some(subscription) = connected.subscriptions.remove(&id) else {
                    return Err(refuse(
                        "unknown subscription",
                        format!("No subscription has id {id:?}."),
                    ));
                };
                self.broker.unsubscribe(&subscription.destination, self.outbox.id, &id);
                self.broker.redeliver(self.outbox.drop_subscription(&id));
            }
            ClientCommand::Ack(ack) => match ack.transaction.clone() {
                Some(tx) => {
                    defer(connected, &tx, Deferred::Settle(ack, false), max_transaction_bytes)?;
                }
                None => self.settle(&ack, false)?,
            },
            ClientCommand::Nack(nack) => match nack.transaction.clone() {
                Some(tx) => {
                    defer(connected, &tx, Deferred::Settle(nack, true), max_transaction_bytes)?;
                }
                None => self.settle(&nack, true)?,
            },
            ClientCommand::Begin { transaction } => {
                if connected.transactions.contains_key(&transaction) {
                    return Err(refuse(
                        "transaction already begun",
                        format!("Transaction {transaction:?} is already open."),
                    ));
                }
                if connected.transactions.len() >= max_transactions {
                    return Err(refuse(
                        "too many transactions",
                        format!(
                            "This connection already has {max_transactions} open transactions \
                             (limits.transactions_per_connection); COMMIT or ABORT one first."
                        ),
                    ));
                }
                connected.transaction_bytes += transaction.len() + 64;
                connected.transactions.insert(transaction, Vec::new());
            }
            ClientCommand::Commit { transaction } => {
                let deferred = take_transaction(connected, &transaction)?;
                for action in deferred {
                    match action {
                        Deferred::Send(send) => self.apply_send(send)?,
                        Deferred::Settle(ack, nack) => self.settle(&ack, nack)?,
                    }
                }
            }
            ClientCommand::Abort { transaction } => {
                take_transaction(connected, &transaction)?;
            }
            ClientCommand::Disconnect => return Ok(Flow::Close),
        }
        Ok(Flow::Continue)
    }

    fn apply_send(&mut self, send: Send) -> Result<(), Refusal> {
        if self.connected.as_ref().is_some_and(|c| c.watches.is_some()) {
            return Err(refuse(
                "not allowed",
                "A share link only watches its task: it cannot SEND.".to_owned(),
            ));
        }
        if send.destination == AUTH_REFRESH {
            return self.refresh(&send);
        }
        let Some(connected) = &self.connected else {
            return Err(refuse("not connected", "The first frame must be CONNECT or STOMP."));
        };
        let sender =
            super::Sender { principal: &connected.principal, configured: connected.configured };
        let routed =
            self.broker.client_send(&sender, &send.destination, send.headers, send.body)?;
        if let super::Routed::Queuing(stored) = routed {
            // Its RECEIPT, and every later answer, waits until the queue's store has it.
            self.outbox.after(stored, |outbox, e: super::RouteError| {
                outbox.fail(e.summary(), None, e.to_string());
            });
        }
        Ok(())
    }

    /// Renews the session's credentials with a token for the same principal.
    fn refresh(&mut self, send: &Send) -> Result<(), Refusal> {
        let Some(connected) = self.connected.as_mut() else {
            return Err(refuse("not connected", "The first frame must be CONNECT or STOMP."));
        };
        let header = send
            .headers
            .get("Authorization")
            .or_else(|| send.headers.get("authorization"))
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        let token = match header {
            Some(token) => token.trim().to_owned(),
            None => String::from_utf8_lossy(&send.body).trim().to_owned(),
        };
        let refused = |why: &str| {
            refuse(
                "token refresh refused",
                format!("The token sent to {AUTH_REFRESH} was not accepted: {why}."),
            )
        };
        let principal = match self.broker.authenticator().validate(&token) {
            Ok(principal) => principal,
            Err(reason) => {
                tracing::info!(peer = %self.transport.peer, user = %connected.principal, %reason, "token refresh refused");
                return Err(refused("it is invalid, expired or revoked"));
            }
        };
        if *principal.name != *connected.principal {
            return Err(refused("it is for another principal"));
        }
        connected.expires_at = principal.expires_at;
        self.broker.retoken(self.outbox.id, principal.token_id.as_deref());
        Ok(())
    }

    fn subscribe(&mut self, subscribe: Subscribe) -> Result<(), Refusal> {
        let limit = self.broker.settings().limits.subscriptions_per_connection;
        let Some(connected) = self.connected.as_mut() else {
            return Err(refuse("not connected", "The first frame must be CONNECT or STOMP."));
        };
        if !can_encode_header("subscription", &subscribe.id, Command::Message, connected.version) {
            return Err(refuse(
                "invalid subscription id",
                format!(
                    "The id {:?} cannot be written in the subscription header of a STOMP {} \
                     MESSAGE (a value ending in a carriage return needs STOMP 1.2).",
                    subscribe.id, connected.version
                ),
            ));
        }
        let (destination, task) = match &connected.watches {
            None => (
                Destination::resolve(&subscribe.destination, &connected.principal)
                    .map_err(|e| refuse("invalid destination", e.to_string()))?,
                None,
            ),
            Some(shared) if subscribe.destination == TASKS_DESTINATION => (
                Destination::User { user: shared.owner.clone(), path: TASKS_PATH.to_owned() },
                Some(Arc::from(shared.task_no.as_str())),
            ),
            Some(_) => {
                return Err(refuse(
                    "not allowed",
                    format!(
                        "A share link watches one task, at {TASKS_DESTINATION}; {:?} is not \
                         open to it.",
                        subscribe.destination
                    ),
                ));
            }
        };
        if let Destination::App(name) = &destination {
            return Err(refuse(
                "invalid destination",
                format!(
                    "{name:?} is handled by the server; /app/** destinations cannot be subscribed to."
                ),
            ));
        }
        if connected.subscriptions.contains_key(&subscribe.id) {
            return Err(refuse(
                "duplicate subscription",
                format!(
                    "A subscription with id {:?} already exists on this connection.",
                    subscribe.id
                ),
            ));
        }
        if connected.subscriptions.len() >= limit {
            return Err(refuse(
                "too many subscriptions",
                format!(
                    "This connection already has {limit} subscriptions (limits.subscriptions_per_connection)."
                ),
            ));
        }
        let resume = resume_position(&subscribe.headers)?;
        let subscriber = Subscriber {
            outbox: self.outbox.clone(),
            sub: Arc::from(subscribe.id.as_str()),
            ack: subscribe.ack,
            task,
        };
        connected.subscriptions.insert(
            subscribe.id,
            Subscription { destination: destination.clone(), ack: subscribe.ack },
        );
        let receipt = subscribe.headers.get("receipt").map(str::to_owned);
        self.receipt_taken =
            self.broker.subscribe_with_replay(&destination, subscriber, resume, receipt);
        Ok(())
    }

    fn settle(&mut self, ack: &Acknowledge, nack: bool) -> Result<(), Refusal> {
        let Some(connected) = self.connected.as_ref() else {
            return Err(refuse("not connected", "The first frame must be CONNECT or STOMP."));
        };
        let unknown = || {
            refuse(
                "unknown message",
                format!("No delivery awaiting acknowledgement has id {:?}.", ack.id),
            )
        };
        let id = if connected.version >= Version::V1_2 {
            ack.id.parse::<u64>().map_err(|_| unknown())?
        } else {
            self.outbox.find_ack(&ack.id, ack.subscription.as_deref()).ok_or_else(unknown)?
        };
        // Cumulative ACK applies to `client` subscriptions; which one is known from the id.
        let cumulative =
            |sub: &str| connected.subscriptions.get(sub).is_some_and(|s| s.ack == AckMode::Client);
        let settled = self.outbox.settle_with(id, cumulative).ok_or_else(unknown)?;
        self.broker.settled(settled, nack, self.outbox.id);
        Ok(())
    }

    /// Leaves the broker: subscriptions removed, unacknowledged queue messages redelivered.
    /// Dropping the session does the same, so a transport task that panics or is aborted
    /// never leaves a session registered.
    pub fn end(self) {
        drop(self);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(connected) = self.connected.take() {
            for (id, subscription) in &connected.subscriptions {
                self.broker.unsubscribe(&subscription.destination, self.outbox.id, id);
            }
            self.broker.detach(self.outbox.id);
        }
        self.broker.redeliver(self.outbox.finish());
    }
}

/// Adds a frame to an open transaction, within `limits.transaction_bytes` for all of the
/// connection's open transactions together.
fn defer(
    connected: &mut Connected,
    tx: &str,
    action: Deferred,
    max_bytes: usize,
) -> Result<(), Refusal> {
    let size = action.size();
    if connected.transaction_bytes + size > max_bytes {
        return Err(refuse(
            "transaction too large",
            format!(
                "The open transactions of this connection would hold more than {max_bytes} \
                 bytes (limits.transaction_bytes); COMMIT smaller transactions."
            ),
        ));
    }
    let deferred = connected.transactions.get_mut(tx).ok_or_else(|| unknown_transaction(tx))?;
    deferred.push(action);
    connected.transaction_bytes += size;
    Ok(())
}

fn take_transaction(connected: &mut Connected, tx: &str) -> Result<Vec<Deferred>, Refusal> {
    let deferred = connected.transactions.remove(tx).ok_or_else(|| unknown_transaction(tx))?;
    let size: usize = deferred.iter().map(Deferred::size).sum::<usize>() + tx.len() + 64;
    connected.transaction_bytes = connected.transaction_bytes.saturating_sub(size);
    Ok(deferred)
}

fn unknown_transaction(tx: &str) -> Refusal {
    refuse("unknown transaction", format!("No transaction {tx:?} was begun on this connection."))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use taskpulse_shared::stomp::Command;

    use super::*;
    use crate::{
        broker::{Authenticator, Claims, Outgoing, Publication},
        config::Settings,
        transport::stomp::StompWriter,
    };

    fn broker() -> Broker {
        let mut settings = Settings::default();
        settings.jwt.secret = "unit-tests-secret-of-thirty-two-bytes".into();
        let auth = Authenticator::new(&settings.jwt, &settings.auth).unwrap();
        Broker::new(settings, auth, Arc::default())
    }

    /// Drains the outbox as a transport would and returns each frame's first line.
    async fn written(session: &Session) -> Vec<String> {
        let mut batch = VecDeque::new();
        session.outbox().next_batch(&mut batch).await;
        let mut writer = StompWriter::default();
        batch
            .iter()
            .map(|item| {
                if let Outgoing::Close(_) = item {
                    return "CLOSE".into();
                }
                let mut out = Vec::new();
                writer.encode(item, &mut out).unwrap();
                String::from_utf8_lossy(&out).lines().next().unwrap().to_owned()
            })
            .collect()
    }

    #[tokio::test]
    async fn connect_subscribe_deliver_disconnect_without_a_socket() {
        let broker = broker();
        let token = broker.authenticator().issue(&Claims {
            sub: "alice".into(),
            exp: u64::MAX / 2,
            nbf: None,
            iat: None,
            jti: None,
        });
        let mut session = Session::new(broker.clone(), TransportInfo::default());
        let connect =
            format!("CONNECT\naccept-version:1.2\nAuthorization:Bearer {}\n\n\0", token.unwrap());
        assert_eq!(session.on_bytes(connect.as_bytes()), Flow::Continue);
        assert_eq!(session.principal(), Some("alice"));
        let subscribe = "SUBSCRIBE\nid:0\ndestination:/user/queue/tasks-progress\nreceipt:r\n\n\0";
        assert_eq!(session.on_bytes(subscribe.as_bytes()), Flow::Continue);
        assert_eq!(written(&session).await, ["CONNECTED", "RECEIPT"]);

        assert_eq!(
            broker.send_to_user("alice", "/queue/tasks-progress", Publication::json("{}")),
            1
        );
        assert_eq!(broker.send_to_user("bob", "/queue/tasks-progress", Publication::json("{}")), 0);
        assert_eq!(written(&session).await, ["MESSAGE"]);

        assert_eq!(session.on_bytes(b"DISCONNECT\nreceipt:bye\n\n\0"), Flow::Close);
        assert_eq!(written(&session).await, ["RECEIPT", "CLOSE"]);
        session.end();
        assert_eq!(broker.session_count(), 0);
        assert_eq!(
            broker.send_to_user("alice", "/queue/tasks-progress", Publication::json("{}")),
            0
        );
    }

    #[tokio::test]
    async fn a_bad_frame_before_connect_is_an_error() {
        let mut session = Session::new(broker(), TransportInfo::default());
        assert_eq!(session.on_bytes(b"SEND\ndestination:/queue/a\n\n\0"), Flow::Close);
        assert_eq!(written(&session).await, [Command::Error.as_str(), "CLOSE"]);
    }
}
