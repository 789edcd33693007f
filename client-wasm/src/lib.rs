//! The TaskPulse browser client, compiled to wasm. So far it holds the parts without I/O:
//! reading a task update out of a STOMP MESSAGE with the shared codec, the resume logic
//! ([`resume::TaskStore`]: position, deduplication by `seq`, snapshots) and reconnect delays
//! ([`backoff::Backoff`]).
//!
//! The `TaskWebSocketClient` class (the WebSocket transport and its JavaScript API) is the
//! rest of its issue.

pub mod backoff;
pub mod resume;

use taskpulse_shared::{
    TaskProgressDto,
    stomp::{Command, Frame},
};
use wasm_bindgen::prelude::wasm_bindgen;

/// Why a frame did not yield a task update.
#[derive(Debug, thiserror::Error)]
pub enum TaskUpdateError {
    /// The frame is not a MESSAGE.
    #[error("expected a MESSAGE frame, got {0}")]
    NotAMessage(Command),
    /// The body is not a `TaskProgressDto`.
    #[error("the message body is not a task update: {0}")]
    BadBody(#[from] serde_json::Error),
}

/// The task update carried by a MESSAGE from `/user/queue/tasks-progress`.
///
/// # Errors
/// [`TaskUpdateError`] when the frame is not a MESSAGE or its body is not a valid update.
pub fn task_update(frame: &Frame) -> Result<TaskProgressDto, TaskUpdateError> {
    if frame.command != Command::Message {
        return Err(TaskUpdateError::NotAMessage(frame.command));
    }
    Ok(serde_json::from_slice(&frame.body)?)
}

/// The STOMP versions this client offers, as its CONNECT `accept-version` header.
#[wasm_bindgen(js_name = acceptVersion)]
pub fn accept_version() -> String {
    "1.2,1.1,1.0".to_owned()
}
