//! The STOMP broker core: sessions, subscriptions, routing and queues, independent of axum
//! and of the transport. A transport feeds bytes to a [`Session`] and drains its [`Outbox`].
//!
//! The rest of the server talks to it through [`Broker::send_to_user`] and
//! [`Broker::publish`], and handles `/app/**` SENDs with [`Broker::register_app`].

mod auth;
mod destination;
#[doc(hidden)]
pub mod exercise;
pub mod json_session;
mod message;
mod outbox;
mod session;
mod sse_session;

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

pub use auth::{
    AuthError, Authenticator, Claims, KeyError, Principal, SHARE_HEADER, SharedTask, share_id,
};
use bytes::Bytes;
pub use destination::{Destination, DestinationError, pattern_matches};
use futures_util::future::BoxFuture;
pub use json_session::JsonSession;
pub(crate) use message::ENCODINGS;
use message::is_protocol_header;
pub use message::{Coalesce, LogPlace, Message, Publication};
pub use outbox::{CloseReason, Delivery, Failure, Opened, Outbox, Outgoing, Wire};
use outbox::{Leftovers, Unacked};
use parking_lot::{Mutex, RwLock};
pub use session::{AUTH_REFRESH, Flow, Session, TransportInfo};
pub use sse_session::SseSession;
use taskpulse_shared::{
    resume::{self, ResumePosition},
    stomp::{AckMode, Headers},
};

use crate::{config::Settings, metrics::Metrics};

/// A SEND to `/app/**`, as an application handler sees it.
#[derive(Debug, Clone)]
pub struct AppMessage {
    /// The authenticated sender.
    pub principal: String,
    /// The destination, e.g. `/app/tasks.cancel`.
    pub destination: String,
    /// Every header of the SEND.
    pub headers: Headers,
    /// The body.
    pub body: Bytes,
}

/// Who is SENDing: the principal, and whether it authenticated as a configured identity
/// (only those get the rights of `[authorization] send_by_user`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sender<'a> {
    pub(crate) principal: &'a str,
    pub(crate) configured: bool,
}

/// Handles SENDs to one `/app/**` pattern. An `Err` becomes the ERROR frame's message.
pub type AppHandler = Arc<dyn Fn(AppMessage) -> Result<(), String> + Send + Sync>;

impl RouteError {
    /// The one-line summary a client's error carries (its code derives from it).
    pub fn summary(&self) -> &'static str {
        match self {
            RouteError::Destination(_) => "invalid destination",
            RouteError::Forbidden { .. } => "not allowed",
            RouteError::QueueFull { .. } | RouteError::QueuesFull(_) => "queue full",
            RouteError::Unavailable(_) => "queue unavailable",
            RouteError::NoHandler(_) => "unknown destination",
            RouteError::Handler { .. } => "rejected by the application",
        }
    }
}

/// Why the broker refused to route a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The destination is not valid.
    #[error(transparent)]
    Destination(#[from] DestinationError),
    /// The principal may not send there.
    #[error("{principal:?} may not send to {destination:?} (see [authorization] in the settings)")]
    Forbidden {
        /// Who tried.
        principal: String,
        /// Where to.
        destination: String,
    },
    /// A queue with no consumer is holding its maximum of messages.
    #[error(
        "queue {queue:?} is full: {limit} messages are waiting for a consumer (stomp.queue_pending)"
    )]
    QueueFull {
        /// The queue.
        queue: String,
        /// `stomp.queue_pending`.
        limit: usize,
    },
    /// Every queue together holds its maximum of bytes, or there are as many queues as allowed.
    #[error("{0}")]
    QueuesFull(String),
    /// On a node of several, the shared queue store did not answer in time.
    #[error("{0}")]
    Unavailable(String),
    /// No handler is registered for an `/app/**` destination.
    #[error("no application handler for {0:?}")]
    NoHandler(String),
    /// The handler refused the message.
    #[error("{destination}: {reason}")]
    Handler {
        /// The destination.
        destination: String,
        /// The handler's message.
        reason: String,
    },
}

/// Where a routed message went.
pub enum Routed {
    /// Handed to this many subscriptions here (a queue's: to its consumers at once).
    Delivered(usize),
    /// On a node of several, a queue message on its way to the queue's shared store:
    /// resolves once it is stored there for the consumers of every node.
    Queuing(BoxFuture<'static, Result<(), RouteError>>),
}

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Routed::Delivered(n) => f.debug_tuple("Delivered").field(n).finish(),
            Routed::Queuing(_) => f.write_str("Queuing"),
        }
    }
}

/// Queue messages a node's consumers can have waiting here, per consumer, beyond what they
/// hold: on a node of several, what the node takes from a queue's shared store at a time
/// (the rest stays there for the other nodes' consumers).
pub const QUEUE_PREFETCH: usize = 8;

/// A subscription as the router sees it.
#[derive(Debug, Clone)]
struct Subscriber {
    outbox: Arc<Outbox>,
    sub: Arc<str>,
    ack: AckMode,
    /// Only messages about this task (their [`Coalesce`] key): a share link's watcher sees
    /// its one task of the owner's tasks destination, and none of the owner's notices.
    task: Option<Arc<str>>,
}

impl Subscriber {
    fn wants(&self, message: &Message) -> bool {
        match &self.task {
            None => true,
            Some(task) => message.coalesce.as_ref().is_some_and(|c| c.key == *task),
        }
    }
}

/// A `/queue/**` destination: messages waiting for a consumer and the consumers in turn.
#[derive(Debug, Default)]
struct Queue {
    pending: VecDeque<Arc<Message>>,
    consumers: Vec<Subscriber>,
    next: usize,
}

