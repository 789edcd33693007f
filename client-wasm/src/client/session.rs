//! The supervisor loop: `supervise` -> `run_attempt` -> `handshake` -> `run_session`, and
//! `drain`, which hands decoded frames to the shared state.

use std::{cell::Cell, rc::Rc};

use futures_util::{FutureExt, StreamExt, select_biased, stream};
use taskpulse_shared::{
    resume,
    stomp::{Command, Decoder, Frame, Limits, Version},
};

use super::{
    CLOSED_BY_CLIENT, ClientEvent, ConnectionState, Control, DISCONNECT_RECEIPT,
    DISCONNECT_RECEIPT_MS, DisconnectInfo, HEALTHY_AFTER_MS, Inner, Live, READY_RECEIPT,
    TASKS_DESTINATION, now, subscribe_frame, subscription_id,
};
use crate::{
    ClientError,
    channel::{Interval, Receiver, Timeout},
    options::{TokenSource, split_scheme},
    protocol::{self, Session},
    socket::{Socket, SocketEvent},
};

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
pub(super) async fn supervise(inner: &Rc<Inner>, mut control: Receiver<Control>) {
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
            () = Timeout::new(delay) => false,
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
async fn run_attempt(inner: &Rc<Inner>, control: &mut Receiver<Control>) -> Outcome {
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
        let mut timeout = Timeout::new(timeout_ms);
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
    control: &mut Receiver<Control>,
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
    let mut ready_timeout = Timeout::new(inner.options.connection_timeout_ms);

    let heartbeats = session.heartbeats;
    let mut ticks = match heartbeats.tick_ms() {
        Some(ms) => Interval::new(ms).boxed_local(),
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
                    let mut timer = Timeout::new(DISCONNECT_RECEIPT_MS);
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

/// The `host` header: the URL's host[:port].
fn host_of(url: &str) -> String {
    let rest = split_scheme(url).map_or(url, |(_, rest)| rest);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_is_the_authority() {
        assert_eq!(host_of("ws://127.0.0.1:8080/ws"), "127.0.0.1:8080");
        assert_eq!(host_of("wss://example.com/ws?x=1"), "example.com");
    }
}
