//! Several nodes: Redis pub/sub is the bus between brokers that share one PostgreSQL.
//! [`Bus`] is the broker's [`Relay`]: what a node's broker makes for others (user messages,
//! topic publications, revocations, disconnects, share links) goes out on the bus, and what
//! comes in is delivered by the broker here. A node subscribes to a user's or a topic's
//! channel only while its own sessions need it.
//!
//! Order and gaps: storage numbers each user's messages, and several nodes publish them, so
//! each user's numbered messages pass a [`sequencer::Sequencer`] on every node (the node's
//! own ones too): early ones wait for their predecessors, and a gap still open after
//! `cluster.gap_wait_ms` is read from storage. When the bus comes back after an outage,
//! every user followed here is read from storage from where it stood.

mod envelope;
mod queues;
mod sequencer;

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::Duration,
};

use futures_util::{FutureExt, StreamExt, future::BoxFuture};
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use taskpulse_shared::{
    TaskProgressDto,
    stats::{ClusterStats, NodeStats},
};
use tokio::sync::{mpsc, oneshot};

use self::{
    envelope::{Body, CONTROL, Envelope, Wire, node_channel, topic_channel, user_channel},
    sequencer::Sequencer,
};
use crate::{
    broker::{Broker, Message, Publication, Relay, Route, RouteError, SharedTask},
    config::ClusterSettings,
    now_ms,
    storage::{Storage, StorageError},
    tasks::{Remote, RemoteFailure, TaskCall, TaskService},
};

/// Messages waiting to be published at most (per publishing connection); past it a node's
/// own publications are dropped (logged and counted): other nodes read numbered ones from
/// storage at the next gap, topic publications are lost.
const OUTGOING: usize = 50_000;

/// Connections a node publishes on, each with its own queue. A channel always goes through
/// the same one, so each channel's messages keep their order.
const PUBLISHERS: usize = 4;

/// Publications sent to Redis in one pipeline at most.
const BATCH: usize = 512;

/// Entries one gap fill reads at most (a longer gap takes several).
const FILL: u32 = 1_000;

/// How long a catch-up waits for the bus to confirm a new subscription before it reads
/// storage anyway (the bus is down; its return fills what was missed).
const READY_WAIT: Duration = Duration::from_secs(2);

/// How long a call on a task waits for the node that runs it.
const CALL_WAIT: Duration = Duration::from_secs(5);

/// How often a node says it is alive (with its connection count).
const ALIVE_EVERY: Duration = Duration::from_secs(2);

/// Every how many alive messages a node sends its per-user counts in full (they drift if a
/// presence change is lost while the bus is down).
const FULL_EVERY: u32 = 15;

/// A node not heard from for this long is gone: its connections no longer count.
const GONE_AFTER: Duration = Duration::from_secs(10);

/// Another node as this one last heard of it.
#[derive(Debug)]
struct Peer {
    seen: std::time::Instant,
    connections: usize,
    users: HashMap<String, usize>,
    /// `(user, path)` pairs with a subscriber there.
    paths: std::collections::HashSet<(String, String)>,
}

/// Why a node could not join the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The URL or the first connection failed.
    #[error("cluster.redis_url: cannot reach Redis at {url}: {source}")]
    Redis {
        /// The URL, without its password.
        url: String,
        /// Why.
        source: redis::RedisError,
    },
    /// Reading the log's epoch failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A message of one user waiting in its sequencer.
#[derive(Debug)]
struct Pending {
    path: String,
    publication: Publication,
}

/// One user followed by this node: where its messages stand.
#[derive(Debug, Default)]
struct Follower {
    sequencer: Sequencer<Pending>,
    /// Catch-ups waiting for [`Sequencer::start`].
    waiting: Vec<oneshot::Sender<()>>,
    /// A gap fill is scheduled or running.
    filling: bool,
}

/// Which channels Redis confirmed this node's subscription to.
#[derive(Debug, Default)]
struct Confirmed {
    channels: std::collections::HashSet<String>,
    waiting: HashMap<String, Vec<oneshot::Sender<()>>>,
}

/// A followed user: how many of its routes have subscribers here, and its follower.
#[derive(Debug)]
struct Followed {
    routes: usize,
    follower: Arc<tokio::sync::Mutex<Follower>>,
}

/// What a publishing connection sends: a publication, or a command on `key` (answered with
/// its value, or with why it failed, when `reply` is given).
enum Outgoing {
    Publish(String, Vec<u8>),
    Command {
        command: redis::Cmd,
        key: String,
        reply: Option<oneshot::Sender<Result<redis::Value, String>>>,
    },
}

impl Outgoing {
    /// A command on `key` nobody waits for.
    fn command(key: &str, command: redis::Cmd) -> Outgoing {
        Outgoing::Command { command, key: key.to_owned(), reply: None }
    }

    /// What decides its slot on a Redis Cluster: the key's (or channel's) hash tag, else the
    /// whole name. Items with the same one may share a pipeline.
    fn slot_key(&self) -> &str {
        let name = match self {
            Outgoing::Publish(channel, _) => channel,
            Outgoing::Command { key, .. } => key,
        };
        let tag = name.find('{').and_then(|open| {
            let rest = &name[open + 1..];
            rest.find('}').filter(|close| *close > 0).map(|close| &rest[..close])
        });
        tag.unwrap_or(name)
    }
}

