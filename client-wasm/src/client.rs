//! The client: one supervisor task per running client that connects, keeps the session
//! (heart-beats, subscriptions, resume) and reconnects with backoff until told to stop.
//! The Rust API ([`Client`]) and the JavaScript class (`js.rs`) are both this type.
//!
//! Everything runs on the browser's single thread: state is `Rc` + `Cell`/`RefCell`, and no
//! borrow is held across an `.await` or while listeners run (they may call back in).

use std::{
    cell::{Cell, RefCell},
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
};

use futures_channel::{mpsc, oneshot};
use futures_util::{FutureExt, Stream, StreamExt, select_biased, stream};
use gloo_timers::future::{IntervalStream, TimeoutFuture};
use taskpulse_shared::{
    TaskProgressDto, resume,
    stomp::{Command, Decoder, Frame, Limits, Version},
};
use wasm_bindgen::{JsCast, closure::Closure};

use crate::{
    ClientError,
    options::{ClientOptions, TokenSource},
    protocol::{self, Session},
    resume::{Cursor, TaskStore},
    socket::{Socket, SocketEvent, SocketSender},
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
    control: RefCell<Option<mpsc::UnboundedSender<Control>>>,
    connect_waiters: RefCell<Vec<oneshot::Sender<Result<(), ClientError>>>>,
    stop_waiters: RefCell<Vec<oneshot::Sender<()>>>,
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
        let (tx, rx) = oneshot::channel();
        self.inner.connect_waiters.borrow_mut().push(tx);
        self.start();
        rx.await.unwrap_or(Err(ClientError::Stopped))
    }

    /// Ends the session (DISCONNECT with a receipt, then close) and stops reconnecting.
    /// Resolves once the client is `disconnected`.
    pub async fn disconnect(&self) {
        let Some(control) = self.inner.control.borrow().clone() else { return };
        let (tx, rx) = oneshot::channel();
        self.inner.stop_waiters.borrow_mut().push(tx);
        let _ = control.unbounded_send(Control::Stop);
        let _ = rx.await;
    }

    /// Skips the wait before the next reconnect attempt ("retry now"; also done on the
    /// page's `online` and `visibilitychange` events).
    pub fn retry_now(&self) {
        if let Some(control) = self.inner.control.borrow().as_ref() {
            let _ = control.unbounded_send(Control::RetryNow);
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
        let (tx, rx) = mpsc::unbounded();
        let id = self.listen(move |event| {
            let _ = tx.unbounded_send(event.clone());
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
        let (tx, rx) = mpsc::unbounded();
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
    rx: mpsc::UnboundedReceiver<ClientEvent>,
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

/// How one connection attempt ended.
enum Outcome {
    /// `disconnect()` was called.
    Stopped,
    /// The attempt failed before CONNECTED.
    Failed(ClientError),
    /// A session ran and ended.
    Ended { error: Option<ClientError>, uptime_ms: f64 },
}

/// Connects, runs sessions and waits between attempts until stopped or refused.
async fn supervise(inner: &Rc<Inner>, mut control: mpsc::UnboundedReceiver<Control>) {
    let mut attempt: u32 = 0;
    let mut ever_connected = false;
    loop {
        let first = !ever_connected && attempt == 0;
        inner.set_state(if first {
            ConnectionState::Connecting
        } else {
            ConnectionState::Reconnecting
        });
        match run_attempt(inner, &mut control).await {
            Outcome::Stopped => break,
            Outcome::Failed(error) => {
                inner.emit(&ClientEvent::Error(error.clone()));
                if error.is_fatal() {
                    inner.finish(Err(error));
                    return;
                }
            }
            Outcome::Ended { error, uptime_ms } => {
                ever_connected = true;
                if uptime_ms >= HEALTHY_AFTER_MS {
                    attempt = 0;
                }
                if let Some(error) = error {
                    inner.emit(&ClientEvent::Error(error));
                }
            }
        }
        let delay = inner.options.reconnect.delay_ms(attempt, js_sys::Math::random());
        attempt = attempt.saturating_add(1);
        inner.next_retry_at.set(Some(now() + f64::from(delay)));
        inner.set_state(ConnectionState::Reconnecting);
        inner.log(&format!("reconnecting in {delay} ms (attempt {attempt})"));
        let stop = select_biased! {
            () = TimeoutFuture::new(delay).fuse() => false,
            message = control.next() => !matches!(message, Some(Control::RetryNow)),
        };
        inner.next_retry_at.set(None);
        if stop {
            break;
        }
    }
    inner.finish(Err(ClientError::Stopped));
}

/// One attempt: token, socket, CONNECT, then the session until it ends.
async fn run_attempt(inner: &Rc<Inner>, control: &mut mpsc::UnboundedReceiver<Control>) -> Outcome {
    let token = match &inner.options.token {
        TokenSource::Fixed(token) => token.clone(),
        TokenSource::Provider(get) => {
            let mut fetch = get().fuse();
            loop {
                select_biased! {
                    token = fetch => match token {
                        Ok(token) => break token,
                        Err(why) => return Outcome::Failed(ClientError::Token(why)),
                    },
                    message = control.next() => match message {
                        Some(Control::RetryNow) => {}
                        _ => return Outcome::Stopped,
                    },
                }
            }
        }
    };
    let mut socket = match Socket::open(&inner.options.url) {
        Ok(socket) => socket,
        Err(why) => return Outcome::Failed(ClientError::Transport(why)),
    };
    let timeout_ms = inner.options.connection_timeout_ms;
    let handshake = {
        let mut handshake = handshake(inner, &mut socket, &token).boxed_local().fuse();
        let mut timeout = TimeoutFuture::new(timeout_ms).fuse();
        loop {
            select_biased! {
                result = handshake => break result,
                () = timeout => break Err(ClientError::Timeout(timeout_ms)),
                message = control.next() => match message {
                    Some(Control::RetryNow) => {}
                    _ => return Outcome::Stopped,
                },
            }
        }
    };
    let (session, decoder) = match handshake {
        Ok(connected) => connected,
        Err(error) => return Outcome::Failed(error),
    };
    run_session(inner, socket, decoder, session, control).await
}

/// Waits for the socket to open, sends CONNECT and reads the answer.
async fn handshake(
    inner: &Inner,
    socket: &mut Socket,
    token: &str,
) -> Result<(Session, Decoder), ClientError> {
    loop {
        match socket.next().await {
            Some(SocketEvent::Open) => break,
            Some(SocketEvent::Data(_)) => {}
            Some(SocketEvent::Closed { code, reason, .. }) => {
                return Err(ClientError::Transport(closed_text(&inner.options.url, code, &reason)));
            }
            None => return Err(ClientError::Transport("the socket went away".into())),
        }
    }
    let host = host_of(&inner.options.url);
    let connect = protocol::connect_frame(&host, token, inner.options.heartbeat);
    let bytes =
        connect.to_bytes(Version::V1_2).map_err(|e| ClientError::Protocol(e.to_string()))?;
    socket.sender().send(&bytes).map_err(ClientError::Transport)?;
    inner.log(">>> CONNECT");
    let mut decoder = Decoder::new(Version::V1_2, client_limits());
    loop {
        match socket.next().await {
            Some(SocketEvent::Data(bytes)) => {
                decoder.feed(&bytes);
                match decoder.decode() {
                    Ok(Some(frame)) => {
                        inner.log_frame("<<<", &frame);
                        let session = protocol::connected(
                            frame,
                            inner.options.heartbeat,
                            inner.options.heartbeat_tolerance,
                        )?;
                        decoder.set_version(session.version);
                        return Ok((session, decoder));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(ClientError::Protocol(e.to_string())),
                }
            }
            Some(SocketEvent::Open) => {}
            Some(SocketEvent::Closed { code, reason, .. }) => {
                return Err(ClientError::Transport(closed_text(&inner.options.url, code, &reason)));
            }
            None => return Err(ClientError::Transport("the socket went away".into())),
        }
    }
}

/// A connected session: resubscribe, then frames, heart-beats and control until it ends.
async fn run_session(
    inner: &Rc<Inner>,
    mut socket: Socket,
    mut decoder: Decoder,
    session: Session,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> Outcome {
    let started = now();
    *inner.live.borrow_mut() = Some(Live {
        sender: socket.sender(),
        version: session.version,
        last_sent: Cell::new(started),
    });
    // The tasks SUBSCRIBE asks for a receipt: the server sends it after the catch-up
    // (replay or snapshot), so "connected" means "tasks() is current".
    let frames: Vec<Frame> = {
        let store = inner.store.borrow();
        let subscriptions = inner.subscriptions.borrow();
        subscriptions
            .iter()
            .map(|&(id, ref subscription)| {
                if id == 0 {
                    let mut extra = store.resume_headers();
                    extra.push(("receipt", READY_RECEIPT.to_owned()));
                    protocol::subscribe_frame(&subscription_id(0), TASKS_DESTINATION, &extra)
                } else {
                    subscribe_frame(id, subscription)
                }
            })
            .collect()
    };
    for frame in &frames {
        inner.send_or_drop(frame);
    }
    let mut ready = false;
    let mut ready_timeout = TimeoutFuture::new(inner.options.connection_timeout_ms).fuse();

    let heartbeats = session.heartbeats;
    let mut ticks = match heartbeats.tick_ms() {
        Some(ms) => IntervalStream::new(ms).boxed_local(),
        None => stream::pending().boxed_local(),
    }
    .fuse();
    let mut last_received = started;
    let mut stopping = false;
    let (error, close) = loop {
        select_biased! {
            event = socket.events.next() => match event {
                Some(SocketEvent::Data(bytes)) => {
                    last_received = now();
                    decoder.feed(&bytes);
                    match drain(inner, &mut decoder) {
                        Ok(Flow::Continue) => {}
                        Ok(Flow::Ready) if !ready => {
                            ready = true;
                            let mut stats = inner.stats.get();
                            stats.connects += 1;
                            inner.stats.set(stats);
                            inner.set_state(ConnectionState::Connected);
                            inner.emit(&ClientEvent::Connected(session.clone()));
                            inner.settle_connect_waiters(Ok(()));
                        }
                        Ok(Flow::Ready) => {}
                        Ok(Flow::Disconnected) if stopping => break (None, None),
                        Ok(Flow::Disconnected) => {}
                        Err(error) => break (Some(error), None),
                    }
                }
                Some(SocketEvent::Open) => {}
                Some(SocketEvent::Closed { code, reason, was_clean }) => {
                    let error = (!stopping).then(|| ClientError::Transport(
                        closed_text(&inner.options.url, code, &reason),
                    ));
                    break (error, Some((code, reason, was_clean)));
                }
                None => break (None, None),
            },
            () = ready_timeout => if !ready {
                let timeout = inner.options.connection_timeout_ms;
                break (Some(ClientError::Timeout(timeout)), None);
            },
            _ = ticks.next() => {
                let now = now();
                if let Err(error) = heartbeats.check_incoming(now, last_received) {
                    break (Some(error), None);
                }
                let last_sent = inner.live.borrow().as_ref().map_or(now, |l| l.last_sent.get());
                if heartbeats.send_due(now, last_sent) {
                    inner.send_heartbeat();
                }
            },
            message = control.next() => match message {
                Some(Control::RetryNow) => {}
                _ if stopping => {}
                _ => {
                    stopping = true;
                    inner.send_or_drop(&protocol::disconnect_frame(DISCONNECT_RECEIPT));
                    // Give the server a moment to confirm; close regardless.
                    let mut timer = TimeoutFuture::new(DISCONNECT_RECEIPT_MS).fuse();
                    let confirmed = loop {
                        select_biased! {
                            () = timer => break false,
                            event = socket.events.next() => match event {
                                Some(SocketEvent::Data(bytes)) => {
                                    decoder.feed(&bytes);
                                    if matches!(drain(inner, &mut decoder), Ok(Flow::Disconnected) | Err(_)) {
                                        break true;
                                    }
                                }
                                Some(SocketEvent::Open) => {}
                                _ => break true,
                            },
                        }
                    };
                    inner.log(if confirmed { "disconnected" } else { "no RECEIPT for DISCONNECT; closing" });
                    break (None, None);
                }
            },
        }
    };
    *inner.live.borrow_mut() = None;
    drop(socket);
    let (code, reason, was_clean) = close.unwrap_or_else(|| {
        let reason =
            error.as_ref().map_or_else(|| "disconnected by the client".into(), ToString::to_string);
        (if stopping { 1000 } else { CLOSED_BY_CLIENT }, reason, stopping)
    });
    inner.emit(&ClientEvent::Disconnected(DisconnectInfo {
        code,
        reason,
        was_clean,
        will_reconnect: !stopping,
    }));
    if stopping {
        return Outcome::Stopped;
    }
    Outcome::Ended { error, uptime_ms: now() - started }
}

/// What the frames just decoded mean for the session loop.
enum Flow {
    Continue,
    /// The tasks subscription's RECEIPT arrived: caught up.
    Ready,
    /// The DISCONNECT's RECEIPT arrived.
    Disconnected,
}

/// Handles every complete frame in the decoder.
fn drain(inner: &Inner, decoder: &mut Decoder) -> Result<Flow, ClientError> {
    let mut flow = Flow::Continue;
    loop {
        let frame = match decoder.decode() {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(flow),
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        };
        inner.log_frame("<<<", &frame);
        match frame.command {
            Command::Message => inner.deliver(&frame),
            Command::Receipt => match frame.header("receipt-id") {
                Some(DISCONNECT_RECEIPT) => flow = Flow::Disconnected,
                Some(READY_RECEIPT) => flow = Flow::Ready,
                _ => {}
            },
            Command::Error => {
                if frame.header(resume::ERROR_CODE) == Some(resume::INVALID_RESUME_POSITION) {
                    // Never expected (positions come from the server), but retrying the
                    // same position would fail forever: start over with a snapshot.
                    inner.forget_positions();
                }
                return Err(ClientError::Stomp {
                    message: frame.header("message").unwrap_or("ERROR").to_owned(),
                    body: frame.body_text().unwrap_or_default().to_owned(),
                });
            }
            _ => {}
        }
    }
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
            let _ = waiter.send(result.clone());
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
            let _ = waiter.send(());
        }
    }

    fn log(&self, text: &str) {
        if self.options.debug {
            web_sys::console::debug_1(&format!("TaskPulse: {text}").into());
        }
    }

    fn log_frame(&self, direction: &str, frame: &Frame) {
        if self.options.debug {
            let headers: Vec<String> = frame
                .headers
                .iter()
                .filter(|(name, _)| !name.eq_ignore_ascii_case("authorization"))
                .map(|(name, value)| format!("{name}:{value}"))
                .collect();
            self.log(&format!(
                "{direction} {} {} ({} bytes)",
                frame.command,
                headers.join(" "),
                frame.body.len()
            ));
        }
    }
}

/// The `host` header: the URL's host[:port].
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?', '#']).next().unwrap_or(rest).to_owned()
}

fn closed_text(url: &str, code: u16, reason: &str) -> String {
    if reason.is_empty() {
        format!("the connection to {url} closed (code {code})")
    } else {
        format!("the connection to {url} closed (code {code}: {reason})")
    }
}

/// Inbound bounds: generous (the server is trusted) but finite.
fn client_limits() -> Limits {
    Limits { max_frame_bytes: 16 * 1024 * 1024, max_headers: 256, max_header_line_bytes: 64 * 1024 }
}

/// `online` and `visibilitychange` (to visible) listeners that skip the backoff wait:
/// background tabs throttle timers, and a returning network should not wait 30 s.
struct PageEvents {
    targets: Vec<(web_sys::EventTarget, &'static str)>,
    callback: Closure<dyn FnMut(web_sys::Event)>,
}

impl PageEvents {
    fn install(control: mpsc::UnboundedSender<Control>) -> Option<PageEvents> {
        let window = web_sys::window()?;
        let document = window.document();
        let callback = Closure::<dyn FnMut(web_sys::Event)>::new(move |_: web_sys::Event| {
            let visible = web_sys::window()
                .and_then(|w| w.document())
                .is_none_or(|d| d.visibility_state() == web_sys::VisibilityState::Visible);
            if visible {
                let _ = control.unbounded_send(Control::RetryNow);
            }
        });
        let mut targets: Vec<(web_sys::EventTarget, &'static str)> =
            vec![(window.into(), "online")];
        if let Some(document) = document {
            targets.push((document.into(), "visibilitychange"));
        }
        for (target, name) in &targets {
            let _ =
                target.add_event_listener_with_callback(name, callback.as_ref().unchecked_ref());
        }
        Some(PageEvents { targets, callback })
    }
}

impl Drop for PageEvents {
    fn drop(&mut self) {
        for (target, name) in &self.targets {
            let _ = target
                .remove_event_listener_with_callback(name, self.callback.as_ref().unchecked_ref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_is_the_authority() {
        assert_eq!(host_of("ws://127.0.0.1:8080/ws"), "127.0.0.1:8080");
        assert_eq!(host_of("wss://example.com/ws?x=1"), "example.com");
    }
}