impl Queue {
    /// Consumers whose connection is still open, but `except`.
    fn live_consumers(&self, except: Option<u64>) -> usize {
        self.consumers
            .iter()
            .filter(|c| !c.outbox.is_closed() && Some(c.outbox.id) != except)
            .count()
    }
}

/// Every `/queue/**` destination, and the bytes their pending messages hold together.
#[derive(Debug, Default)]
struct Queues {
    by_name: HashMap<Arc<str>, Queue>,
    /// Sum of [`Message::cost`] over every queue's `pending`.
    pending_bytes: usize,
    /// On a node of several: messages of a queue's shared store consumed here, and those
    /// handed back to it, for the relay once the lock is released.
    done: Vec<(Arc<str>, Arc<Message>)>,
    given_back: Vec<(Arc<str>, Arc<Message>)>,
}

impl Queues {
    /// Drops `name` when nobody consumes it and nothing waits in it.
    fn drop_if_idle(&mut self, name: &str) {
        if self.by_name.get(name).is_some_and(|q| q.consumers.is_empty() && q.pending.is_empty()) {
            self.by_name.remove(name);
        }
    }

    /// On a node of several, when nobody here consumes `name` any more, hands what waits
    /// here back to the queue's shared store, for the consumers of the other nodes.
    fn give_back_unconsumed(&mut self, name: &str) {
        let Some(queue) = self.by_name.get_mut(name) else { return };
        if queue.live_consumers(None) > 0 {
            return;
        }
        let (shared, kept): (VecDeque<_>, VecDeque<_>) =
            queue.pending.drain(..).partition(|m| m.entry.is_some());
        queue.pending = kept;
        let key: Arc<str> = Arc::from(name);
        for message in shared {
            self.pending_bytes = self.pending_bytes.saturating_sub(message.cost());
            self.given_back.push((key.clone(), message));
        }
    }
}

/// The one seam between "this is for these subscribers" and the sessions that get it: every
/// push the server makes (a numbered user message from the user log, a topic publication, a
/// token revocation, an operator's disconnect) goes through it. [`Broker`] is the in-process
/// implementation; one that spans several server processes implements the same trait, so
/// callers never know which runs.
pub trait Fanout: Send + Sync + std::fmt::Debug {
    /// Hands `publication` to every session of `user` subscribed to `/user{path}`; returns
    /// how many subscriptions (here) took it.
    fn to_user(&self, user: &str, path: &str, publication: Publication) -> usize;

    /// Publishes to a `/topic/**` or `/queue/**` destination (or `/user/{name}/…`) on the
    /// server's behalf.
    ///
    /// # Errors
    /// The destination is invalid or the queue is full.
    fn publish(&self, destination: &str, publication: Publication) -> Result<Routed, RouteError>;

    /// Refuses the token from now on and closes its sessions; returns how many.
    fn revoke_token(&self, token_id: &str) -> usize;

    /// Closes every session of `user`, saying why; returns how many.
    fn disconnect_user(&self, user: &str, reason: &str) -> usize;

    /// Whether `user` has a subscriber on `/user{path}` anywhere (here, or on another node
    /// as last heard): a message none took at once is then not for the offline queue.
    fn listened(&self, user: &str, path: &str) -> bool;

    /// Whether other nodes share this node's storage (then offline marks this node did not
    /// make may exist on any path).
    fn clustered(&self) -> bool;
}

impl Fanout for Broker {
    fn to_user(&self, user: &str, path: &str, publication: Publication) -> usize {
        self.send_to_user(user, path, publication)
    }

    fn publish(&self, destination: &str, publication: Publication) -> Result<Routed, RouteError> {
        Broker::publish(self, destination, publication)
    }

    fn revoke_token(&self, token_id: &str) -> usize {
        Broker::revoke_token(self, token_id)
    }

    fn disconnect_user(&self, user: &str, reason: &str) -> usize {
        Broker::disconnect_user(self, user, reason)
    }

    fn clustered(&self) -> bool {
        self.inner.relay.get().is_some()
    }

    fn listened(&self, user: &str, path: &str) -> bool {
        let key = RouteKey::User(user.to_owned(), path.to_owned());
        self.inner.routes.read().get(&key).is_some_and(|s| !s.is_empty())
            || self.inner.relay.get().is_some_and(|r| r.listened_elsewhere(user, path))
    }
}

/// What a broker that is one node of several hands to the others (`cluster::Bus`), and how
/// it learns what its own sessions need. The broker calls it; what comes back from the other
/// nodes reaches the broker's `deliver_*` and `*_here` methods, which never relay.
pub trait Relay: Send + Sync + std::fmt::Debug {
    /// A user message made on this node: the relay delivers it here (numbered ones in `seq`
    /// order, through [`Broker::deliver_to_user`]) and on the other nodes. Returns how many
    /// subscriptions here took it at once.
    fn to_user(&self, user: &str, path: &str, publication: Publication) -> usize;

    /// A topic publication made on this node (already delivered here).
    fn topic(&self, name: &str, publication: &Publication);

    /// A token revoked on this node (its sessions here are closed).
    fn revoke_token(&self, token_id: &str);

    /// A user disconnected on this node (its sessions here are closed).
    fn disconnect_user(&self, user: &str, reason: &str);

    /// A share link made (`Some`) or ended (`None`, with its id) on this node.
    fn share(&self, added: Option<&SharedTask>, removed: Option<&str>);