/// A connection to the bus: one Redis server, or a Redis Cluster (each command sent to its
/// slot's shard). Cheap to clone: both multiplex.
#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    /// The client too: a cluster connection that lost a shard may not find it again when
    /// it comes back, so a new one is made (see [`Link::reconnect`]).
    Cluster(Box<redis::cluster::ClusterClient>, redis::cluster_async::ClusterConnection),
}

impl Link {
    /// After `unreachable` errors: on a Redis Cluster, a new connection (the old one may
    /// keep failing for a shard that came back); a single server's connection manager
    /// reconnects by itself.
    async fn reconnect(&mut self) {
        if let Link::Cluster(client, connection) = self {
            match client.get_async_connection().await {
                Ok(fresh) => *connection = fresh,
                Err(e) => tracing::debug!("reconnecting to the Redis Cluster failed: {e}"),
            }
        }
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Link::Single(_) => "Link::Single",
            Link::Cluster(..) => "Link::Cluster",
        })
    }
}

impl redis::aio::ConnectionLike for Link {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(_, c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(cmd, offset, count),
            Link::Cluster(_, c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(_, c) => c.get_db(),
        }
    }
}

/// What the subscriber task is asked to do.
#[derive(Debug)]
enum Command {
    /// Subscribe to a channel; `done` when Redis confirmed it.
    Subscribe(String, Option<oneshot::Sender<()>>),
    Unsubscribe(String),
}

/// This node's end of the bus. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: String,
    broker: Broker,
    storage: Arc<dyn Storage>,
    epoch: Arc<str>,
    gap_wait: Duration,
    /// One queue per publishing connection, chosen by the channel's (or queue's) hash.
    outgoing: Vec<mpsc::Sender<Outgoing>>,
    /// For reading queues' streams (commands that do not block); replaced by a new one
    /// when it fails (see [`Link::reconnect`]).
    reader: Mutex<Link>,
    /// The bus is a Redis Cluster: sharded pub/sub.
    sharded: bool,
    /// Queues consumed here, by name.
    consuming: Mutex<HashMap<String, Arc<queues::Consuming>>>,
    /// Users one of whose numbered messages was dropped on the way out: the other nodes are
    /// told to read their log (see [`tell_behind`]).
    behind: Mutex<std::collections::HashSet<String>>,
    /// Queue names this node saw registered (see `limits.queues`).
    queue_names: Mutex<HashMap<String, queues::Registration>>,
    started: std::time::Instant,
    hashing: std::collections::hash_map::RandomState,
    commands: mpsc::UnboundedSender<Command>,
    /// Users followed here, each behind its own lock (delivery happens under it, in order).
    users: Mutex<HashMap<String, Followed>>,
    /// Channels this node needs, for resubscribing after a reconnect.
    channels: Mutex<HashMap<String, usize>>,
    /// Channels whose subscription Redis confirmed, and who waits for the others.
    confirmed: Mutex<Confirmed>,
    /// Whether the subscriber connection is up.
    connected: std::sync::atomic::AtomicBool,
    /// The task service, which answers calls on the tasks this node runs.
    tasks: std::sync::OnceLock<TaskService>,
    /// The other nodes, as last heard.
    peers: Mutex<HashMap<String, Peer>>,
    /// Calls on tasks of other nodes waiting for their answer, by id.
    calls: Mutex<HashMap<u64, oneshot::Sender<Result<TaskProgressDto, RemoteFailure>>>>,
    next_call: std::sync::atomic::AtomicU64,
}

