//! The JSON protocol as a wire format: writes the broker's protocol-neutral [`Outgoing`]
//! events as [`ServerMessage`]s (`taskpulse_shared::json`), one JSON object per WebSocket
//! text message. The only place the server writes that protocol's deliveries.

use bytes::Bytes;
use serde_json::value::RawValue;
use taskpulse_shared::{
    json::{ServerMessage, SnapshotPart, TASKS_CHANNEL},
    resume::{SENDER, TASKS_PATH, error_code},
};

use crate::broker::{ENCODINGS, LogPlace, Message, Outgoing};

/// The slot of a message's shared encoding (its `data`) for this format; STOMP's versions
/// take the slots below it.
const SLOT: usize = 3;
const _: () = assert!(SLOT < ENCODINGS);

/// Writes one connection's events.
#[derive(Debug, Default)]
pub(crate) struct JsonWriter;

impl JsonWriter {
    /// Appends `item`'s JSON to `out`; always text. [`Outgoing::Close`] writes nothing.
    ///
    /// # Errors
    /// Never in practice (every event has a JSON form); kept for the transport's contract.
    pub(crate) fn encode(&mut self, item: &Outgoing, out: &mut Vec<u8>) -> Result<bool, String> {
        let message: ServerMessage<Box<RawValue>> = match item {
            Outgoing::Opened(opened) => {
                ServerMessage::AuthSuccess { user: opened.user_name.clone() }
            }
            // The session made the receipt its `subscribed` message.
            Outgoing::Receipt(text) => {
                out.extend_from_slice(text.as_bytes());
                return Ok(true);
            }
            Outgoing::Reply(bytes) => {
                out.extend_from_slice(bytes);
                return Ok(true);
            }
            Outgoing::Error(failure) if failure.message == "authentication failed" => {
                ServerMessage::AuthError {
                    code: error_code(&failure.message),
                    message: failure.body.clone(),
                }
            }
            Outgoing::Error(failure) => ServerMessage::Error {
                code: error_code(&failure.message),
                message: failure.body.clone(),
            },
            Outgoing::Deliver { sub, message, .. } => delivery(sub, message),
            Outgoing::Close(_) => return Ok(true),
        };
        serde_json::to_writer(&mut *out, &message).map_err(|e| e.to_string())?;
        Ok(true)
    }
}

/// A delivery on channel `channel` (the subscription, named as the client named it).
fn delivery(channel: &str, message: &Message) -> ServerMessage<Box<RawValue>> {
    let tasks = channel == TASKS_CHANNEL || channel.strip_prefix("/user") == Some(TASKS_PATH);
    if let Some(from) = message.headers.get(SENDER).filter(|_| !tasks) {
        return ServerMessage::ChatMessage {
            channel: channel.to_owned(),
            from: from.to_owned(),
            content: String::from_utf8_lossy(&message.body).into_owned(),
        };
    }
    let data = data(message);
    match (&message.place, tasks) {
        (Some(LogPlace::Numbered { seq, epoch, replayed }), true) => ServerMessage::TaskProgress {
            data,
            seq: *seq,
            epoch: epoch.to_string(),
            replayed: *replayed,
            snapshot: None,
        },
        (Some(LogPlace::Snapshot { index, count, seq, epoch }), true) => {
            ServerMessage::TaskProgress {
                data,
                seq: *seq,
                epoch: epoch.to_string(),
                replayed: false,
                snapshot: Some(SnapshotPart { index: *index, count: *count }),
            }
        }
        (place, _) => {
            let (seq, epoch, replayed) = match place {
                Some(LogPlace::Numbered { seq, epoch, replayed }) => {
                    (Some(*seq), Some(epoch.to_string()), *replayed)
                }
                Some(LogPlace::Snapshot { seq, epoch, .. }) => {
                    (Some(*seq), Some(epoch.to_string()), false)
                }
                None => (None, None, false),
            };
            ServerMessage::Notification { channel: channel.to_owned(), data, seq, epoch, replayed }
        }
    }
}

/// The body as JSON: itself when it is a JSON document, else a JSON string of it (lossy
/// UTF-8). Worked out once per message and shared by every JSON recipient.
fn data(message: &Message) -> Box<RawValue> {
    let encoded = message.encoded(SLOT, |m| {
        let json = serde_json::from_slice::<&RawValue>(&m.body).is_ok();
        let text = if json {
            m.body.to_vec()
        } else {
            serde_json::to_vec(&String::from_utf8_lossy(&m.body)).ok()?
        };
        Some(Bytes::from(text))
    });
    encoded
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(|text| RawValue::from_string(text.to_owned()).ok())
        .unwrap_or_else(|| RawValue::NULL.to_owned())
}
