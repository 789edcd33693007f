//! The TaskPulse browser client, compiled to wasm: STOMP over WebSocket with the `shared`
//! codec, reconnecting with backoff, keeping heart-beats, and resuming from the last `seq`
//! it saw so that no task update is lost or repeated.
//!
//! One implementation, two faces: [`Client`] for Rust (the Yew frontend; updates as a
//! `Stream`) and the JavaScript class `TaskWebSocketClient` (`js.rs`, the npm package).
//! The I/O-free parts ([`protocol`], [`resume`], [`backoff`], [`options`]) are unit tested
//! natively; the rest runs in the browser.

pub mod backoff;
mod channel;
mod client;
mod dto_js;
mod error;
mod js;
pub mod options;
pub mod protocol;
pub mod resume;
mod socket;

pub use client::{
    Client, ClientEvent, ConnectionState, DisconnectInfo, Events, ListenerId, Stats,
    SubscriptionId, TASKS_DESTINATION,
};
pub use error::ClientError;
pub use js::TaskWebSocketClient;
pub use options::{ClientOptions, TokenSource};
pub use protocol::Session;

/// Talc in place of Rust's default wasm allocator (dlmalloc): about 6 KB less `.wasm` for the
/// npm package (docs/BENCHMARKS.md, "Package size"); the browser runs one thread.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

use taskpulse_shared::{
    TaskProgressDto,
    stomp::{Command, Frame},
};

/// Why a frame did not yield a task update.
#[derive(Debug, thiserror::Error)]
pub enum TaskUpdateError {
    /// The frame is not a MESSAGE.
    #[error("expected a MESSAGE frame, got {0}")]
    NotAMessage(Command),
    /// The body is not a `TaskProgressDto`.
    #[error("the message body is not a task update: {0}")]
    BadBody(String),
}

/// The task update carried by a MESSAGE from `/user/queue/tasks-progress`. Browser only:
/// the body is read with the browser's `JSON.parse` (see `dto_js.rs` for why).
///
/// # Errors
/// [`TaskUpdateError`] when the frame is not a MESSAGE or its body is not a valid update.
pub fn task_update(frame: &Frame) -> Result<TaskProgressDto, TaskUpdateError> {
    if frame.command != Command::Message {
        return Err(TaskUpdateError::NotAMessage(frame.command));
    }
    dto_js::parse(&frame.body).map_err(TaskUpdateError::BadBody)
}