impl Bus {
    /// Connects to Redis and makes `broker` one node of several.
    ///
    /// # Errors
    /// Redis cannot be reached, or reading the epoch failed.
    pub async fn start(
        settings: &ClusterSettings,
        broker: Broker,
        storage: Arc<dyn Storage>,
    ) -> Result<Bus, BusError> {
        let shown = redacted(&settings.redis_url);
        let unreachable = |source| BusError::Redis { url: shown.clone(), source };
        let url = settings.redis_url.as_str();
        let mut links = Vec::with_capacity(PUBLISHERS + 1);
        if settings.sharded {
            // One multiplexed connection per shard, shared; commands go by slot.
            let client = redis::cluster::ClusterClient::new(vec![url]).map_err(unreachable)?;
            let connection = client.get_async_connection().await.map_err(unreachable)?;
            let link = Link::Cluster(Box::new(client), connection);
            links.resize(PUBLISHERS + 1, link);
        } else {
            let client = redis::Client::open(url).map_err(unreachable)?;
            for _ in 0..=PUBLISHERS {
                let link = ConnectionManager::new(client.clone()).await.map_err(unreachable)?;
                links.push(Link::Single(link));
            }
        }
        let reader = links.pop().ok_or_else(|| {
            unreachable(redis::RedisError::from((redis::ErrorKind::ClientError, "no connection")))
        })?;
        let mut outgoing = Vec::with_capacity(PUBLISHERS);
        for link in links {
            let (queue_in, queue) = mpsc::channel(OUTGOING);
            tokio::spawn(publish(link, queue, settings.sharded));
            outgoing.push(queue_in);
        }
        let epoch = Arc::from(storage.epoch().await?);
        let (commands, requests) = mpsc::unbounded_channel();
        let node = crate::secret::random_hex(8).unwrap_or_else(|_| format!("{}", now_ms()));
        let channels = HashMap::from([(CONTROL.to_owned(), 1), (node_channel(&node), 1)]);
        let bus = Bus {
            inner: Arc::new(Inner {
                node,
                broker: broker.clone(),
                storage,
                epoch,
                gap_wait: Duration::from_millis(settings.gap_wait_ms),
                outgoing,
                reader: Mutex::new(reader),
                sharded: settings.sharded,
                consuming: Mutex::default(),
                queue_names: Mutex::default(),
                behind: Mutex::default(),
                started: std::time::Instant::now(),
                hashing: std::collections::hash_map::RandomState::new(),
                commands,
                users: Mutex::default(),
                channels: Mutex::new(channels),
                confirmed: Mutex::default(),
                connected: std::sync::atomic::AtomicBool::new(false),
                tasks: std::sync::OnceLock::new(),
                calls: Mutex::default(),
                next_call: std::sync::atomic::AtomicU64::new(1),
                peers: Mutex::default(),
            }),
        };
        if settings.sharded {
            // Pub/sub over a cluster connection needs RESP3: messages come as pushes.
            let (pushes_in, pushes) = mpsc::unbounded_channel();
            let client = redis::cluster::ClusterClientBuilder::new(vec![url])
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(pushes_in)
                .build()
                .map_err(unreachable)?;
            let connection = client.get_async_connection().await.map_err(unreachable)?;
            let weak = Arc::downgrade(&bus.inner);
            tokio::spawn(subscribe_sharded(weak, client, connection, pushes, requests));
        } else {
            let client = redis::Client::open(url).map_err(unreachable)?;
            tokio::spawn(subscribe(Arc::downgrade(&bus.inner), client, requests));
        }
        tokio::spawn(alive(Arc::downgrade(&bus.inner)));
        tokio::spawn(tell_behind(Arc::downgrade(&bus.inner)));
        bus.inner.send(CONTROL.to_owned(), Body::Hello);
        if broker.set_relay(Arc::new(bus.clone())).is_err() {
            tracing::warn!("the broker already had a relay; this bus is not used");
        }
        tracing::info!(node = %bus.inner.node, redis = %shown, "joined the cluster");
        Ok(bus)
    }

    /// Answers other nodes' calls on the tasks `tasks` runs, and hands it this bus for calls
    /// on theirs.
    pub fn serve(&self, tasks: &TaskService) {
        let _ = self.inner.tasks.set(tasks.clone());
        tasks.set_remote(Arc::new(self.clone()));
    }

    /// Whether the bus is connected (for `/readyz`).
    pub fn connected(&self) -> bool {
        self.inner.connected.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This node's id on the bus.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Every node heard from (this one first) with its open connections, and their sum,
    /// for `/api/admin/stats`.
    pub fn stats(&self) -> ClusterStats {
        let mut nodes = vec![NodeStats {
            node: self.inner.node.clone(),
            connections: self.inner.broker.session_count() as u64,
        }];
        let peers = self.inner.peers.lock();
        let mut others: Vec<NodeStats> = peers
            .iter()
            .filter(|(_, peer)| peer.seen.elapsed() < GONE_AFTER)
            .map(|(node, peer)| NodeStats {
                node: node.clone(),
                connections: peer.connections as u64,
            })
            .collect();
        others.sort_by(|a, b| a.node.cmp(&b.node));
        nodes.extend(others);
        let connections = nodes.iter().map(|n| n.connections).sum();
        ClusterStats { node: self.inner.node.clone(), connections, nodes }
    }
}

/// Says this node is alive every [`ALIVE_EVERY`], with its per-user counts every
/// [`FULL_EVERY`]th time; forgets nodes gone silent.
async fn alive(inner: Weak<Inner>) {
    let mut beat = 0u32;
    loop {
        tokio::time::sleep(ALIVE_EVERY).await;
        let Some(node) = inner.upgrade() else { return };
        beat = beat.wrapping_add(1);
        node.announce(beat % FULL_EVERY == 0);
        node.peers.lock().retain(|_, peer| peer.seen.elapsed() < GONE_AFTER);
    }
}

/// How often a node on a Redis Cluster tries to subscribe again after losing a shard.
const RESUBSCRIBE_EVERY: Duration = Duration::from_millis(500);

/// How often a node tells the others about users whose numbered messages it dropped.
const BEHIND_EVERY: Duration = Duration::from_millis(500);

/// Tells the other nodes, once the outgoing queue has room again, to read the log of each
/// user one of whose numbered messages was dropped on the way out (without it they would
/// notice only at that user's next message).
async fn tell_behind(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(BEHIND_EVERY).await;
        let Some(node) = inner.upgrade() else { return };
        let users: Vec<String> = node.behind.lock().drain().collect();
        for user in users {
            let body = Body::Behind { user: user.clone() };
            if !node.send(user_channel(&user), body) {
                node.behind.lock().insert(user);
            }
        }
    }
}

/// The peer `node`, heard from now.
fn peer<'a>(peers: &'a mut HashMap<String, Peer>, node: &str) -> &'a mut Peer {
    let peer = peers.entry(node.to_owned()).or_insert_with(|| Peer {
        seen: std::time::Instant::now(),
        connections: 0,
        users: HashMap::new(),
        paths: std::collections::HashSet::new(),
    });
    peer.seen = std::time::Instant::now();
    peer
}

/// `url` without its password, for logs and errors.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