    /// This node's sessions now need (`true`) or no longer need the messages of a route: a
    /// user's (any of their paths) or a topic's.
    fn interest(&self, route: Route<'_>, needed: bool);

    /// Resolves once this node receives every message of `user` committed from now on
    /// (a catch-up reads storage only after it, so nothing falls between the two).
    fn ready(&self, user: &str) -> futures_util::future::BoxFuture<'static, ()>;

    /// Resolves once this node receives the topic `name`'s publications from the other
    /// nodes (its channel's subscription is confirmed), or after a bounded wait.
    fn topic_ready(&self, name: &str) -> futures_util::future::BoxFuture<'static, ()>;

    /// How many connections `user` has open on the other nodes, as last heard.
    fn connections_elsewhere(&self, user: &str) -> usize;

    /// Whether another node has a subscriber on `user`'s private `path`, as last heard.
    fn listened_elsewhere(&self, user: &str, path: &str) -> bool;

    /// `user` now has `here` connections open on this node.
    fn connections_changed(&self, user: &str, here: usize);

    /// Stores `message` for the `/queue/**` destination `name`, for the consumers of every
    /// node (each node takes its share through [`Broker::take_queued`]). Resolves once it is
    /// stored; refuses it when the queue is full.
    fn enqueue(&self, name: &str, message: &Message) -> BoxFuture<'static, Result<(), RouteError>>;

    /// Queue messages this node took through [`Broker::take_queued`] are done with here:
    /// consumed, or (`given_back`) handed back for the consumers of any node, marked
    /// redelivered.
    fn queued_done(&self, name: &str, messages: Vec<Arc<Message>>, given_back: bool);

    /// The consumers of queue `name` here can take more (see [`Broker::queue_demand`]).
    fn queue_room(&self, name: &str);
}

/// A route a [`Relay`] subscribes to for this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// A user's private destination `/user{path}` (the relay follows the user's channel
    /// while any of its paths has subscribers).
    User(&'a str, &'a str),
    /// A `/topic/**` name.
    Topic(&'a str),
    /// A `/queue/**` name whose consumers here take their share of its messages.
    Queue(&'a str),
}

/// Decides which SUBSCRIBEs to user destinations start with what the client missed, and
/// produces it (the user log of the replay issue lives outside the broker).
pub trait ReplaySource: Send + Sync {
    /// Whether a SUBSCRIBE to `/user{path}` is replayed; `resume` says whether it carried a
    /// position.
    fn wants(&self, path: &str, resume: bool) -> bool;

    /// Starts reading what the subscriber missed; the request's [`HeldSubscription`] must be
    /// released (dropping it releases it empty).
    fn replay(&self, request: ReplayRequest);
}

/// A SUBSCRIBE waiting for its replay.
#[derive(Debug)]
pub struct ReplayRequest {
    /// The principal.
    pub user: String,
    /// The user path, e.g. `/queue/tasks-progress`.
    pub path: String,
    /// The position the client sent, if any.
    pub resume: Option<ResumePosition>,
    /// Set for a share link's watcher: the catch-up is this one task's current state.
    pub task: Option<Arc<str>>,
    /// The subscription whose live messages are held meanwhile.
    pub held: HeldSubscription,
}

/// A subscription whose live messages are held until its replay is queued.
#[derive(Debug)]
pub struct HeldSubscription {
    broker: Broker,
    outbox: Arc<Outbox>,
    sub: Arc<str>,
    ack: AckMode,
    destination: Destination,
    /// The SUBSCRIBE's receipt, sent once the catch-up is queued.
    receipt: Option<String>,
    released: bool,
}

impl HeldSubscription {
    /// See [`Relay::ready`]: resolves at once on a single node.
    pub async fn ready(&self, user: &str) {
        self.broker.ready_for(user).await;
    }

    /// Queues `replay`, then the held live messages not already in it (those with `seq` above
    /// `replayed_up_to`), and lets live messages flow again.
    pub fn release(mut self, replay: Vec<Publication>, replayed_up_to: Option<i64>) {
        let messages =
            replay.into_iter().map(|p| self.broker.message(&self.destination, p)).collect();
        self.outbox.release(&self.sub, self.ack, messages, replayed_up_to, self.receipt.take());
        self.released = true;
    }
}

impl Drop for HeldSubscription {
    fn drop(&mut self) {
        if !self.released {
            self.outbox.release(&self.sub, self.ack, Vec::new(), None, self.receipt.take());
        }
    }
}

/// Connected sessions by id (principal, outbox), and how many each principal has.
#[derive(Debug, Default)]
struct OpenSessions {
    by_id: HashMap<u64, OpenSession>,
    per_user: HashMap<Arc<str>, usize>,
}

/// A connected session as the broker tracks it.
#[derive(Debug)]
struct OpenSession {
    principal: Arc<str>,
    /// The `jti` of the token it authenticated with, for revocation.
    token_id: Option<Box<str>>,
    outbox: Arc<Outbox>,
}

/// Key of fan-out routes: a topic name, or a user's private path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RouteKey {
    Topic(String),
    User(String, String),
}

/// The broker. Cheap to clone; all clones are the same broker.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    auth: Authenticator,
    metrics: Arc<Metrics>,
    /// Topics and user destinations: every subscriber gets every message.
    routes: RwLock<HashMap<RouteKey, Vec<Subscriber>>>,
    queues: Mutex<Queues>,
    /// Open sessions, for connection limits and shutdown.
    sessions: Mutex<OpenSessions>,
    apps: RwLock<Vec<(String, AppHandler)>>,
    /// Where SUBSCRIBEs to user destinations get what they missed.
    replay: RwLock<Option<Arc<dyn ReplaySource>>>,
    /// The other nodes, when this is one of several; set once at start.
    relay: std::sync::OnceLock<Arc<dyn Relay>>,
    next_session: AtomicU64,
    next_message: AtomicU64,
    /// Distinguishes ids of this process from those of earlier runs.
    instance: String,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("instance", &self.inner.instance).finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker with the given settings and authenticator, counting into `metrics`.
    pub fn new(settings: Settings, auth: Authenticator, metrics: Arc<Metrics>) -> Broker {
        // Only a label; a failure to get randomness leaves it zero.
        let instance = crate::secret::random_hex(4).unwrap_or_else(|_| "00000000".into());
        Broker {
            inner: Arc::new(Inner {
                settings,
                auth,
                metrics,
                routes: RwLock::default(),
                queues: Mutex::default(),
                sessions: Mutex::default(),
                apps: RwLock::default(),
                replay: RwLock::default(),
                relay: std::sync::OnceLock::new(),
                next_session: AtomicU64::new(1),
                next_message: AtomicU64::new(1),
                instance,
            }),
        }
    }

