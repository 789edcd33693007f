//! The client: one supervisor task per running client that connects, keeps the session
//! (heart-beats, subscriptions, resume) and reconnects with backoff until told to stop.
//! The Rust API ([`Client`]) and the JavaScript class (`js.rs`) are both this type.
//!
//! This file is the API and the shared state (`Inner`); `session.rs` is the loop that
//! connects and runs sessions; `page.rs` the page events that cut a backoff short.
//!
//! Everything runs on the browser's single thread: state is `Rc` + `Cell`/`RefCell`, and no
//! borrow is held across an `.await` or while listeners run (they may call back in).

mod page;
mod session;

use page::PageEvents;
use session::supervise;

use std::{
    cell::{Cell, RefCell},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
};

use futures_util::{Stream, StreamExt};
use taskpulse_shared::{
    TaskProgressDto, resume,
    stomp::{Frame, Version},
};

use crate::{
    ClientError,
    channel::{Receiver, Sender, channel},
    options::ClientOptions,
    protocol::{self, Session},
    resume::{Cursor, TaskStore},
    socket::SocketSender,
};

/// Where task updates arrive, for every session of the token's user.
pub use taskpulse_shared::resume::TASKS_DESTINATION;
/// A connection that stayed up this long resets the backoff.
const HEALTHY_AFTER_MS: f64 = 5_000.0;
/// How long `disconnect()` waits for the server's RECEIPT before closing anyway.
const DISCONNECT_RECEIPT_MS: u32 = 2_000;
/// Close code reported when the client itself ended the connection (heart-beat loss,
/// invalid frame, ERROR): the socket's own code is not known then.
const CLOSED_BY_CLIENT: u16 = 1006;
const DISCONNECT_RECEIPT: &str = "disconnect";
const READY_RECEIPT: &str = "tasks-ready";

/// The connection's state, as `state` / `onStateChange` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// The first attempt is under way.
    Connecting,
    /// CONNECTED received; subscriptions are active.
    Connected,
    /// The connection dropped or an attempt failed; the next attempt is scheduled
    /// ([`Client::next_retry_at`]) or under way.
    Reconnecting,
    /// Not running: never started, `disconnect()`ed, or the token was refused.
    Disconnected,
}

impl ConnectionState {
    /// The JavaScript name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Reconnecting => "reconnecting",
            ConnectionState::Disconnected => "disconnected",
        }
    }
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectInfo {
    /// The WebSocket close code (1006 when the client closed it itself).
    pub code: u16,
    /// The close reason, or why the client closed.
    pub reason: String,
    /// Whether the close handshake completed.
    pub was_clean: bool,
    /// Whether the client will try again.
    pub will_reconnect: bool,
}

/// Everything a listener can hear.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The state changed (also when a new retry time is scheduled).
    StateChanged {
        /// The new state.
        state: ConnectionState,
        /// While reconnecting: when the next attempt starts, ms since the epoch.
        next_retry_at: Option<f64>,
    },
    /// A session opened (and caught up): what its CONNECTED frame settled.
    Connected(Session),
    /// A session (or an attempt that had opened its socket) ended.
    Disconnected(DisconnectInfo),
    /// A task changed: each status change once and in order, across reconnects.
    TaskUpdate(TaskProgressDto),
    /// Something went wrong; fatal ones ([`ClientError::is_fatal`]) stop the client.
    Error(ClientError),
}

/// What the client did so far, for diagnostics (`stats()` in JavaScript).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sessions opened (CONNECTED and caught up).
    pub connects: u64,
    /// Task messages received as a replay of what the client missed (`x-replayed`).
    pub replayed: u64,
    /// Task messages received as snapshot entries (`x-snapshot`): the server could not
    /// replay exactly (first connect, or the log no longer covered the position).
    pub snapshot_entries: u64,
    /// Numbered task messages dropped because they were already applied.
    pub duplicates_dropped: u64,
}

/// A listener's handle, for [`Client::unlisten`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerId(u64);

/// A subscription's handle, for [`Client::unsubscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SubscriptionId(u32);

type Listener = Rc<dyn Fn(&ClientEvent)>;
type MessageHandler = Rc<dyn Fn(&Frame)>;

/// One SUBSCRIBE the client keeps across reconnects.
struct Subscription {
    destination: String,
    /// The handler; `None` for the built-in tasks subscription (the [`TaskStore`]).
    handler: Option<MessageHandler>,
    /// For `/user/...` destinations: the position to resume from.
    cursor: Option<Cursor>,
}