impl Inner {
    /// Publishes this node's connection count (and, `full`, each user's).
    fn announce(&self, full: bool) {
        let users = full.then(|| self.broker.connections_per_user());
        let paths = full.then(|| self.broker.listened_paths());
        let body = Body::Alive { connections: self.broker.session_count(), users, paths };
        self.send(CONTROL.to_owned(), body);
    }

    /// Publishes `body` on `channel`; false when it was dropped (see [`Inner::submit`]).
    fn send(&self, channel: String, body: Body) -> bool {
        let envelope = Envelope { node: self.node.clone(), sent_at: now_ms(), body };
        let bytes = envelope.encode();
        let route = channel.clone();
        self.submit(&route, Outgoing::Publish(channel, bytes))
    }

    /// Queues `item` on the publishing connection of `route` (a channel or a queue name),
    /// after what went there before. Returns false when that queue is full (the item is
    /// dropped, logged and counted).
    fn submit(&self, route: &str, item: Outgoing) -> bool {
        let queue = {
            use std::hash::BuildHasher;
            self.hashing.hash_one(route) as usize % self.outgoing.len()
        };
        if self.outgoing[queue].try_send(item).is_err() {
            tracing::warn!("the bus's outgoing queue is full ({OUTGOING}); an item was dropped");
            self.broker.metrics().bus_dropped();
            return false;
        }
        true
    }

    fn follower(&self, user: &str) -> Option<Arc<tokio::sync::Mutex<Follower>>> {
        self.users.lock().get(user).map(|f| f.follower.clone())
    }

    /// Hands a numbered message of `user` to its sequencer, delivering what is next here;
    /// returns how many subscriptions took something now. When a fill or a start holds the
    /// follower, the message waits for it on a task of its own (the caller is the bus reader
    /// or the user log's committer, neither of which may block); the sequencer puts it in
    /// order whenever it comes.
    fn offer(self: &Arc<Self>, user: &str, seq: i64, pending: Pending) -> usize {
        let Some(follower) = self.follower(user) else { return 0 };
        if let Ok(mut f) = follower.try_lock() {
            let ready = f.sequencer.offer(seq, pending);
            let delivered = self.deliver(user, ready);
            self.schedule_fill(user, &mut f);
            return delivered;
        }
        let (inner, user) = (self.clone(), user.to_owned());
        tokio::spawn(async move {
            let mut f = follower.lock().await;
            let ready = f.sequencer.offer(seq, pending);
            inner.deliver(&user, ready);
            inner.schedule_fill(&user, &mut f);
        });
        0
    }

    fn deliver(&self, user: &str, ready: Vec<Pending>) -> usize {
        ready.into_iter().map(|p| self.broker.deliver_to_user(user, &p.path, p.publication)).sum()
    }