    /// The settings the broker runs with.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The server's figures.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The token validator (the task service issues tokens with it).
    pub fn authenticator(&self) -> &Authenticator {
        &self.inner.auth
    }

    /// Sends `publication` to every session of `user` subscribed to `/user{path}`, e.g.
    /// `send_to_user("alice", "/queue/tasks-progress", …)`. Returns the number of
    /// subscriptions it was handed to.
    pub fn send_to_user(&self, user: &str, path: &str, publication: Publication) -> usize {
        match self.inner.relay.get() {
            Some(relay) => relay.to_user(user, path, publication),
            None => self.deliver_to_user(user, path, publication),
        }
    }

    /// [`Broker::send_to_user`] on this node only (what a [`Relay`] delivers here).
    pub fn deliver_to_user(&self, user: &str, path: &str, publication: Publication) -> usize {
        let destination = Destination::User { user: user.to_owned(), path: path.to_owned() };
        self.fan_out(&destination, publication)
    }

    /// A topic publication on this node only (what a [`Relay`] delivers here).
    pub fn deliver_to_topic(&self, name: &str, publication: Publication) -> usize {
        self.fan_out(&Destination::Topic(name.to_owned()), publication)
    }

    /// Makes this broker one node of several: what the others must see goes to `relay`.
    ///
    /// # Errors
    /// A relay was already set.
    pub fn set_relay(&self, relay: Arc<dyn Relay>) -> Result<(), Arc<dyn Relay>> {
        self.inner.relay.set(relay)
    }

    /// See [`Relay::ready`]; at once on a single node.
    pub async fn ready_for(&self, user: &str) {
        if let Some(relay) = self.inner.relay.get() {
            relay.ready(user).await;
        }
    }

    /// Admits the holders of `share`'s token from now on, on every node.
    pub fn add_share(&self, share: SharedTask) {
        if let Some(relay) = self.inner.relay.get() {
            relay.share(Some(&share), None);
        }
        self.inner.auth.add_share(share);
    }

    /// Refuses the holders of the share link `id` from now on, on every node.
    pub fn remove_share(&self, id: &str) {
        if let Some(relay) = self.inner.relay.get() {
            relay.share(None, Some(id));
        }
        self.inner.auth.remove_share(id);
    }

    /// Publishes to a `/topic/**` or `/queue/**` destination (or `/user/{name}/…`) on the
    /// server's behalf: no authorization rule applies.
    ///
    /// # Errors
    /// The destination is invalid or the queue is full.
    pub fn publish(
        &self,
        destination: &str,
        publication: Publication,
    ) -> Result<Routed, RouteError> {
        let destination = match destination.strip_prefix("/user/").and_then(|r| r.split_once('/')) {
            Some((user, _)) => Destination::resolve(destination, user)?,
            None => Destination::resolve(destination, "")?,
        };
        self.route(&destination, publication)
    }

    /// Registers `handler` for SENDs to destinations matching `pattern` (e.g.
    /// `/app/tasks.cancel` or `/app/chat.**`).
    pub fn register_app(&self, pattern: &str, handler: AppHandler) {
        self.inner.apps.write().push((pattern.to_owned(), handler));
    }

    /// Installs the source of replays and snapshots for user subscriptions.
    pub fn set_replay_source(&self, source: Arc<dyn ReplaySource>) {
        *self.inner.replay.write() = Some(source);
    }

    fn replay_source(&self) -> Option<Arc<dyn ReplaySource>> {
        self.inner.replay.read().clone()
    }

