//! `/queue/**` across nodes: competing consumers on every node, one copy of each message.
//! Each queue is a Redis stream (`taskpulse:stream:{name}`) with one consumer group; its
//! consumers in the group are the nodes whose sessions consume the queue. A node takes at
//! most what its consumers can use (see [`crate::broker::QUEUE_PREFETCH`]), acknowledges a
//! message in the stream when a consumer here ACKs it (or takes it in `auto` mode), and
//! hands it back (a new entry, marked redelivered) when a consumer NACKs it with no other
//! consumer here, or leaves without acknowledging it. The messages a dead node held are
//! claimed by a node still consuming the queue once the dead one is gone from presence.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{FutureExt, future::BoxFuture};
use redis::{
    AsyncCommands, Value,
    streams::{
        StreamClaimReply, StreamId, StreamInfoConsumersReply, StreamPendingCountReply,
        StreamReadOptions, StreamReadReply,
    },
};
use tokio::sync::{Notify, oneshot};

use super::{
    GONE_AFTER, Inner, Outgoing,
    envelope::{Body, Entry, Envelope, QUEUE_NAMES, queue_channel, queue_key},
};
use crate::{
    broker::{Message, RouteError},
    now_ms,
};

/// The consumer group of every queue's stream.
const GROUP: &str = "taskpulse";

/// A node with consumers reads its queue at least this often (a notice can be lost while
/// the bus reconnects).
const POLL: Duration = Duration::from_secs(1);

/// How often a node consuming a queue looks for messages held by nodes that are gone.
const RECLAIM_EVERY: Duration = Duration::from_secs(5);

/// A gone node's message is claimed once it has not been handed out for this long (two
/// nodes that claim at once do not both get it).
const RECLAIM_IDLE_MS: u64 = 5_000;

/// Messages claimed from a gone node at a time.
const RECLAIM_BATCH: usize = 100;

/// How long a SEND to a queue waits for Redis to store its message.
const STORE_WAIT: Duration = Duration::from_secs(5);

/// Registers queue name `ARGV[1]` in the set `KEYS[1]` unless it already holds `ARGV[2]`
/// names. Returns 1 when the name is (now) registered, 0 when there is no room.
const REGISTER: &str = r"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
";

/// Appends entry `ARGV[3]` to stream `KEYS[1]` (group `ARGV[1]`) unless it holds `ARGV[2]`
/// messages already, and publishes notice `ARGV[5]` on channel `ARGV[4]` (with `ARGV[6]`:
/// `PUBLISH`, or `SPUBLISH` on a Redis Cluster). Returns 1 when stored, 0 when the queue is
/// full.
const ENQUEUE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('XADD', KEYS[1], '*', 'm', ARGV[3])
redis.call(ARGV[6], ARGV[4], ARGV[5])
return 1
";

/// Removes entry `ARGV[2]` from stream `KEYS[1]` (acknowledged in group `ARGV[1]`) and
/// appends `ARGV[3]` in its place at the end, then publishes notice `ARGV[5]` on `ARGV[4]`
/// (with `ARGV[6]`).
const GIVE_BACK: &str = r"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
end
redis.call('XADD', KEYS[1], '*', 'm', ARGV[3])
redis.call(ARGV[6], ARGV[4], ARGV[5])
return 1
";

/// Removes consumer `ARGV[2]` from group `ARGV[1]` of stream `KEYS[1]` when it holds no
/// message, then the stream itself when it is empty and nobody else consumes it. Returns 1
/// when the stream is gone.
const RELEASE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
local ok, mine = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if not ok or #mine > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
if redis.call('XLEN', KEYS[1]) > 0 then return 0 end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  for i = 1, #group, 2 do
    if group[i] == 'consumers' and group[i + 1] > 0 then return 0 end
  end
end
redis.call('DEL', KEYS[1])
return 1
";