/// Messages to the supervisor.
enum Control {
    RetryNow,
    Stop,
}

/// The session in use, for sending from API calls.
struct Live {
    sender: SocketSender,
    version: Version,
    last_sent: Cell<f64>,
}

struct Inner {
    options: ClientOptions,
    state: Cell<ConnectionState>,
    next_retry_at: Cell<Option<f64>>,
    stats: Cell<Stats>,
    store: RefCell<TaskStore>,
    listeners: RefCell<Vec<(u64, Listener)>>,
    next_listener: Cell<u64>,
    /// By id, in the order made (a Vec: few entries, and one less map in the package).
    subscriptions: RefCell<Vec<(u32, Subscription)>>,
    next_subscription: Cell<u32>,
    live: RefCell<Option<Live>>,
    control: RefCell<Option<Sender<Control>>>,
    connect_waiters: RefCell<Vec<Sender<Result<(), ClientError>>>>,
    stop_waiters: RefCell<Vec<Sender<()>>>,
}

/// A TaskPulse client. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct Client {
    inner: Rc<Inner>,
}

impl Client {
    /// A client that is not connected yet; the tasks subscription is registered.
    pub fn new(options: ClientOptions) -> Client {
        let subscriptions = vec![(
            0,
            Subscription { destination: TASKS_DESTINATION.into(), handler: None, cursor: None },
        )];
        Client {
            inner: Rc::new(Inner {
                options,
                state: Cell::new(ConnectionState::Disconnected),
                next_retry_at: Cell::new(None),
                stats: Cell::new(Stats::default()),
                store: RefCell::new(TaskStore::new()),
                listeners: RefCell::new(Vec::new()),
                next_listener: Cell::new(0),
                subscriptions: RefCell::new(subscriptions),
                next_subscription: Cell::new(1),
                live: RefCell::new(None),
                control: RefCell::new(None),
                connect_waiters: RefCell::new(Vec::new()),
                stop_waiters: RefCell::new(Vec::new()),
            }),
        }
    }

    /// Starts the client if it is not running and waits for a session. Resolves at once
    /// when connected; keeps waiting through failed attempts (they are reported as
    /// [`ClientEvent::Error`]) until one succeeds.
    ///
    /// # Errors
    /// [`ClientError::Rejected`] when the server refuses the token (the client then stops
    /// instead of retrying), [`ClientError::Stopped`] when `disconnect()` comes first.
    pub async fn connect(&self) -> Result<(), ClientError> {
        if self.inner.state.get() == ConnectionState::Connected {
            return Ok(());
        }
        let (tx, mut rx) = channel();
        self.inner.connect_waiters.borrow_mut().push(tx);
        self.start();
        rx.next().await.unwrap_or(Err(ClientError::Stopped))
    }

    /// Ends the session (DISCONNECT with a receipt, then close) and stops reconnecting.
    /// Resolves once the client is `disconnected`.
    pub async fn disconnect(&self) {
        let Some(control) = self.inner.control.borrow().clone() else { return };
        let (tx, mut rx) = channel();
        self.inner.stop_waiters.borrow_mut().push(tx);
        control.send(Control::Stop);
        rx.next().await;
    }

    /// Skips the wait before the next reconnect attempt ("retry now"; also done on the
    /// page's `online` and `visibilitychange` events).
    pub fn retry_now(&self) {
        if let Some(control) = self.inner.control.borrow().as_ref() {
            control.send(Control::RetryNow);
        }
    }

    /// The connection's state.
    pub fn state(&self) -> ConnectionState {
        self.inner.state.get()
    }

    /// Whether a session is open.
    pub fn is_connected(&self) -> bool {
        self.state() == ConnectionState::Connected
    }

    /// When the next reconnect attempt starts (milliseconds since the epoch), while one is
    /// scheduled.
    pub fn next_retry_at(&self) -> Option<f64> {
        self.inner.next_retry_at.get()
    }

    /// The latest state of every task seen, in the order first seen.
    pub fn tasks(&self) -> Vec<TaskProgressDto> {
        self.inner.store.borrow().tasks().to_vec()
    }

    /// Counters of what the client did so far.
    pub fn stats(&self) -> Stats {
        let mut stats = self.inner.stats.get();
        stats.duplicates_dropped = self.inner.store.borrow().duplicates();
        stats
    }