    /// Closes every session with an ERROR saying why, and waits (up to `grace`) until their
    /// transports have let go.
    pub async fn shutdown(&self, reason: &str, grace: Duration) {
        let open: Vec<Arc<Outbox>> =
            self.inner.sessions.lock().by_id.values().map(|s| s.outbox.clone()).collect();
        for outbox in open {
            outbox.fail(reason, None, format!("The server closed this connection: {reason}."));
        }
        let deadline = tokio::time::Instant::now() + grace;
        while !self.inner.sessions.lock().by_id.is_empty() && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Revokes a token: it is refused from now on, and every session that authenticated
    /// with it is closed with ERROR `token revoked`. Returns how many were closed.
    pub fn revoke_token(&self, token_id: &str) -> usize {
        if let Some(relay) = self.inner.relay.get() {
            relay.revoke_token(token_id);
        }
        self.revoke_token_here(token_id)
    }

    /// [`Broker::revoke_token`] on this node only.
    pub fn revoke_token_here(&self, token_id: &str) -> usize {
        self.inner.auth.revoke(token_id);
        let sessions = self.inner.sessions.lock();
        let mut closed = 0;
        for session in sessions.by_id.values() {
            if session.token_id.as_deref() == Some(token_id) {
                session.outbox.fail(
                    "token revoked",
                    None,
                    "The token this connection authenticated with was revoked (signed out).".into(),
                );
                closed += 1;
            }
        }
        closed
    }

    /// Closes every session of `user` with ERROR `disconnected` saying why (an operator's
    /// kick). Returns how many were closed.
    pub fn disconnect_user(&self, user: &str, reason: &str) -> usize {
        if let Some(relay) = self.inner.relay.get() {
            relay.disconnect_user(user, reason);
        }
        self.disconnect_user_here(user, reason)
    }

    /// [`Broker::disconnect_user`] on this node only.
    pub fn disconnect_user_here(&self, user: &str, reason: &str) -> usize {
        let sessions = self.inner.sessions.lock();
        let mut closed = 0;
        for session in sessions.by_id.values().filter(|s| &*s.principal == user) {
            session.outbox.fail(
                "disconnected",
                None,
                format!("The server closed this connection: {reason}."),
            );
            closed += 1;
        }
        closed
    }

    /// Number of open STOMP sessions.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.lock().by_id.len()
    }

