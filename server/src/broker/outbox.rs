//! One connection's outbound side as the broker sees it: a bounded queue of typed events
//! (opened, receipt, error, delivery, close) that a transport drains and encodes in its own
//! wire format, plus the deliveries still awaiting ACK. Nothing here writes protocol bytes.
//!
//! Publishers push from any thread; one mutex per connection keeps the queue, the byte count
//! and the unacknowledged set consistent (held for a push or a drain, never across I/O).

use bytes::Bytes;
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use parking_lot::{Mutex, MutexGuard};
use taskpulse_shared::{
    resume::error_code,
    stomp::{AckMode, HeartBeat, Version},
};
use tokio::sync::Notify;

use super::message::Message;

/// Something to tell the client, in no particular wire format: the transport's writer
/// encodes it.
#[derive(Debug)]
pub enum Outgoing {
    /// The session is open (STOMP: CONNECTED).
    Opened(Box<Opened>),
    /// A client frame that asked for a receipt was processed; the client's receipt id.
    Receipt(String),
    /// The session fails; a [`Outgoing::Close`] follows.
    Error(Box<Failure>),
    /// A MESSAGE for subscription `sub`, with an `ack` id when it must be acknowledged.
    Deliver {
        /// The subscription id.
        sub: Arc<str>,
        /// The `ack` header value, for client and client-individual subscriptions.
        ack: Option<u64>,
        /// What to deliver.
        message: Arc<Message>,
    },
    /// An answer the session's own protocol encoded (a JSON `pong`, `unsubscribed`, or an
    /// `error` that does not end the session); written as it is.
    Reply(Bytes),
    /// Close the connection after writing everything before this, saying why.
    Close(CloseReason),
}

/// Why the server closes a connection, as a WebSocket close code (RFC 6455 7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// 1000: the session ended normally (DISCONNECT, or the client closed first).
    Normal,
    /// 1001: the server is shutting down.
    GoingAway,
    /// 1008: the client broke a rule (authentication, authorization, a limit, the protocol).
    Policy,
    /// 1009: a message was larger than allowed.
    TooBig,
    /// 1011: the server failed.
    ServerError,
}

impl CloseReason {
    /// The close code.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::Normal => 1000,
            CloseReason::GoingAway => 1001,
            CloseReason::Policy => 1008,
            CloseReason::TooBig => 1009,
            CloseReason::ServerError => 1011,
        }
    }

    /// The close that follows an ERROR with this `message`.
    fn after_error(message: &str) -> CloseReason {
        match message {
            "frame too large" | "header line too long" | "too many headers" => CloseReason::TooBig,
            "server is shutting down" => CloseReason::GoingAway,
            "disconnected" => CloseReason::Normal,
            "internal error" => CloseReason::ServerError,
            _ => CloseReason::Policy,
        }
    }
}

/// What the client learns when its session opens.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The session's label (see `Broker::session_label`).
    pub session: String,
    /// The authenticated principal.
    pub user_name: String,
    /// What the protocol negotiated.
    pub wire: Wire,
}

/// The protocol-specific part of an opening, chosen by that protocol's session and written
/// by its transport. A new protocol adds its variant here and nothing else in the broker.
#[derive(Debug, Clone, Copy)]
pub enum Wire {
    /// STOMP: the version everything is written in from now on, and the server's heart-beat
    /// offer.
    Stomp {
        /// The negotiated version.
        version: Version,
        /// The `heart-beat` answer.
        heart_beat: HeartBeat,
    },
    /// The JSON protocol (`auth_success`).
    Json,
}

/// Why a session fails, for the client.
#[derive(Debug, Clone)]
pub struct Failure {
    /// One-line summary; its machine-readable code is derived from it
    /// (`taskpulse_shared::resume::error_code`).
    pub message: String,
    /// The receipt id of the client frame that caused it, if it asked for one.
    pub receipt_id: Option<String>,
    /// A longer explanation.
    pub body: String,
}

/// Room counted for an event's framing beside its variable parts.
const EVENT_OVERHEAD: usize = 64;

impl Outgoing {
    /// Bytes this event counts against the outbound ceiling: its variable parts plus room for
    /// any protocol's framing.
    fn cost(&self) -> usize {
        match self {
            Outgoing::Opened(opened) => {
                opened.session.len() + opened.user_name.len() + 2 * EVENT_OVERHEAD
            }
            Outgoing::Receipt(id) => id.len() + EVENT_OVERHEAD,
            Outgoing::Error(failure) => {
                failure.message.len()
                    + failure.receipt_id.as_ref().map_or(0, String::len)
                    + failure.body.len()
                    + 2 * EVENT_OVERHEAD
            }
            Outgoing::Deliver { message, .. } => message.cost(),
            Outgoing::Reply(bytes) => bytes.len() + EVENT_OVERHEAD,
            Outgoing::Close(_) => 0,
        }
    }
}