    /// Calls `listener` for every event until [`Client::unlisten`].
    pub fn listen(&self, listener: impl Fn(&ClientEvent) + 'static) -> ListenerId {
        let id = self.inner.next_listener.get();
        self.inner.next_listener.set(id + 1);
        self.inner.listeners.borrow_mut().push((id, Rc::new(listener)));
        ListenerId(id)
    }

    /// Removes a listener; removing one twice is harmless.
    pub fn unlisten(&self, id: ListenerId) {
        self.inner.listeners.borrow_mut().retain(|(other, _)| *other != id.0);
    }

    /// Every event from now on, as a stream; dropping it removes the listener.
    pub fn events(&self) -> Events {
        let (tx, rx) = channel();
        let id = self.listen(move |event| {
            tx.send(event.clone());
        });
        Events { client: self.clone(), id, rx }
    }

    /// Task updates from now on, as a stream.
    pub fn task_updates(&self) -> impl Stream<Item = TaskProgressDto> + use<> {
        self.events().filter_map(|event| async move {
            match event {
                ClientEvent::TaskUpdate(update) => Some(update),
                _ => None,
            }
        })
    }

    /// Subscribes to `destination` now (when connected) and after every reconnect.
    /// `/user/...` destinations resume where they stopped, without duplicates.
    pub fn subscribe(
        &self,
        destination: &str,
        handler: impl Fn(&Frame) + 'static,
    ) -> SubscriptionId {
        let id = self.inner.next_subscription.get();
        self.inner.next_subscription.set(id + 1);
        let cursor = destination.starts_with("/user/").then(Cursor::default);
        let subscription = Subscription {
            destination: destination.to_owned(),
            handler: Some(Rc::new(handler)),
            cursor,
        };
        let frame = subscribe_frame(id, &subscription);
        self.inner.subscriptions.borrow_mut().push((id, subscription));
        if self.inner.live.borrow().is_some() {
            self.inner.send_or_drop(&frame);
        }
        SubscriptionId(id)
    }

    /// Ends a subscription made with [`Client::subscribe`].
    pub fn unsubscribe(&self, id: SubscriptionId) {
        let removed = {
            let mut subscriptions = self.inner.subscriptions.borrow_mut();
            let before = subscriptions.len();
            subscriptions.retain(|(other, _)| *other != id.0 || id.0 == 0);
            subscriptions.len() != before
        };
        if !removed {
            return;
        }
        if self.inner.live.borrow().is_some() {
            self.inner.send_or_drop(&protocol::unsubscribe_frame(&subscription_id(id.0)));
        }
    }

    /// Sends `body` to `destination`.
    ///
    /// # Errors
    /// [`ClientError::NotConnected`] when no session is open (nothing is queued: a SEND
    /// after a reconnect could be a duplicate the application did not expect).
    pub fn publish(
        &self,
        destination: &str,
        body: &str,
        content_type: &str,
        headers: &[(String, String)],
    ) -> Result<(), ClientError> {
        if self.inner.live.borrow().is_none() {
            return Err(ClientError::NotConnected);
        }
        self.inner.send(&protocol::send_frame(destination, body, content_type, headers))
    }

    fn start(&self) {
        if self.inner.control.borrow().is_some() {
            return;
        }
        let (tx, rx) = channel();
        *self.inner.control.borrow_mut() = Some(tx.clone());
        let inner = self.inner.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let page = PageEvents::install(tx);
            supervise(&inner, rx).await;
            drop(page);
        });
    }
}

/// [`Client::events`]: a stream of events that stops listening when dropped.
pub struct Events {
    client: Client,
    id: ListenerId,
    rx: Receiver<ClientEvent>,
}

impl Stream for Events {
    type Item = ClientEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientEvent>> {
        self.rx.poll_next_unpin(cx)
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.client.unlisten(self.id);
    }
}

fn subscription_id(id: u32) -> String {
    format!("sub-{id}")
}

fn subscribe_frame(id: u32, subscription: &Subscription) -> Frame {
    let extra = subscription.cursor.as_ref().map(Cursor::resume_headers).unwrap_or_default();
    protocol::subscribe_frame(&subscription_id(id), &subscription.destination, &extra)
}

fn now() -> f64 {
    js_sys::Date::now()
}

impl Inner {
    fn forget_positions(&self) {
        self.store.borrow_mut().forget_position();
        for (_, subscription) in self.subscriptions.borrow_mut().iter_mut() {
            if let Some(cursor) = &mut subscription.cursor {
                *cursor = Cursor::default();
            }
        }
    }