    fn next_session_id(&self) -> u64 {
        self.inner.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// A new session's outbox, with the next session id and `[limits]`' ceilings.
    fn new_outbox(&self) -> Arc<Outbox> {
        let limits = &self.inner.settings.limits;
        Arc::new(Outbox::new(
            self.next_session_id(),
            limits.outbound_buffer,
            limits.unacked_per_subscription,
        ))
    }

    fn session_label(&self, id: u64) -> String {
        format!("{}-{id}", self.inner.instance)
    }

    fn message(&self, destination: &Destination, publication: Publication) -> Arc<Message> {
        let n = self.inner.next_message.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", self.inner.instance);
        Arc::new(Message::new(id, destination.public_name(), publication))
    }

    /// Registers a connected session; refuses it beyond `limits.connections_per_user`.
    fn attach(
        &self,
        principal: &Arc<str>,
        token_id: Option<&str>,
        outbox: &Arc<Outbox>,
    ) -> Result<(), String> {
        let limit = self.inner.settings.limits.connections_per_user;
        let relay = self.inner.relay.get();
        let mut sessions = self.inner.sessions.lock();
        let here = sessions.per_user.get(principal).copied().unwrap_or(0);
        let open = here + relay.map_or(0, |r| r.connections_elsewhere(principal));
        if open >= limit {
            let across = if relay.is_some() { " across the servers" } else { "" };
            return Err(format!(
                "{principal:?} already has {open} open connections{across} (limits.connections_per_user = {limit})"
            ));
        }
        let session = OpenSession {
            principal: principal.clone(),
            token_id: token_id.map(Box::from),
            outbox: outbox.clone(),
        };
        sessions.by_id.insert(outbox.id, session);
        *sessions.per_user.entry(principal.clone()).or_default() += 1;
        if let Some(relay) = relay {
            relay.connections_changed(principal, here + 1);
        }
        Ok(())
    }

    /// Every `(user, path)` with a subscriber on this node.
    pub fn listened_paths(&self) -> Vec<(String, String)> {
        let routes = self.inner.routes.read();
        routes
            .iter()
            .filter(|(_, subscribers)| !subscribers.is_empty())
            .filter_map(|(key, _)| match key {
                RouteKey::User(user, path) => Some((user.clone(), path.clone())),
                RouteKey::Topic(_) => None,
            })
            .collect()
    }

    /// Open connections per principal on this node.
    pub fn connections_per_user(&self) -> Vec<(String, usize)> {
        let sessions = self.inner.sessions.lock();
        sessions.per_user.iter().map(|(user, n)| (user.to_string(), *n)).collect()
    }

    /// The session `id` now authenticates with the token `token_id` (an in-band refresh).
    fn retoken(&self, id: u64, token_id: Option<&str>) {
        if let Some(session) = self.inner.sessions.lock().by_id.get_mut(&id) {
            session.token_id = token_id.map(Box::from);
        }
    }

    fn detach(&self, id: u64) {
        let mut sessions = self.inner.sessions.lock();
        if let Some(OpenSession { principal: user, .. }) = sessions.by_id.remove(&id)
            && let Some(count) = sessions.per_user.get_mut(&user)
        {
            *count -= 1;
            let left = *count;
            if left == 0 {
                sessions.per_user.remove(&user);
            }
            if let Some(relay) = self.inner.relay.get() {
                relay.connections_changed(&user, left);
            }
        }
    }

    /// Whether `sender` may SEND to `destination`: the patterns everyone has, plus those
    /// `[authorization] send_by_user` grants a configured identity.
    fn may_send(&self, sender: &Sender<'_>, destination: &Destination) -> bool {
        let name = destination.to_string();
        let rules = &self.inner.settings.authorization;
        let own = rules
            .send_by_user
            .get(sender.principal)
            .filter(|_| sender.configured)
            .into_iter()
            .flatten();
        rules.send.iter().chain(own).any(|pattern| pattern_matches(pattern, &name))
    }

    /// A client's SEND: authorized, then routed or handed to an application handler.
    fn client_send(
        &self,
        sender: &Sender<'_>,
        destination: &str,
        headers: Headers,
        body: Bytes,
    ) -> Result<Routed, RouteError> {
        let principal = sender.principal;
        let resolved = match Destination::resolve(destination, principal) {
            // Sending to another user's private destination is a matter of authorization.
            Err(DestinationError::ForeignUser { .. }) => {
                let rest = destination.get("/user/".len()..).unwrap_or_default();
                let (user, _) = rest.split_once('/').unwrap_or((rest, ""));
                Destination::resolve(destination, user)?
            }
            other => other?,
        };
        if let Destination::App(name) = &resolved {
            let handler = self
                .inner
                .apps
                .read()
                .iter()
                .find(|(pattern, _)| pattern_matches(pattern, name))
                .map(|(_, h)| h.clone())
                .ok_or_else(|| RouteError::NoHandler(name.clone()))?;
            let message = AppMessage {
                principal: principal.to_owned(),
                destination: name.clone(),
                headers,
                body,
            };
            return handler(message)
                .map(|()| Routed::Delivered(0))
                .map_err(|reason| RouteError::Handler { destination: name.clone(), reason });
        }
        if !self.may_send(sender, &resolved) {
            return Err(RouteError::Forbidden {
                principal: principal.to_owned(),
                destination: destination.to_owned(),
            });
        }
        // STOMP's own headers are the broker's to write, and the delivery guarantee's
        // (`seq`, `epoch`, `x-replayed`, `x-snapshot*`) are the server's: a forged `seq` would
        // make a resuming client drop real updates. Neither passes through.
        let mut publication =
            Publication { headers: Headers::new(), body, coalesce: None, place: None };
        publication.headers.extend(
            headers
                .iter()
                .filter(|(n, _)| !is_protocol_header(n) && !resume::is_reserved_header(n)),
        );
        publication.headers.push(resume::SENDER, principal);
        self.route(&resolved, publication)
    }

    fn route(
        &self,
        destination: &Destination,
        publication: Publication,
    ) -> Result<Routed, RouteError> {
        match destination {
            Destination::Queue(name) => self.enqueue(name, publication),
            Destination::App(name) => Err(RouteError::NoHandler(name.clone())),
            Destination::User { user, path } => {
                Ok(Routed::Delivered(self.send_to_user(user, path, publication)))
            }
            Destination::Topic(name) => {
                if let Some(relay) = self.inner.relay.get() {
                    relay.topic(name, &publication);
                }
                Ok(Routed::Delivered(self.fan_out(destination, publication)))
            }
        }
    }

    fn route_key(destination: &Destination) -> Option<RouteKey> {
        match destination {
            Destination::Topic(name) => Some(RouteKey::Topic(name.clone())),
            Destination::User { user, path } => Some(RouteKey::User(user.clone(), path.clone())),
            Destination::Queue(_) | Destination::App(_) => None,
        }
    }

    fn fan_out(&self, destination: &Destination, publication: Publication) -> usize {
        let Some(key) = Self::route_key(destination) else { return 0 };
        let routes = self.inner.routes.read();
        let Some(subscribers) = routes.get(&key).filter(|s| !s.is_empty()) else { return 0 };
        let message = self.message(destination, publication);
        let mut handed = 0;
        let mut coalesced = 0;
        for s in subscribers {
            if !s.wants(&message) {
                continue;
            }
            match s.outbox.deliver(&s.sub, s.ack, &message, None) {
                Delivery::Queued => handed += 1,
                Delivery::Coalesced => {
                    handed += 1;
                    coalesced += 1;
                }
                Delivery::AckLimit => {
                    let limit = self.inner.settings.limits.unacked_per_subscription;
                    s.outbox.fail(
                        "too many unacknowledged messages",
                        None,
                        format!(
                            "Subscription {:?} has {limit} messages awaiting ACK \
                             (limits.unacked_per_subscription), or this connection's \
                             unacknowledged messages hold more than {} bytes \
                             (limits.outbound_buffer).",
                            &*s.sub, self.inner.settings.limits.outbound_buffer
                        ),
                    );
                }
                Delivery::Closed => {}
            }
        }
        self.inner.metrics.fanned_out(handed as u64, coalesced);
        handed
    }

    fn enqueue(&self, name: &str, publication: Publication) -> Result<Routed, RouteError> {
        let message = self.message(&Destination::Queue(name.to_owned()), publication);
        if let Some(relay) = self.inner.relay.get() {
            // One store for every node's consumers; it counts `stomp.queue_pending` itself.
            return Ok(Routed::Queuing(relay.enqueue(name, &message)));
        }
        let settings = &self.inner.settings;
        let limit = settings.stomp.queue_pending;
        let mut queues = self.inner.queues.lock();
        if !queues.by_name.contains_key(name) && queues.by_name.len() >= settings.limits.queues {
            return Err(RouteError::QueuesFull(format!(
                "there are already {} queues (limits.queues); /queue/{name} cannot be created",
                settings.limits.queues
            )));
        }
        if queues.pending_bytes + message.cost() > settings.limits.queue_bytes {
            return Err(RouteError::QueuesFull(format!(
                "the queues' waiting messages would hold more than {} bytes \
                 (limits.queue_bytes); nothing consumes them fast enough",
                settings.limits.queue_bytes
            )));
        }
        let key: Arc<str> = Arc::from(name);
        let queue = queues.by_name.entry(key.clone()).or_default();
        if queue.pending.len() >= limit {
            return Err(RouteError::QueueFull { queue: name.to_owned(), limit });
        }
        queues.pending_bytes += message.cost();
        Ok(Routed::Delivered(queues.push_and_dispatch(&key, message, false, None)))
    }

    /// Queue messages a relay took from queue `name`'s shared store for the consumers here,
    /// in the store's order; handed out in turn, and handed back at once when nobody here
    /// consumes `name` any more.
    pub fn take_queued(&self, name: &str, messages: Vec<Message>) {
        let key: Arc<str> = Arc::from(name);
        let mut queues = self.inner.queues.lock();
        for message in messages {
            let message = Arc::new(message);
            queues.pending_bytes += message.cost();
            queues.by_name.entry(key.clone()).or_default().pending.push_back(message);
        }
        queues.dispatch(&key, None);
        queues.give_back_unconsumed(&key);
        queues.drop_if_idle(&key);
        self.after_queues(queues);
    }

    /// How many more messages of queue `name` the consumers here could use now: what each
    /// can take before its ACK limit, up to [`QUEUE_PREFETCH`], less what already waits
    /// here. (So a consumer that holds its maximum unacknowledged leaves the rest to the
    /// other nodes' consumers.)
    pub fn queue_demand(&self, name: &str) -> usize {
        let queues = self.inner.queues.lock();
        queues.by_name.get(name).map_or(0, |q| {
            let room: usize = q
                .consumers
                .iter()
                .filter(|c| !c.outbox.is_closed())
                .map(|c| c.outbox.ack_room(&c.sub, c.ack).min(QUEUE_PREFETCH))
                .sum();
            room.saturating_sub(q.pending.len())
        })
    }

    /// Releases the queues' lock, then tells the relay (if any) which messages of the shared
    /// stores were consumed here and which were handed back.
    fn after_queues(&self, mut queues: parking_lot::MutexGuard<'_, Queues>) {
        let done = std::mem::take(&mut queues.done);
        let given_back = std::mem::take(&mut queues.given_back);
        drop(queues);
        let Some(relay) = self.inner.relay.get() else { return };
        for (messages, given_back) in [(done, false), (given_back, true)] {
            let mut by_queue: Vec<(Arc<str>, Vec<Arc<Message>>)> = Vec::new();
            for (name, message) in messages {
                match by_queue.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, list)) => list.push(message),
                    None => by_queue.push((name, vec![message])),
                }
            }
            for (name, list) in by_queue {
                relay.queued_done(&name, list, given_back);
            }
        }
    }

    /// Subscribes; a user destination the replay source wants is held and handed to it,
    /// which then sends `receipt`. Returns whether it took the receipt.
    fn subscribe_with_replay(
        &self,
        destination: &Destination,
        subscriber: Subscriber,
        resume: Option<ResumePosition>,
        receipt: Option<String>,
    ) -> bool {
        let replay = match destination {
            Destination::User { user, path } => self
                .replay_source()
                .filter(|source| source.wants(path, resume.is_some()))
                .map(|source| (source, user.clone(), path.clone())),
            _ => None,
        };
        let relay =
            self.inner.relay.get().filter(|_| {
                matches!(destination, Destination::User { .. } | Destination::Topic(_))
            });
        if replay.is_none() && relay.is_none() {
            self.subscribe(destination, subscriber);
            return false;
        }
        subscriber.outbox.hold(&subscriber.sub);
        let task = subscriber.task.clone();
        let held = HeldSubscription {
            broker: self.clone(),
            outbox: subscriber.outbox.clone(),
            sub: subscriber.sub.clone(),
            ack: subscriber.ack,
            destination: destination.clone(),
            receipt,
            released: false,
        };
        self.subscribe(destination, subscriber);
        match (replay, relay) {
            (Some((source, user, path)), _) => {
                source.replay(ReplayRequest { user, path, resume, task, held });
            }
            // On a node of several, a subscription takes effect (and its receipt is sent)
            // once the bus brings its route's messages to this node.
            (None, Some(relay)) => {
                let ready = match destination {
                    Destination::Topic(name) => relay.topic_ready(name),
                    Destination::User { user, .. } => relay.ready(user),
                    _ => Box::pin(async {}),
                };
                tokio::spawn(async move {
                    ready.await;
                    held.release(Vec::new(), None);
                });
            }
            (None, None) => {}
        }
        true
    }

    fn subscribe(&self, destination: &Destination, subscriber: Subscriber) {
        if let Destination::Queue(name) = destination {
            let key: Arc<str> = Arc::from(name.as_str());
            let mut queues = self.inner.queues.lock();
            let queue = queues.by_name.entry(key.clone()).or_default();
            queue.consumers.retain(|c| !c.outbox.is_closed());
            queue.consumers.push(subscriber);
            let first = queue.consumers.len() == 1;
            queues.dispatch(&key, None);
            self.after_queues(queues);
            if let Some(relay) = self.inner.relay.get().filter(|_| first) {
                relay.interest(Route::Queue(name), true);
            }
        } else if let Some(key) = Self::route_key(destination) {
            let first = {
                let mut routes = self.inner.routes.write();
                let subscribers = routes.entry(key.clone()).or_default();
                subscribers.push(subscriber);
                subscribers.len() == 1
            };
            if first {
                self.interest(&key, true);
            }
        }
    }

    /// Tells the relay, if any, that a route gained its first or lost its last subscriber.
    fn interest(&self, key: &RouteKey, needed: bool) {
        if let Some(relay) = self.inner.relay.get() {
            match key {
                RouteKey::User(user, path) => relay.interest(Route::User(user, path), needed),
                RouteKey::Topic(name) => relay.interest(Route::Topic(name), needed),
            }
        }
    }

    fn unsubscribe(&self, destination: &Destination, outbox: u64, sub: &str) {
        let keep = |s: &Subscriber| !(s.outbox.id == outbox && &*s.sub == sub);
        if let Destination::Queue(name) = destination {
            let mut queues = self.inner.queues.lock();
            let emptied = queues.by_name.get_mut(name.as_str()).is_some_and(|queue| {
                queue.consumers.retain(|c| keep(c) && !c.outbox.is_closed());
                queue.consumers.is_empty()
            });
            queues.give_back_unconsumed(name);
            queues.drop_if_idle(name);
            self.after_queues(queues);
            if let Some(relay) = self.inner.relay.get().filter(|_| emptied) {
                relay.interest(Route::Queue(name), false);
            }
        } else if let Some(key) = Self::route_key(destination) {
            let last = {
                let mut routes = self.inner.routes.write();
                let emptied = routes.get_mut(&key).is_some_and(|subscribers| {
                    subscribers.retain(keep);
                    subscribers.is_empty()
                });
                if emptied {
                    routes.remove(&key);
                }
                emptied
            };
            if last {
                self.interest(&key, false);
            }
        }
    }

    /// ACKed or NACKed deliveries: queue consumers have room again; NACKed queue messages go
    /// to another consumer, marked redelivered. On a node of several, an ACKed message of a
    /// queue's shared store is consumed there, and a NACKed one with no other consumer here
    /// goes back to the store, for the consumers of every node.
    fn settled(&self, settled: Vec<Unacked>, nack: bool, from: u64) {
        let mut queues = self.inner.queues.lock();
        let mut touched: Vec<Arc<str>> = Vec::new();
        for Unacked { message, queue, .. } in settled {
            let Some(name) = queue else { continue };
            let others = queues.by_name.get(&name).map_or(0, |q| q.live_consumers(Some(from)));
            match (nack, message.entry.is_some()) {
                (false, true) => queues.done.push((name.clone(), message)),
                (true, true) if others == 0 => {
                    queues.given_back.push((name.clone(), Arc::new(message.redelivery())));
                }
                (true, _) if queues.by_name.contains_key(&name) => {
                    let message = Arc::new(message.redelivery());
                    queues.pending_bytes += message.cost();
                    queues.push_and_dispatch(&name, message, true, Some(from));
                }
                _ => {}
            }
            if !touched.contains(&name) {
                touched.push(name);
            }
        }
        for name in &touched {
            queues.dispatch(name, None);
            queues.drop_if_idle(name);
        }
        self.after_queues(queues);
        if let Some(relay) = self.inner.relay.get() {
            for name in &touched {
                relay.queue_room(name);
            }
        }
    }

    /// Queue messages a closed or unsubscribed consumer never acknowledged. They were
    /// accepted once, so they come back even past `limits.queue_bytes`.
    fn redeliver(&self, leftovers: Leftovers) {
        if leftovers.redeliver.is_empty() {
            return;
        }
        let mut queues = self.inner.queues.lock();
        let mut touched: Vec<Arc<str>> = Vec::new();
        // Oldest first at the front: push in reverse.
        for (name, message) in leftovers.redeliver.into_iter().rev() {
            let message = Arc::new(message.redelivery());
            queues.pending_bytes += message.cost();
            queues.by_name.entry(name.clone()).or_default().pending.push_front(message);
            if !touched.contains(&name) {
                touched.push(name);
            }
        }
        for name in touched {
            queues.dispatch(&name, None);
            queues.give_back_unconsumed(&name);
            queues.drop_if_idle(&name);
        }
        self.after_queues(queues);
    }
}