    /// Starts a gap fill after `cluster.gap_wait_ms` when one is open and none is scheduled.
    fn schedule_fill(self: &Arc<Self>, user: &str, follower: &mut Follower) {
        if follower.filling || follower.sequencer.gap().is_none() {
            return;
        }
        follower.filling = true;
        let (inner, user) = (Arc::downgrade(self), user.to_owned());
        let wait = self.gap_wait;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if let Some(inner) = inner.upgrade() {
                inner.fill(&user, false).await;
            }
        });
    }

    /// Reads `user`'s log after where its sequencer stands (when a gap is still open, or
    /// always with `force`) and delivers what follows in order.
    async fn fill(self: &Arc<Self>, user: &str, force: bool) {
        let Some(follower) = self.follower(user) else { return };
        let after = {
            let mut f = follower.lock().await;
            match (f.sequencer.gap(), f.sequencer.position()) {
                (Some(after), _) => after,
                (None, Some(after)) if force => after,
                _ => {
                    f.filling = false;
                    return;
                }
            }
        };
        let entries = self.storage.log_after(user, None, after, FILL).await;
        let mut f = follower.lock().await;
        f.filling = false;
        match entries {
            Ok(entries) => {
                let filled = entries.len();
                let entries = entries.into_iter().map(|entry| {
                    let (seq, path) = (entry.seq, entry.path.clone());
                    let publication = crate::replay::logged(entry, &self.epoch, false);
                    (seq, Pending { path, publication })
                });
                let ready = f.sequencer.fill(entries);
                if filled > 0 {
                    tracing::debug!(%user, after, filled, "filled a gap from storage");
                    self.broker.metrics().bus_filled(filled as u64);
                }
                self.deliver(user, ready);
            }
            Err(e) => tracing::warn!(%user, "gap fill failed: {e}"),
        }
        self.schedule_fill(user, &mut f);
    }

    /// Starts following `user`: storage's position first, then (once the bus confirmed its
    /// channel, `confirmed`) in order from there; what was committed between the two is
    /// read from storage.
    async fn follow(
        self: Arc<Self>,
        user: String,
        follower: Arc<tokio::sync::Mutex<Follower>>,
        confirmed: oneshot::Receiver<()>,
    ) {
        let high = match self.storage.log_range(&user).await {
            Ok((_, high)) => high,
            Err(e) => {
                // Nothing is known: deliver what comes, as a single node would.
                tracing::warn!(%user, "cannot read the log's position: {e}");
                0
            }
        };
        if tokio::time::timeout(READY_WAIT, confirmed).await.is_err() {
            tracing::warn!(%user, "the bus did not confirm a subscription in time");
        }
        {
            let mut f = follower.lock().await;
            f.sequencer.start(high);
            for waiter in f.waiting.drain(..) {
                let _ = waiter.send(());
            }
        }
        self.fill(&user, true).await;
    }

    fn want(self: &Arc<Self>, channel: String, done: Option<oneshot::Sender<()>>) {
        let first = {
            let mut channels = self.channels.lock();
            let count = channels.entry(channel.clone()).or_default();
            *count += 1;
            *count == 1
        };
        if first {
            let (confirmed, confirmation) = oneshot::channel();
            let _ = self.commands.send(Command::Subscribe(channel.clone(), Some(confirmed)));
            let inner = Arc::downgrade(self);
            tokio::spawn(async move {
                if confirmation.await.is_err() {
                    return;
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
                if let Some(inner) = inner.upgrade() {
                    let mut confirmed = inner.confirmed.lock();
                    for waiter in confirmed.waiting.remove(&channel).unwrap_or_default() {
                        let _ = waiter.send(());
                    }
                    confirmed.channels.insert(channel);
                }
            });
        } else if let Some(done) = done {
            let _ = done.send(());
        }
    }

    /// Resolves once Redis confirmed this node's subscription to `channel` (or after
    /// [`READY_WAIT`]).
    fn confirmed(&self, channel: String) -> BoxFuture<'static, ()> {
        let waiting = {
            let mut confirmed = self.confirmed.lock();
            if confirmed.channels.contains(&channel) {
                return async {}.boxed();
            }
            let (done, waiting) = oneshot::channel();
            confirmed.waiting.entry(channel).or_default().push(done);
            waiting
        };
        async move {
            let _ = tokio::time::timeout(READY_WAIT, waiting).await;
        }
        .boxed()
    }

    fn unwant(&self, channel: String) {
        let last = {
            let mut channels = self.channels.lock();
            let gone = channels.get_mut(&channel).is_some_and(|count| {
                *count -= 1;
                *count == 0
            });
            if gone {
                channels.remove(&channel);
            }
            gone
        };
        if last {
            self.confirmed.lock().channels.remove(&channel);
            let _ = self.commands.send(Command::Unsubscribe(channel));
        }
    }

    /// A message from another node.
    fn receive(self: &Arc<Self>, payload: &[u8]) {
        let envelope = match Envelope::decode(payload) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!("an undecodable message on the bus: {e}");
                return;
            }
        };
        if envelope.node == self.node {
            return;
        }
        let lag = (now_ms() - envelope.sent_at).max(0) as f64 / 1000.0;
        self.broker.metrics().bus_received(lag);
        let sender = envelope.node;
        match envelope.body {
            Body::Presence { user, count } => {
                let mut peers = self.peers.lock();
                let peer = peer(&mut peers, &sender);
                if count == 0 {
                    peer.users.remove(&user);
                } else {
                    peer.users.insert(user, count);
                }
            }
            Body::Alive { connections, users, paths } => {
                let mut peers = self.peers.lock();
                let peer = peer(&mut peers, &sender);
                peer.connections = connections;
                if let Some(users) = users {
                    peer.users = users.into_iter().collect();
                }
                if let Some(paths) = paths {
                    peer.paths = paths.into_iter().collect();
                }
            }
            Body::Listening { user, path, on } => {
                let mut peers = self.peers.lock();
                let peer = peer(&mut peers, &sender);
                if on {
                    peer.paths.insert((user, path));
                } else {
                    peer.paths.remove(&(user, path));
                }
            }
            Body::Hello => self.announce(true),
            Body::User { user, path, message } => match message.seq() {
                Some(seq) => {
                    let publication = message.into_publication(&self.epoch);
                    self.offer(&user, seq, Pending { path, publication });
                }
                None => {
                    self.broker.deliver_to_user(
                        &user,
                        &path,
                        message.into_publication(&self.epoch),
                    );
                }
            },
            Body::Topic { name, message } => {
                self.broker.deliver_to_topic(&name, message.into_publication(&self.epoch));
            }
            Body::Revoke { token_id } => {
                self.broker.revoke_token_here(&token_id);
            }
            Body::Disconnect { user, reason } => {
                self.broker.disconnect_user_here(&user, &reason);
            }
            Body::ShareAdded { id, owner, task_no } => {
                self.broker.authenticator().add_share(SharedTask { id, owner, task_no });
            }
            // Its watchers here are disconnected by the disconnect that follows it.
            Body::ShareRemoved { id } => self.broker.authenticator().remove_share(&id),
            Body::TaskCall { call, reply_to, task_no, op } => {
                let Some(tasks) = self.tasks.get().cloned() else { return };
                let inner = self.clone();
                tokio::spawn(async move {
                    // Only the node that runs the task answers.
                    let Some(outcome) = tasks.call_here(&task_no, op).await else { return };
                    let outcome = outcome.map_err(|e| RemoteFailure::from(&e));
                    inner.send(node_channel(&reply_to), Body::TaskReply { call, outcome });
                });
            }
            Body::TaskReply { call, outcome } => {
                if let Some(waiting) = self.calls.lock().remove(&call) {
                    let _ = waiting.send(outcome);
                }
            }
            Body::Queued { name } => self.wake_queue(&name),
            Body::Behind { user } => {
                if self.follower(&user).is_some() {
                    let node = self.clone();
                    tokio::spawn(async move { node.fill(&user, true).await });
                }
            }
        }
    }
}

