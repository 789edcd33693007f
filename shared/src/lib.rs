//! The TaskPulse wire protocol, shared by the server, the wasm client and the frontend.
//!
//! [`dto`] holds every JSON document that crosses the wire (task progress, submissions,
//! logins); [`json`] the JSON protocol for a bare `WebSocket`; [`resume`] the delivery guarantee's header names, resume position and ERROR codes;
//! [`stats`] the operator's figures (`GET /api/admin/stats`);
//! [`stomp`] holds STOMP 1.0-1.2 frames, typed commands and an incremental codec.
//! This crate does no I/O: it turns bytes into values and values into bytes.
#![warn(missing_docs)]

pub mod dto;
pub mod json;
mod quoted;
pub mod resume;
pub mod stats;
pub mod stomp;

pub use dto::{TaskProgressDto, TaskStatus};
pub use quoted::Quoted;
