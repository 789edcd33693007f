//! How sessions reach clients: a transport drives a protocol session over some socket and
//! writes the broker's protocol-neutral outbox in that protocol's wire format.
//!
//! `stomp` is the wire format of the STOMP session; `websocket` carries it over a WebSocket
//! (any `Stream`/`Sink` of WebSocket messages, so its clocks can be tested with paused time).

pub(crate) mod stomp;
pub(crate) mod websocket;