impl Remote for Bus {
    fn call(
        &self,
        task_no: &str,
        op: TaskCall,
    ) -> BoxFuture<'static, Result<TaskProgressDto, RemoteFailure>> {
        let inner = self.inner.clone();
        let task_no = task_no.to_owned();
        async move {
            let call = inner.next_call.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (done, answer) = oneshot::channel();
            inner.calls.lock().insert(call, done);
            let reply_to = inner.node.clone();
            let body = Body::TaskCall { call, reply_to, task_no: task_no.clone(), op };
            inner.send(CONTROL.to_owned(), body);
            match tokio::time::timeout(CALL_WAIT, answer).await {
                Ok(Ok(outcome)) => outcome,
                _ => {
                    inner.calls.lock().remove(&call);
                    Err(RemoteFailure {
                        status: 503,
                        message: format!(
                            "no server answered for task {task_no} within {} s: the one running \
                             it may have stopped (another takes it over within cluster.lease_s); \
                             try again",
                            CALL_WAIT.as_secs()
                        ),
                        field: None,
                    })
                }
            }
        }
        .boxed()
    }
}

impl Relay for Bus {
    fn to_user(&self, user: &str, path: &str, publication: Publication) -> usize {
        let wire = Wire::of(&publication);
        let seq = wire.seq();
        let body = Body::User { user: user.to_owned(), path: path.to_owned(), message: wire };
        if !self.inner.send(user_channel(user), body) && seq.is_some() {
            // The other nodes would see the gap only at this user's next message.
            self.inner.behind.lock().insert(user.to_owned());
        }
        let Some(seq) = seq else {
            return self.inner.broker.deliver_to_user(user, path, publication);
        };
        // The user log's committer calls this in `seq` order for its own messages; the
        // user's sequencer keeps them in order with those of other nodes.
        self.inner.offer(user, seq, Pending { path: path.to_owned(), publication })
    }

    fn topic(&self, name: &str, publication: &Publication) {
        let body = Body::Topic { name: name.to_owned(), message: Wire::of(publication) };
        self.inner.send(topic_channel(name), body);
    }

    fn revoke_token(&self, token_id: &str) {
        self.inner.send(CONTROL.to_owned(), Body::Revoke { token_id: token_id.to_owned() });
    }

    fn disconnect_user(&self, user: &str, reason: &str) {
        let body = Body::Disconnect { user: user.to_owned(), reason: reason.to_owned() };
        self.inner.send(CONTROL.to_owned(), body);
    }

    fn share(&self, added: Option<&SharedTask>, removed: Option<&str>) {
        if let Some(id) = removed {
            self.inner.send(CONTROL.to_owned(), Body::ShareRemoved { id: id.to_owned() });
        }
        if let Some(share) = added {
            let body = Body::ShareAdded {
                id: share.id.clone(),
                owner: share.owner.clone(),
                task_no: share.task_no.clone(),
            };
            self.inner.send(CONTROL.to_owned(), body);
        }
    }

    fn enqueue(&self, name: &str, message: &Message) -> BoxFuture<'static, Result<(), RouteError>> {
        queues::stored(&self.inner, name, message)
    }

    fn queued_done(&self, name: &str, messages: Vec<Arc<Message>>, given_back: bool) {
        self.inner.queued_done(name, messages, given_back);
    }

    fn queue_room(&self, name: &str) {
        self.inner.wake_queue(name);
    }

    fn interest(&self, route: Route<'_>, needed: bool) {
        match route {
            Route::Queue(name) => self.inner.consume(name, needed),
            Route::Topic(name) if needed => self.inner.want(topic_channel(name), None),
            Route::Topic(name) => self.inner.unwant(topic_channel(name)),
            Route::User(user, path) if needed => {
                let body =
                    Body::Listening { user: user.to_owned(), path: path.to_owned(), on: true };
                self.inner.send(CONTROL.to_owned(), body);
                let created = {
                    let mut users = self.inner.users.lock();
                    match users.get_mut(user) {
                        Some(followed) => {
                            followed.routes += 1;
                            None
                        }
                        None => {
                            let follower = Arc::new(tokio::sync::Mutex::default());
                            let followed = Followed { routes: 1, follower: follower.clone() };
                            users.insert(user.to_owned(), followed);
                            Some(follower)
                        }
                    }
                };
                if let Some(follower) = created {
                    let (done, confirmed) = oneshot::channel();
                    self.inner.want(user_channel(user), Some(done));
                    let inner = self.inner.clone();
                    tokio::spawn(inner.follow(user.to_owned(), follower, confirmed));
                }
            }
            Route::User(user, path) => {
                let body =
                    Body::Listening { user: user.to_owned(), path: path.to_owned(), on: false };
                self.inner.send(CONTROL.to_owned(), body);
                let last = {
                    let mut users = self.inner.users.lock();
                    let last = users.get_mut(user).is_some_and(|followed| {
                        followed.routes = followed.routes.saturating_sub(1);
                        followed.routes == 0
                    });
                    if last {
                        users.remove(user);
                    }
                    last
                };
                if last {
                    self.inner.unwant(user_channel(user));
                }
            }
        }
    }

    fn topic_ready(&self, name: &str) -> BoxFuture<'static, ()> {
        self.inner.confirmed(topic_channel(name))
    }

    fn connections_elsewhere(&self, user: &str) -> usize {
        let peers = self.inner.peers.lock();
        peers
            .values()
            .filter(|peer| peer.seen.elapsed() < GONE_AFTER)
            .filter_map(|peer| peer.users.get(user))
            .sum()
    }

    fn listened_elsewhere(&self, user: &str, path: &str) -> bool {
        let key = (user.to_owned(), path.to_owned());
        let peers = self.inner.peers.lock();
        peers.values().any(|peer| peer.seen.elapsed() < GONE_AFTER && peer.paths.contains(&key))
    }

    fn connections_changed(&self, user: &str, here: usize) {
        let body = Body::Presence { user: user.to_owned(), count: here };
        self.inner.send(CONTROL.to_owned(), body);
    }

    fn ready(&self, user: &str) -> BoxFuture<'static, ()> {
        let Some(follower) = self.inner.follower(user) else { return async {}.boxed() };
        async move {
            let waiting = {
                let mut f = follower.lock().await;
                if f.sequencer.started() {
                    return;
                }
                let (done, waiting) = oneshot::channel();
                f.waiting.push(done);
                waiting
            };
            let _ = tokio::time::timeout(READY_WAIT * 2, waiting).await;
        }
        .boxed()
    }
}