/// A queue this node consumes: its reader is woken by a notice or by room here, and told
/// to stop when the last consumer here leaves.
#[derive(Debug, Default)]
pub(super) struct Consuming {
    wake: Notify,
    stopped: AtomicBool,
}

impl Inner {
    /// Stores `entry` in queue `name`'s stream, registering the name first if this node has
    /// not seen it. The command is queued before this returns (what waits for a registration
    /// is queued, in order, once it is answered), so one node's messages to a queue are
    /// stored in the order they were sent; the future is the answer.
    pub(super) fn enqueue(
        self: &Arc<Self>,
        name: &str,
        entry: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), RouteError>> {
        let mut names = self.queue_names.lock();
        match names.get_mut(name) {
            Some(Registration::Known) => {
                let answer = self.store(name, entry);
                drop(names);
                self.clone().stored(name.to_owned(), answer).boxed()
            }
            Some(Registration::Pending(waiting)) => {
                let (done, result) = oneshot::channel();
                waiting.push((entry, done));
                async move { result.await.unwrap_or_else(|_| Err(gone())) }.boxed()
            }
            None => {
                let (done, result) = oneshot::channel();
                names.insert(name.to_owned(), Registration::Pending(vec![(entry, done)]));
                drop(names);
                tokio::spawn(self.clone().register(name.to_owned()));
                async move { result.await.unwrap_or_else(|_| Err(gone())) }.boxed()
            }
        }
    }

