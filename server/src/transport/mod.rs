//! How sessions reach clients: a transport drives a protocol session over some socket and
//! writes the broker's protocol-neutral outbox in that protocol's wire format.
//!
//! `stomp` is the wire format of the STOMP session, `json` that of the JSON protocol's
//! session; `websocket` carries either over a WebSocket (any `Stream`/`Sink` of WebSocket
//! messages, so its clocks can be tested with paused time). A protocol plugs in by
//! implementing `websocket::Protocol` for its session (the broker's) and giving its writer.
//! `sse` is the read-only Server-Sent Events stream of a user's task updates; `sockjs` wraps
//! a WebSocket in SockJS framing for the seed's `new SockJS(...)` clients.

pub(crate) mod json;
pub(crate) mod sockjs;
pub(crate) mod sse;
pub(crate) mod stomp;
pub(crate) mod websocket;