/// Sends what the node publishes and the queue commands it runs, in order, a pipeline per
/// batch (on a Redis Cluster, a pipeline per slot: one may not cross slots; what shares a
/// channel or a queue shares a slot, so it keeps its order). A pipeline that fails on the
/// way (the connection) is sent again until Redis takes it (the connection reconnects
/// meanwhile): a message lost here could be the last of its user for a while, and no later
/// one would show the gap. (So a queue message can be stored twice when the connection fails
/// after Redis ran its batch.) A pipeline Redis ran and answered with an error is not sent
/// again.
async fn publish(mut connection: Link, mut queue: mpsc::Receiver<Outgoing>, sharded: bool) {
    let mut batch = Vec::with_capacity(BATCH);
    while queue.recv_many(&mut batch, BATCH).await > 0 {
        let mut groups: Vec<(String, Pipelined)> = Vec::new();
        for item in batch.drain(..) {
            let slot = if sharded { item.slot_key().to_owned() } else { String::new() };
            let index = match groups.iter().position(|(s, _)| *s == slot) {
                Some(index) => index,
                None => {
                    groups.push((slot, Pipelined::default()));
                    groups.len() - 1
                }
            };
            groups[index].1.add(item, sharded);
        }
        let queue = &queue;
        let runs = groups.into_iter().map(|(_, group)| group.run(connection.clone(), queue));
        for (sent, link) in futures_util::future::join_all(runs).await {
            if !sent {
                return;
            }
            // A pipeline that had to reconnect hands its new connection on.
            if let Some(link) = link {
                connection = link;
            }
        }
    }
}

/// Whether `e` says Redis (or a shard of it) could not be reached, rather than that it ran
/// the commands and refused one: then they are sent again.
fn unreachable(e: &redis::RedisError) -> bool {
    use redis::ErrorKind::{
        BusyLoadingError, ClusterConnectionNotFound, ClusterDown, MasterDown, TryAgain,
    };
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ClusterConnectionNotFound | ClusterDown | TryAgain | MasterDown | BusyLoadingError
        )
}

/// One pipeline of a batch, and who waits for which of its answers.
#[derive(Default)]
struct Pipelined {
    pipe: redis::Pipeline,
    replies: Vec<oneshot::Sender<Result<redis::Value, String>>>,
}

impl Pipelined {
    fn add(&mut self, item: Outgoing, sharded: bool) {
        match item {
            Outgoing::Publish(channel, bytes) => {
                let command = if sharded { "SPUBLISH" } else { "PUBLISH" };
                self.pipe.cmd(command).arg(channel).arg(bytes).ignore();
            }
            Outgoing::Command { command, reply: Some(reply), .. } => {
                self.pipe.add_command(command);
                self.replies.push(reply);
            }
            Outgoing::Command { command, reply: None, .. } => {
                self.pipe.add_command(command).ignore();
            }
        }
    }