/// Result of handing a message to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for writing.
    Queued,
    /// Merged into an older, still unwritten progress message of the same key.
    Coalesced,
    /// The subscription already has its maximum of unacknowledged messages.
    AckLimit,
    /// The connection is closing; the message was not taken.
    Closed,
}

/// A delivery awaiting ACK.
#[derive(Debug, Clone)]
pub struct Unacked {
    /// Subscription id.
    pub sub: Arc<str>,
    /// The message.
    pub message: Arc<Message>,
    /// The queue it came from, for redelivery.
    pub queue: Option<Arc<str>>,
}

/// What a closing connection leaves behind: queue messages that were not acknowledged.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// `(queue, message)` pairs to redeliver.
    pub redeliver: Vec<(Arc<str>, Arc<Message>)>,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Outgoing>,
    /// Encoded size of `items` (every frame: deliveries with their headers, RECEIPTs,
    /// ERRORs, replays, snapshots).
    bytes: usize,
    /// Size of the live messages in `held`; counted against the same ceiling as `bytes`.
    held_bytes: usize,
    /// Size of the deliveries in `unacked`.
    unacked_bytes: usize,
    closed: bool,
    heartbeat_every: Duration,
    next_ack: u64,
    unacked: BTreeMap<u64, Unacked>,
    unacked_per_sub: HashMap<Arc<str>, usize>,
    /// Auto-ack queue deliveries dropped unwritten by [`Outbox::fail`], for redelivery.
    unsent: Vec<(Arc<str>, Arc<Message>)>,
    /// Subscriptions whose live messages wait until their replay is queued (see
    /// [`Outbox::hold`]).
    held: HashMap<Arc<str>, Vec<Arc<Message>>>,
    /// After a release: live messages at or below this `seq` were in the catch-up already.
    /// (An entry can be stored, and so replayed, a moment before its live send.)
    floors: HashMap<Arc<str>, i64>,
    /// Why it closed, first reason only (see [`Outbox::ending`]).
    ending: Option<Ending>,
    /// Steps under way (see [`Outbox::after`]), and the answers held until they end, with
    /// their size (counted against the ceiling like `bytes`).
    steps: usize,
    gated: VecDeque<Outgoing>,
    gated_bytes: usize,
}

/// Why an outbox closed, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// The ERROR's code, or `disconnect` (the client's DISCONNECT) or `client-closed`.
    pub reason: String,
    /// Whether an ERROR said so.
    pub error: bool,
}

/// Live messages a held subscription may collect while its replay is read.
pub(super) const HOLD_LIMIT: usize = 10_000;

/// What pushing one delivery did.
enum Pushed {
    Done(Delivery),
    SlowConsumer,
}

/// One connection's outbound queue; shared by the broker and the transport.
#[derive(Debug)]
pub struct Outbox {
    /// Connection id, unique within the process.
    pub id: u64,
    buffer_limit: usize,
    unacked_limit: usize,
    state: Mutex<State>,
    wake: Notify,
}