impl Queues {
    /// Adds `message` to queue `name` (at the front for a redelivery) and dispatches.
    fn push_and_dispatch(
        &mut self,
        name: &Arc<str>,
        message: Arc<Message>,
        front: bool,
        exclude: Option<u64>,
    ) -> usize {
        let queue = self.by_name.entry(name.clone()).or_default();
        if front {
            queue.pending.push_front(message);
        } else {
            queue.pending.push_back(message);
        }
        self.dispatch(name, exclude)
    }

    /// Hands queue `name`'s pending messages to its consumers in turn, skipping full or
    /// closing ones (and `exclude`, the consumer that just NACKed). Returns how many were
    /// handed out.
    fn dispatch(&mut self, name: &Arc<str>, exclude: Option<u64>) -> usize {
        let Some(queue) = self.by_name.get_mut(name) else { return 0 };
        let handed = dispatch(name, queue, exclude, &mut self.done);
        self.pending_bytes = self.pending_bytes.saturating_sub(handed.1);
        handed.0
    }
}

/// See [`Queues::dispatch`]; returns how many messages were handed out and their bytes. A
/// message of a queue's shared store handed to an `auto` consumer is consumed: it joins
/// `done`.
fn dispatch(
    name: &Arc<str>,
    queue: &mut Queue,
    exclude: Option<u64>,
    done: &mut Vec<(Arc<str>, Arc<Message>)>,
) -> (usize, usize) {
    let mut handed = 0;
    let mut bytes = 0;
    queue.consumers.retain(|c| !c.outbox.is_closed());
    'messages: while let Some(message) = queue.pending.front().cloned() {
        let n = queue.consumers.len();
        for i in 0..n {
            let idx = (queue.next + i) % n;
            let consumer = &queue.consumers[idx];
            if exclude == Some(consumer.outbox.id) && n > 1 {
                continue;
            }
            if let Delivery::Queued | Delivery::Coalesced =
                consumer.outbox.deliver(&consumer.sub, consumer.ack, &message, Some(name))
            {
                if consumer.ack == AckMode::Auto && message.entry.is_some() {
                    done.push((name.clone(), message.clone()));
                }
                queue.pending.pop_front();
                queue.next = idx + 1;
                handed += 1;
                bytes += message.cost();
                continue 'messages;
            }
        }
        break;
    }
    (handed, bytes)
}