    /// Sends the pipeline until it went through; false when the node is gone meanwhile.
    /// Returns the new connection too if it had to make one.
    async fn run(
        mut self,
        mut connection: Link,
        queue: &mpsc::Receiver<Outgoing>,
    ) -> (bool, Option<Link>) {
        let mut backoff = Duration::from_millis(50);
        let mut reconnected = false;
        loop {
            match self.pipe.query_async::<Vec<redis::Value>>(&mut connection).await {
                Ok(values) => {
                    for (reply, value) in self.replies.drain(..).zip(values) {
                        let _ = reply.send(Ok(value));
                    }
                    return (true, reconnected.then_some(connection));
                }
                Err(e) if unreachable(&e) => {
                    if queue.is_closed() {
                        return (false, None);
                    }
                    tracing::warn!(
                        "publishing on the bus failed: {e}; trying again in {backoff:?}"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    connection.reconnect().await;
                    reconnected = true;
                }
                Err(e) => {
                    tracing::warn!("Redis refused part of a batch: {e}");
                    for reply in self.replies.drain(..) {
                        let _ = reply.send(Err(e.to_string()));
                    }
                    return (true, reconnected.then_some(connection));
                }
            }
        }
    }
}

/// Keeps this node's subscriptions on the bus, and hands what arrives to the node; after a
/// reconnect, reads every followed user's log from where it stood.
async fn subscribe(
    inner: Weak<Inner>,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let pubsub = match client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                if inner.strong_count() == 0 {
                    return;
                }
                tracing::warn!("the bus is unreachable: {e}; trying again in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let (mut sink, mut stream) = pubsub.split();
        let Some(node) = inner.upgrade() else { return };
        let channels: Vec<String> = node.channels.lock().keys().cloned().collect();
        if let Err(e) = sink.subscribe(&channels).await {
            tracing::warn!("subscribing on the bus failed: {e}");
            continue;
        }
        node.connected.store(true, std::sync::atomic::Ordering::Relaxed);
        if !first {
            tracing::info!(channels = channels.len(), "the bus is back; reading what was missed");
            let users: Vec<String> = node.users.lock().keys().cloned().collect();
            for user in users {
                let node = node.clone();
                tokio::spawn(async move { node.fill(&user, true).await });
            }
        }
        first = false;
        drop(node);
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Subscribe(channel, done)) => {
                        match sink.subscribe(&channel).await {
                            Ok(()) => if let Some(done) = done { let _ = done.send(()); },
                            // The reconnect subscribes every wanted channel again.
                            Err(e) => { tracing::warn!("subscribing on the bus failed: {e}"); break; }
                        }
                    }
                    Some(Command::Unsubscribe(channel)) => {
                        if let Err(e) = sink.unsubscribe(&channel).await {
                            tracing::warn!("unsubscribing on the bus failed: {e}");
                            break;
                        }
                    }
                    None => return,
                },
                message = stream.next() => match message {
                    Some(message) => match inner.upgrade() {
                        Some(node) => node.receive(message.get_payload_bytes()),
                        None => return,
                    },
                    None => break,
                },
            }
        }
        if let Some(node) = inner.upgrade() {
            node.connected.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::warn!("the bus connection was lost; reconnecting");
    }
}

/// [`subscribe`] on a Redis Cluster: every channel (each user's, topic's, node's and
/// queue's, and the control channel) is subscribed on its slot's shard (`SSUBSCRIBE`), and
/// messages come as RESP3 pushes. After a connection to a shard is lost, a new connection
/// subscribes every wanted channel, every [`RESUBSCRIBE_EVERY`] until all succeed; then every
/// followed user's log is read from where it stood.
async fn subscribe_sharded(
    inner: Weak<Inner>,
    client: redis::cluster::ClusterClient,
    mut connection: redis::cluster_async::ClusterConnection,
    mut pushes: mpsc::UnboundedReceiver<redis::PushInfo>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    async fn join(
        connection: &mut redis::cluster_async::ClusterConnection,
        channel: &str,
        on: bool,
    ) -> redis::RedisResult<()> {
        if on {
            connection.ssubscribe(channel).await
        } else {
            connection.sunsubscribe(channel).await
        }
    }
    let channels: Vec<String> = match inner.upgrade() {
        Some(node) => node.channels.lock().keys().cloned().collect(),
        None => return,
    };
    for channel in &channels {
        if let Err(e) = join(&mut connection, channel, true).await {
            tracing::warn!(%channel, "subscribing on the bus failed: {e}");
        }
    }
    if let Some(node) = inner.upgrade() {
        node.connected.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let mut lost = false;
    loop {
        let retry = async {
            if lost {
                tokio::time::sleep(RESUBSCRIBE_EVERY).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = retry => {
                let Some(node) = inner.upgrade() else { return };
                // A new connection: the old one may keep a subscription that no longer
                // receives (seen when a shard came back), and its sockets close with it.
                match client.get_async_connection().await {
                    Ok(fresh) => connection = fresh,
                    Err(e) => {
                        tracing::debug!("reconnecting to the Redis Cluster failed: {e}");
                        continue;
                    }
                }
                let channels: Vec<String> = node.channels.lock().keys().cloned().collect();
                let mut all = true;
                for channel in &channels {
                    all &= join(&mut connection, channel, true).await.is_ok();
                }
                if all {
                    lost = false;
                    node.connected.store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(channels = channels.len(), "the bus is back; reading what was missed");
                    let users: Vec<String> = node.users.lock().keys().cloned().collect();
                    for user in users {
                        let node = node.clone();
                        tokio::spawn(async move { node.fill(&user, true).await });
                    }
                }
            }
            command = commands.recv() => match command {
                Some(Command::Subscribe(channel, done)) => {
                    match join(&mut connection, &channel, true).await {
                        Ok(()) => if let Some(done) = done { let _ = done.send(()); },
                        // The connection subscribes again once it is back.
                        Err(e) => tracing::warn!(%channel, "subscribing on the bus failed: {e}"),
                    }
                }
                Some(Command::Unsubscribe(channel)) => {
                    if let Err(e) = join(&mut connection, &channel, false).await {
                        tracing::warn!(%channel, "unsubscribing on the bus failed: {e}");
                    }
                }
                None => return,
            },
            push = pushes.recv() => {
                let Some(push) = push else { return };
                let Some(node) = inner.upgrade() else { return };
                match push.kind {
                    redis::PushKind::Message | redis::PushKind::SMessage => {
                        if let Some(redis::Value::BulkString(payload)) = push.data.get(1) {
                            node.receive(payload);
                        }
                    }
                    redis::PushKind::Disconnection => {
                        if !lost {
                            tracing::warn!("a bus connection was lost; subscribing again");
                        }
                        node.connected.store(false, std::sync::atomic::Ordering::Relaxed);
                        lost = true;
                    }
                    _ => {}
                }
            }
        }
    }
}