    fn set_state(&self, state: ConnectionState) {
        let changed = self.state.replace(state) != state;
        // Reconnecting is re-announced when a new retry time is set.
        if changed || state == ConnectionState::Reconnecting {
            self.log(&format!("state: {}", state.as_str()));
            self.emit(&ClientEvent::StateChanged {
                state,
                next_retry_at: self.next_retry_at.get(),
            });
        }
    }

    fn emit(&self, event: &ClientEvent) {
        // Listeners may add or remove listeners, or call the client: no borrow is held.
        let listeners: Vec<Listener> =
            self.listeners.borrow().iter().map(|(_, listener)| listener.clone()).collect();
        for listener in listeners {
            listener(event);
        }
    }

    fn deliver(&self, frame: &Frame) {
        let Some(id) = frame
            .header("subscription")
            .and_then(|s| s.strip_prefix("sub-"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            return;
        };
        if id == 0 {
            let mut stats = self.stats.get();
            if frame.header(resume::REPLAYED) == Some("true") {
                stats.replayed += 1;
            }
            if frame.header(resume::SNAPSHOT).is_some() {
                stats.snapshot_entries += 1;
            }
            self.stats.set(stats);
            let update = match crate::task_update(frame) {
                Ok(update) => self.store.borrow_mut().apply(frame, update),
                Err(error) => {
                    web_sys::console::warn_1(&format!("TaskPulse: {error}").into());
                    None
                }
            };
            if let Some(update) = update {
                self.emit(&ClientEvent::TaskUpdate(update));
            }
            return;
        }
        let handler = {
            let mut subscriptions = self.subscriptions.borrow_mut();
            let Some((_, subscription)) = subscriptions.iter_mut().find(|(other, _)| *other == id)
            else {
                return;
            };
            if let Some(cursor) = &mut subscription.cursor {
                if !cursor.admit(frame) {
                    return;
                }
            }
            subscription.handler.clone()
        };
        if let Some(handler) = handler {
            handler(frame);
        }
    }

    fn send(&self, frame: &Frame) -> Result<(), ClientError> {
        {
            let live = self.live.borrow();
            let Some(live) = live.as_ref() else { return Err(ClientError::NotConnected) };
            let bytes =
                frame.to_bytes(live.version).map_err(|e| ClientError::Protocol(e.to_string()))?;
            live.sender.send(&bytes).map_err(ClientError::Transport)?;
            live.last_sent.set(now());
        }
        self.log_frame(">>>", frame);
        Ok(())
    }

    /// Sends a frame whose loss the session loop will notice anyway (the socket closing).
    fn send_or_drop(&self, frame: &Frame) {
        if let Err(error) = self.send(frame) {
            self.log(&format!("could not send {}: {error}", frame.command));
        }
    }

    fn send_heartbeat(&self) {
        if let Some(live) = self.live.borrow().as_ref() {
            if live.sender.send(b"\n").is_ok() {
                live.last_sent.set(now());
            }
        }
    }

    fn settle_connect_waiters(&self, result: Result<(), ClientError>) {
        let waiters: Vec<_> = self.connect_waiters.borrow_mut().drain(..).collect();
        for waiter in waiters {
            waiter.send(result.clone());
        }
    }

    /// The supervisor ends: `disconnected`, pending `connect()`s fail, `disconnect()`s return.
    fn finish(&self, result: Result<(), ClientError>) {
        *self.control.borrow_mut() = None;
        self.next_retry_at.set(None);
        self.set_state(ConnectionState::Disconnected);
        self.settle_connect_waiters(result);
        let waiters: Vec<_> = self.stop_waiters.borrow_mut().drain(..).collect();
        for waiter in waiters {
            waiter.send(());
        }
    }

    fn log(&self, text: &str) {
        if self.options.debug {
            web_sys::console::debug_1(&format!("TaskPulse: {text}").into());
        }
    }

    fn log_frame(&self, direction: &str, frame: &Frame) {
        if self.options.debug {
            let mut text = format!("{direction} {}", frame.command);
            for (name, value) in frame.headers.iter() {
                if !name.eq_ignore_ascii_case("authorization") {
                    text.push(' ');
                    text.push_str(name);
                    text.push(':');
                    text.push_str(value);
                }
            }
            text.push_str(&format!(" ({} bytes)", frame.body.len()));
            self.log(&text);
        }
    }
}