    /// Registers queue name `name` (within `limits.queues` across the nodes), then stores
    /// what waited for it, in order, or refuses it all.
    async fn register(self: Arc<Self>, name: String) {
        let queues = self.broker.settings().limits.queues;
        let mut register = redis::cmd("EVAL");
        register.arg(REGISTER).arg(1).arg(QUEUE_NAMES).arg(&name).arg(queues);
        let answer = self.command(&name, QUEUE_NAMES, register);
        let outcome = match answered(answer).await {
            Ok(Value::Int(1)) => Ok(()),
            Ok(_) => Err(RouteError::QueuesFull(format!(
                "there are already {queues} queues (limits.queues, across the servers); \
                 {name} cannot be created"
            ))),
            Err(e) => Err(e),
        };
        let mut names = self.queue_names.lock();
        let waiting = match names.remove(&name) {
            Some(Registration::Pending(waiting)) => waiting,
            _ => Vec::new(),
        };
        match outcome {
            Ok(()) => {
                if names.len() >= queues {
                    names.retain(|_, r| matches!(r, Registration::Pending(_)));
                }
                names.insert(name.clone(), Registration::Known);
                for (entry, done) in waiting {
                    let answer = self.store(&name, entry);
                    let stored = self.clone().stored(name.clone(), answer);
                    tokio::spawn(async move {
                        let _ = done.send(stored.await);
                    });
                }
            }
            Err(e) => {
                for (_, done) in waiting {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }

    /// Queues the script that appends `entry` to queue `name`'s stream.
    fn store(&self, name: &str, entry: Vec<u8>) -> Answer {
        let key = queue_key(name);
        let mut store = redis::cmd("EVAL");
        store
            .arg(ENQUEUE)
            .arg(1)
            .arg(&key)
            .arg(GROUP)
            .arg(self.broker.settings().stomp.queue_pending)
            .arg(entry)
            .arg(queue_channel(name))
            .arg(self.notice(name))
            .arg(self.publish_command());
        self.command(name, &key, store)
    }

    /// What [`Inner::store`]'s script answered, as the SEND's outcome.
    async fn stored(self: Arc<Self>, name: String, answer: Answer) -> Result<(), RouteError> {
        if answered(answer).await? != Value::Int(1) {
            let limit = self.broker.settings().stomp.queue_pending;
            return Err(RouteError::QueueFull { queue: name, limit });
        }
        self.wake_queue(&name);
        Ok(())
    }

    /// The command that publishes on a user's, topic's or queue's channel.
    fn publish_command(&self) -> &'static str {
        if self.sharded { "SPUBLISH" } else { "PUBLISH" }
    }

    /// A [`Body::Queued`] notice for queue `name`, as bytes.
    fn notice(&self, name: &str) -> Vec<u8> {
        let body = Body::Queued { name: name.to_owned() };
        Envelope { node: self.node.clone(), sent_at: now_ms(), body }.encode()
    }

    /// Runs `command` on the publishing connection of `route` (after what this node sent
    /// there before) and returns its answer.
    /// Queues `command` on `key` on the publishing connection of `route` (after what this
    /// node sent there before); the answer comes later.
    fn command(&self, route: &str, key: &str, command: redis::Cmd) -> Answer {
        let (reply, answer) = oneshot::channel();
        let item = Outgoing::Command { command, key: key.to_owned(), reply: Some(reply) };
        if self.submit(route, item) { Some(answer) } else { None }
    }

    /// Messages of queue `name` this node is done with: acknowledged and deleted in the
    /// stream, or (`given_back`) put back at its end for any node's consumers.
    pub(super) fn queued_done(&self, name: &str, messages: Vec<Arc<Message>>, given_back: bool) {
        let key = queue_key(name);
        if given_back {
            for message in messages {
                let Some(entry) = &message.entry else { continue };
                let mut give_back = redis::cmd("EVAL");
                give_back
                    .arg(GIVE_BACK)
                    .arg(1)
                    .arg(&key)
                    .arg(GROUP)
                    .arg(&**entry)
                    .arg(Entry::of(&message).encode())
                    .arg(queue_channel(name))
                    .arg(self.notice(name))
                    .arg(self.publish_command());
                self.submit(name, Outgoing::command(&key, give_back));
            }
            // This node's own consumers (if any arrive) hear of it as the others do.
            self.wake_queue(name);
            return;
        }
        let entries: Vec<&str> = messages.iter().filter_map(|m| m.entry.as_deref()).collect();
        if entries.is_empty() {
            return;
        }
        let mut ack = redis::cmd("XACK");
        ack.arg(&key).arg(GROUP).arg(&entries);
        let mut delete = redis::cmd("XDEL");
        delete.arg(&key).arg(&entries);
        self.submit(name, Outgoing::command(&key, ack));
        self.submit(name, Outgoing::command(&key, delete));
    }

    /// Wakes the reader of queue `name`, if this node consumes it.
    pub(super) fn wake_queue(&self, name: &str) {
        if let Some(consuming) = self.consuming.lock().get(name) {
            consuming.wake.notify_one();
        }
    }

    /// This node's sessions start (`needed`) or stop consuming queue `name`.
    pub(super) fn consume(self: &Arc<Self>, name: &str, needed: bool) {
        let mut consuming = self.consuming.lock();
        if needed {
            if consuming.contains_key(name) {
                return;
            }
            let state = Arc::new(Consuming::default());
            consuming.insert(name.to_owned(), state.clone());
            drop(consuming);
            self.want(queue_channel(name), None);
            tokio::spawn(read_queue(Arc::downgrade(self), name.to_owned(), state));
        } else if let Some(state) = consuming.remove(name) {
            drop(consuming);
            state.stopped.store(true, Ordering::Relaxed);
            state.wake.notify_one();
            self.unwant(queue_channel(name));
        }
    }

    /// Takes up to `count` new messages of queue `name` for this node.
    async fn take(&self, name: &str, count: usize) -> redis::RedisResult<Vec<Message>> {
        let key = queue_key(name);
        let options = StreamReadOptions::default().group(GROUP, &self.node).count(count);
        let mut reader = self.reader.lock().clone();
        let reply: redis::RedisResult<StreamReadReply> =
            reader.xread_options(&[&key], &[">"], &options).await;
        let reply = match reply {
            Err(e) if e.code() == Some("NOGROUP") => {
                // The stream was removed (idle) or never written: make it, from the start.
                let created: redis::RedisResult<()> =
                    reader.xgroup_create_mkstream(&key, GROUP, "0").await;
                if let Some(e) = created.err().filter(|e| e.code() != Some("BUSYGROUP")) {
                    tracing::warn!(queue = name, "cannot create the queue's group: {e}");
                }
                return Ok(Vec::new());
            }
            other => other?,
        };
        let ids = reply.keys.into_iter().flat_map(|k| k.ids).collect();
        Ok(self.messages(name, ids, false))
    }

    /// Stream entries as messages for the consumers here (`claimed` ones marked
    /// redelivered); an entry that is not a message is removed from the stream.
    fn messages(&self, name: &str, ids: Vec<StreamId>, claimed: bool) -> Vec<Message> {
        let mut messages = Vec::with_capacity(ids.len());
        for id in ids {
            let bytes: Option<Vec<u8>> = id.get("m");
            match bytes.map(|b| Entry::decode(&b, name.to_owned(), &id.id)) {
                Some(Ok(mut message)) => {
                    message.redelivered |= claimed;
                    messages.push(message);
                }
                _ => {
                    tracing::warn!(queue = name, entry = %id.id, "a queue entry that is not a message; removed");
                    let mut ack = redis::cmd("XACK");
                    ack.arg(queue_key(name)).arg(GROUP).arg(&id.id);
                    let mut delete = redis::cmd("XDEL");
                    delete.arg(queue_key(name)).arg(&id.id);
                    self.submit(name, Outgoing::command(&queue_key(name), ack));
                    self.submit(name, Outgoing::command(&queue_key(name), delete));
                }
            }
        }
        messages
    }

    /// Claims for this node the messages of queue `name` held by nodes that are gone (not
    /// heard from for [`GONE_AFTER`]), and forgets those nodes in the queue's group.
    async fn reclaim(&self, name: &str) -> redis::RedisResult<()> {
        if self.started.elapsed() < GONE_AFTER {
            // Who is alive is not known yet.
            return Ok(());
        }
        let key = queue_key(name);
        let mut reader = self.reader.lock().clone();
        let consumers: StreamInfoConsumersReply = match reader.xinfo_consumers(&key, GROUP).await {
            Err(e) if e.code() == Some("NOGROUP") || e.code() == Some("ERR") => return Ok(()),
            other => other?,
        };
        let gone: Vec<_> = {
            let peers = self.peers.lock();
            consumers
                .consumers
                .into_iter()
                .filter(|c| c.name != self.node)
                .filter(|c| peers.get(&c.name).is_none_or(|p| p.seen.elapsed() >= GONE_AFTER))
                .collect()
        };
        for consumer in gone {
            if consumer.pending == 0 {
                let _: i64 = reader.xgroup_delconsumer(&key, GROUP, &consumer.name).await?;
                continue;
            }
            let pending: StreamPendingCountReply = redis::cmd("XPENDING")
                .arg(&key)
                .arg(GROUP)
                .arg("IDLE")
                .arg(RECLAIM_IDLE_MS)
                .arg("-")
                .arg("+")
                .arg(RECLAIM_BATCH)
                .arg(&consumer.name)
                .query_async(&mut reader)
                .await?;
            let ids: Vec<String> = pending.ids.into_iter().map(|p| p.id).collect();
            if ids.is_empty() {
                continue;
            }
            let claimed: StreamClaimReply = redis::cmd("XCLAIM")
                .arg(&key)
                .arg(GROUP)
                .arg(&self.node)
                .arg(RECLAIM_IDLE_MS)
                .arg(&ids)
                .query_async(&mut reader)
                .await?;
            let messages = self.messages(name, claimed.ids, true);
            tracing::info!(
                queue = name,
                from = %consumer.name,
                claimed = messages.len(),
                "took over the queue messages of a node that is gone"
            );
            self.broker.take_queued(name, messages);
        }
        Ok(())
    }

    /// The last consumer here left queue `name`: leaves its group (when nothing is held
    /// here any more), and removes the stream when it is empty and unconsumed.
    fn release(self: &Arc<Self>, name: String) {
        let mut release = redis::cmd("EVAL");
        release.arg(RELEASE).arg(1).arg(queue_key(&name)).arg(GROUP).arg(&self.node);
        let inner = self.clone();
        tokio::spawn(async move {
            let answer = inner.command(&name, &queue_key(&name), release);
            if answered(answer).await == Ok(Value::Int(1)) {
                let mut forget = redis::cmd("SREM");
                forget.arg(QUEUE_NAMES).arg(&name);
                let mut names = inner.queue_names.lock();
                if matches!(names.get(&name), Some(Registration::Known)) {
                    names.remove(&name);
                }
                drop(names);
                inner.submit(&name, Outgoing::command(QUEUE_NAMES, forget));
            }
        });
    }
}

/// Takes queue `name`'s messages for this node's consumers while they have room: at each
/// notice, each [`POLL`], and whenever a consumer here settles one; claims gone nodes'
/// messages every [`RECLAIM_EVERY`].
async fn read_queue(inner: Weak<Inner>, name: String, state: Arc<Consuming>) {
    let mut reclaimed = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    while !state.stopped.load(Ordering::Relaxed) {
        let Some(node) = inner.upgrade() else { return };
        let demand = node.broker.queue_demand(&name);
        let mut took = false;
        if demand > 0 {
            match node.take(&name, demand).await {
                Ok(messages) => {
                    took = !messages.is_empty();
                    node.broker.take_queued(&name, messages);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!(queue = %name, "reading the queue failed: {e}; again in {backoff:?}");
                    let mut reader = node.reader.lock().clone();
                    drop(node);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    reader.reconnect().await;
                    if let Some(node) = inner.upgrade() {
                        *node.reader.lock() = reader;
                    }
                    continue;
                }
            }
        }
        if reclaimed.elapsed() >= RECLAIM_EVERY {
            reclaimed = tokio::time::Instant::now();
            if let Err(e) = node.reclaim(&name).await {
                tracing::warn!(queue = %name, "claiming a gone node's queue messages failed: {e}");
            }
        }
        drop(node);
        if !took {
            let _ = tokio::time::timeout(POLL, state.wake.notified()).await;
        }
    }
    if let Some(node) = inner.upgrade() {
        node.release(name);
    }
}

/// The future a SEND to a queue waits for on a node of several (its command is queued
/// already).
pub(super) fn stored(
    inner: &Arc<Inner>,
    name: &str,
    message: &Message,
) -> BoxFuture<'static, Result<(), RouteError>> {
    inner.enqueue(name, Entry::of(message).encode())
}

/// Where a queue name stands on this node: registered, or waiting for the answer with the
/// messages sent to it meanwhile (and who waits for each).
#[derive(Debug)]
pub(super) enum Registration {
    Known,
    Pending(Vec<Waiting>),
}

/// A message waiting for its queue's registration, and who waits for its outcome.
type Waiting = (Vec<u8>, oneshot::Sender<Result<(), RouteError>>);

/// A command's answer to come: `None` when it could not even be queued.
type Answer = Option<oneshot::Receiver<Result<Value, String>>>;

/// Waits for `answer`, at most [`STORE_WAIT`].
async fn answered(answer: Answer) -> Result<Value, RouteError> {
    let Some(answer) = answer else {
        return Err(RouteError::Unavailable(
            "the queue store's outgoing queue is full; try again".into(),
        ));
    };
    match tokio::time::timeout(STORE_WAIT, answer).await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(e))) => Err(RouteError::Unavailable(format!("the queue store failed: {e}"))),
        _ => Err(RouteError::Unavailable(format!(
            "the queue store (Redis) did not answer within {} s; the message may or may not \
             be queued",
            STORE_WAIT.as_secs()
        ))),
    }
}

/// The error for a message whose registration never ended (the node stopped).
fn gone() -> RouteError {
    RouteError::Unavailable("the server is stopping; the message was not queued".into())
}