impl Outbox {
    /// An empty outbox with the given limits (bytes waiting, unacked per subscription).
    pub fn new(id: u64, buffer_limit: usize, unacked_limit: usize) -> Outbox {
        Outbox { id, buffer_limit, unacked_limit, state: Mutex::default(), wake: Notify::new() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Sets how long the writer may stay silent before it sends a heart-beat (at the
    /// session's opening; zero for never).
    pub fn set_heartbeat(&self, every: Duration) {
        self.lock().heartbeat_every = every;
    }

    /// How long the writer may stay silent before it sends a heart-beat; zero for never.
    pub fn heartbeat_every(&self) -> Duration {
        self.lock().heartbeat_every
    }

    /// Queues the opening; it counts against the outbound ceiling like any other event.
    pub fn opened(&self, opened: Opened) {
        self.push(Outgoing::Opened(Box::new(opened)));
    }

    /// Queues a receipt for the client frame that asked for `receipt_id`. The session checks
    /// that its protocol can carry the id; a transport that still cannot write it fails the
    /// connection rather than send a wrong one. Ignored once the outbox is closed.
    pub fn receipt(&self, receipt_id: String) {
        self.push(Outgoing::Receipt(receipt_id));
    }

    /// Queues an answer the session encoded itself (see [`Outgoing::Reply`]).
    pub fn reply(&self, bytes: Bytes) {
        self.push(Outgoing::Reply(bytes));
    }

    /// Queues an ERROR and then the close; nothing is accepted afterwards. Pending
    /// deliveries that were not written are dropped (queue messages among them come back
    /// from [`Outbox::finish`] for redelivery), so the ERROR goes out at once even to a
    /// consumer that fell behind.
    pub fn fail(&self, message: &str, receipt_id: Option<String>, body: String) {
        let reason = CloseReason::after_error(message);
        let failure = Failure { message: message.to_owned(), receipt_id, body };
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.ending.get_or_insert_with(|| Ending { reason: error_code(message), error: true });
        self.end_with(state, Some(Outgoing::Error(Box::new(failure))), reason);
    }

    /// Replaces whatever is queued by `last` (if any) and the close; nothing is accepted
    /// afterwards. Unwritten queue deliveries that needed an ACK are still in `unacked`; the
    /// auto ones are kept so that [`Outbox::finish`] returns them too.
    fn end_with(
        &self,
        mut state: MutexGuard<'_, State>,
        last: Option<Outgoing>,
        reason: CloseReason,
    ) {
        let dropped = std::mem::take(&mut state.items);
        state.bytes = last.as_ref().map_or(0, Outgoing::cost);
        state.held.clear();
        state.held_bytes = 0;
        state.gated.clear();
        state.gated_bytes = 0;
        state.items.extend(last);
        state.items.push_back(Outgoing::Close(reason));
        state.closed = true;
        state.unsent.extend(unsent_queue_messages(dropped));
        drop(state);
        self.wake.notify_one();
    }

    /// Queues the close after everything already queued (DISCONNECT).
    pub fn close(&self) {
        self.push(Outgoing::Close(CloseReason::Normal));
        let mut state = self.lock();
        state.closed = true;
        state.ending.get_or_insert_with(|| Ending { reason: "disconnect".into(), error: false });
    }

    /// The client closed the connection: nothing more can be written but the close's echo,
    /// so whatever was queued is dropped (queue messages among it come back from
    /// [`Outbox::finish`] for redelivery).
    pub fn closed_by_peer(&self) {
        let mut state = self.lock();
        state.ending.get_or_insert_with(|| Ending { reason: "client-closed".into(), error: false });
        self.end_with(state, None, CloseReason::Normal);
    }

    /// Why it closed: the first ERROR, DISCONNECT or client close; `None` while open or when
    /// the connection was simply lost.
    pub fn ending(&self) -> Option<Ending> {
        self.lock().ending.clone()
    }

    /// Queues a control event or the close; past the ceiling the connection fails instead.
    fn push(&self, item: Outgoing) {
        let cost = item.cost();
        let mut state = self.lock();
        if state.closed {
            return;
        }
        if !self.fits(&state, cost) {
            drop(state);
            self.fail_slow();
            return;
        }
        if state.steps > 0 {
            state.gated_bytes += cost;
            state.gated.push_back(item);
            return;
        }
        state.bytes += cost;
        state.items.push_back(item);
        drop(state);
        self.wake.notify_one();
    }

    /// Whether `cost` more bytes stay within the ceiling, beside what is queued and held.
    fn fits(&self, state: &State, cost: usize) -> bool {
        state.bytes + state.held_bytes + state.gated_bytes + cost <= self.buffer_limit
    }

    /// Holds the connection's later answers (receipts, replies, the close; not deliveries)
    /// until `step` ends, in order: a SEND whose message is on its way to another node's
    /// store gets its RECEIPT once it is stored, and so does every frame after it. A step
    /// that fails calls `failed`, which may fail the connection.
    pub fn after<E: Send + 'static>(
        self: &Arc<Self>,
        step: futures_util::future::BoxFuture<'static, Result<(), E>>,
        failed: impl FnOnce(&Outbox, E) + Send + 'static,
    ) {
        self.lock().steps += 1;
        let outbox = self.clone();
        tokio::spawn(async move {
            if let Err(e) = step.await {
                failed(&outbox, e);
            }
            let mut state = outbox.lock();
            state.steps -= 1;
            if state.steps == 0 && !state.gated.is_empty() {
                let gated = std::mem::take(&mut state.gated);
                state.bytes += std::mem::take(&mut state.gated_bytes);
                state.items.extend(gated);
                drop(state);
                outbox.wake.notify_one();
            }
        });
    }

    /// Bytes queued, held and awaiting ACK, for tests and limits checks.
    pub fn held_bytes(&self) -> usize {
        let state = self.lock();
        state.bytes + state.held_bytes + state.unacked_bytes
    }

    /// Hands `message` to subscription `sub`. When the buffer is over its limit, a
    /// replaceable message overwrites the newest unwritten one of the same key if that one is
    /// replaceable too; otherwise the connection fails with an ERROR naming the limit.
    pub fn deliver(
        &self,
        sub: &Arc<str>,
        mode: AckMode,
        message: &Arc<Message>,
        queue: Option<&Arc<str>>,
    ) -> Delivery {
        let mut state = self.lock();
        if state.closed {
            return Delivery::Closed;
        }
        if let Some(floor) = state.floors.get(sub).copied() {
            match message.seq() {
                // Already delivered by the catch-up.
                Some(seq) if seq <= floor => return Delivery::Coalesced,
                // Sends are in seq order: nothing at or below the floor can follow.
                Some(_) => {
                    state.floors.remove(sub);
                }
                None => {}
            }
        }
        if queue.is_none() && state.held.contains_key(sub) {
            let cost = message.cost();
            let fits = self.fits(&state, cost);
            if let Some(held) = state.held.get_mut(sub)
                && held.len() < HOLD_LIMIT
                && fits
            {
                held.push(message.clone());
                state.held_bytes += cost;
                return Delivery::Queued;
            }
            drop(state);
            self.fail_slow();
            return Delivery::Closed;
        }
        match self.push_delivery(&mut state, sub, mode, message, queue, true) {
            Pushed::Done(delivery) => {
                drop(state);
                if delivery == Delivery::Queued {
                    self.wake.notify_one();
                }
                delivery
            }
            Pushed::SlowConsumer => {
                drop(state);
                self.fail_slow();
                Delivery::Closed
            }
        }
    }

    /// Queues one delivery within the ceiling; `coalescable` lets a replaceable progress value
    /// merge into an unwritten one instead of failing the connection (live messages only: a
    /// catch-up is never merged).
    fn push_delivery(
        &self,
        state: &mut State,
        sub: &Arc<str>,
        mode: AckMode,
        message: &Arc<Message>,
        queue: Option<&Arc<str>>,
        coalescable: bool,
    ) -> Pushed {
        let cost = message.cost();
        if mode != AckMode::Auto
            && (state.unacked_per_sub.get(sub).copied().unwrap_or(0) >= self.unacked_limit
                || state.unacked_bytes + cost > self.buffer_limit)
        {
            return Pushed::Done(Delivery::AckLimit);
        }
        if !self.fits(state, cost) {
            if !coalescable {
                return Pushed::SlowConsumer;
            }
            return match coalesce(state, sub, message) {
                Some(coalesced) => Pushed::Done(coalesced),
                None => Pushed::SlowConsumer,
            };
        }
        let ack = if mode == AckMode::Auto {
            None
        } else {
            let id = state.next_ack;
            state.next_ack += 1;
            let unacked =
                Unacked { sub: sub.clone(), message: message.clone(), queue: queue.cloned() };
            state.unacked.insert(id, unacked);
            state.unacked_bytes += cost;
            *state.unacked_per_sub.entry(sub.clone()).or_default() += 1;
            Some(id)
        };
        state.bytes += cost;
        state.items.push_back(Outgoing::Deliver {
            sub: sub.clone(),
            ack,
            message: message.clone(),
        });
        Pushed::Done(Delivery::Queued)
    }

    fn fail_slow(&self) {
        let limit = self.buffer_limit;
        self.fail(
            "slow consumer",
            None,
            format!(
                "More than {limit} bytes (limits.outbound_buffer) were waiting to be sent to \
                 this connection, counting every frame: messages with their headers, receipts, \
                 replays and snapshots. Messages that cannot be merged are not dropped \
                 silently, so the connection is closed; reconnect and resubscribe."
            ),
        );
    }

    /// Holds the live messages of subscription `sub` until [`Outbox::release`]: they wait
    /// while what the client missed is read from the log.
    pub fn hold(&self, sub: &Arc<str>) {
        self.lock().held.insert(sub.clone(), Vec::new());
    }

    /// Queues `replay` (what the client missed, oldest first), then the live messages held
    /// meanwhile, minus those the replay already contained (`seq` at or below `replayed_up_to`):
    /// no gap and no duplicate across the switch. The SUBSCRIBE's RECEIPT, if it asked for
    /// one, goes between the two. The replay counts against the same
    /// ceiling as everything else: a catch-up that does not fit fails the connection
    /// (the caller sizes it to fit an empty buffer, see `replay::UserLog`).
    pub fn release(
        &self,
        sub: &Arc<str>,
        mode: AckMode,
        replay: Vec<Arc<Message>>,
        replayed_up_to: Option<i64>,
        receipt_id: Option<String>,
    ) {
        let receipt = receipt_id.map(Outgoing::Receipt);
        let mut state = self.lock();
        let Some(held) = state.held.remove(sub) else { return };
        state.held_bytes = state.held_bytes.saturating_sub(cost_of(&held));
        if state.closed {
            return;
        }
        let live = held.into_iter().filter(|m| match (replayed_up_to, m.seq()) {
            (Some(up_to), Some(seq)) => seq > up_to,
            _ => true,
        });
        if let Some(up_to) = replayed_up_to {
            state.floors.insert(sub.clone(), up_to);
        }
        let mut fits = true;
        for message in replay {
            fits &= !matches!(
                self.push_delivery(&mut state, sub, mode, &message, None, false),
                Pushed::SlowConsumer
            );
        }
        // The SUBSCRIBE's RECEIPT marks the end of the catch-up.
        if let Some(receipt) = receipt {
            let cost = receipt.cost();
            fits &= self.fits(&state, cost);
            state.bytes += cost;
            state.items.push_back(receipt);
        }
        for message in live {
            fits &= !matches!(
                self.push_delivery(&mut state, sub, mode, &message, None, false),
                Pushed::SlowConsumer
            );
        }
        drop(state);
        if fits {
            self.wake.notify_one();
        } else {
            // Not a partial catch-up: the client resumes from where it was.
            self.fail_slow();
        }
    }

    /// Takes everything queued (for the writer), or waits until something is.
    pub async fn next_batch(&self, batch: &mut VecDeque<Outgoing>) {
        loop {
            let notified = self.wake.notified();
            {
                let mut state = self.lock();
                if !state.items.is_empty() {
                    std::mem::swap(&mut state.items, batch);
                    state.bytes = 0;
                    return;
                }
            }
            notified.await;
        }
    }

    /// How many more deliveries subscription `sub` (in `mode`) takes before its ACK limit;
    /// `usize::MAX` for `auto`, which needs no ACK.
    pub fn ack_room(&self, sub: &str, mode: AckMode) -> usize {
        if mode == AckMode::Auto {
            return usize::MAX;
        }
        let held = self.lock().unacked_per_sub.get(sub).copied().unwrap_or(0);
        self.unacked_limit.saturating_sub(held)
    }

    /// Settles the delivery with ack id `id` (and, when `cumulative` says so for its
    /// subscription, every earlier one of that subscription). Returns the settled deliveries,
    /// or `None` if `id` is unknown.
    pub fn settle_with(&self, id: u64, cumulative: impl Fn(&str) -> bool) -> Option<Vec<Unacked>> {
        let mut state = self.lock();
        let target = state.unacked.remove(&id)?;
        let mut settled = Vec::new();
        if cumulative(&target.sub) {
            let earlier: Vec<u64> = state
                .unacked
                .range(..id)
                .filter(|(_, u)| u.sub == target.sub)
                .map(|(k, _)| *k)
                .collect();
            for key in earlier {
                settled.extend(state.unacked.remove(&key));
            }
        }
        settled.push(target);
        for unacked in &settled {
            state.unacked_bytes = state.unacked_bytes.saturating_sub(unacked.message.cost());
            if let Some(count) = state.unacked_per_sub.get_mut(&unacked.sub) {
                *count = count.saturating_sub(1);
            }
        }
        Some(settled)
    }

    /// Finds the ack id of an unacknowledged delivery by `message-id` (STOMP 1.0/1.1 ACKs),
    /// optionally within one subscription.
    pub fn find_ack(&self, message_id: &str, sub: Option<&str>) -> Option<u64> {
        let state = self.lock();
        state
            .unacked
            .iter()
            .find(|(_, u)| u.message.id == message_id && sub.is_none_or(|s| *u.sub == *s))
            .map(|(id, _)| *id)
    }

    /// Forgets a subscription's pending deliveries (UNSUBSCRIBE); returns queue messages
    /// among them for redelivery.
    pub fn drop_subscription(&self, sub: &str) -> Leftovers {
        let mut state = self.lock();
        let ids: Vec<u64> =
            state.unacked.iter().filter(|(_, u)| &*u.sub == sub).map(|(k, _)| *k).collect();
        let mut leftovers = Leftovers::default();
        for id in ids {
            let Some(Unacked { message, queue, .. }) = state.unacked.remove(&id) else { continue };
            state.unacked_bytes = state.unacked_bytes.saturating_sub(message.cost());
            if let Some(queue) = queue {
                leftovers.redeliver.push((queue, message));
            }
        }
        state.unacked_per_sub.remove(sub);
        if let Some(held) = state.held.remove(sub) {
            state.held_bytes = state.held_bytes.saturating_sub(cost_of(&held));
        }
        state.floors.remove(sub);
        leftovers
    }

    /// Closes the outbox for good and returns the queue messages never acknowledged or
    /// never written.
    pub fn finish(&self) -> Leftovers {
        let mut state = self.lock();
        state.closed = true;
        let mut leftovers = Leftovers::default();
        for (_, unacked) in std::mem::take(&mut state.unacked) {
            if let Some(queue) = unacked.queue {
                leftovers.redeliver.push((queue, unacked.message));
            }
        }
        leftovers.redeliver.append(&mut state.unsent);
        let items = std::mem::take(&mut state.items);
        leftovers.redeliver.extend(unsent_queue_messages(items));
        state.unacked_per_sub.clear();
        state.unacked_bytes = 0;
        state.held.clear();
        state.held_bytes = 0;
        state.floors.clear();
        leftovers
    }

    /// Whether the outbox accepts no more messages.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

/// What `messages` count against the ceiling.
fn cost_of(messages: &[Arc<Message>]) -> usize {
    messages.iter().map(|m| m.cost()).sum()
}

/// The auto-ack queue deliveries among `items` (those with an ack id are in `unacked`).
fn unsent_queue_messages(
    items: VecDeque<Outgoing>,
) -> impl Iterator<Item = (Arc<str>, Arc<Message>)> {
    items.into_iter().filter_map(|item| match item {
        Outgoing::Deliver { ack: None, message, .. }
            if message.destination.starts_with("/queue/") =>
        {
            Some((Arc::from(message.destination.as_str()), message))
        }
        _ => None,
    })
}

fn coalesce(state: &mut State, sub: &Arc<str>, message: &Arc<Message>) -> Option<Delivery> {
    let new = message.coalesce.as_ref().filter(|c| c.replaceable)?;
    // The newest unwritten message about the same key decides: a status change is kept.
    let index = state.items.iter().rposition(|item| {
        matches!(item, Outgoing::Deliver { sub: s, ack: None, message: m }
            if s == sub && m.coalesce.as_ref().is_some_and(|c| c.key == new.key))
    })?;
    let Outgoing::Deliver { message: older, .. } = &state.items[index] else { return None };
    if !older.coalesce.as_ref().is_some_and(|c| c.replaceable) {
        return None;
    }
    // The newer value goes to the back, not into the older one's place: messages stay in
    // publication (and `seq`) order, so a client that drops `seq`s it has seen loses nothing.
    let older_cost = older.cost();
    state.items.remove(index);
    state.bytes = state.bytes - older_cost + message.cost();
    state.items.push_back(Outgoing::Deliver {
        sub: sub.clone(),
        ack: None,
        message: message.clone(),
    });
    Some(Delivery::Coalesced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskpulse_shared::resume::TASKS_DESTINATION;

    use crate::broker::{Coalesce, LogPlace, Publication};

    fn progress(task: &str, value: u32, replaceable: bool) -> Arc<Message> {
        let body = format!(r#"{{"taskNo":"{task}","progress":{value}}}"#);
        let publication =
            Publication::json(body).coalesce(Coalesce { key: Arc::from(task), replaceable });
        Arc::new(Message::new(
            format!("m{value}"),
            "/user/queue/tasks-progress".into(),
            publication,
        ))
    }

    fn bodies(outbox: &Outbox) -> Vec<String> {
        let state = outbox.lock();
        state
            .items
            .iter()
            .map(|item| match item {
                Outgoing::Deliver { message, .. } => {
                    String::from_utf8(message.body.to_vec()).unwrap()
                }
                Outgoing::Opened(_) => "OPENED".into(),
                Outgoing::Receipt(_) => "RECEIPT".into(),
                Outgoing::Error(_) => "ERROR".into(),
                Outgoing::Reply(_) => "REPLY".into(),
                Outgoing::Close(_) => "CLOSE".into(),
            })
            .collect()
    }

    /// What the writer takes from `outbox` up to its close (`None` after 5 s without one).
    async fn until_close(outbox: &Outbox) -> Option<VecDeque<Outgoing>> {
        let mut batch = VecDeque::new();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !batch.iter().any(|i| matches!(i, Outgoing::Close(_))) {
                let mut next = VecDeque::new();
                outbox.next_batch(&mut next).await;
                batch.extend(next);
            }
        })
        .await
        .ok()?;
        Some(batch)
    }

    #[tokio::test]
    async fn answers_after_a_step_wait_for_it_in_order_and_deliveries_do_not() {
        use futures_util::FutureExt;
        let sub: Arc<str> = Arc::from("s");
        let outbox = Arc::new(Outbox::new(1, 1 << 20, 10));
        let (stored, storing) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let step = async move { storing.await.unwrap_or(Err("gone".into())) }.boxed();
        outbox.after(step, |_: &Outbox, _: String| unreachable!("the step succeeds"));
        outbox.receipt("sent".into());
        outbox.deliver(&sub, AckMode::Auto, &progress("T1", 1, false), None);
        outbox.close();
        // Held: the SEND's receipt and the close; a delivery is not an answer.
        assert_eq!(bodies(&outbox), [r#"{"taskNo":"T1","progress":1}"#]);
        stored.send(Ok(())).unwrap();
        let batch = until_close(&outbox).await.expect("the held answers come once the step ends");
        let kinds: Vec<&str> = batch
            .iter()
            .map(|i| match i {
                Outgoing::Receipt(_) => "RECEIPT",
                Outgoing::Close(_) => "CLOSE",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["other", "RECEIPT", "CLOSE"]);

        // A step that fails can fail the connection; what it held never goes out.
        let outbox = Arc::new(Outbox::new(2, 1 << 20, 10));
        let step = async { Err::<(), _>("queue full".to_owned()) }.boxed();
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let gate = async move {
            let _ = held.await;
            Ok::<(), String>(())
        }
        .boxed();
        outbox.after(gate, |_: &Outbox, _: String| {});
        outbox.receipt("r1".into());
        outbox.after(step, |outbox: &Outbox, message: String| {
            outbox.fail(&message, None, "refused".into());
        });
        release.send(()).unwrap();
        let batch = until_close(&outbox).await.expect("the failure closes");
        assert!(matches!(batch.front(), Some(Outgoing::Error(_))), "{batch:?}");
        assert!(!batch.iter().any(|i| matches!(i, Outgoing::Receipt(_))), "{batch:?}");
    }

    #[test]
    fn a_full_buffer_merges_progress_but_keeps_status_changes() {
        let sub: Arc<str> = Arc::from("s");
        let one = progress("T1", 0, false).cost();
        let outbox = Outbox::new(1, one * 3 + 4, 10);
        let deliver = |m: Arc<Message>| outbox.deliver(&sub, AckMode::Auto, &m, None);
        assert_eq!(deliver(progress("T1", 0, false)), Delivery::Queued); // status: processing
        assert_eq!(deliver(progress("T1", 10, true)), Delivery::Queued);
        assert_eq!(deliver(progress("T2", 5, true)), Delivery::Queued);
        // Full: newer progress replaces the newest unwritten one of the same task.
        assert_eq!(deliver(progress("T1", 20, true)), Delivery::Coalesced);
        assert_eq!(deliver(progress("T2", 50, true)), Delivery::Coalesced);
        // The merged values move to the back: publication order is kept.
        assert_eq!(
            bodies(&outbox),
            [
                r#"{"taskNo":"T1","progress":0}"#,
                r#"{"taskNo":"T1","progress":20}"#,
                r#"{"taskNo":"T2","progress":50}"#
            ]
        );
        // A status change cannot be merged: the connection fails with an ERROR saying why.
        assert_eq!(deliver(progress("T1", 100, false)), Delivery::Closed);
        let items = bodies(&outbox);
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].as_str(), items[1].as_str()), ("ERROR", "CLOSE"));
        assert!(outbox.is_closed());
    }

    #[test]
    fn merging_keeps_publication_order() {
        let sub: Arc<str> = Arc::from("s");
        let one = progress("T1", 0, false).cost();
        let outbox = Outbox::new(1, one * 2 + 4, 10);
        let deliver = |m: Arc<Message>| outbox.deliver(&sub, AckMode::Auto, &m, None);
        deliver(progress("T1", 10, true)); // published first
        deliver(progress("T2", 0, false)); // then T2's status change
        assert_eq!(deliver(progress("T1", 20, true)), Delivery::Coalesced);
        // T1's newer value comes after T2's change, as it was published: a client that
        // drops seq numbers it has already passed would otherwise lose T2's change.
        assert_eq!(
            bodies(&outbox),
            [r#"{"taskNo":"T2","progress":0}"#, r#"{"taskNo":"T1","progress":20}"#]
        );
    }

    #[test]
    fn progress_never_merges_across_a_status_change() {
        let sub: Arc<str> = Arc::from("s");
        let one = progress("T1", 0, false).cost();
        let outbox = Outbox::new(1, one * 2 + 4, 10);
        let deliver = |m: Arc<Message>| outbox.deliver(&sub, AckMode::Auto, &m, None);
        deliver(progress("T1", 10, true));
        deliver(progress("T1", 0, false)); // e.g. "failed" after a progress value
        // The newest T1 item is a status change: merging into the older progress would
        // reorder them, so the connection is cut instead.
        assert_eq!(deliver(progress("T1", 30, true)), Delivery::Closed);
    }

    fn numbered(seq: i64) -> Arc<Message> {
        let place = LogPlace::Numbered { seq, epoch: Arc::from("e"), replayed: false };
        let publication = Publication::json(format!("{seq}")).at(place);
        Arc::new(Message::new(format!("m{seq}"), TASKS_DESTINATION.into(), publication))
    }

    #[test]
    fn held_live_messages_follow_the_replay_without_gap_or_duplicate() {
        let sub: Arc<str> = Arc::from("s");
        let outbox = Outbox::new(1, usize::MAX, 10);
        outbox.hold(&sub);
        // Live messages 3..=5 arrive while the log is read; the log had 1..=4.
        for seq in 3..=5 {
            assert_eq!(outbox.deliver(&sub, AckMode::Auto, &numbered(seq), None), Delivery::Queued);
        }
        assert!(bodies(&outbox).is_empty(), "held, not queued");
        outbox.release(&sub, AckMode::Auto, (1..=4).map(numbered).collect(), Some(4), None);
        assert_eq!(bodies(&outbox), ["1", "2", "3", "4", "5"]);
        // Stored (and so replayed) before its live send: the late live copy is dropped.
        assert_eq!(outbox.deliver(&sub, AckMode::Auto, &numbered(4), None), Delivery::Coalesced);
        outbox.deliver(&sub, AckMode::Auto, &numbered(6), None);
        assert_eq!(bodies(&outbox).last().map(String::as_str), Some("6"));
        // A second release without a hold does nothing.
        outbox.release(&sub, AckMode::Auto, vec![numbered(1)], None, None);
        assert_eq!(bodies(&outbox).len(), 6);
    }

    #[test]
    fn unacked_deliveries_settle_individually_or_cumulatively() {
        let sub: Arc<str> = Arc::from("s");
        let outbox = Outbox::new(1, usize::MAX, 3);
        let queue: Arc<str> = Arc::from("/queue/q");
        for n in 0..3 {
            let m = progress("T", n, false);
            assert_eq!(outbox.deliver(&sub, AckMode::Client, &m, Some(&queue)), Delivery::Queued);
        }
        assert_eq!(
            outbox.deliver(&sub, AckMode::Client, &progress("T", 9, false), None),
            Delivery::AckLimit
        );
        let settled = outbox.settle_with(1, |_| true).unwrap();
        assert_eq!(settled.len(), 2, "ack 1 also settles ack 0");
        assert!(outbox.settle_with(0, |_| true).is_none());
        assert_eq!(outbox.find_ack("m2", Some("s")), Some(2));
        let leftovers = outbox.finish();
        assert_eq!(leftovers.redeliver.len(), 1, "the unacknowledged queue message comes back");
    }

    fn with_headers(n: usize, header_bytes: usize) -> Arc<Message> {
        let mut publication = Publication::new("text/plain", "x");
        for i in 0..n {
            publication = publication.with_header(&format!("h{i}"), &"v".repeat(header_bytes));
        }
        Arc::new(Message::new(format!("m{n}"), "/topic/t".into(), publication))
    }

    fn last_error(outbox: &Outbox) -> Option<String> {
        let state = outbox.lock();
        state.items.iter().find_map(|item| match item {
            Outgoing::Error(failure) => Some(format!("{}\n{}", failure.message, failure.body)),
            _ => None,
        })
    }

    #[test]
    fn every_frame_counts_against_one_ceiling() {
        const LIMIT: usize = 64 * 1024;
        let sub: Arc<str> = Arc::from("s");

        // Messages whose weight is in their headers.
        let outbox = Outbox::new(1, LIMIT, 10);
        let heavy = with_headers(7, 1000);
        assert!(heavy.cost() > 7000, "headers count: {}", heavy.cost());
        let mut taken = 0;
        while outbox.deliver(&sub, AckMode::Auto, &heavy, None) == Delivery::Queued {
            taken += 1;
            assert!(outbox.held_bytes() <= LIMIT);
        }
        assert!(taken < LIMIT / 7000 + 1, "{taken}");
        assert!(last_error(&outbox).unwrap().contains("limits.outbound_buffer"));

        // Control frames: RECEIPTs for a client that never reads.
        let outbox = Outbox::new(2, LIMIT, 10);
        for n in 0..10_000 {
            outbox.receipt(format!("{n:07500}"));
            assert!(outbox.held_bytes() <= LIMIT);
            if outbox.is_closed() {
                break;
            }
        }
        assert!(outbox.is_closed(), "receipts count: the connection is cut");
        assert!(last_error(&outbox).unwrap().contains("slow consumer"));

        // A catch-up (replay or snapshot) counts as well: repeated ones cannot pile up.
        let outbox = Outbox::new(3, LIMIT, 10);
        let snapshot: Vec<Arc<Message>> = (0..40).map(|_| with_headers(1, 200)).collect();
        for round in 0.. {
            outbox.hold(&sub);
            outbox.release(&sub, AckMode::Auto, snapshot.clone(), Some(round), None);
            assert!(outbox.held_bytes() <= LIMIT);
            if outbox.is_closed() {
                break;
            }
            assert!(round < 100, "never cut");
        }

        // Live messages held while a replay is read count too.
        let outbox = Outbox::new(4, LIMIT, 10);
        outbox.hold(&sub);
        while outbox.deliver(&sub, AckMode::Auto, &heavy, None) == Delivery::Queued {
            assert!(outbox.held_bytes() <= LIMIT);
        }
        assert!(outbox.is_closed());

        // Unacknowledged deliveries are bounded by bytes too, not only by count.
        let outbox = Outbox::new(5, LIMIT, 1_000_000);
        let mut delivered = 0;
        loop {
            match outbox.deliver(&sub, AckMode::Client, &heavy, None) {
                Delivery::Queued => delivered += 1,
                Delivery::AckLimit => break,
                other => panic!("{other:?}"),
            }
            // The writer drains the queue; the deliveries stay unacknowledged.
            let _ = std::mem::take(&mut outbox.lock().items);
            outbox.lock().bytes = 0;
        }
        assert!(delivered * heavy.cost() <= LIMIT && delivered > 0, "{delivered}");
    }
}
